"""Convert the OmniMedVQA release (or the bundled sample set) to open-ended records with image-level splits.

Reads ``ROOT/QA_information/<access folder>/<Dataset>.json`` (``Open-access`` and ``Restricted-access``),
each a JSON list of rows with ``question_id, dataset, question_type, modality_type`` (one file says
``modality``), ``question, gt_answer, option_A .. option_D, image_path`` (relative to ROOT), and writes to DIR:

* ``train.jsonl``, ``val.jsonl``, ``test.jsonl``: records (``training.data.records``), splits by image
  (``training.data.splits``), written as ``splits.json``;
* ``needs_review.jsonl`` (full records plus ``reason`` / ``detail``) and ``rejected.jsonl`` (what could be read
  of the row, plus ``reason`` / ``detail`` / ``qa_file`` / ``row``);
* ``manifest.json``: ``input_rows = converted + needs_review + rejected`` with the count of every reason;
* ``audit.json`` / ``audit.md`` (``training.data.audit``).

Every row ends in exactly one bucket:

rejected
    ``malformed_row`` (not an object; question, gt_answer, image_path or question_id missing or not text; an
    image path that is absolute, climbs out of ROOT with ``..`` or holds a NUL byte), ``duplicate_question_id``
    (same id twice in one dataset), ``missing_image``, ``image_outside_root`` (a symlink that resolves outside
    ROOT: neither read nor recorded), ``unreadable_image`` (empty, not an image format, a folder, FIFO or device,
    larger than ``training.data.safe_files.MAX_IMAGE_BYTES``, or -- with ``--verify-images`` -- not
    decodable).  Files are read through ``training.data.safe_files``: regular files only, never more than a
    bounded number of bytes.
needs_review
    ``unknown_modality`` (no canonical name for the modality string) and the question / answer reasons of
    ``training.data.questions`` (``statement_choice``, ``negated_choice``, ``refers_to_options``,
    ``empty_question``, ``answer_refers_to_options``, ``answer_not_in_options``).
converted
    the rest.  The question is rewritten by the rules Q1-Q4 of ``training.data.questions`` when it leans on
    its options; the answer is ``gt_answer`` cleaned (``training.data.records.clean_answer``), letter answers
    mapped to option text (A2), and -- rule A5 -- for "Modality Recognition" questions the answer and options
    that name a modality are written as the canonical modality name (``x_ray.`` -> ``X-Ray``).  Records with
    options also keep the release's strings untouched as ``options_raw`` (``option_A`` .. in order, duplicates
    and typos included) and ``answer_raw`` (``gt_answer``): OmniMedVQA's official score runs on those.  Counts of
    every rule applied are in ``manifest.json`` under ``rewrites``.

Images are checked (exists, non-empty, known format) and hashed (SHA-256 of the bytes) so that identical
images at different paths share a split.  ``--skip-image-check`` reads no image at all (records only: missing
images are not detected and splits group by path and recorded source only); ``--verify-images`` decodes every
image with ``training.images.load_medical_image``.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from training.cli_types import random_seed, ratio
from training.data.audit import build_audit, write_audit
from training.data.questions import resolve_answer, rewrite_question
from training.data.records import (
    UNKNOWN_MODALITY,
    canonical_modality,
    clean_answer,
    clean_text,
    dedupe_options,
    write_jsonl,
)
from training.data.safe_files import UnsafeFile, hash_file, inside, read_table, row_path
from training.data.splits import SPLITS, ImageInfo, assign_splits, check_ratios, split_membership
from training.errors import MedVQAUserError
from training.output_dir import prepare_output_dir

_REQUIRED = ("question_id", "question", "gt_answer", "image_path")
OPTION_KEYS = ("option_A", "option_B", "option_C", "option_D", "option_E", "option_F")
# Leading bytes of the image formats the loader reads (DICOM is checked at offset 128).
_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM", b"GIF8", b"RIFF", b"\x1f\x8b")
_rewrite = lru_cache(maxsize=1 << 16)(rewrite_question)  # OmniMedVQA repeats a few hundred question texts
_clean = lru_cache(maxsize=1 << 16)(clean_answer)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``medvqa data convert``."""
    parser.add_argument(
        "--omnimedvqa", required=True, metavar="ROOT", help="OmniMedVQA release folder (or the samples)"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--seed", type=random_seed, default=0, help="split seed (default 0)")
    parser.add_argument(
        "--val-ratio", type=ratio, default=0.1, help="share of questions in val (default 0.1)"
    )
    parser.add_argument(
        "--test-ratio", type=ratio, default=0.1, help="share of questions in test (default 0.1)"
    )
    parser.add_argument(
        "--holdout-datasets", nargs="*", default=[], metavar="NAME", help="datasets put entirely into test"
    )
    check = parser.add_mutually_exclusive_group()
    check.add_argument(
        "--skip-image-check",
        action="store_true",
        help="do not open images (records only; no missing-image check)",
    )
    check.add_argument("--verify-images", action="store_true", help="decode every image (slow)")


def run(args: argparse.Namespace) -> int:
    """``medvqa data convert``: convert and print a one-line summary."""
    manifest = convert_release(
        args.omnimedvqa,
        args.out,
        seed=args.seed,
        val_ratio=args.val_ratio,
        test_ratio=args.test_ratio,
        holdout_datasets=args.holdout_datasets,
        image_check="none" if args.skip_image_check else "decode" if args.verify_images else "hash",
    )
    s = manifest["splits"]
    print(
        f"{manifest['input_rows']} rows: {manifest['converted']} converted (train {s['train']}, val {s['val']}, "
        f"test {s['test']}), {manifest['needs_review']} need review, {manifest['rejected']} rejected -> {args.out}"
    )
    return 0


def iter_release(root: Path) -> Iterator[tuple[str, str, int, Any]]:
    """Yield ``(qa_file relative to root, access folder, row index, row)`` for every row of the release.

    Raises:
        MedVQAUserError: ROOT is not a release, or a QA file is not a JSON list.
    """
    qa_dir = root / "QA_information"
    if not qa_dir.is_dir():
        raise MedVQAUserError(root, "not an OmniMedVQA release (no QA_information folder)")
    files = sorted(qa_dir.glob("*/*.json"))
    if not files:
        raise MedVQAUserError(qa_dir, "no QA files (expected <access folder>/<Dataset>.json)")
    root_real = root.resolve()
    for f in files:
        data = read_table(f, root_real)  # regular, inside ROOT, bounded: never a FIFO or /dev/zero
        try:
            rows = json.loads(data)
        except RecursionError:
            raise MedVQAUserError(f, "malformed QA file (JSON nested too deeply)") from None
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of more than 4300 digits
            raise MedVQAUserError(f, f"malformed QA file ({getattr(exc, 'msg', exc)})") from None
        if not isinstance(rows, list):
            raise MedVQAUserError(f, f"expected a JSON list of rows, got {type(rows).__name__}")
        rel, access = f.relative_to(root).as_posix(), f.parent.name
        for i, row in enumerate(rows):
            yield rel, access, i, row


class _ImageChecker:
    """Checks each distinct image once: 'none' (no I/O), 'hash' (exists, format, SHA-256), 'decode'."""

    def __init__(self, root: Path, mode: str) -> None:
        self.root, self.mode = root, mode
        self.root_real = root.resolve()
        # path -> (reject reason, sha or the reason's detail)
        self.result: dict[str, tuple[str | None, str | None]] = {}

    def __call__(self, rel: str) -> tuple[str | None, str | None]:
        hit = self.result.get(rel)
        if hit is None:
            hit = self.result[rel] = (None, None) if self.mode == "none" else self._check(rel)
        return hit

    def _check(self, rel: str) -> tuple[str | None, str | None]:
        # Only a regular file inside ROOT after resolving symlinks is read, at most MAX_IMAGE_BYTES of it.
        try:
            real = inside(self.root_real, self.root / rel)
            sha, head = hash_file(real)
        except UnsafeFile as exc:
            return exc.reason, f"{rel}: {exc.detail}"
        except OSError as exc:
            return "unreadable_image", f"{rel}: {exc.strerror or exc}"
        if not head or not (
            head.startswith(_MAGIC) or head[128:132] == b"DICM" or rel.endswith((".nii", ".dcm"))
        ):
            return "unreadable_image", f"{rel}: empty or not an image format"
        if self.mode == "decode":
            from training.images import ImageLoadError, load_medical_image

            try:
                load_medical_image(real)
            except ImageLoadError as exc:
                return "unreadable_image", f"{rel}: {exc.reason}"
        return None, sha


def _text(v: Any) -> str | None:
    """A row value as non-empty text (numbers as text: some ids and answers are numbers), else None."""
    if type(v) is str:  # the common case first: this runs a few times per row
        return v if v.strip() else None
    if v is None or isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return str(v)


def _dedupe_cleaned(slots: list[str]) -> list[str]:
    """Options already cleaned: drop case-insensitive duplicates, keep order."""
    seen: set[str] = set()
    out = []
    for o in slots:
        low = o.lower()
        if low not in seen:
            seen.add(low)
            out.append(o)
    return out


def convert_rows(
    rows: Iterable[tuple[str, str, int, Any]],
    *,
    root_rel: str,
    check_image: Any,
) -> tuple[
    list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], Counter[str], dict[str, ImageInfo]
]:
    """Sort rows into (converted, needs_review, rejected) records; also rule counts and per-image info.

    ``root_rel`` is the release root as seen from the output folder (prefix of each record's ``image``);
    ``check_image(path) -> (reject_reason | None, sha | None)``.
    """
    converted: list[dict[str, Any]] = []
    review: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    rules: Counter[str] = Counter()
    images: dict[str, ImageInfo] = {}
    seen_ids: dict[str, str] = {}  # question_id -> dataset

    def reject(
        qa_file: str, i: int, reason: str, detail: str, rec: dict[str, Any] | None = None, raw: Any = None
    ):
        out = rec if rec is not None else {}
        out.update(reason=reason, detail=detail, qa_file=qa_file, row=i)
        if raw is not None:
            out["raw"] = raw
        rejected.append(out)

    n_rows = 0
    for qa_file, _access, i, row in rows:
        n_rows += 1
        if not isinstance(row, dict):
            reject(qa_file, i, "malformed_row", f"not a JSON object: {type(row).__name__}", raw=row)
            continue
        get = row.get
        qid, question, gt, image_path = (_text(get(k)) for k in _REQUIRED)
        if qid is None or question is None or gt is None or image_path is None:
            missing = [k for k in _REQUIRED if _text(get(k)) is None]
            reject(qa_file, i, "malformed_row", "missing or empty: " + ", ".join(missing), raw=row)
            continue
        try:
            image_key = row_path(image_path)  # relative, inside the release, no NUL byte
        except UnsafeFile as exc:
            reject(qa_file, i, exc.reason, exc.detail, raw=row)
            continue
        dataset = _text(get("dataset")) or posixpath.splitext(posixpath.basename(qa_file))[0]
        modality_raw = _text(get("modality_type")) or _text(get("modality")) or ""
        slots = [_clean(v) for v in map(get, OPTION_KEYS) if type(v) is str and v.strip()]
        question_type = _text(get("question_type"))
        question_type = clean_text(question_type) if question_type else ""
        image_source = _text(get("image_source"))
        rec = {  # the order of records.FIELDS
            "question_id": qid,
            "dataset": dataset,
            "image": f"{root_rel}/{image_key}",
            "question": " ".join(question.split()),
            "answer": _clean(gt),
            "answer_type": "",
            "modality": "",
            "modality_raw": modality_raw,
            "question_type": question_type,
            "options": _dedupe_cleaned(slots),
            "source": image_source or qa_file,
            "split": "",
        }
        # The release's own strings, untouched, for OmniMedVQA's official rule (mc_qa_score), which compares
        # raw options with the raw gt_answer; the cleaned options above are what the model and the report see.
        raw_options = [v for v in map(get, OPTION_KEYS) if type(v) is str]
        if raw_options:
            rec["options_raw"], rec["answer_raw"] = raw_options, gt
        prev = seen_ids.get(qid)
        if prev is not None:
            if prev == dataset:
                reject(qa_file, i, "duplicate_question_id", f"question_id {qid!r} repeats in {dataset}", rec)
                continue
            rec["question_id"] = qid = f"{dataset}/{qid}"  # the same id in another dataset: qualify it
        seen_ids[qid] = dataset
        bad, sha = check_image(image_key)
        if bad:
            reject(qa_file, i, bad, sha or image_key, rec)  # for a rejected image, sha holds the detail
            continue

        modality = canonical_modality(modality_raw)
        new_q, q_rule, q_reason = _rewrite(rec["question"])
        answer, a_rule, a_reason = resolve_answer(rec["answer"], slots)
        reason = "unknown_modality" if modality is None else q_reason or a_reason
        rec["modality"] = modality or UNKNOWN_MODALITY
        if reason:
            rec["answer_type"] = "yes_no" if rec["answer"].lower() in ("yes", "no") else "open"
            detail = {"unknown_modality": modality_raw or "(no modality field)"}.get(
                reason, rec["question"] if q_reason else rec["answer"]
            )
            rec.update(reason=reason, detail=detail)
            review.append(rec)
            continue
        assert new_q is not None and answer is not None
        rec["question"] = new_q
        if "modality" in question_type.lower():  # rule A5
            answer, rec["options"] = _canonical_modality_answer(answer, rec["options"], rules)
        rec["answer"] = answer
        rec["answer_type"] = "yes_no" if answer.lower() in ("yes", "no") else "open"
        for r in (q_rule, a_rule):
            if r:
                rules[r] += 1
        converted.append(rec)
        info = images.get(image_key)
        if info is None:
            info = images[image_key] = ImageInfo(sha=sha, source=image_source)
        mods = info.modalities
        mods[rec["modality"]] = mods.get(rec["modality"], 0) + 1
        info.datasets.add(dataset)
    assert n_rows == len(converted) + len(review) + len(rejected), "a row was lost"
    return converted, review, rejected, rules, images


def _canonical_modality_answer(answer: str, options: list[str], rules: Counter[str]) -> tuple[str, list[str]]:
    mapped = canonical_modality(answer)
    if mapped and mapped != answer:
        rules["A5"] += 1
        answer = mapped
    return answer, dedupe_options([canonical_modality(o) or o for o in options])


def convert_release(
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    val_ratio: float = 0.1,
    test_ratio: float = 0.1,
    holdout_datasets: Sequence[str] = (),
    image_check: str = "hash",
) -> dict[str, Any]:
    """Convert an OmniMedVQA release folder into ``out_dir``; returns the manifest (also ``manifest.json``).

    Args:
        root: release root (holds ``QA_information/`` and ``Images/``), e.g. the output of ``medvqa data samples``.
        out_dir: output folder (created).
        seed, val_ratio, test_ratio, holdout_datasets: split settings (``training.data.splits``).
        image_check: ``"hash"`` (default: existence, format, SHA-256), ``"decode"`` (also decode each image)
            or ``"none"`` (records only, no image I/O).

    Raises:
        MedVQAUserError: ROOT is not a release, a QA file is unreadable, ratios are invalid, a held-out dataset
            does not exist.
    """
    if image_check not in ("hash", "decode", "none"):
        raise ValueError(f"image_check must be hash, decode or none, not {image_check!r}")
    check_ratios(val_ratio, test_ratio)
    t0 = time.perf_counter()
    root_p, out_p = Path(root), Path(out_dir)
    if not root_p.is_dir():
        raise MedVQAUserError(root_p, "no such folder")
    out_p = prepare_output_dir(out_p, "data convert")
    root_rel = Path(os.path.relpath(root_p.resolve(), out_p.resolve())).as_posix()
    converted, review, rejected, rules, images = convert_rows(
        iter_release(root_p), root_rel=root_rel, check_image=_ImageChecker(root_p, image_check)
    )
    datasets = {r["dataset"] for r in converted}
    unknown = sorted(set(holdout_datasets) - datasets)
    if unknown:
        raise MedVQAUserError("--holdout-datasets", f"no converted questions from {', '.join(unknown)}")
    groups = assign_splits(
        images, seed=seed, val_ratio=val_ratio, test_ratio=test_ratio, holdout_datasets=holdout_datasets
    )
    split_of = {k: g.split for g in groups for k in g.images}
    prefix = len(root_rel) + 1
    by_split: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for rec in converted:
        rec["split"] = split_of[rec["image"][prefix:]]
        by_split[rec["split"]].append(rec)
    for s in SPLITS:
        write_jsonl(out_p / f"{s}.jsonl", by_split[s])
    write_jsonl(out_p / "needs_review.jsonl", review)
    write_jsonl(out_p / "rejected.jsonl", rejected)
    settings = {
        "seed": seed,
        "val_ratio": val_ratio,
        "test_ratio": test_ratio,
        "holdout_datasets": list(holdout_datasets),
    }
    (out_p / "splits.json").write_text(json.dumps(split_membership(groups, images, **settings)) + "\n")
    hashes = {f"{root_rel}/{k}": v.sha for k, v in images.items()}
    write_audit(out_p, build_audit(by_split, hashes))
    reasons = Counter(r["reason"] for r in review) + Counter(r["reason"] for r in rejected)
    manifest = {
        "input_rows": len(converted) + len(review) + len(rejected),
        "converted": len(converted),
        "needs_review": len(review),
        "rejected": len(rejected),
        "reasons": dict(sorted(reasons.items())),
        "rewrites": dict(sorted(rules.items())),
        "splits": {s: len(by_split[s]) for s in SPLITS},
        "seed": seed,
        "source": str(root_p),
        **{k: v for k, v in settings.items() if k != "seed"},
        "image_check": image_check,
        "images": len(images),
        "image_groups": len(groups),
        "datasets": len(datasets),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    (out_p / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
