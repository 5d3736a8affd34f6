"""The record schema (DESIGN.md §4) in one place: fields, canonical modalities, answer cleaning, JSONL I/O.

A record is one question about one image, one JSON object per line::

    {"question_id", "dataset", "image", "question", "answer", "answer_type", "modality", "modality_raw",
     "question_type", "options", "source", "split"}

* ``image``: a path relative to the JSONL file's folder, or absolute (:func:`resolve_image`).
* ``answer_type``: ``"yes_no"`` when the cleaned answer is yes or no, else ``"open"`` (:func:`answer_type`).
* ``modality``: one of :data:`CANONICAL_MODALITIES`, or :data:`UNKNOWN_MODALITY` for sources without modality
  labels (VQA-RAD, PMC-VQA); ``modality_raw`` keeps the string of the source (OmniMedVQA's typos included).
* ``options``: the original multiple-choice options (cleaned, duplicates removed), possibly empty.
* ``source``: where the image comes from: the file it was cut from when known (the bundled samples record it,
  e.g. ``pydicom:CT_small.dcm``), else the source file of the question (e.g.
  ``QA_information/Open-access/ACRIMA.json``, ``vqa-rad:test-00000-of-00001.parquet``).
* ``split``: ``train`` / ``val`` / ``test`` (imports keep the benchmark's own split names).

Records may carry extra keys (``options_raw`` / ``answer_raw``: the OmniMedVQA release's own option strings and
``gt_answer``, untouched, for its official score; ``reason``/``detail`` in ``needs_review.jsonl`` and ``rejected.jsonl``,
``prediction`` in predictions); readers ignore keys they do not know.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from training.errors import MedVQAUserError

FIELDS: tuple[str, ...] = (
    "question_id",
    "dataset",
    "image",
    "question",
    "answer",
    "answer_type",
    "modality",
    "modality_raw",
    "question_type",
    "options",
    "source",
    "split",
)
ANSWER_TYPES = ("yes_no", "open")
YES_NO = ("yes", "no")

CANONICAL_MODALITIES: tuple[str, ...] = (
    "CT",
    "MRI",
    "X-Ray",
    "Ultrasound",
    "Dermoscopy",
    "Microscopy",
    "Fundus Photography",
    "OCT",
    "Endoscopy",
    "Colposcopy",
    "Digital Photography",
    "Infrared Reflectance Imaging",
)
UNKNOWN_MODALITY = "Unknown"

# Rules on the lower-cased string with everything but letters removed ("MR (Mag-netic Resonance Imaging)" ->
# "mrmagneticresonanceimaging"); first match wins, so OCT ("optical coherence tomography") is tested before CT.
_MODALITY_RULES: tuple[tuple[str, str], ...] = (
    (r"^oct|opticalcoherence", "OCT"),
    (r"^ct|computedtomograph|computertomograph|^cat$|^cbct|conebeam", "CT"),
    (r"^mri?|magneticresonance|^t1|^t2|^flair|^dwi|^adc", "MRI"),
    (r"^xray|^x$|radiograph|^cr$|^dx$|^cxr|mammograph|fluoroscop|angiograph", "X-Ray"),
    (r"ultraso|sonograph|^us$|^echo|doppler", "Ultrasound"),
    (r"dermoscop|dermatoscop", "Dermoscopy"),
    (r"microscop|histopatholog|histolog|patholog|cytolog|^wsi", "Microscopy"),
    (r"fundus|retinalphotograph|retinalimag", "Fundus Photography"),
    (r"colposcop", "Colposcopy"),
    (r"endoscop|colonoscop|gastroscop|laparoscop|capsule", "Endoscopy"),
    (r"infrared|^ir$|reflectance", "Infrared Reflectance Imaging"),
    (r"digitalphotograph|^photograph|clinicalphotograph|^photo", "Digital Photography"),
)
_MODALITY_RES = tuple((re.compile(p), name) for p, name in _MODALITY_RULES)
_modality_cache: dict[str, str | None] = {}

# Modality strings as the OmniMedVQA release spells them (for tests and documentation); all map by the rules.
OMNIMEDVQA_MODALITY_STRINGS: dict[str, str] = {
    "CT(Computed Tomography)": "CT",
    "MR (Mag-netic Resonance Imaging)": "MRI",
    "X-Ray": "X-Ray",
    "Ultrasound": "Ultrasound",
    "Dermoscopy": "Dermoscopy",
    "Microscopy Images": "Microscopy",
    "Fundus Photography": "Fundus Photography",
    "OCT (Optical Coherence Tomography": "OCT",
    "Endoscopy": "Endoscopy",
    "Colposcopy": "Colposcopy",
    "Digital Photography": "Digital Photography",
    "Infrared Reflectance Imaging": "Infrared Reflectance Imaging",
}


def canonical_modality(raw: object) -> str | None:
    """Map a modality string (release spelling, typo, answer text like ``x_ray.``) to a canonical name.

    Returns None when the string names no known modality.
    """
    if not isinstance(raw, str):
        return None
    hit = _modality_cache.get(raw)
    if hit is not None or raw in _modality_cache:
        return hit
    key = re.sub(r"[^a-z]", "", raw.lower())
    result = next((name for rx, name in _MODALITY_RES if rx.search(key)), None) if key else None
    if len(_modality_cache) < 10_000:
        _modality_cache[raw] = result
    return result


_SPACES = re.compile(r"\s+")
_EDGE_PUNCT = " \t\n\"'`.;,:!"


def clean_text(text: str) -> str:
    """Collapse white space and strip surrounding quotes, spaces and trailing/leading dots, commas, colons."""
    return _SPACES.sub(" ", text).strip(_EDGE_PUNCT)


def clean_answer(text: str) -> str:
    """The answer as stored: :func:`clean_text`, underscores as spaces (``x_ray.`` -> ``x ray``), yes/no lower case.

    Case is otherwise kept (scorers normalise it); the original option strings stay in ``options``.
    """
    out = clean_text(text.replace("_", " "))
    low = out.lower()
    return low if low in YES_NO else out


def answer_type(answer: str) -> str:
    """``"yes_no"`` if the (cleaned) answer is yes or no, else ``"open"``."""
    return "yes_no" if clean_answer(answer).lower() in YES_NO else "open"


def dedupe_options(options: Iterable[str]) -> list[str]:
    """Cleaned options, empty ones and case-insensitive duplicates removed, first spelling and order kept."""
    seen: set[str] = set()
    out = []
    for opt in options:
        c = clean_answer(opt)
        if c and c.lower() not in seen:
            seen.add(c.lower())
            out.append(c)
    return out


def make_record(**fields: Any) -> dict[str, Any]:
    """A record with the schema's fields in order (missing ones empty; ``answer_type`` from the answer), extra
    keys after them."""
    if not fields.get("answer_type"):
        fields["answer_type"] = answer_type(fields.get("answer") or "")
    rec: dict[str, Any] = {k: fields.pop(k, [] if k == "options" else "") for k in FIELDS}
    rec.update(fields)
    return rec


def validate_record(rec: object, where: str) -> dict[str, Any]:
    """Check the schema of one record; raise MedVQAUserError naming ``where`` (file:line) otherwise."""
    if not isinstance(rec, dict):
        raise MedVQAUserError(where, f"expected a JSON object, got {type(rec).__name__}")
    missing = [k for k in ("question_id", "image", "question", "answer") if not rec.get(k)]
    if missing:
        raise MedVQAUserError(where, f"record lacks {', '.join(missing)}")
    for k in FIELDS:
        if k in rec and k != "options" and not isinstance(rec[k], str):
            raise MedVQAUserError(where, f"field {k!r} must be a string")
    if "options" in rec and not (
        isinstance(rec["options"], list) and all(isinstance(o, str) for o in rec["options"])
    ):
        raise MedVQAUserError(where, "field 'options' must be a list of strings")
    if "\0" in rec["image"]:  # no file system accepts it; open() would raise ValueError far from here
        raise MedVQAUserError(where, "field 'image' contains a NUL byte")
    if rec.get("answer_type", "open") not in ANSWER_TYPES:
        raise MedVQAUserError(where, f"answer_type must be one of {ANSWER_TYPES}, not {rec['answer_type']!r}")
    return rec


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a JSONL file (blank lines skipped).

    Raises:
        MedVQAUserError: missing file, or a line that is not a JSON object (named ``file:line``).
    """
    for _, obj in iter_jsonl_numbered(path):
        yield obj


def read_jsonl(path: str | os.PathLike[str], *, validate: bool = False) -> list[dict[str, Any]]:
    """All objects of a JSONL file; with ``validate=True`` each is checked against the record schema."""
    p = Path(path)
    if not validate:
        return [obj for _, obj in iter_jsonl_numbered(p)]
    return [validate_record(obj, f"{p}:{lineno}") for lineno, obj in iter_jsonl_numbered(p)]


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records of a JSONL file, schema-checked (the reader for eval / training)."""
    return read_jsonl(path, validate=True)


MAX_LINE_BYTES = 64 << 20
"""Longest JSONL line read (a record is a few hundred bytes; a longer line is not a record file)."""

_EOL = re.compile(rb"\r\n|\r|\n")  # the line ends Python's universal newlines accept, no others
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _physical_lines(fh: Any, p: Path) -> Iterator[bytes]:
    """The lines of a binary file split at LF, CRLF or a lone CR, read in 1 MiB pieces.

    Splitting the bytes (not the decoded text) keeps every line number true: a text-mode reader decodes ahead,
    so a bad byte would be reported on an earlier line.  A JSON text cannot hold a raw CR, so a CR is always a
    line end.
    """
    pending = b""
    for chunk in iter(lambda: fh.read(1 << 20), b""):
        data = pending + chunk
        cut = len(data) - 1 if data.endswith(b"\r") else len(data)  # a final CR may be half of a CRLF
        parts = _EOL.split(data[:cut])
        pending = parts.pop() + data[cut:]
        if len(pending) > MAX_LINE_BYTES:
            raise MedVQAUserError(p, f"a line longer than {MAX_LINE_BYTES} bytes: not a JSONL record file")
        yield from parts
    if pending:
        yield from _EOL.split(pending)


def iter_jsonl_numbered(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line of a JSONL file, from one read of the file.

    Lines end at LF, CRLF or CR; every line must be UTF-8 (a BOM before the first line is skipped) and one JSON
    object.

    Raises:
        MedVQAUserError: a missing file, a folder / FIFO / device (never opened), and ``file:line`` for a line
            that is not UTF-8, not JSON (malformed, nested too deeply, an integer too long to convert, a lone
            surrogate escape) or not an object.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise MedVQAUserError(p, "no such file") from None
    except (OSError, ValueError) as exc:  # ELOOP, EACCES, ...; ValueError: a NUL byte in the path
        raise MedVQAUserError(p, f"cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise MedVQAUserError(p, "is a directory, not a JSONL file")
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read, a device would never end
        raise MedVQAUserError(p, "not a regular file (FIFO, socket or device)")
    try:
        fh = open(p, "rb")
    except OSError as exc:
        raise MedVQAUserError(p, f"cannot read ({exc.strerror or exc})") from None
    # the checks above run at the call, not at the first record: a missing file is an error even with limit 0
    return _numbered_objects(fh, p)


def _numbered_objects(fh: Any, p: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with fh:
        for lineno, raw in enumerate(_physical_lines(fh, p), 1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 BOM, as Windows editors write it
                raw = raw[3:]
            obj = _parse_line(raw, f"{p}:{lineno}")
            if obj is not None:
                yield lineno, obj


def _parse_line(raw: bytes, where: str) -> dict[str, Any] | None:
    """One JSONL line as an object, None when blank; MedVQAUserError naming ``where`` otherwise."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MedVQAUserError(
            where, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
        ) from None
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise MedVQAUserError(where, f"malformed JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise MedVQAUserError(where, "JSON nested too deeply") from None
    except ValueError:  # the one other ValueError: an integer longer than sys.get_int_max_str_digits()
        raise MedVQAUserError(
            where, f"an integer of more than {sys.get_int_max_str_digits()} digits"
        ) from None
    if not isinstance(obj, dict):
        raise MedVQAUserError(where, f"expected a JSON object, got {type(obj).__name__}")
    if _SURROGATE_ESCAPE.search(line):
        try:  # a lone \ud800 escape parses, but no UTF-8 writer downstream could write it back
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise MedVQAUserError(where, "a \\u escape that is not valid Unicode (lone surrogate)") from None
    return obj


def write_jsonl(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]]) -> int:
    """Write records as JSONL (UTF-8, one object a line, non-ASCII kept); returns the number written."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode
    with open(p, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(dumps(rec))
            fh.write("\n")
            n += 1
    return n


def resolve_image(record: Mapping[str, Any], jsonl_path: str | os.PathLike[str]) -> Path:
    """The image path of a record: absolute as is, relative to the JSONL file's folder otherwise."""
    img = Path(record["image"])
    return img if img.is_absolute() else Path(jsonl_path).parent / img
