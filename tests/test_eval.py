"""``medvqa eval`` with the tiny model: batched generation equals batch size 1, the option-loss ranking matches a
plain forward pass, every output file is written, and user errors end with exit 2 and one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.cli import main

QUESTIONS = [
    ("Is this a CT image?", "yes", ["CT", "MRI"], "CT"),
    ("What modality is used?", "MRI", ["CT", "MRI", "X-Ray"], "MRI"),
    ("Which organ is shown?", "liver", [], "CT"),
    ("Is there a lesion?", "no", [], "MRI"),
    ("What organ is visible in this image?", "brain", ["brain", "lung", "liver", "heart"], "MRI"),
]


def write_eval_set(folder: Path, n: int = 11) -> Path:
    """``n`` records over 5 synthetic PNGs of different sizes (relative paths), two datasets; returns the JSONL."""
    import numpy as np
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        question, answer, options, modality = QUESTIONS[i % len(QUESTIONS)]
        image = f"images/img{i % 5}.png"
        pixels = np.random.RandomState(i % 5).rand(40 + 8 * (i % 3), 56, 3) * 255
        Image.fromarray(pixels.astype("uint8")).save(folder / image)
        records.append(
            {
                "question_id": str(i), "dataset": ["VQA-RAD", "SLAKE"][i % 2], "image": image,
                "question": question, "answer": answer,
                "answer_type": "yes_no" if answer in ("yes", "no") else "open", "modality": modality,
                "modality_raw": modality, "question_type": "Modality Recognition", "options": options,
                "source": "test", "split": "test",
            }
        )  # fmt: skip
    path = folder / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from training.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def loaded(tiny_model):
    from training.evaluation.evaluate import load_model

    return load_model(tiny_model, device="cpu")


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory) -> Path:
    return write_eval_set(tmp_path_factory.mktemp("data"))


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_batched_generation_equals_batch_size_one(loaded, eval_set):
    from training.evaluation.evaluate import ImageLoader, generate_answers

    model, processor = loaded
    records = _records(eval_set)
    loader = ImageLoader(eval_set)
    one = generate_answers(model, processor, records, loader, batch_size=1, max_new_tokens=6)
    for batch_size in (4, 11):  # 4 leaves a short last batch; prompts of different lengths get left padding
        assert (
            generate_answers(model, processor, records, loader, batch_size=batch_size, max_new_tokens=6)
            == one
        )
    assert all(isinstance(a, str) for a in one)


def test_option_losses_match_a_plain_forward_pass(loaded, eval_set):
    import torch

    from training.evaluation.evaluate import ImageLoader, option_losses, user_messages

    model, processor = loaded
    records = _records(eval_set)[:5]
    loader = ImageLoader(eval_set)
    batched = option_losses(
        model, processor, records, loader, batch_size=8
    )  # rows of several records together
    single = option_losses(model, processor, records, loader, batch_size=1)
    assert [x is None for x in batched] == [not r["options"] for r in records]
    for b, s in zip(batched, single):
        assert (b is None and s is None) or b == pytest.approx(s, abs=1e-4)

    # reference: one unpadded sequence, the full forward with all logits, mean NLL of the option's tokens
    record = records[4]
    prompt = processor.apply_chat_template(user_messages(record["question"]), add_generation_prompt=True)
    enc = processor(images=[loader(record)], text=[prompt], return_tensors="pt")
    for option, got in zip(record["options"], batched[4]):
        option_ids = processor.tokenizer(option, add_special_tokens=False, return_tensors="pt")["input_ids"]
        ids = torch.cat([enc["input_ids"], option_ids], dim=1)
        with torch.no_grad():
            logits = model(input_ids=ids, pixel_values=enc["pixel_values"]).logits[0]
        start = enc["input_ids"].shape[1]
        expected = torch.nn.functional.cross_entropy(logits[start - 1 : -1], ids[0, start:]).item()
        assert got == pytest.approx(expected, abs=1e-4)


def test_option_losses_rank_the_raw_release_strings(loaded, eval_set):
    # a record that keeps the release's raw options is ranked on those (OmniMedVQA's prefix score), in the mc
    # prompt that lists them: the same losses as a record whose options are the raw strings themselves
    from training.evaluation.evaluate import ImageLoader, option_losses
    from training.evaluation.prompting import question_text

    model, processor = loaded
    raw = ["CT(Computed Tomography)", "MR (Mag-netic Resonance Imaging)", "MRI", "x_ray."]
    base = _records(eval_set)[1]
    kept = {**base, "options": ["CT", "MRI", "X-Ray"], "options_raw": raw, "answer_raw": "MRI"}
    plain = {**base, "options": raw}
    assert question_text(kept, "mc") == question_text(plain, "mc") and "(B) MR (Mag-netic" in question_text(
        kept, "mc"
    )
    loader = ImageLoader(eval_set)
    for prompt in ("open", "mc"):
        got = option_losses(model, processor, [kept, plain], loader, batch_size=8, prompt=prompt)
        assert len(got[0]) == 4 and got[0] == pytest.approx(got[1], abs=1e-5)
    cleaned = option_losses(
        model, processor, [{**base, "options": ["CT", "MRI", "X-Ray"]}], loader, batch_size=8
    )
    assert len(cleaned[0]) == 3


def test_eval_writes_every_file(tiny_model, eval_set, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["eval", "--model", str(tiny_model), "--data", str(eval_set), "--out", str(out)]
    assert main([*args, "--batch-size", "4", "--max-new-tokens", "4", "--train", str(eval_set)]) == 0
    assert "overall" in capsys.readouterr().out
    for name in ("predictions.jsonl", "scored.jsonl", "report.json", "report.md", "accuracy_by_modality.png"):
        assert (out / name).is_file(), name
    predictions = _records(out / "predictions.jsonl")
    assert len(predictions) == 11 and all(isinstance(p["prediction"], str) for p in predictions)
    with_options = [p for p in predictions if p["options"]]
    assert all(len(p["mc_prefix_losses"]) == len(p["options"]) for p in with_options)
    assert all(
        p["mc_prefix_choice"] == p["mc_prefix_losses"].index(min(p["mc_prefix_losses"])) for p in with_options
    )
    report = json.loads((out / "report.json").read_text())
    assert report["throughput"]["batch_size"] == 4 and report["throughput"]["questions_per_s"] > 0
    # the yes/no records' options do not hold their answer: no multiple-choice rule applies to them
    assert (
        report["scorers"]["mc_prefix_score"]["n"]
        == sum(p["answer"] in p["options"] for p in predictions)
        == 4
    )
    assert report["baseline_source"] == "train" and report["templates"]["seen"]["n"] == 11
    assert set(report["by_dataset"]) == {"VQA-RAD", "SLAKE"} and "yes_no" in report["by_dataset"]["SLAKE"]
    md = (out / "report.md").read_text()
    assert "questions/s at batch size 4" in md and "mc_prefix_score" in md

    # `medvqa score` on eval's predictions reproduces eval's report (one scoring path), throughput aside
    rescored = tmp_path / "rescored"
    assert main(["score", "--predictions", str(out / "predictions.jsonl"), "--out", str(rescored),
                 "--train", str(eval_set)]) == 0  # fmt: skip
    again = json.loads((rescored / "report.json").read_text())
    report.pop("throughput")
    report.pop("model")
    assert again == report


def test_eval_limit_and_no_mc_prefix(tiny_model, eval_set, tmp_path):
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(tiny_model), "--data", str(eval_set), "--out", str(out), "--limit", "3"]
    assert main([*argv, "--no-mc-prefix", "--max-new-tokens", "2"]) == 0
    predictions = _records(out / "predictions.jsonl")
    assert len(predictions) == 3 and not any("mc_prefix_choice" in p for p in predictions)


def test_eval_user_errors(tiny_model, eval_set, tmp_path, capsys):
    def fails(argv, *expected):
        try:
            code = main(argv)
        except SystemExit as exc:  # options are checked by argparse (training/cli_types.py)
            code = exc.code
        assert code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err  # no model loaded before the checks
        for text in expected:
            assert text in err, err

    base = ["--out", str(tmp_path / "out")]
    fails(
        ["eval", "--model", str(tmp_path / "nope"), "--data", str(eval_set), *base], "nope", "no config.json"
    )
    fails(
        ["eval", "--model", str(tiny_model), "--data", str(tmp_path / "x.jsonl"), *base],
        "x.jsonl",
        "no such file",
    )
    fails(
        ["eval", "--model", str(tiny_model), "--data", str(eval_set), "--batch-size", "0", *base],
        "--batch-size",
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": "1", "question": "q?", "answer": "yes"}\n', encoding="utf-8")
    fails(["eval", "--model", str(tiny_model), "--data", str(bad), *base], "bad.jsonl:1", "image")
    missing = tmp_path / "missing.jsonl"
    missing.write_text(
        '\n{"question_id": "1", "question": "q?", "answer": "yes", "image": "gone.png"}\n', encoding="utf-8"
    )
    fails(["eval", "--model", str(tiny_model), "--data", str(missing), *base], "gone.png", "missing.jsonl:2")
