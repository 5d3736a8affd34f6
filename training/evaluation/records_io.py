"""The checks that the evaluation commands add on top of ``training.data.records`` (JSONL parsing and writing,
the record schema): the fields a predictions line must have, and ``file:line`` in every error."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from training.data.records import ANSWER_TYPES, iter_jsonl_numbered, validate_record, write_jsonl
from training.errors import MedVQAUserError
from training.evaluation.scorers import prefix_choice

__all__ = ["read_jsonl", "read_jsonl_lines", "write_jsonl"]


def read_jsonl_lines(
    path: str | Path, required: Sequence[str] = (), limit: int | None = None, *, schema: bool = False
) -> list[tuple[int, dict[str, Any]]]:
    """Read a JSONL file as ``(line number, record)`` pairs (blank lines skipped), at most ``limit`` records.

    Args:
        required: fields every line must have, as strings (``prediction`` and ``answer`` for ``medvqa score``).
        schema: also check the full record schema (``training.data.records.validate_record``), as for eval data.

    Raises:
        MedVQAUserError: missing/unreadable file, a line that is not UTF-8 or not a JSON object (line ends LF,
            CRLF or CR; see ``training.data.records.iter_jsonl_numbered``), a ``required`` field missing
            or not a string, an ``answer_type`` other than yes_no/open, ``options`` not a list,
            ``options_raw`` not a list of strings, ``answer_raw`` not a string, an ``mc_prefix_choice`` that is not an
            index of the options ranked (``scorers.mc_options``). The subject is
            ``file:line``.
    """
    path = Path(path)
    pairs = iter_jsonl_numbered(path)  # one read: each record comes with the number of the line it was on
    out = []
    for lineno, record in islice(pairs, limit):
        where = f"{path}:{lineno}"
        if schema:
            validate_record(record, where)
        _check(record, where, required)
        out.append((lineno, record))
    return out


def read_jsonl(
    path: str | Path, required: Sequence[str] = (), limit: int | None = None
) -> list[dict[str, Any]]:
    """The records of ``read_jsonl_lines`` without their line numbers."""
    return [record for _, record in read_jsonl_lines(path, required, limit)]


def _check(record: dict[str, Any], where: str, required: Sequence[str]) -> None:
    for field in required:
        if field not in record:
            raise MedVQAUserError(where, f'record has no "{field}"')
        if not isinstance(record[field], str):
            raise MedVQAUserError(where, f'"{field}" must be a string, got {type(record[field]).__name__}')
    kind = record.get("answer_type")
    if kind not in (None, "", *ANSWER_TYPES):
        raise MedVQAUserError(where, f'"answer_type" must be one of {", ".join(ANSWER_TYPES)}, got {kind!r}')
    options = record.get("options")
    if options is not None and not isinstance(options, list):
        raise MedVQAUserError(where, f'"options" must be a list, got {type(options).__name__}')
    # the release's raw strings (data convert): mc_qa_score and the mc prompt read them in place of the options
    raw = record.get("options_raw")
    if raw is not None and not (isinstance(raw, list) and all(isinstance(o, str) for o in raw)):
        raise MedVQAUserError(where, f'"options_raw" must be a list of strings, got {_describe(raw)}')
    if record.get("answer_raw") is not None and not isinstance(record["answer_raw"], str):
        raise MedVQAUserError(
            where, f'"answer_raw" must be a string, got {type(record["answer_raw"]).__name__}'
        )
    if options and record.get("mc_prefix_choice") is not None:
        try:
            prefix_choice(record)
        except ValueError as exc:
            raise MedVQAUserError(where, str(exc)) from None


def _describe(value: object) -> str:
    if isinstance(value, list):
        odd = next(o for o in value if not isinstance(o, str))
        return f"a list holding a value of type {type(odd).__name__}"
    return type(value).__name__
