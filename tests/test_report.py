"""Statistics, the report (DESIGN.md §7 keys), report.md, charts and the ``medvqa score`` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.cli import main
from training.evaluation import stats
from training.evaluation.report import score_records, write_outputs
from training.evaluation.scorers import SCORERS

REPORT_KEYS = {
    "primary", "n", "overall", "yes_no", "open", "by_modality", "by_question_type", "by_dataset", "scorers",
    "baselines", "templates", "diagnostics",
}  # fmt: skip


def _rec(qid, question, answer, prediction, *, modality="CT", dataset="OmniMedVQA", qtype="Modality Recognition",
         options=None):  # fmt: skip
    kind = "yes_no" if answer.lower() in ("yes", "no") else "open"
    return {
        "question_id": str(qid), "dataset": dataset, "image": "img.png", "question": question, "answer": answer,
        "answer_type": kind, "modality": modality, "modality_raw": modality, "question_type": qtype,
        "options": options or [], "source": "test", "split": "test", "prediction": prediction,
    }  # fmt: skip


def _write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _is_metric(m) -> bool:
    return (
        set(m) >= {"accuracy", "n", "ci95"}
        and 0.0 <= m["accuracy"] <= 1.0
        and isinstance(m["n"], int)
        and len(m["ci95"]) == 2
        and 0.0 <= m["ci95"][0] <= m["ci95"][1] <= 1.0
    )


# Hand-worked set: 4 yes/no (3 right), 4 open (2 right), two datasets, three modalities.
PREDICTIONS = [
    _rec(1, "Is this a CT image?", "yes", "Yes.", dataset="VQA-RAD", options=["CT", "MRI"]),
    _rec(2, "Is there a lesion?", "no", "no", dataset="VQA-RAD", modality="MRI", qtype="Disease Diagnosis"),
    _rec(
        3,
        "Is there a lesion?",
        "no",
        "yes and no",
        dataset="SLAKE",
        modality="MRI",
        qtype="Disease Diagnosis",
    ),
    _rec(4, "Is this an X-ray?", "yes", "yes", dataset="SLAKE", modality="X-Ray"),
    _rec(5, "What modality is this?", "MRI", "MR", dataset="VQA-RAD", modality="MRI", options=["CT", "MRI"]),
    _rec(6, "What modality is this?", "CT", "computed tomography", dataset="SLAKE", options=["CT", "MRI"]),
    _rec(7, "Which organ is shown?", "liver", "the liver and kidney", dataset="SLAKE", qtype="Anatomy"),
    _rec(8, "Which organ is shown?", "brain", "", dataset="VQA-RAD", modality="MRI", qtype="Anatomy"),
]
TRAIN = [
    _rec(101, "Is this a CT image?", "no", "", options=["CT", "MRI"]),
    _rec(102, "Is this a MRI scan?", "no", "", options=["CT", "MRI"]),
    _rec(103, "Is there a lesion?", "yes", ""),
    _rec(104, "What modality is this?", "CT", "", options=["CT", "MRI"]),
    _rec(105, "What modality is this?", "Computed tomography", "", options=["Computed tomography", "MRI"]),
    _rec(106, "What modality is this?", "MRI", "", options=["CT", "MRI"]),
]


# --- statistics -----------------------------------------------------------------------------------------------


def test_wilson_interval_hand_worked():
    # 5/10: centre 0.5, half = 1.96 * sqrt(0.025 + 0.0096) / 1.38415 = 0.2634
    low, high = stats.wilson_interval(5, 10)
    assert (low, high) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    # 0/4: centre = half = (3.8415 / 8) / 1.9604 = 0.2449 -> [0, 0.4899]: never below 0
    assert stats.wilson_interval(0, 4) == (0.0, pytest.approx(0.4899, abs=1e-4))
    assert stats.wilson_interval(4, 4) == (pytest.approx(0.5101, abs=1e-4), 1.0)
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)
    assert stats.metric([]) == {"accuracy": 0.0, "n": 0, "ci95": [0.0, 1.0]}


def test_majority_answers_per_answer_type():
    # yes_no: no, no, yes -> "no"; open: CT, Computed tomography (= ct), MRI -> "ct"
    assert stats.majority_answers(TRAIN) == {"yes_no": "no", "open": "ct"}


def test_question_template_masks_content_words():
    t = stats.question_template
    assert t({"question": "Is this a CT image?", "answer": "yes", "options": ["CT", "MRI"]}) == "is this _"
    assert t({"question": "Is this an MRI scan?", "answer": "no"}) == "is this _"  # modality words are masked
    assert t({"question": "Which organ is shown?", "answer": "liver"}) == "which organ is shown"
    assert t({"question": "How many nodules, 3 or 4?", "answer": "3"}) == "how many nodules _ or _"
    # yes/no questions about an entity: the entity is masked when it is an answer or option anywhere
    vocabulary = stats.answer_vocabulary([{"answer": "Brain", "options": ["Liver", "Lymph node"]}])
    assert vocabulary == {"brain", "liver", "lymph", "node"}
    yes_no_q = {
        "question": "Is the lymph node shown in this image?",
        "answer": "yes",
        "options": ["yes", "no"],
    }
    assert t(yes_no_q, vocabulary) == "is _ shown in this image"
    assert t(yes_no_q) == "is lymph node shown in this image"  # without a vocabulary the words stay
    assert (
        t({"question": "Is there a lesion?", "answer": "no", "options": ["yes", "no"]}) == "is there lesion"
    )


def test_diagnostics_flag_collapse():
    collapsed = stats.diagnostics(["Yes."] * 10, ["yes"] * 5 + ["no"] * 5)
    assert collapsed["top_prediction_share"] == 1.0
    assert collapsed["distinct_predictions"] == 1
    assert collapsed["answer_entropy_bits"] == 0.0
    assert collapsed["mode_collapse"] is True
    balanced = stats.diagnostics(["yes", "no"] * 5, ["yes"] * 5 + ["no"] * 5)
    assert balanced["answer_entropy_bits"] == pytest.approx(1.0)
    assert balanced["mode_collapse"] is False
    # the references themselves are 80% "no": predicting "no" 90% of the time is not collapse (0.9 < 1.5 x 0.8)
    assert stats.diagnostics(["no"] * 9 + ["yes"], ["no"] * 8 + ["yes"] * 2)["mode_collapse"] is False
    assert stats.diagnostics(["no"] * 4, ["yes"] * 4)["mode_collapse"] is False  # too few to judge


# --- the report -----------------------------------------------------------------------------------------------


def test_report_hand_worked_numbers():
    result = score_records(PREDICTIONS, TRAIN)
    report = result.report
    assert REPORT_KEYS <= set(report)
    assert "throughput" not in report  # eval only
    assert report["n"] == 8
    # yes/no: 1 right, 2 right, 3 says both -> wrong, 4 right; open: 5 MR=MRI right, 6 right, 7 and 8 wrong
    assert report["yes_no"]["accuracy"] == 0.75 and report["yes_no"]["n"] == 4
    assert report["open"]["accuracy"] == 0.5 and report["open"]["n"] == 4
    assert report["overall"]["accuracy"] == 5 / 8
    for m in [report["overall"], report["yes_no"], report["open"], *report["by_modality"].values()]:
        assert _is_metric(m)
    assert report["by_modality"]["MRI"]["n"] == 4 and report["by_modality"]["MRI"]["accuracy"] == 0.5
    # each benchmark with its own closed / open split
    slake = report["by_dataset"]["SLAKE"]
    assert slake["n"] == 4 and slake["yes_no"]["n"] == 2 and slake["open"]["n"] == 2
    assert slake["yes_no"]["accuracy"] == 0.5 and slake["open"]["accuracy"] == 0.5
    # scorers side by side; each over the questions it applies to
    assert report["scorers"]["yes_no"]["n"] == 4
    assert report["scorers"]["contains"]["accuracy"] == 7 / 8  # 3 ("yes and no" contains "no") and 7 count
    assert report["scorers"]["mc_qa_score"]["n"] == 2  # records 5 and 6 (record 1's answer is not an option)
    assert report["scorers"]["mc_prefix_score"]["n"] == 0  # needs the model
    assert set(report["scorers"]) == set(SCORERS)
    # baseline from train: yes_no -> "no" (right on 2 and 3), open -> "ct" (right on 6): 3/8
    assert report["baseline_source"] == "train"
    assert report["baselines"]["majority_answer"]["accuracy"] == 3 / 8
    assert report["yes_no"]["majority_baseline"] == 0.5
    nested = report["baselines"]["majority_answer"]
    assert nested["yes_no"]["accuracy"] == 0.5 and nested["by_modality"]["MRI"]["accuracy"] == 0.5
    assert _is_metric(nested["by_dataset"]["SLAKE"]["open"]) and _is_metric(nested["templates"]["seen"])
    # templates: "is this _" and "is there lesion" and "what modality is this" are seen; "which organ is shown" not
    assert report["templates"]["seen"]["n"] == 6 and report["templates"]["novel"]["n"] == 2
    assert report["templates"]["novel"]["accuracy"] == 0.0
    assert report["diagnostics"]["mode_collapse"] is False
    # per-item flags
    flags3 = result.scored[2]["correct"]
    assert flags3["yes_no"] is False and flags3["contains"] is True


def test_majority_baselines_per_question_type_and_modality():
    def rec(i, qtype, modality, answer):
        return _rec(i, "q?", answer, "", qtype=qtype, modality=modality)

    train = [rec(1, "Modality", "CT", "CT"), rec(2, "Modality", "CT", "CT"), rec(3, "Modality", "MRI", "MRI"),
             rec(4, "Organ", "MRI", "brain"), rec(5, "Organ", "MRI", "brain")]  # fmt: skip
    test = [rec(11, "Modality", "MRI", "MRI"), rec(12, "Modality", "CT", "CT"), rec(13, "Organ", "MRI", "brain"),
            rec(14, "Organ", "CT", "liver")]  # fmt: skip
    report = score_records(test, train).report
    baselines = report["baselines"]
    # open majority: ct 2, brain 2 -> "brain" (alphabetical): right on 13 only
    assert baselines["majority_answer"]["accuracy"] == 1 / 4
    # per question type: Modality -> ct (right on 12), Organ -> brain (right on 13)
    assert baselines["majority_by_question_type"]["accuracy"] == 2 / 4
    assert baselines["majority_by_question_type"]["by_question_type"]["Organ"]["accuracy"] == 1 / 2
    # per modality: CT -> ct (right on 12), MRI -> brain (2 of 3; right on 13)
    assert baselines["majority_by_modality"]["accuracy"] == 2 / 4
    assert report["grouped_baseline_answers"]["majority_by_modality"]["MRI|open"] == "brain"
    # a group the training set lacks falls back to the answer type's majority
    unseen = score_records([rec(21, "Stain", "Microscopy", "brain")], train).report["baselines"]
    assert unseen["majority_by_question_type"]["accuracy"] == 1.0


def test_closed_open_by_the_benchmarks_own_label_and_unscorable_counts():
    records = [
        {**_rec(1, "Which side?", "left", "left", dataset="SLAKE"), "answer_type_raw": "CLOSED"},
        {**_rec(2, "Is it normal?", "yes", "no", dataset="SLAKE"), "answer_type_raw": "CLOSED"},
        {**_rec(3, "What organ?", "liver", "liver", dataset="SLAKE"), "answer_type_raw": "OPEN"},
        _rec(4, "Which modality?", "Mr", "MR", dataset="OmniMedVQA", options=["mr", "MR ", "CT"]),
        _rec(5, "Which modality?", "CT", "CT", dataset="OmniMedVQA", options=["CT", "MRI"]),
    ]
    report = score_records(records).report
    closed = report["benchmark_answer_type"]["closed"]
    assert (
        closed["n"] == 2 and closed["accuracy"] == 0.5
    )  # "left" is closed for SLAKE, open by our yes/no type
    assert report["yes_no"]["n"] == 1
    assert report["by_dataset"]["SLAKE"]["benchmark_answer_type"]["open"]["n"] == 1
    assert "benchmark_answer_type" not in report["by_dataset"]["OmniMedVQA"]
    assert report["not_scorable"] == {"mc_qa_score": {"ambiguous_gold_option": 1}}
    assert report["mc_qa_inputs"] == {"raw": 0, "cleaned": 1}
    assert report["scorers"]["mc_qa_score"]["n"] == 1


def test_report_without_train_uses_the_evaluated_set():
    report = score_records(PREDICTIONS).report
    assert report["baseline_source"] == "evaluated set"
    assert report["templates"]["seen"]["n"] == 0 and report["templates"]["novel"]["n"] == 0
    assert report["templates_available"] is False


def test_collapse_warning_in_report():
    records = [_rec(i, "Is there a lesion?", "yes" if i % 2 else "no", "yes") for i in range(10)]
    report = score_records(records).report
    assert report["diagnostics"]["mode_collapse"] is True
    assert any("mode collapse" in w for w in report["warnings"])


def test_write_outputs_files_and_markdown(tmp_path):
    result = score_records(PREDICTIONS, TRAIN, throughput={"questions_per_s": 3.5, "batch_size": 4})
    paths = write_outputs(result, tmp_path)
    names = {p.name for p in paths}
    assert {"scored.jsonl", "report.json", "report.md", "accuracy_by_modality.png"} <= names
    for p in paths:
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["throughput"] == {"questions_per_s": 3.5, "batch_size": 4}
    md = (tmp_path / "report.md").read_text()
    for text in ("Wilson", "majority baseline", "By modality", "By question type", "SLAKE · closed (yes/no)",
                 "seen", "Mode collapse", "3.50 questions/s", "accuracy_by_modality.png"):  # fmt: skip
        assert text in md, text
    for name in SCORERS:
        assert f"`{name}`" in md


# --- medvqa score ---------------------------------------------------------------------------------------------


def test_score_cli_writes_everything(tmp_path, capsys):
    preds = _write_jsonl(tmp_path / "predictions.jsonl", PREDICTIONS)
    train = _write_jsonl(tmp_path / "train.jsonl", TRAIN)
    out = tmp_path / "out"
    assert main(["score", "--predictions", str(preds), "--out", str(out), "--train", str(train)]) == 0
    assert "overall 62.5%" in capsys.readouterr().out
    for name in ("scored.jsonl", "report.json", "report.md", "accuracy_by_modality.png"):
        assert (out / name).is_file(), name
    lines = [json.loads(line) for line in (out / "scored.jsonl").read_text().splitlines()]
    assert len(lines) == len(PREDICTIONS)
    for src, line in zip(PREDICTIONS, lines):
        assert {k: line[k] for k in src} == src  # each input line kept as is
    assert "mc_prefix_score" not in lines[4]["correct"] and lines[4]["correct"]["mc_qa_score"] is True
    assert "mc_qa_score" not in lines[6]["correct"]  # no options


@pytest.mark.parametrize(
    ("content", "where", "reason"),
    [
        (None, "nope.jsonl", "no such file"),
        ('{"answer": "yes", "prediction": "yes"}\n{"answer": \n', "p.jsonl:2", "malformed JSON"),
        ('{"answer": "yes", "prediction": "yes"}\n\n{"answer": "no"}\n', "p.jsonl:3", 'no "prediction"'),
        ('{"prediction": "yes"}\n', "p.jsonl:1", 'no "answer"'),
        ('["yes"]\n', "p.jsonl:1", "expected a JSON object"),
        ('{"answer": "yes", "prediction": null}\n', "p.jsonl:1", '"prediction" must be a string'),
        ('{"answer": "yes", "prediction": "y", "answer_type": "closed"}\n', "p.jsonl:1", "answer_type"),
        (
            '{"answer": "CT", "prediction": "CT", "options": ["CT", "MRI"], "mc_prefix_choice": -1}\n',
            "p.jsonl:1",
            "mc_prefix_choice",
        ),
        (
            '{"answer": "CT", "prediction": "CT", "options": ["CT", "MRI"], "mc_prefix_choice": 2}\n',
            "p.jsonl:1",
            "mc_prefix_choice",
        ),
        (
            '{"answer": "CT", "prediction": "CT", "options": ["CT", "MRI"], "options_raw": "CT, MRI"}\n',
            "p.jsonl:1",
            '"options_raw" must be a list of strings, got str',
        ),
        (
            '{"answer": "CT", "prediction": "CT", "options": ["CT"], "options_raw": ["CT", 3]}\n',
            "p.jsonl:1",
            "a list holding a value of type int",
        ),
        (
            '{"answer": "CT", "prediction": "CT", "answer_raw": 1}\n',
            "p.jsonl:1",
            '"answer_raw" must be a string',
        ),
    ],
)
def test_score_cli_user_errors(tmp_path, capsys, content, where, reason):
    path = tmp_path / ("nope.jsonl" if content is None else "p.jsonl")
    if content is not None:
        path.write_text(content, encoding="utf-8")
    assert main(["score", "--predictions", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert where in err and reason in err
