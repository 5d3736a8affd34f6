"""medvqa data import: VQA-RAD, PathVQA (HF parquet), SLAKE (JSON + imgs/), PMC-VQA (CSV) fixtures in release form."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import csv  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from training.cli import main  # noqa: E402
from training.data import records  # noqa: E402
from training.data.importers import import_benchmark  # noqa: E402
from training.images import load_medical_image  # noqa: E402


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, "JPEG")
    return buf.getvalue()


def write_hf_parquet(folder: Path, splits: dict[str, list[tuple[bytes | None, str, str]]]) -> Path:
    """The Hugging Face layout: data/<split>-00000-of-00001.parquet, written by `datasets` itself."""
    import datasets

    features = datasets.Features(
        {"image": datasets.Image(), "question": datasets.Value("string"), "answer": datasets.Value("string")}
    )
    for split, rows in splits.items():
        ds = datasets.Dataset.from_dict(
            {
                "image": [{"bytes": b, "path": None} if b else None for b, _, _ in rows],
                "question": [q for _, q, _ in rows],
                "answer": [a for _, _, a in rows],
            },
            features=features,
        )
        (folder / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


def test_vqa_rad_parquet(tmp_path: Path) -> None:
    src = write_hf_parquet(
        tmp_path / "vqa-rad",
        {
            "train": [
                (_jpeg((10, 10, 10)), "is there a fracture?", "yes"),
                (_jpeg((20, 20, 20)), "what organ?", "liver"),
            ],
            "test": [
                (_jpeg((30, 30, 30)), "Is the lung normal?", "No"),
                (_jpeg((40, 40, 40)), "where is it", ""),
            ],
        },
    )
    m = import_benchmark("vqa-rad", src, tmp_path / "out")
    assert m["input_rows"] == 4 and m["converted"] == 3 and m["rejected"] == 1
    assert m["splits"] == {"test": 1, "train": 2} and m["reasons"] == {"malformed_row": 1}
    test = records.read_records(tmp_path / "out" / "test.jsonl")
    assert (
        test[0]["answer"] == "no" and test[0]["answer_type"] == "yes_no" and test[0]["dataset"] == "VQA-RAD"
    )
    assert test[0]["modality"] == records.UNKNOWN_MODALITY and test[0]["split"] == "test"
    img = records.resolve_image(test[0], tmp_path / "out" / "test.jsonl")
    assert img.read_bytes() == _jpeg((30, 30, 30)) and load_medical_image(img).size == (16, 16)
    train = records.read_records(tmp_path / "out" / "train.jsonl")
    assert [r["answer_type"] for r in train] == ["yes_no", "open"]


def test_vqa_rad_parquet_keeps_the_benchmarks_closed_open_label(tmp_path: Path) -> None:
    import datasets

    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "answer": datasets.Value("string"), "answer_type": datasets.Value("string")})  # fmt: skip
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": _jpeg((1, 2, 3)), "path": None}, {"bytes": _jpeg((3, 2, 1)), "path": None}],
         "question": ["which side?", "is it normal?"], "answer": ["left", "yes"], "answer_type": ["CLOSED", "CLOSED"]},
        features=features,
    )  # fmt: skip
    (tmp_path / "src").mkdir()
    ds.to_parquet(str(tmp_path / "src" / "test-00000-of-00001.parquet"))
    import_benchmark("vqa-rad", tmp_path / "src", tmp_path / "out")
    test = records.read_records(tmp_path / "out" / "test.jsonl")
    # "left" is open by our yes/no typing, CLOSED by VQA-RAD's own label: both are kept
    assert [(r["answer_type"], r["answer_type_raw"]) for r in test] == [
        ("open", "CLOSED"),
        ("yes_no", "CLOSED"),
    ]


def test_pathvqa_parquet_with_missing_image(tmp_path: Path) -> None:
    src = write_hf_parquet(
        tmp_path / "path-vqa",
        {
            "validation": [
                (_jpeg((1, 2, 3)), "what is present?", "granuloma"),
                (None, "is this necrosis?", "yes"),
            ]
        },
    )
    m = import_benchmark("pathvqa", src, tmp_path / "out")
    assert m["splits"] == {"val": 1} and m["reasons"] == {"missing_image": 1}
    (rec,) = records.read_records(tmp_path / "out" / "val.jsonl")
    assert rec["modality"] == "Microscopy" and rec["answer"] == "granuloma"


def test_slake_english_only(tmp_path: Path) -> None:
    src = tmp_path / "Slake1.0"
    (src / "imgs" / "xmlab1").mkdir(parents=True)
    Image.new("L", (8, 8), 100).save(src / "imgs" / "xmlab1" / "source.jpg")

    def row(qid: int, lang: str, q: str, a: str, img: str = "xmlab1/source.jpg") -> dict:
        return {"img_id": 1, "img_name": img, "question": q, "answer": a, "q_lang": lang, "location": "Lung",
                "modality": "X-Ray", "answer_type": "CLOSED" if a in ("Yes", "No") else "OPEN", "base_type": "vqa",
                "content_type": "Abnormality", "triple": ["vhead", "_", "_"], "qid": qid}  # fmt: skip

    (src / "train.json").write_text(
        json.dumps(
            [row(1, "en", "Does the picture contain lung?", "Yes"), row(2, "zh", "图片中有肺吗?", "是")]
        )
    )
    (src / "validation.json").write_text(
        json.dumps([row(3, "en", "Which organ?", "Lung", img="xmlab9/source.jpg")])
    )
    (src / "test.json").write_text(json.dumps([row(4, "en", "What modality is used?", "X-Ray")]))
    m = import_benchmark("slake", src, tmp_path / "out")
    assert m["input_rows"] == 4 and m["converted"] == 2 and m["skipped"] == {"not_english": 1}
    assert m["reasons"] == {"missing_image": 1} and m["splits"] == {"test": 1, "train": 1}
    (tr,) = records.read_records(tmp_path / "out" / "train.jsonl")
    assert tr["answer"] == "yes" and tr["answer_type"] == "yes_no" and tr["answer_type_raw"] == "CLOSED"
    assert (
        tr["modality"] == "X-Ray" and tr["question_type"] == "Abnormality" and tr["question_id"] == "SLAKE-1"
    )
    assert (
        records.resolve_image(tr, tmp_path / "out" / "train.jsonl").resolve()
        == (src / "imgs" / "xmlab1" / "source.jpg").resolve()
    )


def test_pmc_vqa_csv(tmp_path: Path) -> None:
    src = tmp_path / "PMC-VQA"
    (src / "images").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.new("RGB", (8, 8)).save(src / "images" / name)
    header = [
        "Figure_path",
        "Question",
        "Answer",
        "Choice A",
        "Choice B",
        "Choice C",
        "Choice D",
        "Answer_label",
    ]
    body = [
        ["a.jpg", "What is the imaging modality used?", "Magnetic resonance imaging", " A:Computed tomography ",
         " B:Magnetic resonance imaging ", " C:Ultrasound ", " D:X-ray ", "B"],
        ["b.jpg", "Which of the following organs is shown in the figure?", "Kidney", " A:Liver", " B:Kidney",
         " C:Spleen", " D:Heart", "B"],
        ["c.jpg", "Which of the following is NOT shown?", "Heart", " A:Heart", " B:Lung", " C:Liver", " D:Bone", "A"],
        ["c.jpg", "What is the size of the lesion?", "see label", " A:1 cm", " B:2 cm", " C:3 cm", " D:4 cm", "C"],
        ["missing.jpg", "What is shown?", "Liver", " A:Liver", " B:Lung", "", "", "A"],
    ]  # fmt: skip
    with open(src / "test_clean.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([header, *body])
    m = import_benchmark("pmc-vqa", src, tmp_path / "out")
    assert (m["input_rows"], m["converted"], m["needs_review"], m["rejected"]) == (5, 3, 1, 1)
    assert m["reasons"] == {"missing_image": 1, "negated_choice": 1}
    recs = records.read_records(tmp_path / "out" / "test_clean.jsonl")
    assert recs[0]["answer"] == "Magnetic resonance imaging" and "Computed tomography" in recs[0]["options"]
    assert recs[1]["question"] == "Which organ is shown in the figure?" and recs[1]["answer"] == "Kidney"
    assert recs[2]["answer"] == "3 cm"  # the answer text matched no choice: Answer_label decides


def test_import_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            ["data", "import", "--format", "slake", "--path", str(tmp_path / "nope"), "--out", str(tmp_path)]
        )
        == 2
    )
    assert "no such file or folder" in capsys.readouterr().err
    (tmp_path / "x.parquet").write_text("not parquet")
    assert (
        main(
            [
                "data",
                "import",
                "--format",
                "vqa-rad",
                "--path",
                str(tmp_path / "x.parquet"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "not a parquet file" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as exc:
        main(["data", "import", "--format", "vqa-med", "--path", str(tmp_path), "--out", str(tmp_path)])
    assert exc.value.code == 2
