"""``medvqa compare``: hand-worked accuracies, paired differences and p-values on shared questions; outputs and
user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.cli import main


def _rec(qid: int, qtype: str, answer: str, prediction: str) -> dict:
    return {"question_id": str(qid), "question": "q?", "answer": answer, "prediction": prediction,
            "question_type": qtype, "modality": "CT", "dataset": "d",
            "answer_type": "yes_no" if answer in ("yes", "no") else "open"}  # fmt: skip


def _write(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def two_sets(tmp_path):
    # 20 modality questions: A right on 16, B right on 6 of those and 1 other -> discordant A-only 10, B-only 1
    # 6 yes/no organ questions: both right on the same 3
    a, b = [], []
    for i in range(20):
        a.append(_rec(i, "Modality", "CT", "CT" if i < 16 else "MRI"))
        b.append(_rec(i, "Modality", "CT", "CT" if i < 6 or i == 19 else "MRI"))
    for i in range(6):
        a.append(_rec(100 + i, "Organ", "yes", "yes" if i < 3 else "no"))
        b.append(_rec(100 + i, "Organ", "yes", "yes" if i < 3 else "no"))
    b.append(_rec(999, "Organ", "no", "no"))  # only in B: not shared, left out
    eval_dir = tmp_path / "model_a"
    _write(eval_dir / "predictions.jsonl", a)  # an eval folder
    return eval_dir, _write(tmp_path / "other" / "blind.jsonl", b)


def test_compare_hand_worked(two_sets, tmp_path, capsys):
    a, b = two_sets
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "26 shared questions" in printed and "McNemar p" in printed
    result = json.loads((out / "compare.json").read_text())
    assert result["shared_questions"] == 26 and result["reference"] == "model_a"
    assert [i["name"] for i in result["inputs"]] == ["model_a", "other/blind"]
    modality = result["groups"]["by_question_type"]["Modality"]
    assert modality["accuracy"]["model_a"]["accuracy"] == 16 / 20
    assert modality["accuracy"]["other/blind"]["accuracy"] == 7 / 20
    diff = modality["differences"]["other/blind"]
    assert diff["difference"] == pytest.approx(-9 / 20)
    assert diff["right_only_this"] == 1 and diff["right_only_reference"] == 10
    # exact two-sided binomial on 11 discordant pairs with 1 success: 2 * (1 + 11) / 2**11
    assert diff["mcnemar_p"] == pytest.approx(2 * 12 / 2**11)
    low, high = diff["ci95"]
    assert -1 <= low < -9 / 20 < high < 0  # bootstrap interval around the difference, excluding 0
    organ = result["groups"]["by_question_type"]["Organ"]["differences"]["other/blind"]
    assert organ["difference"] == 0 and organ["ci95"] == [0, 0] and organ["mcnemar_p"] == 1.0
    assert result["groups"]["yes_no"]["n"] == 6
    md = (out / "compare.md").read_text()
    assert "| question type: Modality | 20 | 80.0 | 35.0 | -45.0 [" in md
    assert (out / "compare.png").stat().st_size > 1000
    # the same command may rewrite its own folder; the bootstrap is seeded, so the numbers repeat
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    assert json.loads((out / "compare.json").read_text()) == result


def test_compare_user_errors(two_sets, tmp_path, capsys):
    a, b = two_sets

    def fails(argv, *expected):
        assert main(["compare", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        for text in expected:
            assert text in err, err

    fails([str(a), "--out", str(tmp_path / "o")], "at least two")
    fails([str(a), str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")], "nope.jsonl", "no such file")
    fails([str(a), str(tmp_path), "--out", str(tmp_path / "o")], "no predictions.jsonl")
    other = _write(tmp_path / "c.jsonl", [_rec(500, "Organ", "yes", "yes")])
    fails([str(a), str(other), "--out", str(tmp_path / "o")], "shares no question_id")
    dup = _write(tmp_path / "dup.jsonl", [_rec(1, "Organ", "yes", "yes"), _rec(1, "Organ", "yes", "no")])
    fails([str(a), str(dup), "--out", str(tmp_path / "o")], "dup.jsonl:2", "twice")
    fails([str(a), str(b), "--names", "x", "--out", str(tmp_path / "o")], "--names")
    foreign = tmp_path / "foreign"
    _write(foreign / "keep.txt", [])
    fails([str(a), str(b), "--out", str(foreign)], "foreign")
    assert (foreign / "keep.txt").exists()
