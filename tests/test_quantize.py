"""``--quantize 4bit|8bit``: bitsandbytes through transformers on the tiny model (bitsandbytes' CPU backend).

Only the language model's decoder layers are quantised (NF4 + double quantisation for 4-bit); the vision tower, the
projector and the LM head keep their 16/32-bit weights; answers come out; the 4-bit decoder weighs <= 35% of 16-bit.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from training.cli import main
from training.quantization import weight_bytes

pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quant_images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 110, 3), dtype=np.uint8)).save(folder / "scan.png")
    return folder / "scan.png"


@pytest.fixture(scope="module")
def wider_model_dir(tmp_path_factory):
    """The tiny preset with a 256-wide LM: at width 64 bitsandbytes' fixed per-matrix tables (~1.1 KiB of codebooks
    against 4096 weights) would dominate what is measured; real layers hold millions of weights."""
    from training.tiny import TinySpec, save_tiny_model

    spec = TinySpec(text_hidden_size=256, text_intermediate_size=512, text_heads=4, text_kv_heads=2)
    return save_tiny_model(tmp_path_factory.mktemp("wider") / "model", spec)


def _load(tiny_model_dir, quantize, dtype="auto"):
    from training.evaluation.evaluate import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(tiny_model_dir, device="cpu", quantize=quantize, dtype=dtype)


def test_4bit_quantises_the_decoder_only_and_weighs_at_most_35_percent(wider_model_dir):
    import bitsandbytes as bnb

    model, _ = _load(wider_model_dir, "4bit")
    reference, _ = _load(wider_model_dir, None, dtype="bfloat16")
    lm = model.model.language_model
    linears = [m for m in lm.layers.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, bnb.nn.Linear4bit) for m in linears)
    state = linears[0].weight.quant_state
    assert state.quant_type == "nf4" and state.nested  # NF4 with double quantisation
    kept = [model.lm_head, *model.model.vision_tower.modules(), *model.model.multi_modal_projector.modules()]
    assert not any(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in kept)
    assert model.lm_head.weight.dtype == torch.float32  # fp32 on a CPU (bf16 on a GPU)
    assert model.model.multi_modal_projector.linear_1.weight.dtype == torch.float32
    ratio = weight_bytes(lm.layers) / weight_bytes(reference.model.language_model.layers)
    assert ratio <= 0.35, ratio


def test_8bit_quantises_the_decoder_only(tiny_model_dir):
    import bitsandbytes as bnb

    model, _ = _load(tiny_model_dir, "8bit")
    linears = [m for m in model.model.language_model.layers.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, bnb.nn.Linear8bitLt) for m in linears)
    assert not isinstance(model.model.multi_modal_projector.linear_1, bnb.nn.Linear8bitLt)
    ratio = weight_bytes(model.model.language_model.layers) / weight_bytes(
        _load(tiny_model_dir, None, dtype="bfloat16")[0].model.language_model.layers
    )
    assert ratio <= 0.6, ratio


@pytest.mark.parametrize("quantize", ["4bit", "8bit"])
def test_ask_quantized_answers(tiny_model_dir, image_path, quantize, capsys):
    args = ["ask", "--model", str(tiny_model_dir), "--image", str(image_path), "--max-new-tokens", "4"]
    args += [
        "--question",
        "Is this a CT image?",
        "--question",
        "Which organ is shown?",
        "--quantize",
        quantize,
    ]
    assert main(args) == 0
    answers = [line for line in capsys.readouterr().out.splitlines() if line.startswith("A:")]
    assert len(answers) == 2 and all(len(a) > 3 for a in answers)  # something was generated for each


def test_quantized_shared_prefix_equals_each_alone(tiny_model_dir, image_path):
    """Prefix reuse is exact on a 4-bit model too (same kernels for the prefix and for the whole prompt)."""
    from training.ask import answer_questions

    model, processor = _load(tiny_model_dir, "4bit")
    image = Image.open(image_path)
    questions = ["Is this a CT image?", "What imaging modality is used in this image?", "yes"]
    together = answer_questions(model, processor, image, questions, max_new_tokens=6)
    alone = [answer_questions(model, processor, image, [q], max_new_tokens=6)[0] for q in questions]
    assert together == alone


def test_ask_rejects_an_unknown_quantization(tiny_model_dir, image_path, capsys):
    args = ["ask", "--model", str(tiny_model_dir), "--image", str(image_path), "--question", "q"]
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--quantize", "3bit"])
    assert exit_info.value.code == 2
    assert "--quantize" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_quantized_writes_the_report(tiny_model_dir, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(1)
    lines = []
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i // 2}.png")
        lines.append(
            {
                "question_id": str(i),
                "dataset": "synthetic",
                "image": f"{i // 2}.png",
                "question": "Is this a CT image?" if i % 2 else "Which organ is shown?",
                "answer": "yes" if i % 2 else "brain",
                "answer_type": "yes_no" if i % 2 else "open",
                "modality": "CT",
                "modality_raw": "CT",
                "question_type": "Modality Recognition",
                "options": [],
                "source": "synthetic",
                "split": "test",
            }
        )
    (folder / "test.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "eval"
    args = ["eval", "--model", str(tiny_model_dir), "--data", str(folder / "test.jsonl"), "--out", str(out)]
    assert main(args + ["--quantize", "4bit", "--max-new-tokens", "4", "--no-mc-prefix"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 4 and report["throughput"]["quantize"] == "4bit"
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 4 and all("prediction" in p for p in predictions)
