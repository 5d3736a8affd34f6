"""The image-blind baseline (``medvqa eval --ablate-image``): the replacement images, the paired statistics
against hand-worked numbers, and the eval run with the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_eval import write_eval_set

from training.cli import main
from training.errors import MedVQAUserError
from training.evaluation import stats
from training.evaluation.ablation import BlindImages, image_blind_section
from training.evaluation.report import score_records


class _FakeLoader:
    """Stands in for eval's ImageLoader: the 'image' of a record is its path."""

    def path(self, record):
        return Path(record["image"])

    def __call__(self, record):
        return record["image"]


def _records(sources: dict[str, str], per_image: int = 2) -> list[dict]:
    return [
        {"question_id": f"{image}-{k}", "image": image, "source": source, "question": "q?", "answer": "yes"}
        for image, source in sources.items()
        for k in range(per_image)
    ]


def test_blank_gives_every_question_the_same_black_image():
    blind = BlindImages(_FakeLoader(), _records({"a.png": "s1"}), "blank")
    first, second = blind({"image": "a.png"}), blind({"image": "other.png"})
    assert first.size == (224, 224) and first.getextrema() == ((0, 0), (0, 0), (0, 0))
    assert first.tobytes() == second.tobytes()
    assert blind.describe({"image": "a.png"}) == "blank"


def test_shuffle_takes_an_image_of_another_source_consistently():
    sources = {"a1.png": "s1", "a2.png": "s1", "b1.png": "s2", "c1.png": "s3"}
    records = _records(sources)
    blind = BlindImages(_FakeLoader(), records, "shuffle", seed=3)
    for record in records:
        replaced = blind(record)
        assert sources[replaced] != record["source"]  # never the same source, so never the same image
    # one replacement per image, whatever the question; the same seed gives the same plan
    assert blind(records[0]) == blind(records[1])
    again = BlindImages(_FakeLoader(), records, "shuffle", seed=3)
    assert [again(r) for r in records] == [blind(r) for r in records]


def test_shuffle_needs_two_sources_and_methods_are_checked():
    with pytest.raises(MedVQAUserError, match="two sources"):
        BlindImages(_FakeLoader(), _records({"a.png": "s1", "b.png": "s1"}), "shuffle")
    with pytest.raises(MedVQAUserError, match="--ablate-image"):
        BlindImages(_FakeLoader(), _records({"a.png": "s1"}), "noise")


def _rec(i: int, qtype: str, answer: str, prediction: str) -> dict:
    return {"question_id": str(i), "question": "q?", "answer": answer, "prediction": prediction,
            "question_type": qtype, "modality": "CT", "dataset": "d"}  # fmt: skip


def test_paired_difference_hand_worked():
    # 12 modality questions: real right on 10, blind right on 1 of those only -> discordant 9 / 0
    # 4 organ questions: real and blind agree on every one
    real = [_rec(i, "Modality", "CT", "CT" if i < 10 else "MRI") for i in range(12)]
    real += [_rec(20 + i, "Organ", "liver", "liver" if i < 2 else "lung") for i in range(4)]
    blind = [{**r, "prediction": "CT" if r["question_id"] == "0" else "lung"} for r in real]
    for r in blind[12:]:
        r["prediction"] = next(x for x in real if x["question_id"] == r["question_id"])["prediction"]
    section = image_blind_section(score_records(real), score_records(blind), "blank")
    modality = section["paired_difference"]["by_question_type"]["Modality"]
    assert modality["n"] == 12 and modality["real_only"] == 9 and modality["blind_only"] == 0
    assert modality["real"] == 10 / 12 and modality["blind"] == 1 / 12
    assert modality["mcnemar_p"] == pytest.approx(2 * 0.5**9)  # exact two-sided binomial, 0.0039
    low, high = modality["ci95"]
    assert 0 < low < 9 / 12 < high <= 1
    organ = section["paired_difference"]["by_question_type"]["Organ"]
    assert organ["difference"] == 0 and organ["mcnemar_p"] == 1.0
    overall = section["paired_difference"]["overall"]
    assert overall["n"] == 16 and overall["difference"] == 9 / 16
    # the blind run's own slices have the report's shape
    assert section["overall"]["accuracy"] == 3 / 16 and section["method"] == "blank"
    assert set(section["by_question_type"]) == {"Modality", "Organ"}


def test_newcombe_interval_properties():
    # swapping A and B mirrors the interval; it contains the point estimate and stays inside [-1, 1]
    low, high = stats.newcombe_paired_interval(5, 8, 2, 5)
    back_low, back_high = stats.newcombe_paired_interval(5, 2, 8, 5)
    assert (low, high) == pytest.approx((-back_high, -back_low))
    assert low < 6 / 20 < high
    assert stats.newcombe_paired_interval(0, 10, 0, 0)[1] == 1.0
    assert stats.mcnemar_exact_p(0, 0) == 1.0
    assert stats.mcnemar_exact_p(3, 3) == 1.0


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from training.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_eval_ablate_image_blank_and_shuffle(tiny_model, tmp_path, capsys):
    data = write_eval_set(tmp_path / "data")
    out = tmp_path / "eval"
    argv = [
        "eval",
        "--model",
        str(tiny_model),
        "--data",
        str(data),
        "--max-new-tokens",
        "4",
        "--no-mc-prefix",
    ]
    assert main([*argv, "--out", str(out), "--ablate-image", "blank"]) == 0
    report = json.loads((out / "report.json").read_text())
    section = report["image_blind"]
    assert section["method"] == "blank" and section["paired_difference"]["overall"]["n"] == 11
    assert set(section["paired_difference"]["by_question_type"]) == {"Modality Recognition"}
    blind = [json.loads(line) for line in (out / "predictions_image_blind.jsonl").read_text().splitlines()]
    assert len(blind) == 11 and all(b["image_blind"] == "blank" for b in blind)
    # the same question always gets the same blind answer: nothing of the real image reaches the model
    by_question: dict[str, set[str]] = {}
    for b in blind:
        by_question.setdefault(b["question"], set()).add(b["prediction"])
    assert all(len(answers) == 1 for answers in by_question.values())
    assert "Image-blind baseline" in (out / "report.md").read_text()
    assert (out / "scored_image_blind.jsonl").is_file()

    # shuffle needs two sources: the eval set records one -> a user error before the model loads
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "x"), "--ablate-image", "shuffle"]) == 2
    assert "two sources" in capsys.readouterr().err
    lines = [json.loads(line) for line in data.read_text().splitlines()]
    for record in lines:
        record["source"] = f"file{record['image'][-5]}"  # img0.png .. img4.png: five sources
    data.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert main([*argv, "--out", str(tmp_path / "shuffled"), "--ablate-image", "shuffle"]) == 0
    blind = [
        json.loads(x)
        for x in (tmp_path / "shuffled" / "predictions_image_blind.jsonl").read_text().split("\n")
        if x
    ]
    assert all(b["image_blind"] != b["image"] and b["image_blind"].startswith("images/img") for b in blind)
