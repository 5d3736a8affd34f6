"""medvqa data convert: buckets, quirks, classification, splits, audit, CLI errors; records helpers; rewrite rules."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from data_fixtures import write_quirky_release  # noqa: E402

from training.cli import main  # noqa: E402
from training.data import records  # noqa: E402
from training.data.convert import convert_release  # noqa: E402
from training.data.questions import resolve_answer, rewrite_question  # noqa: E402
from training.data.splits import ImageInfo, assign_splits  # noqa: E402
from training.errors import MedVQAUserError  # noqa: E402


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("omni") / "OmniMedVQA"
    return root, write_quirky_release(root)


@pytest.fixture(scope="module")
def converted(release: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory):
    root, expected = release
    out = tmp_path_factory.mktemp("conv")
    manifest = convert_release(root, out, seed=3)
    return out, manifest, expected


def load(out: Path, name: str) -> list[dict[str, Any]]:
    return records.read_jsonl(out / name)


def by_id(out: Path) -> dict[str, dict[str, Any]]:
    return {r["question_id"]: r for s in ("train", "val", "test") for r in load(out, f"{s}.jsonl")}


def test_exact_bucket_counts(converted) -> None:
    out, manifest, expected = converted
    b = expected["buckets"]
    assert (manifest["converted"], manifest["needs_review"], manifest["rejected"]) == (
        b["converted"],
        b["needs_review"],
        b["rejected"],
    )
    assert manifest["input_rows"] == expected["input_rows"] == 36
    assert manifest["converted"] + manifest["needs_review"] + manifest["rejected"] == manifest["input_rows"]
    assert manifest["reasons"] == dict(expected["reasons"])
    assert sum(manifest["splits"].values()) == manifest["converted"]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert len(load(out, "needs_review.jsonl")) == manifest["needs_review"]
    assert len(load(out, "rejected.jsonl")) == manifest["rejected"]
    assert all(
        r["reason"] and "detail" in r for r in load(out, "needs_review.jsonl") + load(out, "rejected.jsonl")
    )


def test_quirks_are_handled(converted) -> None:
    out, _, _ = converted
    recs = by_id(out)
    # trailing dot and duplicate options
    assert recs["d0"]["answer"] == "Dermoscopy" and recs["d0"]["options"] == ["Dermoscopy", "CT", "X-Ray"]
    # the `modality` key and x_ray. as a modality answer (rule A5 on answer and options)
    assert recs["x1"]["modality"] == "X-Ray" and recs["x1"]["answer"] == "X-Ray"
    assert recs["x1"]["options"] == ["X-Ray", "CT", "MRI", "Ultrasound"]
    # typo'd modality strings
    assert recs["0"]["modality"] == "MRI" and recs["0"]["modality_raw"] == "MR (Mag-netic Resonance Imaging)"
    assert recs["c0"]["modality"] == "CT" and recs["o0"]["modality"] == "OCT"
    # 2 to 4 options kept; a letter answer becomes the option text
    assert len(recs["d7"]["options"]) == 2 and len(recs["0"]["options"]) == 4
    assert recs["d8"]["answer"] == "Melanoma"
    # "Which of the following diseases ..." rewritten
    assert recs["d2"]["question"] == "Which disease is shown in the image?"
    for r in recs.values():
        assert list(r)[: len(records.FIELDS)] == list(records.FIELDS)
        assert r["modality"] in records.CANONICAL_MODALITIES
        assert not r["image"].startswith("/") and (out / r["image"]).is_file()


def test_yes_no_classification(converted) -> None:
    out, _, _ = converted
    recs = by_id(out)
    assert recs["d1"]["answer"] == "yes" and recs["d1"]["answer_type"] == "yes_no"  # "Yes."
    assert recs["x3"]["answer"] == "yes" and recs["x4"]["answer"] == "no"  # "Yes" / "No" with options Yes/No
    assert all(recs[f"c{i}"]["answer_type"] == "yes_no" for i in range(6))
    assert recs["d2"]["answer_type"] == "open" and recs["x1"]["answer_type"] == "open"
    for r in recs.values():
        assert (r["answer_type"] == "yes_no") == (r["answer"] in ("yes", "no"))


def test_review_and_reject_reasons(converted) -> None:
    out, _, _ = converted
    review = {r["question_id"]: r["reason"] for r in load(out, "needs_review.jsonl")}
    assert review == {
        "d3": "statement_choice",
        "x2": "answer_not_in_options",
        "5": "unknown_modality",
        "c9": "negated_choice",
    }
    rejected = [(r.get("question_id") or r["raw"], r["reason"]) for r in load(out, "rejected.jsonl")]
    assert ("h0", "missing_image") in rejected and ("h1", "missing_image") in rejected
    assert ("d3", "duplicate_question_id") in rejected and ("not a row", "malformed_row") in rejected


def test_no_image_shared_between_splits_and_copies_grouped(converted) -> None:
    out, _, _ = converted
    seen: dict[str, str] = {}
    for split in ("train", "val", "test"):
        for r in load(out, f"{split}.jsonl"):
            data = (out / r["image"]).read_bytes()
            assert seen.setdefault(data.hex(), split) == split, r["image"]
    recs = by_id(out)
    assert recs["d2"]["split"] == recs["d7"]["split"]  # b.png and b_copy.png have the same bytes
    audit = json.loads((out / "audit.json").read_text())
    assert audit["leakage"]["ok"] and audit["leakage"]["by"] == "content_hash"
    assert "OK: no image is in two splits" in (out / "audit.md").read_text()


def test_splits_are_deterministic_and_written(release, tmp_path: Path) -> None:
    root, _ = release
    a = convert_release(root, tmp_path / "a", seed=7)
    b = convert_release(root, tmp_path / "b", seed=7)
    assert a["splits"] == b["splits"]
    assert (tmp_path / "a" / "test.jsonl").read_text() == (tmp_path / "b" / "test.jsonl").read_text()
    membership = json.loads((tmp_path / "a" / "splits.json").read_text())
    assert membership["seed"] == 7
    split_of = {i["image"]: g["split"] for g in membership["groups"] for i in g["images"]}
    for r in load(tmp_path / "a", "train.jsonl") + load(tmp_path / "a", "test.jsonl"):
        assert split_of["Images/" + r["image"].split("/Images/", 1)[1]] == r["split"]


def test_holdout_dataset_goes_to_test(release, tmp_path: Path) -> None:
    root, _ = release
    m = convert_release(root, tmp_path, holdout_datasets=["EyeOCT"])
    assert all(r["split"] == "test" for r in by_id(tmp_path).values() if r["dataset"] == "EyeOCT")
    assert m["holdout_datasets"] == ["EyeOCT"]
    with pytest.raises(MedVQAUserError, match="Nope"):
        convert_release(root, tmp_path / "x", holdout_datasets=["Nope"])


def test_audit_contents(converted) -> None:
    out, _, _ = converted
    audit = json.loads((out / "audit.json").read_text())
    for key in ("by_modality", "by_question_type", "by_answer_type", "by_dataset", "templates", "answers"):
        assert key in audit
    assert audit["by_answer_type"]["all"]["yes_no"] == 13
    assert audit["templates"]["top_templates"][0]["share"] > 0
    assert set(audit["majority_baseline"]) == {"by_modality", "by_answer_type"}
    assert set(audit["template_overlap"]) == {"val", "test"}


def test_skip_image_check_is_records_only(release, tmp_path: Path) -> None:
    root, expected = release
    m = convert_release(root, tmp_path, image_check="none")
    # missing images are not detected without the check: those two rows are converted
    assert m["rejected"] == expected["buckets"]["rejected"] - 2 and m["image_check"] == "none"


def test_verify_images_rejects_undecodable(release, tmp_path: Path) -> None:
    root, _ = release
    import shutil

    copy = tmp_path / "rel"
    shutil.copytree(root, copy)
    png = copy / "Images/EyeOCT/o0.png"
    png.write_bytes(png.read_bytes()[:30])  # PNG signature intact, data cut
    m = convert_release(copy, tmp_path / "out", image_check="decode")
    assert m["reasons"]["unreadable_image"] == 1


# ------------------------------------------------------------------------------------------------- CLI ----


def test_cli_convert_ok(release, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = release
    assert main(["data", "convert", "--omnimedvqa", str(root), "--out", str(tmp_path), "--seed", "1"]) == 0
    assert "26 converted" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, [], "no such folder"),
        ("empty", [], "not an OmniMedVQA release"),
        ("badjson", [], "malformed QA file"),
        ("notlist", [], "expected a JSON list"),
        ("ok", ["--val-ratio", "0.6", "--test-ratio", "0.5"], "val + test < 1"),
    ],
)
def test_cli_user_errors_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str | None, args: list[str], message: str
) -> None:
    root = tmp_path / "root"
    if setup:
        root.mkdir()
    if setup in ("badjson", "notlist", "ok"):
        qa = root / "QA_information" / "Open-access"
        qa.mkdir(parents=True)
        (qa / "X.json").write_text({"badjson": "[{", "notlist": "{}", "ok": "[]"}[setup])
    code = main(["data", "convert", "--omnimedvqa", str(root), "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


# --------------------------------------------------------------------------------------------- records ----


def test_read_jsonl_names_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    p.write_text('{"a": 1}\n\n{"b": \n')
    with pytest.raises(MedVQAUserError, match=r"r\.jsonl:3: malformed JSON"):
        records.read_jsonl(p)
    p.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(MedVQAUserError, match=r"r\.jsonl:2: expected a JSON object"):
        records.read_jsonl(p)
    p.write_text('{"question_id": "1", "image": "a.png", "question": "q?"}\n')
    with pytest.raises(MedVQAUserError, match=r"r\.jsonl:1: record lacks answer"):
        records.read_records(p)
    with pytest.raises(MedVQAUserError, match="no such file"):
        records.read_jsonl(tmp_path / "nope.jsonl")


def test_write_read_roundtrip_and_resolve(tmp_path: Path) -> None:
    rec = records.make_record(question_id="1", image="img/a.png", question="Is it?", answer="yes", extra=1)
    assert list(rec)[-1] == "extra" and rec["options"] == []
    assert records.write_jsonl(tmp_path / "d" / "x.jsonl", [rec, {**rec, "question": "Ünïcode?"}]) == 2
    back = records.read_records(tmp_path / "d" / "x.jsonl")
    assert back[1]["question"] == "Ünïcode?"
    assert records.resolve_image(back[0], tmp_path / "d" / "x.jsonl") == tmp_path / "d" / "img" / "a.png"


@pytest.mark.parametrize(("raw", "name"), list(records.OMNIMEDVQA_MODALITY_STRINGS.items()))
def test_release_modality_strings(raw: str, name: str) -> None:
    assert records.canonical_modality(raw) == name


def test_modality_and_answer_cleaning() -> None:
    assert records.canonical_modality("x_ray.") == "X-Ray"
    assert records.canonical_modality("Magnetic resonance imaging") == "MRI"
    assert records.canonical_modality("PET") is None and records.canonical_modality(None) is None
    assert records.clean_answer(" Dermoscopy. ") == "Dermoscopy" and records.clean_answer("YES.") == "yes"
    assert records.answer_type("No.") == "yes_no" and records.answer_type("Nodule") == "open"
    assert records.dedupe_options(["CT", "ct.", "", "MRI"]) == ["CT", "MRI"]


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("Which of the following diseases is shown in the image?", "Which disease is shown in the image?"),
        ("Which of the following imaging modalities was used?", "Which imaging modality was used?"),
        ("Which of the following is the most likely diagnosis?", "What is the most likely diagnosis?"),
        ("Which of the following options best describes the image?", "What best describes the image?"),
        ("What organ is shown? Please choose the correct answer from the options.", "What organ is shown?"),
        ("What is the diagnosis? Options: A. CT B. MRI", "What is the diagnosis?"),
        ("Is this a CT image?", "Is this a CT image?"),
        ("Which of the following statements is true?", None),
        ("Which of the following is NOT visible?", None),
        ("What is shown in option A?", None),
        ("Please select the correct option.", None),
    ],
)
def test_rewrite_rules(question: str, expected: str | None) -> None:
    assert rewrite_question(question)[0] == expected


def test_answer_rules() -> None:
    assert resolve_answer("mri", ["CT", "MRI"])[0] == "MRI"
    assert resolve_answer("B", ["CT", "MRI"])[0] == "MRI"
    assert resolve_answer("C", ["yes", "Yes", "no"])[0] == "no"  # letters point at slots, duplicates included
    assert resolve_answer("All of the above", ["a", "b"])[2] == "answer_refers_to_options"
    assert resolve_answer("Lung", ["CT", "MRI"])[2] == "answer_not_in_options"


def test_split_seeding_keeps_small_modalities_in_test() -> None:
    images = {
        f"{m}/{i}.png": ImageInfo(sha=f"{m}{i}", source=f"{m}-src{i % n}", modalities=Counter({m: 1}))
        for m, n in (("CT", 3), ("MRI", 2), ("X-Ray", 1))
        for i in range(12)
    }
    groups = assign_splits(images, seed=0, val_ratio=0.1, test_ratio=0.1)
    test_modalities = {g.modality for g in groups if g.split == "test"}
    assert test_modalities == {"CT", "MRI"}  # X-Ray has one source file: it can only train
    assert all(len({images[k].source for k in g.images}) == 1 for g in groups)
