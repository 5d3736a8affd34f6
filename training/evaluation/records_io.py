"""JSONL input/output of the evaluation commands, with user errors that name ``file:line`` and the reason.

A minimal local reader until ``training.data.records`` lands; the checks specific to scoring (which fields a
line must have) stay here either way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from training.errors import MedVQAUserError

ANSWER_TYPES = ("yes_no", "open")


def read_jsonl(
    path: str | Path, required: Sequence[str] = (), limit: int | None = None
) -> list[dict[str, Any]]:
    """Read a JSONL file of records (blank lines skipped), at most ``limit`` records; see ``read_jsonl_lines``."""
    return [record for _, record in read_jsonl_lines(path, required, limit)]


def read_jsonl_lines(
    path: str | Path, required: Sequence[str] = (), limit: int | None = None
) -> list[tuple[int, dict[str, Any]]]:
    """Read a JSONL file as ``(line number, record)`` pairs (blank lines skipped), at most ``limit`` records.

    Raises:
        MedVQAUserError: missing/unreadable file, a line that is not a JSON object, a ``required`` field missing
            or not a string, an ``answer_type`` other than yes_no/open. The subject is ``file:line``.
    """
    path = Path(path)
    if not path.is_file():
        raise MedVQAUserError(path, "no such file")
    records: list[tuple[int, dict[str, Any]]] = []
    try:
        with path.open(encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, start=1):
                if limit is not None and len(records) >= limit:
                    break
                if not line.strip():
                    continue
                records.append((lineno, _parse(path, lineno, line, required)))
    except UnicodeDecodeError as exc:
        raise MedVQAUserError(path, f"not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise MedVQAUserError(path, f"cannot read: {exc.strerror or exc}") from None
    return records


def _parse(path: Path, lineno: int, line: str, required: Sequence[str]) -> dict[str, Any]:
    where = f"{path}:{lineno}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise MedVQAUserError(where, f"malformed JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise MedVQAUserError(where, f"expected a JSON object, got {type(record).__name__}")
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
    return record


def write_jsonl(path: str | Path, records: Iterable[Mapping[str, Any]]) -> Path:
    """Write records one JSON object a line (UTF-8, non-ASCII kept readable)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path
