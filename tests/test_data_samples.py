"""medvqa data samples: the bundled sample set, its layout, its questions, and how convert splits it."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import time  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pydicom  # noqa: E402
import pydicom.data  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from training.cli import main  # noqa: E402
from training.data import records  # noqa: E402
from training.data.convert import convert_release  # noqa: E402
from training.data.samples import SOURCES, build_samples  # noqa: E402


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("samples") / "omni"
    t0 = time.perf_counter()
    build_samples(out)
    return out, time.perf_counter() - t0


def rows(root: Path) -> list[dict[str, Any]]:
    return [r for p in sorted(root.glob("QA_information/*/*.json")) for r in json.loads(p.read_text())]


def test_layout_size_and_speed(samples: tuple[Path, float]) -> None:
    root, seconds = samples
    assert seconds < 30
    assert (root / "QA_information" / "Open-access").is_dir() and (
        root / "QA_information" / "Restricted-access"
    ).is_dir()
    pngs = list(root.glob("Images/*/*.png"))
    assert len(pngs) >= 150
    assert sum(p.stat().st_size for p in pngs) < 5_000_000
    for p in pngs:
        with Image.open(p) as im:
            assert im.format == "PNG" and max(im.size) <= 256
    assert not list(root.rglob("*.dcm")) and not list(root.rglob("*.nii*"))


def test_questions_like_the_release(samples: tuple[Path, float]) -> None:
    root, _ = samples
    rs = rows(root)
    assert len(rs) >= 300
    modalities = {records.canonical_modality(r.get("modality_type") or r.get("modality")) for r in rs}
    assert len(modalities) >= 5 and None not in modalities
    assert sum("modality" in r and "modality_type" not in r for r in rs) > 0  # the release's key quirk
    types = Counter(r["question_type"] for r in rs)
    assert {"Modality Recognition", "Anatomy Identification"} <= set(types) and len(types) >= 3
    for r in rs:
        opts = [r[k] for k in ("option_A", "option_B", "option_C", "option_D") if k in r]
        assert 2 <= len(opts) <= 4 and records.clean_answer(r["gt_answer"]) in opts
        assert (root / r["image_path"]).is_file() and r["image_source"].split(":")[0] in (
            "pydicom",
            "nibabel",
            "scikit-image",
        )
    yes_no = Counter(r["gt_answer"] for r in rs if r["gt_answer"] in ("yes", "no"))
    assert abs(yes_no["yes"] - yes_no["no"]) <= 0.1 * sum(yes_no.values())
    ids = [r["question_id"] for r in rs]
    assert len(ids) == len(set(ids))


def test_answers_are_determined_by_the_image(samples: tuple[Path, float]) -> None:
    """Every image source gives one modality answer and one anatomy answer: learnable from pixels."""
    root, _ = samples
    answers: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in rows(root):
        if r["gt_answer"] not in ("yes", "no"):
            answers[(r["image_source"], r["question_type"])].add(records.clean_answer(r["gt_answer"]))
    assert all(len(v) == 1 for v in answers.values()), answers


def test_each_image_records_its_source(samples: tuple[Path, float]) -> None:
    root, _ = samples
    by_image = {r["image_path"]: r["image_source"] for r in rows(root)}
    for rel, src in by_image.items():
        with Image.open(root / rel) as im:
            assert im.text == {"Source": src}  # and nothing else: no DICOM field travels with the image
    assert set(by_image.values()) == {s.ref for s in SOURCES}


def test_no_patient_field_anywhere(samples: tuple[Path, float]) -> None:
    root, _ = samples
    blob = b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())
    folder = Path(pydicom.data.__file__).parent / "test_files"
    for src in SOURCES:
        if src.ref.startswith("pydicom:"):
            ds = pydicom.dcmread(folder / src.ref.split(":", 1)[1], stop_before_pixels=True)
            for field in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName"):
                value = str(ds.get(field) or "")
                if len(value) >= 4:
                    assert value.encode() not in blob, (src.ref, field)


def test_deterministic(samples: tuple[Path, float], tmp_path: Path) -> None:
    root, _ = samples
    build_samples(tmp_path / "again")
    for p in root.glob("QA_information/*/*.json"):
        assert p.read_bytes() == (tmp_path / "again" / p.relative_to(root)).read_bytes()


def test_convert_keeps_source_files_on_one_side(samples: tuple[Path, float], tmp_path: Path) -> None:
    root, _ = samples
    m = convert_release(root, tmp_path)
    assert m["input_rows"] == len(rows(root)) and m["converted"] == m["input_rows"]  # the samples are clean
    side: dict[str, set[str]] = defaultdict(set)
    test_modalities = set()
    for split in ("train", "val", "test"):
        for r in records.read_records(tmp_path / f"{split}.jsonl"):
            side[r["source"]].add(split)
            if split == "test":
                test_modalities.add(r["modality"])
    assert all(len(s) == 1 for s in side.values()), side
    assert len(test_modalities) >= 5  # every modality has a held-out source file
    assert json.loads((tmp_path / "audit.json").read_text())["leakage"]["ok"]


def test_cli_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("keep")
    assert main(["data", "samples", "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert "not made by medvqa" in err and err.count("\n") == 1
    assert (tmp_path / "other" / "precious.txt").exists()
