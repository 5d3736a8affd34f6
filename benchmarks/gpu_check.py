"""One prepared check for a lent GPU (one H200 or A100): ``bash benchmarks/gpu_check.sh [--dry-run] [--out FILE]``.

Sections, each against a reference measured in the same run (the benchmarks' own code: ``benchmarks.speed``,
``benchmarks.models``, ``benchmarks.memory``), all written to one JSON file:

* ``train_step``: the ``lora`` step at the paper's shapes (ViT-B/16 + Llama-3-8B, random weights, bf16, gradient
  checkpointing, the recipe's per-device batch) -- ours vs transformers' LLaVA at equal shapes, and MFU against a
  matmul timed here (``speed.train_step``).
* ``memory_peak``: the CUDA peak of our model's lora steps (``torch.cuda.max_memory_allocated`` / ``_reserved``)
  against ``medvqa plan``'s prediction for the same batch and sequence.
* ``generation`` / ``image_reuse``: generate tokens/s vs LLaVA; k questions about one image, encoded once
  (``speed.generation``).
* ``quantized_4bit``: weight memory of the language model in 4-bit NF4 vs bf16 (``training.quantization``).
* ``prefix_reuse``: k questions about one image with the image prefix prefilled once vs one question at a time
  (``training.shared_prefix``).

The last two call code of another issue (quantisation and image-prefix reuse); where it is not installed they say
``"status": "not available"`` instead of a figure.

``--dry-run`` runs every section on the CPU at tiny shapes (fp32, one repeat; the memory peak through the CPU
harness of ``benchmarks.memory``), to check the script end to end without a GPU.  No timing figure of a dry run
means anything.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
PAPER_RECIPE = REPO / "configuration" / "recipes" / "paper_llama3_8b.yaml"
TINY_RECIPE = REPO / "configuration" / "recipes" / "tiny_cpu.yaml"
QUANT_LAYERS = 4
"""Decoder layers of the model quantised in ``quantized_4bit``: the paper's widths, 4 of Llama-3-8B's 32 layers
(saving and reloading all 8 B parameters would take most of the time budget); the full figure is extrapolated
per layer and labelled so."""
REUSE_K = 4


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/gpu_check.sh", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dry-run", action="store_true", help="CPU, tiny shapes, one repeat: checks the script"
    )
    parser.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/gpu-check-*.json)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement on the GPU")
    return parser.parse_args(argv)


def not_available(reason: str) -> dict[str, Any]:
    return {"status": "not available", "reason": reason}


def cuda_peak_vs_plan(shape, dtype, device: str, steps: int = 3) -> dict[str, Any]:
    """CUDA peak of our model's lora steps (as ``speed.train_step`` runs them) against ``medvqa plan``."""
    import torch

    from benchmarks.models import build_ours, make_inputs
    from benchmarks.speed import _lora_trainable, _step_fn
    from training.train.planner import CUDA_OVERHEAD_BYTES, plan_memory
    from training.train.recipe import load_recipe

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    model, config = build_ours(shape, dtype, device)
    if shape.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_model, optimizer, _ = _lora_trainable(model, dtype)
    inputs = make_inputs(shape, config, shape.batch, device)
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    step = _step_fn(peft_model, optimizer, inputs)
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    allocated = torch.cuda.max_memory_allocated() - before
    reserved = torch.cuda.max_memory_reserved()
    del step, peft_model, optimizer, model
    torch.cuda.empty_cache()
    gpu_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    plan = plan_memory(
        load_recipe(PAPER_RECIPE),
        "lora",
        1,
        gpu_gib,
        shape.batch,
        seq_len=int(inputs["input_ids"].shape[1]),
        answer_tokens=shape.answer_tokens,
        gradient_checkpointing=shape.gradient_checkpointing,
        padding_mask=True,
    )
    # max_memory_* never sees the CUDA context; the planner's fixed overhead line is mostly that.
    predicted = plan.total - CUDA_OVERHEAD_BYTES
    return {
        "predicted_bytes": predicted,
        "planner_total_bytes": plan.total,
        "planner_breakdown": plan.breakdown,
        "measured_allocated_bytes": allocated,
        "measured_reserved_bytes": reserved,
        "error_vs_reserved": (predicted - reserved) / reserved,
        "error_vs_allocated": (predicted - allocated) / allocated,
        "batch": shape.batch,
        "seq_len": int(inputs["input_ids"].shape[1]),
        "note": "the planner predicts DeepSpeed bf16 (fp32 gradients and master weights of the 41 M trainable "
        "parameters); this harness keeps them in bf16 as a plain AdamW does, ~0.5 GiB less",
    }


def _processor_dir(work: Path, shape) -> Path:
    """A MedVQA processor whose image size gives the shape's image tokens (tiny tokenizer: no Hub access)."""
    from training.tiny import TinySpec, save_tiny_model

    spec = (
        TinySpec() if shape.name == "tiny" else TinySpec(vision_model="vit_small_patch16_224", image_size=224)
    )
    return save_tiny_model(work / "processor-model", spec)


def _model_and_processor(work: Path, shape, dtype, device: str):
    """Our model at ``shape`` (random weights) and a processor whose ``<|image|>`` id the model is told."""
    from benchmarks.models import build_ours
    from modeling_medvqa import MedVQAProcessor

    processor = MedVQAProcessor.from_pretrained(_processor_dir(work, shape))
    model, config = build_ours(shape, dtype, device)
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image|>")
    model.config.image_token_id = config.image_token_id = image_token
    assert processor.image_seq_length == config.image_seq_length, (
        "processor and model disagree on image tokens"
    )
    return model.eval(), processor


def quantized_4bit(work: Path, shape, dtype, device: str) -> dict[str, Any]:
    """Weight bytes of the model with its decoder layers in 4-bit NF4 vs the same model in ``dtype``."""
    try:
        from training.quantization import quantization_config, weight_bytes
    except ImportError:
        return not_available("training.quantization (4-bit loading, another issue) is not installed yet")
    import dataclasses

    import torch

    from benchmarks.models import build_ours
    from modeling_medvqa import MedVQAForConditionalGeneration

    layers = min(QUANT_LAYERS, shape.text["num_hidden_layers"])
    small = dataclasses.replace(shape, text={**shape.text, "num_hidden_layers": layers})
    model, _ = build_ours(small, dtype, "cpu")
    full_bytes = weight_bytes(model)
    layer_bytes = weight_bytes(model.model.language_model.layers[0])
    folder = work / "quant-model"
    model.save_pretrained(folder)
    del model
    quantized = MedVQAForConditionalGeneration.from_pretrained(
        folder,
        quantization_config=quantization_config("4bit", dtype),
        dtype=dtype,
        device_map={"": device},
    )
    q_bytes = weight_bytes(quantized)
    q_layer_bytes = weight_bytes(quantized.model.language_model.layers[0])
    # Vision tower, projector, embeddings and LM head stay unquantised: the same bytes in both models.
    rest = full_bytes - layers * layer_bytes
    depth = shape.text["num_hidden_layers"]
    result = {
        "decoder_layers_measured": layers,
        "weight_bytes": full_bytes,
        "nf4_weight_bytes": q_bytes,
        "ratio": q_bytes / full_bytes,
        "decoder_layer_bytes": layer_bytes,
        "nf4_decoder_layer_bytes": q_layer_bytes,
        "full_depth": {
            "decoder_layers": depth,
            "weight_bytes": rest + depth * layer_bytes,
            "nf4_weight_bytes": rest + depth * q_layer_bytes,
            "ratio": (rest + depth * q_layer_bytes) / (rest + depth * layer_bytes),
            "note": "extrapolated: the measured unquantised rest + the full depth of measured layers",
        },
    }
    if device == "cuda":
        result["cuda_allocated_bytes"] = torch.cuda.memory_allocated()
    del quantized
    return result


def prefix_reuse(work: Path, shape, dtype, device: str, repeats: int) -> dict[str, Any]:
    """k questions about one image: the image prefix prefilled once and shared vs one question at a time."""
    try:
        from training.shared_prefix import generate_with_shared_prefix
    except ImportError:
        return not_available(
            "training.shared_prefix (image-prefix reuse, another issue) is not installed yet"
        )
    import numpy as np
    from PIL import Image

    from benchmarks.common import interleaved
    from training.evaluation.prompting import encode, render

    model, processor = _model_and_processor(work, shape, dtype, device)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8))
    questions = [
        "Which organ is shown?",
        "Is this a CT image?",
        "What abnormality is seen in the image?",
        "Which imaging modality was used here?",
    ][:REUSE_K]
    prompts = [render(processor, question) for question in questions]
    answers: dict[str, list[str]] = {}

    def shared():
        answers["shared"] = generate_with_shared_prefix(
            model, processor, [image], prompts, [0] * len(prompts), max_new_tokens=16
        )

    def one_at_a_time():
        out = []
        for prompt in prompts:
            inputs = encode(processor, [image], [prompt], padding_side="left").to(device)
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
            ids = model.generate(**inputs, max_new_tokens=16, do_sample=False)
            out.append(
                processor.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
            )
        answers["single"] = out

    import torch

    with torch.inference_mode():
        medians = interleaved({"shared": shared, "single": one_at_a_time}, repeats, device=device)
    return {
        "k": len(questions),
        "shared_prefix_s": medians["shared"],
        "one_at_a_time_s": medians["single"],
        "speedup": medians["single"] / medians["shared"],
        "same_answers": answers["shared"] == answers["single"],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from benchmarks.common import machine, quiet_libraries, versions

    quiet_libraries()
    import torch

    from benchmarks import speed
    from benchmarks.models import get_shape
    from training.train.recipe import load_recipe

    if not args.dry_run and not torch.cuda.is_available():
        print(
            "gpu_check: error: no CUDA device is visible (use --dry-run to check the script on a CPU)",
            file=sys.stderr,
        )
        return 2
    device = "cpu" if args.dry_run else "cuda"
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    repeats = 1 if args.dry_run else args.repeats
    batch = load_recipe(PAPER_RECIPE).stage_value("lora", "per_device_train_batch_size")
    shape = get_shape("tiny" if args.dry_run else "paper", recipe_batch=batch)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": "benchmarks/gpu_check.sh " + " ".join(argv if argv is not None else sys.argv[1:]),
        "dry_run": args.dry_run,
        "shape": shape.name,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "machine": machine(),
        "versions": versions(),
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
    }

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:5.0f} s] {message}", flush=True)

    log(f"gpu_check: shape {shape.name}, {device}, {results['dtype']}, {repeats} repeats")
    r = speed.train_step(shape, dtype, device, repeats, 8192 if device == "cuda" else 512)
    results["train_step"] = r
    log(
        f"train step (lora, batch {r['batch']}, {r['seq_len']} tokens): ratio ours/LLaVA {r['ratio']:.3f} "
        f"(ours {r['ours_samples_per_s']:.2f}, LLaVA {r['llava_samples_per_s']:.2f} samples/s); "
        f"MFU {100 * r['mfu']:.1f}% of a {r['matmul_peak_flops'] / 1e12:.2f} TFLOP/s matmul"
    )
    with tempfile.TemporaryDirectory(prefix="medvqa-gpu-check-") as tmp:
        work = Path(tmp)
        if device == "cuda":
            m = cuda_peak_vs_plan(shape, dtype, device)
        else:  # no CUDA allocator on a CPU: the planner against the CPU harness's measured peak instead
            from benchmarks.memory import planner_vs_measured
            from training.tiny import save_tiny_model

            m = planner_vs_measured(save_tiny_model(work / "tiny"), load_recipe(TINY_RECIPE), "lora", steps=1)
            m["error_vs_reserved"] = m["error"]
        results["memory_peak"] = m
        log(
            f"memory peak: planner {m['predicted_bytes'] / 2**30:.2f} GiB vs measured "
            f"{m.get('measured_reserved_bytes', m.get('measured_bytes', 0)) / 2**30:.2f} GiB, "
            f"error {100 * m['error_vs_reserved']:+.1f}%"
        )
        g = speed.generation(shape, dtype, device, repeats)
        results.update(g)
        log(
            f"generation ({g['generation']['batch']} x {g['generation']['new_tokens']} tokens): ratio ours/LLaVA "
            f"{g['generation']['ratio']:.3f} ({g['generation']['ours_tokens_per_s']:.1f} vs "
            f"{g['generation']['llava_tokens_per_s']:.1f} tok/s); image encoded once for k=4: "
            f"{g['image_reuse']['speedup']:.2f}x"
        )
        q = quantized_4bit(work, shape, dtype, device)
        results["quantized_4bit"] = q
        log(
            f"4-bit: {q['reason'] if 'reason' in q else 'NF4/bf16 weight bytes ' + format(q['ratio'], '.3f')}"
        )
        p = prefix_reuse(work, shape, dtype, device, repeats)
        results["prefix_reuse"] = p
        log(
            f"prefix reuse: {p['reason'] if 'reason' in p else format(p['speedup'], '.2f') + 'x vs one at a time'}"
        )
    results["elapsed_s"] = time.perf_counter() - started
    out = args.out or RESULTS / f"gpu-check-{dt.date.today().isoformat()}-{platform.node() or 'host'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
