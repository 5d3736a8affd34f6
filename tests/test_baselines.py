"""``medvqa eval`` on other families (LLaVA, Gemma 3, Qwen2-VL, Idefics3): tiny randomly initialised models built
from their config classes, each with a locally trained tokenizer and its real processor class. Both prompt modes end to
end, batched = one at a time, the report names the model; Hub revisions, ``--baselines`` and remote-code refusal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_eval import write_eval_set

from training.cli import main

FAMILIES = ("llava", "gemma3", "qwen2_vl", "idefics3")
PROCESSORS = {
    "llava": "LlavaProcessor",
    "gemma3": "Gemma3Processor",
    "qwen2_vl": "Qwen2VLProcessor",
    "idefics3": "Idefics3Processor",
}


@pytest.fixture(scope="module")
def tiny_vlms(tmp_path_factory) -> dict[str, Path]:
    from training.tiny_vlms import build_tiny_vlm

    root = tmp_path_factory.mktemp("vlms")
    return {family: build_tiny_vlm(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory) -> Path:
    return write_eval_set(tmp_path_factory.mktemp("data"))


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_mc_prompt_lists_the_options_and_open_asks_the_question():
    from training.evaluation.prompting import MC_INSTRUCTION, question_text

    record = {"question": "What modality is used?", "options": ["CT", "MRI", "X-Ray"]}
    mc = question_text(record, "mc")
    assert mc.startswith(MC_INSTRUCTION) and "What modality is used?" in mc
    assert "(A) CT (B) MRI (C) X-Ray" in mc and mc.endswith("### Answer:")
    assert question_text(record, "open") == "What modality is used?"
    assert question_text({"question": "Is there a lesion?", "options": []}, "mc") == "Is there a lesion?"


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("prompt", ["open", "mc"])
def test_batched_equals_one_at_a_time(tiny_vlms, eval_set, family, prompt):
    from training.evaluation.evaluate import ImageLoader, generate_answers, option_losses
    from training.evaluation.vlm_loading import load_vlm

    model, processor = load_vlm(tiny_vlms[family], device="cpu")
    records = _records(eval_set)[:6]  # batch size 4 leaves a short last batch
    loader = ImageLoader(eval_set, keep_gray=False)
    one = generate_answers(model, processor, records, loader, batch_size=1, max_new_tokens=5, prompt=prompt)
    assert (
        generate_answers(model, processor, records, loader, batch_size=4, max_new_tokens=5, prompt=prompt)
        == one
    )
    single = option_losses(model, processor, records[:5], loader, batch_size=1, prompt=prompt)
    batched = option_losses(model, processor, records[:5], loader, batch_size=8, prompt=prompt)
    assert [x is None for x in batched] == [not r["options"] for r in records[:5]]
    for b, s in zip(batched, single):
        assert (b is None and s is None) or b == pytest.approx(s, abs=1e-4)


@pytest.mark.parametrize("family", ["llava", "gemma3"])
def test_option_loss_matches_a_plain_forward_pass(tiny_vlms, eval_set, family):
    """The option's mean NLL from one unpadded full forward (all logits) equals option_losses' value."""
    import torch

    from training.evaluation import prompting
    from training.evaluation.evaluate import ImageLoader, option_losses
    from training.evaluation.vlm_loading import load_vlm

    model, processor = load_vlm(tiny_vlms[family], device="cpu")
    record = _records(eval_set)[4]
    loader = ImageLoader(eval_set, keep_gray=False)
    (got,) = [x for x in option_losses(model, processor, [record], loader, batch_size=8) if x]
    prefix = prompting.render(processor, record["question"])
    enc = prompting.encode(processor, [loader(record)], [prefix], padding_side="right")
    for option, value in zip(record["options"], got):
        full = prompting.render(processor, record["question"], answer=option)
        completion = full[len(prefix) :]
        option_part = completion[: completion.index(option) + len(option)]
        option_ids = processor.tokenizer(option_part, add_special_tokens=False, return_tensors="pt")[
            "input_ids"
        ]
        ids = torch.cat([enc["input_ids"], option_ids], dim=1)
        extra = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask", "token_type_ids")}
        if "token_type_ids" in enc:
            extra["token_type_ids"] = torch.cat([enc["token_type_ids"], torch.zeros_like(option_ids)], dim=1)
        with torch.no_grad():
            logits = model(input_ids=ids, **extra).logits[0]
        start = enc["input_ids"].shape[1]
        expected = torch.nn.functional.cross_entropy(logits[start - 1 : -1], ids[0, start:]).item()
        assert value == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_eval_end_to_end_in_both_prompt_modes(tiny_vlms, eval_set, tmp_path, family):
    losses = {}
    for prompt in ("open", "mc"):
        out = tmp_path / prompt
        argv = ["eval", "--model", str(tiny_vlms[family]), "--data", str(eval_set), "--out", str(out)]
        assert (
            main([*argv, "--prompt", prompt, "--batch-size", "4", "--max-new-tokens", "3", "--limit", "6"])
            == 0
        )
        report = json.loads((out / "report.json").read_text())
        model = report["model"]
        assert model["family"] == family and model["processor_class"] == PROCESSORS[family]
        assert model["id"] == str(tiny_vlms[family].resolve()) and model["source"] == "folder"
        assert model["revision"] is None and model["trust_remote_code"] is False
        assert model["prompt"] == prompt
        assert model["generation"] == {
            "do_sample": False, "num_beams": 1, "max_new_tokens": 3, "batch_size": 4, "padding_side": "left",
            "mc_prefix": True,
        }  # fmt: skip
        # records 1 and 4 of the first 6 have their answer among the options
        assert report["n"] == 6 and report["scorers"]["mc_qa_score"]["n"] == 2
        assert report["scorers"]["mc_prefix_score"]["n"] == 2
        assert f"prompt `{prompt}`" in (out / "report.md").read_text()
        predictions = _records(out / "predictions.jsonl")
        assert all(isinstance(p["prediction"], str) for p in predictions)
        losses[prompt] = [p["mc_prefix_losses"] for p in predictions if p["options"]]
    # the options are scored after the question as asked: the multiple-choice prompt changes every loss
    assert all(a != b for a, b in zip(losses["open"], losses["mc"]))


def test_hub_id_report_names_the_commit(tiny_vlms, eval_set, tmp_path):
    """A Hub id resolved from the local cache (offline): report.json gives the snapshot's commit hash."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-gemma3"
    shutil.copytree(tiny_vlms["gemma3"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "training.cli", "eval", "--model", "tiny-org/tiny-gemma3", "--data", str(eval_set),
           "--out", str(out), "--limit", "3", "--max-new-tokens", "2", "--no-mc-prefix"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    model = json.loads((out / "report.json").read_text())["model"]
    assert model["id"] == "tiny-org/tiny-gemma3" and model["source"] == "hub" and model["revision"] == commit
    # a folder inside the cache names its snapshot too
    from training.evaluation.vlm_loading import revision_of

    assert revision_of(repo / "snapshots" / commit) == commit


def test_baselines_file_runs_the_named_entries(tiny_vlms, eval_set, tmp_path, capsys):
    baselines = tmp_path / "baselines.yaml"
    baselines.write_text(
        "baselines:\n"
        f"  tiny-llava:\n    id: {tiny_vlms['llava']}\n    family: llava\n    size: 0.1M\n    licence: test\n"
        f"  tiny-qwen:\n    id: {tiny_vlms['qwen2_vl']}\n    family: qwen2_vl\n    size: 0.1M\n    licence: test\n"
        "    trust_remote_code: false\n",
        encoding="utf-8",
    )
    out = tmp_path / "runs"
    common = ["--data", str(eval_set), "--limit", "3", "--max-new-tokens", "2", "--no-mc-prefix"]
    assert (
        main(["eval", "--baselines", str(baselines), "--only", "tiny-qwen", "--out", str(out), *common]) == 0
    )
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["tiny-qwen"]
    model = json.loads((out / "tiny-qwen" / "report.json").read_text())["model"]
    assert model["family"] == "qwen2_vl" and model["baseline"] == {"name": "tiny-qwen", "size": "0.1M",
                                                                    "licence": "test"}  # fmt: skip
    capsys.readouterr()

    def fails(argv, *expected):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        for text in expected:
            assert text in err, err

    fails(["eval", "--baselines", str(baselines), "--only", "nope", "--out", str(tmp_path / "x"), *common],
          "--only", "nope", "tiny-llava")  # fmt: skip
    fails(["eval", "--baselines", str(baselines), "--model", str(tiny_vlms["llava"]), "--out", str(tmp_path / "y"),
           *common], "--model")  # fmt: skip
    fails(["eval", "--out", str(tmp_path / "z"), *common], "--model")
    bad = tmp_path / "bad.yaml"
    bad.write_text("baselines:\n  x:\n    id: a/b\n    family: f\n", encoding="utf-8")
    fails(
        ["eval", "--baselines", str(bad), "--out", str(tmp_path / "w"), *common], "bad.yaml", "missing keys"
    )


def test_shipped_baselines_file_is_complete():
    from training.evaluation.baselines import load_baselines

    baselines = load_baselines(Path(__file__).parents[1] / "configuration" / "baselines.yaml")
    assert {"medgemma-4b-it", "llava-med-v1.5-mistral-7b", "qwen2.5-vl-7b-instruct", "llava-1.5-7b"} <= set(
        baselines
    )
    assert baselines["medgemma-4b-it"].id == "google/medgemma-4b-it"
    families = {b.family for b in baselines.values()}
    assert {"gemma3", "llava", "qwen2_5_vl", "idefics3"} <= families
    from training.evaluation.prompting import ADAPTERS

    assert all(b.adapter is None or b.adapter in ADAPTERS for b in baselines.values())


def test_remote_code_only_when_asked(tmp_path, eval_set, capsys):
    """A checkpoint whose config lives in its own code is refused before anything of it runs."""
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"model_type": "my_vlm", "auto_map": {"AutoConfig": "configuration_my_vlm.MyVLMConfig"}})
    )
    (folder / "configuration_my_vlm.py").write_text("raise SystemExit('remote code ran')\n")
    import torch
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(1)}, str(folder / "model.safetensors"))
    argv = ["eval", "--model", str(folder), "--data", str(eval_set), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--trust-remote-code" in err and "custom" in err, err


def test_dicom_and_nifti_reach_another_family_as_pil_images(tiny_vlms, tmp_path):
    """Our loader (DICOM windowing, NIfTI middle slice) feeds any model: the tiny Qwen2-VL answers both."""
    from nibabel.testing import data_path
    from pydicom.data import get_testdata_file

    records = [
        {"question_id": "d", "image": get_testdata_file("CT_small.dcm", download=False), "question": "Is this a CT?",
         "answer": "yes"},
        {"question_id": "n", "image": str(Path(data_path) / "anatomical.nii"), "question": "Which organ is shown?",
         "answer": "brain"},
    ]  # fmt: skip
    data = tmp_path / "medical.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(tiny_vlms["qwen2_vl"]), "--data", str(data), "--out", str(out)]
    assert main([*argv, "--max-new-tokens", "2", "--batch-size", "2"]) == 0
    predictions = _records(out / "predictions.jsonl")
    assert [p["question_id"] for p in predictions] == ["d", "n"]
    assert all(isinstance(p["prediction"], str) for p in predictions)


def test_benchmark_against_the_pipeline_runs_and_agrees(tmp_path):
    """The eval-vs-pipeline benchmark: both answer every question identically (same prompt, same greedy
    decoding); the figures are present (no timed assertion)."""
    from benchmarks.eval_vs_pipeline import main as bench

    result = bench(["--family", "llava", "--questions", "4", "--batch-size", "2", "--max-new-tokens", "3",
                    "--repeats", "1", "--threads", "0", "--out", str(tmp_path / "bench.json")])  # fmt: skip
    assert result["same_answers"] == 4
    assert (
        result["ratio"] > 0 and result["ours_questions_per_s"] > 0 and result["pipeline_questions_per_s"] > 0
    )
    assert json.loads((tmp_path / "bench.json").read_text())["batch_size"] == 2


def test_template_that_cannot_score_options_is_refused_before_generating(
    tiny_vlms, eval_set, tmp_path, capsys
):
    """A chat template whose answer turn does not follow its generation prompt: mc_prefix is refused with one line
    naming the way out, and --no-mc-prefix evaluates."""
    folder = tmp_path / "odd-llava"
    shutil.copytree(tiny_vlms["llava"], folder)
    template = folder / "chat_template.jinja"
    text = template.read_text()
    assert "ASSISTANT:{% endif %}" in text
    template.write_text(text.replace("ASSISTANT:{% endif %}", "ASSISTANT (short answer):{% endif %}"))
    argv = ["eval", "--model", str(folder), "--data", str(eval_set), "--limit", "2", "--max-new-tokens", "2"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--no-mc-prefix" in err, err
    assert not (tmp_path / "a" / "predictions.jsonl").exists()
    assert main([*argv, "--out", str(tmp_path / "b"), "--no-mc-prefix"]) == 0
