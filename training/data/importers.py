"""Import other medical VQA benchmarks into the record schema (``training.data.records``).

``medvqa data import --format FORMAT --path P --out DIR`` reads the benchmark in the form it is released in:

``vqa-rad``, ``pathvqa``
    The Hugging Face parquet datasets (``flaviagiammarino/vqa-rad``, ``flaviagiammarino/path-vqa``): P is a
    ``.parquet`` file or a folder searched for them; columns ``image`` (``{"bytes", "path"}``), ``question``,
    ``answer`` (and, when present, ``answer_type``: the benchmark's CLOSED / OPEN, kept as ``answer_type_raw``);
    the split is the file name's prefix (``test-00000-of-00001.parquet`` -> ``test``).  Images
    are written as they are stored (no re-encoding) to ``DIR/images/<split>/``.  VQA-RAD has no modality
    label (``Unknown``); PathVQA is pathology, ``Microscopy``.
``slake``
    SLAKE's ``train.json`` / ``validation.json`` / ``test.json`` with images under ``imgs/``.  Only English
    questions (``q_lang == "en"``) are imported; Chinese ones are counted under ``skipped``.  ``modality`` is
    mapped to the canonical name, ``content_type`` becomes ``question_type`` and SLAKE's own ``answer_type``
    (``OPEN`` / ``CLOSED``) is kept as ``answer_type_raw``.  Records point at the images in P.
``pmc-vqa``
    PMC-VQA's CSV files (``train.csv``, ``test.csv``, ``test_clean.csv`` ...) with ``Figure_path``,
    ``Question``, ``Answer``, ``Choice A`` .. ``Choice D``, ``Answer_label``; images in ``P/images``,
    ``P/figures`` or P.  The questions are multiple choice: they go through the same rewrite and answer rules
    as OmniMedVQA (``training.data.questions``), the ``Answer_label`` letter decides when ``Answer`` matches
    no choice, and questions that need their options go to ``needs_review``.

Writes ``DIR/<split>.jsonl`` for each split present (``validation`` is written as ``val``),
``needs_review.jsonl``, ``rejected.jsonl`` and ``manifest.json``, where
``input_rows = converted + needs_review + rejected + sum(skipped)``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from training.data.questions import option_letters_to_text, resolve_answer, rewrite_question
from training.data.records import (
    UNKNOWN_MODALITY,
    canonical_modality,
    clean_answer,
    dedupe_options,
    make_record,
    write_jsonl,
)
from training.data.safe_files import MAX_TABLE_BYTES, UnsafeFile, check_regular, dataset_image, read_table
from training.errors import MedVQAUserError
from training.output_dir import prepare_output_dir

FORMATS = ("vqa-rad", "slake", "pathvqa", "pmc-vqa")
_DATASET_NAMES = {"vqa-rad": "VQA-RAD", "slake": "SLAKE", "pathvqa": "PathVQA", "pmc-vqa": "PMC-VQA"}
_SPLIT_NAMES = {
    "train": "train",
    "validation": "val",
    "valid": "val",
    "val": "val",
    "dev": "val",
    "test": "test",
}
_IMAGE_EXT = ((b"\x89PNG", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"),
              (b"BM", ".bmp"), (b"GIF8", ".gif"))  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``medvqa data import``."""
    parser.add_argument("--format", required=True, choices=FORMATS, help="benchmark format")
    parser.add_argument(
        "--path", required=True, metavar="P", help="the benchmark as released (file or folder)"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")


def run(args: argparse.Namespace) -> int:
    """``medvqa data import``: import and print a one-line summary."""
    m = import_benchmark(args.format, args.path, args.out)
    splits = ", ".join(f"{k} {v}" for k, v in m["splits"].items())
    skipped = sum(m["skipped"].values())
    print(
        f"{m['dataset']}: {m['input_rows']} rows: {m['converted']} converted ({splits}), {m['needs_review']} need "
        f"review, {m['rejected']} rejected" + (f", {skipped} skipped" if skipped else "") + f" -> {args.out}"
    )
    return 0


class _Sink:
    """Collects records per split, review and rejected rows, and the counts of the manifest."""

    def __init__(self) -> None:
        self.splits: dict[str, list[dict[str, Any]]] = {}
        self.review: list[dict[str, Any]] = []
        self.rejected: list[dict[str, Any]] = []
        self.skipped: Counter[str] = Counter()
        self.input_rows = 0

    def add(
        self, rec: dict[str, Any], reason: str | None = None, detail: str = "", *, reject: bool = False
    ) -> None:
        if reason is None:
            rec["answer_type"] = "yes_no" if rec["answer"].lower() in ("yes", "no") else "open"
            self.splits.setdefault(rec["split"], []).append(rec)
            return
        rec.update(reason=reason, detail=detail)
        (self.rejected if reject else self.review).append(rec)


def _split_name(stem: str) -> str:
    """``test-00000-of-00001-abc`` / ``test`` / ``validation`` -> ``test`` / ``val``; other names kept, lower case."""
    head = stem.split("-")[0] if "-of-" in stem else stem
    return _SPLIT_NAMES.get(head.lower(), head.lower())


def _image_ext(data: bytes) -> str | None:
    return next((ext for magic, ext in _IMAGE_EXT if data.startswith(magic)), None)


def _str(v: Any) -> str | None:
    if v is None or isinstance(v, bool):
        return None
    s = str(v).strip() if isinstance(v, int | float | str) else None
    return s or None


# ---------------------------------------------------------------------------------------------- parquet ----


def _parquet_files(path: Path) -> list[Path]:
    if not path.is_dir():
        return [_regular_table(path)]
    files = sorted(path.rglob("*.parquet"))
    if not files:
        raise MedVQAUserError(path, "no .parquet files (expected the Hugging Face dataset files)")
    return [_regular_table(f) for f in files]


def _regular_table(f: Path) -> Path:
    """``f`` if it is a regular file (a FIFO would block the reader, a folder named ``*.csv`` is no table)."""
    try:
        check_regular(f, MAX_TABLE_BYTES)
    except UnsafeFile as exc:
        raise MedVQAUserError(f, exc.detail) from None
    return f


def _import_parquet(fmt: str, path: Path, out: Path, sink: _Sink) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    dataset = _DATASET_NAMES[fmt]
    modality = "Microscopy" if fmt == "pathvqa" else UNKNOWN_MODALITY
    rows_of_split: Counter[str] = (
        Counter()
    )  # shards of one split continue the numbering: unique ids and images
    for f in _parquet_files(path):
        try:
            pf = pq.ParquetFile(f)
        except Exception as exc:  # pyarrow raises ArrowInvalid / OSError on non-parquet files
            raise MedVQAUserError(f, f"not a parquet file ({type(exc).__name__})") from None
        missing = {"image", "question", "answer"} - set(pf.schema_arrow.names)
        if missing:
            raise MedVQAUserError(f, f"lacks column(s) {', '.join(sorted(missing))}")
        split = _split_name(f.stem)
        img_dir = out / "images" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        try:
            # VQA-RAD's own CLOSED / OPEN label, when a shard carries it, is kept as answer_type_raw
            extra = ["answer_type"] if "answer_type" in pf.schema_arrow.names else []
            for batch in pf.iter_batches(batch_size=512, columns=["image", "question", "answer", *extra]):
                _parquet_batch(
                    batch.to_pylist(), f, fmt, dataset, modality, split, img_dir, rows_of_split, sink
                )
        except (pa.ArrowException, OSError) as exc:  # a damaged page or column chunk
            raise MedVQAUserError(
                f, f"corrupt parquet data ({type(exc).__name__}: {exc})".split("\n")[0]
            ) from None


def _parquet_batch(
    items: list[dict[str, Any]],
    f: Path,
    fmt: str,
    dataset: str,
    modality: str,
    split: str,
    img_dir: Path,
    rows_of_split: Counter[str],
    sink: _Sink,
) -> None:
    """One record batch of a parquet shard; ``rows_of_split`` numbers the rows of each split across shards."""
    for item in items:
        sink.input_rows += 1
        row = rows_of_split[split]
        rows_of_split[split] += 1
        qid = f"{dataset}-{split}-{row:06d}"
        question, answer = _str(item.get("question")), _str(item.get("answer"))
        image = item.get("image")
        rec = make_record(
            question_id=qid, dataset=dataset, question=question or "", answer=clean_answer(answer or ""),
            modality=modality, modality_raw="", question_type="Unknown",
            source=f"{fmt}:{f.name}", split=split,
        )  # fmt: skip
        label = _str(item.get("answer_type"))
        if label:
            rec["answer_type_raw"] = label
        if not question or not answer:
            sink.add(rec, "malformed_row", "missing question or answer", reject=True)
            continue
        data = image.get("bytes") if isinstance(image, dict) else None
        data = data if isinstance(data, bytes) else None
        ext = _image_ext(data) if data else None
        if not data or ext is None:
            sink.add(rec, "unreadable_image" if data else "missing_image", f"{f.name} {qid}", reject=True)
            continue
        name = f"{qid}{ext}"
        (img_dir / name).write_bytes(data)
        rec["image"] = f"images/{split}/{name}"
        rec["question"] = " ".join(question.split())
        sink.add(rec)


# ------------------------------------------------------------------------------------------------ SLAKE ----


def _import_slake(path: Path, out: Path, sink: _Sink) -> None:
    files = [path / f"{s}.json" for s in ("train", "validation", "test") if (path / f"{s}.json").is_file()]
    if not files:
        raise MedVQAUserError(path, "no SLAKE train.json / validation.json / test.json")
    img_root = path / "imgs"
    img_real = img_root.resolve()
    rel_root = Path(os.path.relpath(img_real, out.resolve())).as_posix()
    for f in files:
        data = read_table(f)  # a regular file of bounded size: never a FIFO or /dev/zero
        try:
            rows = json.loads(data.decode("utf-8-sig"))
        except RecursionError:
            raise MedVQAUserError(f, "malformed JSON (nested too deeply)") from None
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of more than 4300 digits
            raise MedVQAUserError(f, f"malformed JSON ({getattr(exc, 'msg', exc)})") from None
        if not isinstance(rows, list):
            raise MedVQAUserError(f, "expected a JSON list")
        split = _SPLIT_NAMES[f.stem]
        for i, r in enumerate(rows):
            sink.input_rows += 1
            if not isinstance(r, dict):
                sink.add({"split": split, "row": i}, "malformed_row", "not a JSON object", reject=True)
                continue
            if r.get("q_lang", "en") != "en":
                sink.skipped["not_english"] += 1
                continue
            question, answer, img = _str(r.get("question")), _str(r.get("answer")), _str(r.get("img_name"))
            modality_raw = _str(r.get("modality")) or ""
            rec = make_record(
                question_id=f"SLAKE-{_str(r.get('qid')) or f'{split}-{i}'}", dataset="SLAKE",
                image=f"{rel_root}/{img}" if img else "", question=" ".join((question or "").split()),
                answer=clean_answer(answer or ""), modality=canonical_modality(modality_raw) or UNKNOWN_MODALITY,
                modality_raw=modality_raw, question_type=_str(r.get("content_type")) or "Unknown",
                source=f"slake:{f.name}", split=split, answer_type_raw=_str(r.get("answer_type")) or "",
            )  # fmt: skip
            if not question or not answer or not img:
                sink.add(rec, "malformed_row", "missing question, answer or img_name", reject=True)
                continue
            try:  # inside imgs/ after resolving symlinks, a regular file; recorded at the path checked
                rec["image"] = f"{rel_root}/{dataset_image(img_real, img)}"
            except UnsafeFile as exc:
                sink.add(rec, exc.reason, f"{img!r}: {exc.detail}", reject=True)
                continue
            sink.add(rec)


# ---------------------------------------------------------------------------------------------- PMC-VQA ----


def _pmc_image_dir(path: Path) -> Path:
    for cand in (path / "images", path / "figures", path / "images_2", path):
        if cand.is_dir():
            return cand
    return path


def _import_pmc(path: Path, out: Path, sink: _Sink) -> None:
    files = [path] if path.is_file() else sorted(path.glob("*.csv"))
    if not files:
        raise MedVQAUserError(path, "no PMC-VQA .csv files")
    img_dir = _pmc_image_dir(path if path.is_dir() else path.parent).resolve()
    rel_root = Path(os.path.relpath(img_dir, out.resolve())).as_posix()
    needed = {"Figure_path", "Question", "Answer", "Choice A", "Choice B"}
    for f in files:
        split = _split_name(f.stem)
        _regular_table(f)  # a folder named *.csv or a FIFO is refused before it is opened
        # utf-8-sig: a BOM (as Excel writes CSV) would otherwise glue itself to the first column's name
        with open(f, newline="", encoding="utf-8-sig") as fh:
            try:
                reader = csv.DictReader(fh)
                fields = {c.strip() for c in reader.fieldnames or []}
                if not needed <= fields:
                    raise MedVQAUserError(f, f"lacks column(s) {', '.join(sorted(needed - fields))}")
                for i, raw in enumerate(reader):
                    sink.input_rows += 1
                    r = {(k or "").strip(): v for k, v in raw.items()}
                    _pmc_row(r, i, f, split, rel_root, img_dir, sink)
            except (UnicodeDecodeError, csv.Error) as exc:
                raise MedVQAUserError(f, f"unreadable CSV ({exc})") from None


def _pmc_row(
    r: dict[str, Any], i: int, f: Path, split: str, rel_root: str, img_dir: Path, sink: _Sink
) -> None:
    question, answer, fig = _str(r.get("Question")), _str(r.get("Answer")), _str(r.get("Figure_path"))
    slots = option_letters_to_text([c for c in (r.get(f"Choice {x}") for x in "ABCD") if c and c.strip()])
    rec = make_record(
        question_id=f"PMC-VQA-{split}-{i:06d}", dataset="PMC-VQA", image=f"{rel_root}/{fig}" if fig else "",
        question=" ".join((question or "").split()), answer=clean_answer(option_letters_to_text([answer or ""])[0]),
        modality=UNKNOWN_MODALITY, question_type="Unknown", options=dedupe_options(slots), source=f"pmc-vqa:{f.name}",
        split=split,
    )  # fmt: skip
    if not question or not answer or not fig:
        sink.add(rec, "malformed_row", "missing Question, Answer or Figure_path", reject=True)
        return
    try:  # inside the image folder after resolving symlinks, a regular file; recorded at the path checked
        rec["image"] = f"{rel_root}/{dataset_image(img_dir, fig)}"
    except UnsafeFile as exc:
        sink.add(rec, exc.reason, f"{fig!r}: {exc.detail}", reject=True)
        return
    new_q, _, q_reason = rewrite_question(rec["question"])
    ans, _, a_reason = resolve_answer(rec["answer"], slots)
    if a_reason == "answer_not_in_options":  # PMC-VQA: the label letter is authoritative
        ans, _, a_reason = resolve_answer(_str(r.get("Answer_label")) or "", slots)
        a_reason = a_reason and "answer_not_in_options"
    if q_reason or a_reason:
        sink.add(rec, q_reason or a_reason, rec["question"] if q_reason else rec["answer"])
        return
    assert new_q is not None and ans is not None
    rec["question"], rec["answer"] = new_q, ans
    sink.add(rec)


# ------------------------------------------------------------------------------------------------ entry ----


def import_benchmark(
    fmt: str, path: str | os.PathLike[str], out_dir: str | os.PathLike[str]
) -> dict[str, Any]:
    """Import benchmark ``fmt`` (one of :data:`FORMATS`) from ``path`` into ``out_dir``; returns the manifest.

    Raises:
        MedVQAUserError: unknown format, missing path, files not in the expected form.
    """
    if fmt not in FORMATS:
        raise MedVQAUserError("--format", f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    src, out = Path(path), Path(out_dir)
    if not src.exists():
        raise MedVQAUserError(src, "no such file or folder")
    out = prepare_output_dir(out, "data import")
    sink = _Sink()
    if fmt in ("vqa-rad", "pathvqa"):
        _import_parquet(fmt, src, out, sink)
    elif fmt == "slake":
        if not src.is_dir():
            raise MedVQAUserError(
                src, "SLAKE is a folder with train.json / validation.json / test.json and imgs/"
            )
        _import_slake(src, out, sink)
    else:
        _import_pmc(src, out, sink)
    for split, recs in sink.splits.items():
        write_jsonl(out / f"{split}.jsonl", recs)
    write_jsonl(out / "needs_review.jsonl", sink.review)
    write_jsonl(out / "rejected.jsonl", sink.rejected)
    converted = sum(len(v) for v in sink.splits.values())
    manifest = {
        "dataset": _DATASET_NAMES[fmt],
        "format": fmt,
        "source": str(src),
        "input_rows": sink.input_rows,
        "converted": converted,
        "needs_review": len(sink.review),
        "rejected": len(sink.rejected),
        "skipped": dict(sink.skipped),
        "reasons": dict(sorted(Counter(r["reason"] for r in sink.review + sink.rejected).items())),
        "splits": {k: len(v) for k, v in sorted(sink.splits.items())},
    }
    assert manifest["input_rows"] == converted + len(sink.review) + len(sink.rejected) + sum(
        sink.skipped.values()
    )
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
