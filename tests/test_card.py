"""`medvqa card`: the model card built from a model folder, report.json and the recipe, parsed back with ModelCard."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard
from safetensors.numpy import save_file

from hub_card.card import DEFAULT_TEXT_BASE, DEFAULT_VISION_BASE, build_card, write_card
from training.cli import main

GROUPS = ("by_modality", "by_question_type", "by_dataset", "templates", "scorers")


def _m(acc: float, n: int, **extra) -> dict:
    return {
        "accuracy": acc,
        "n": n,
        "ci95": [round(max(0.0, acc - 0.1), 6), round(min(1.0, acc + 0.1), 6)],
        **extra,
    }


def _report() -> dict:
    """A report with every DESIGN.md §7 key, awkward floats included, plus medvqa's extras."""
    return {
        "primary": {"yes_no": "yes_no", "open": "normalized_exact"},
        "n": 90,
        "overall": _m(0.6111111111111112, 90, majority_baseline=0.3),
        "yes_no": _m(0.8, 30, majority_baseline=0.5),
        "open": _m(0.5166666666666667, 60, majority_baseline=0.2),
        "by_modality": {"CT": _m(0.55, 40, majority_baseline=0.25), "MRI": _m(0.66, 50), "OCT": _m(0.0, 0)},
        "by_question_type": {"Modality Recognition": _m(0.9, 45), "Disease Diagnosis": _m(1 / 3, 45)},
        "by_dataset": {"RadImageNet": _m(0.6, 70), "Chest | CT": _m(0.65, 20)},
        "scorers": {
            "normalized_exact": _m(0.5166666666666667, 60),
            "yes_no": _m(0.8, 30),
            "contains": _m(0.7, 90),
            "token_f1": _m(0.72, 90, mean=0.7512),
            "mc_prefix_score": _m(0.0, 0),
        },
        "baselines": {"majority_answer": _m(0.3, 90)},
        "templates": {"seen": _m(0.7, 70), "novel": _m(0.3, 20)},
        "diagnostics": {
            "top_prediction_share": 0.21,
            "distinct_predictions": 14,
            "answer_entropy_bits": 3.2,
            "mode_collapse": False,
        },
        "throughput": {"questions_per_s": 3.5, "batch_size": 8},
        "ci_method": "Wilson score interval, 95%",
        "warnings": [],
    }


RECIPE = """\
name: paper
output_dir: {tmp}/runs/paper
hardware: "2x NVIDIA A100 40GB, DeepSpeed ZeRO-2"
model: {{vision: "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", text: meta-llama/Meta-Llama-3-8B-Instruct}}
data: {{train: {tmp}/data/train.jsonl, max_length: null}}
training: {{per_device_train_batch_size: 8, gradient_accumulation_steps: 8, num_gpus: 2, bf16: true, optim: adamw_torch}}
lora: {{r: 8, alpha: 32, target_modules: [q_proj, v_proj]}}
stages:
  clip: {{num_train_epochs: 1, learning_rate: 1.0e-5}}
  lora: {{num_train_epochs: 1, learning_rate: 2.0e-4}}
  joint: {{num_train_epochs: 1, learning_rate: 1.0e-4}}
PatientName: "Doe^Jane"
"""


def make_model_dir(root: Path, *, with_recipe: bool = True) -> Path:
    """A fake full-model folder: config with local base paths (as `medvqa init` writes), weights, code, charts."""
    d = root / "model"
    d.mkdir(parents=True)
    config = {
        "model_type": "medvqa",
        "auto_map": {"AutoModelForImageTextToText": "modeling_medvqa.MedVQAForConditionalGeneration"},
        "base_models": {"vision": f"local-dir:{root}/bases/clip", "text": f"{root}/bases/llama"},
        "vision_config": {"timm_model_name": "vit_base_patch16_224", "image_size": 224},
        "text_config": {"_name_or_path": f"{root}/bases/llama", "hidden_size": 64, "num_hidden_layers": 2},
        "image_seq_length": 196,
        "vision_feature_layer": -2,
    }
    (d / "config.json").write_text(json.dumps(config))
    save_file({"w": np.zeros((4, 8), np.float32), "b": np.zeros(8, np.float32)}, str(d / "model.safetensors"))
    (d / "modeling_medvqa.py").write_text("X = 1\n")
    (d / "tokenizer.json").write_text("{}")
    (d / "accuracy_by_modality.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (d / "report.json").write_text(json.dumps(_report()))
    if with_recipe:
        (d / "training_recipe.yaml").write_text(RECIPE.format(tmp=root))
    return d


def _model_index_metrics(card: ModelCard) -> dict[tuple[str, str | None], object]:
    out = {}
    for result in card.data.eval_results:
        args = result.metric_args
        key = (args["group"], args.get("key"))
        assert key not in out, f"duplicate metric {key}"
        out[key] = result
    return out


def test_card_metrics_equal_report(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path)
    report = _report()
    readme = write_card(d, d / "report.json")
    assert readme == d / "README.md"
    card = ModelCard.load(readme)

    expected = {(g, None): report[g] for g in ("overall", "yes_no", "open")}
    for group in GROUPS:
        expected |= {(group, k): m for k, m in report[group].items() if m["n"] > 0}
    found = _model_index_metrics(card)
    assert set(found) == set(expected)  # every non-empty slice, nothing else
    for key, result in found.items():
        m = expected[key]
        assert result.metric_type == "accuracy"
        assert result.metric_value == m["accuracy"], key  # exact: the report's float, not a rounded one
        assert result.metric_args["n"] == m["n"]
        assert result.metric_args["ci95"] == m["ci95"]
        assert result.task_type == "visual-question-answering"
    assert found[("yes_no", None)].metric_config == "yes_no"
    assert found[("open", None)].metric_config == "normalized_exact"
    assert found[("scorers", "contains")].metric_config == "contains"
    assert "n=90" in found[("overall", None)].metric_name and "95% CI" in found[("overall", None)].metric_name


def test_card_metadata(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path)
    card = ModelCard.load(write_card(d, d / "report.json"))
    data = card.data
    assert data.license == "llama3"
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "image-text-to-text"
    # the config names only local folders, so both Hub bases fall back to the real ones
    assert data.base_model == [DEFAULT_VISION_BASE, DEFAULT_TEXT_BASE]
    assert "medical" in data.tags
    assert data.model_name == "model"


def test_base_models_read_from_config(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path)
    config = json.loads((d / "config.json").read_text())
    config["base_models"] = {"vision": "hf-hub:org/clip-x", "text": "org/llama-x"}
    (d / "config.json").write_text(json.dumps(config))
    assert build_card(d, _report()).data.base_model == ["org/clip-x", "org/llama-x"]


def test_card_sections(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path)
    text = ModelCard.load(write_card(d, d / "report.json", repo_id="org/medvqa-lite")).text
    for needle in (
        "## How to use",
        "AutoModelForImageTextToText",
        "AutoProcessor",
        "trust_remote_code=True",
        '{"type": "image"}',
        '{"type": "text"',
        "apply_chat_template",
        "model.generate(",
        'model_id = "org/medvqa-lite"',
        "### By modality",
        "### By question type",
        "`normalized_exact`",
        "`yes_no`",
        "`contains`",
        "0.751",  # token_f1's mean score
        "majority baseline",
        "](accuracy_by_modality.png)",
        "2x NVIDIA A100 40GB, DeepSpeed ZeRO-2",
        "| `joint` |",
        "Global batch: 8 per device x 8 accumulation x 2 GPUs = 128",
        "## Intended use",
        "Template uniformity",
        "No official split",
        "Not for clinical use",
        "eprint        = {2504.05575}",
        "@misc{",
    ):
        assert needle in text, needle
    # per-modality rows: n, accuracy and CI, with the slice's own majority baseline
    assert "| CT | 40 | 55.0% | 45.0–65.0 | 25.0% |" in text
    assert "| Chest \\| CT | 20 |" in text  # a pipe in a name does not break the table
    assert "| OCT |" not in text  # n == 0: nothing to show
    assert "| Overall | 90 | 61.1% | 51.1–71.1 | 30.0% |" in text


def test_loading_snippet_is_valid_python(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path)
    text = build_card(d, _report(), repo_id="org/x").text
    snippet = re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)
    compile(snippet, "snippet", "exec")


def test_card_has_no_local_paths_or_patient_fields(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path)
    content = write_card(d, d / "report.json").read_text()
    assert str(tmp_path) not in content
    assert "Doe" not in content and "PatientName" not in content
    assert "<local path>" in content  # the recipe's absolute output_dir was replaced, not dropped silently


def test_recipe_default_and_explicit(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path, with_recipe=False)
    text = ModelCard.load(write_card(d, d / "report.json")).text
    assert "No training recipe was given" in text
    other = tmp_path / "other.yaml"
    other.write_text("hardware: 8x H100\nstages: [{name: only, epochs: 2}]\n")
    text = ModelCard.load(write_card(d, d / "report.json", other)).text
    assert "8x H100" in text and "| `only` |" in text


def test_minimal_report_and_odd_recipe_do_not_crash(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path, with_recipe=False)
    report = {"overall": {"accuracy": 0.5, "n": 10, "ci95": [0.2, 0.8]}}
    recipe = {
        "stages": {"clip": None, "lora": "default"},
        "training": {},
        "lora": [1, 2],
        "hardware": {"gpus": 2},
    }
    card = build_card(d, report, recipe)
    assert [r.metric_value for r in card.data.eval_results] == [0.5]
    assert "gpus=2" in card.text


def test_adapter_only_card(tmp_path: Path) -> None:
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text(
        json.dumps(
            {"base_model_name_or_path": "org/medvqa-init", "r": 8, "lora_alpha": 32, "peft_type": "LORA"}
        )
    )
    save_file({"lora_A": np.zeros((8, 4), np.float32)}, str(d / "adapter_model.safetensors"))
    card = build_card(d, _report(), None, repo_id="org/medvqa-adapter")
    assert card.data.base_model == ["org/medvqa-init"]
    assert card.data.library_name == "peft"
    assert "LoRA adapter only" in card.text and "org/medvqa-init" in card.text
    assert "PeftModel.from_pretrained" in card.text


def test_cli_card_writes_readme(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_model_dir(tmp_path)
    assert main(["card", "--model", str(d), "--report", str(d / "report.json")]) == 0
    assert (d / "README.md").is_file()
    assert "README.md" in capsys.readouterr().out


@pytest.mark.parametrize(
    "problem",
    [
        "missing_model",
        "missing_report",
        "bad_json",
        "no_overall",
        "missing_recipe",
        "bad_yaml",
        "not_a_model",
    ],
)
def test_cli_card_bad_input_exit_2_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], problem: str
) -> None:
    d = make_model_dir(tmp_path)
    report = d / "report.json"
    args = ["card", "--model", str(d), "--report", str(report)]
    if problem == "missing_model":
        args[2] = str(tmp_path / "nope")
    elif problem == "missing_report":
        args[4] = str(tmp_path / "nope.json")
    elif problem == "bad_json":
        report.write_text("{not json")
    elif problem == "no_overall":
        report.write_text(json.dumps({"n": 3}))
    elif problem == "missing_recipe":
        args += ["--recipe", str(tmp_path / "nope.yaml")]
    elif problem == "bad_yaml":
        (tmp_path / "bad.yaml").write_text("stages: [unclosed\n")
        args += ["--recipe", str(tmp_path / "bad.yaml")]
    elif problem == "not_a_model":
        (d / "config.json").unlink()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("medvqa card: error: ")
    assert not (d / "README.md").exists()


def test_card_of_the_real_tiny_model(tiny_model_dir: Path) -> None:
    """The folder `medvqa init` writes: its local base paths become the Hub defaults and never reach the card."""
    card = build_card(tiny_model_dir, _report())  # builds in memory: the shared fixture folder stays as it is
    assert card.data.base_model == [DEFAULT_VISION_BASE, DEFAULT_TEXT_BASE]
    content = str(card)
    assert str(tiny_model_dir.parent) not in content
    assert f"{card.data.model_name}" == tiny_model_dir.name
    assert "parameters in safetensors" in card.text


def test_card_of_a_report_from_the_real_scorer(tmp_path: Path) -> None:
    """report.json as `medvqa score` makes it (extras, nested baselines): every metric still comes back equal."""
    from training.evaluation.report import score_records

    records = []
    for i in range(24):
        yes_no = i % 3 == 0
        answer = ("yes" if i % 2 else "no") if yes_no else ["ct", "mri", "normal"][i % 3]
        records.append(
            {
                "question_id": str(i),
                "dataset": ["RadImageNet", "BUSI"][i % 2],
                "image": f"{i}.png",
                "question": f"Is it {i}?" if yes_no else "Which modality?",
                "answer": answer,
                "answer_type": "yes_no" if yes_no else "open",
                "modality": ["CT", "MRI", "Ultrasound"][i % 3],
                "modality_raw": "",
                "question_type": ["Modality Recognition", "Disease Diagnosis"][i % 2],
                "options": [],
                "source": "test",
                "split": "test",
                "prediction": answer if i % 4 else "normal",
            }
        )
    report = json.loads(json.dumps(score_records(records, records[:12]).report))  # as read back from disk
    d = make_model_dir(tmp_path, with_recipe=False)
    (d / "report.json").write_text(json.dumps(report))
    card = ModelCard.load(write_card(d, d / "report.json"))
    found = _model_index_metrics(card)
    expected = {(g, None): report[g] for g in ("overall", "yes_no", "open")}
    for group in GROUPS:
        expected |= {(group, k): m for k, m in report[group].items() if m["n"] > 0}
    assert set(found) == set(expected)
    for key, result in found.items():
        assert result.metric_value == expected[key]["accuracy"], key
        assert result.metric_args["ci95"] == expected[key]["ci95"], key
    ct = report["by_modality"]["CT"]
    base = report["baselines"]["majority_answer"]["by_modality"]["CT"]["accuracy"]
    row = next(line for line in card.text.splitlines() if line.startswith("| CT |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == [
        "CT",
        str(ct["n"]),
        f"{100 * ct['accuracy']:.1f}%",
        f"{100 * ct['ci95'][0]:.1f}–{100 * ct['ci95'][1]:.1f}",
        f"{100 * base:.1f}%",
    ]
