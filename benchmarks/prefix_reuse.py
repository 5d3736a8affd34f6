"""Image prefix reuse and 4-bit weights, each against its reference measured in the same run.

``python -m benchmarks.prefix_reuse [--shapes small,paper-shallow] [--quant-shapes tiny,small] [--out FILE]``

* prefix reuse: k = 1, 2, 4, 8 questions about one image answered by ``training.shared_prefix`` (the image prefix
  prefilled once, the questions decoded as one batch) vs k independent ``generate`` calls (one question, one full
  prompt each), greedy; the ratio of the two median times, and whether the answers are identical.
* 4-bit: the language model's weight bytes (decoder layers, and the whole LM with its embedding) in NF4 vs the same
  weights in 16-bit, and generation tokens/s 4-bit vs unquantised (fp32 on a CPU), k = 1.

Shapes: ``small`` is benchmarks.run's small preset (ViT-S/16 at 224 px: 196 image tokens, a 4-layer 512-wide
Llama); ``paper-shallow`` has the paper's widths (ViT-B/16, a 4096-wide Llama-3 layer with its heads) but one decoder
layer and the tiny tokenizer, for a CPU; ``tiny`` is the tests' preset.  Models are built by ``medvqa init`` from
random bases (``training.tiny``), so the processor and the loading path are the real ones.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

QUESTIONS = [
    "What imaging modality is used in this image?",
    "Is this a CT image?",
    "Which organ is visible in this image?",
    "Is there a lesion in the image?",
    "What part of the body is shown?",
    "Is this an MRI scan?",
    "What is the diagnosis?",
    "Is there an abnormality?",
]


def _spec(shape: str):
    from training.tiny import TinySpec

    if shape == "tiny":
        return TinySpec()
    if shape == "small":
        from benchmarks.run import _small_spec

        return _small_spec()
    if shape == "paper-shallow":
        return TinySpec(
            vision_model="vit_base_patch16_224",
            image_size=224,
            clip_embed_dim=64,
            text_hidden_size=4096,
            text_intermediate_size=14336,
            text_layers=1,
            text_heads=32,
            text_kv_heads=8,
        )
    raise ValueError(shape)


def _image():
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8))


def _alone(model, processor, image, question: str, max_new_tokens: int) -> str:
    import torch

    from training.evaluation.prompting import encode, render

    inputs = encode(processor, [image], [render(processor, question)], padding_side="left")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def prefix_reuse(model_dir: Path, ks: list[int], repeats: int, max_new_tokens: int, log) -> dict[str, Any]:
    from benchmarks.common import interleaved
    from training.ask import answer_questions
    from training.evaluation.evaluate import load_model

    model, processor = load_model(model_dir, device="cpu")
    image = _image()
    out: dict[str, Any] = {}
    for k in ks:
        questions = QUESTIONS[:k]
        shared = answer_questions(model, processor, image, questions, max_new_tokens=max_new_tokens)
        alone = [_alone(model, processor, image, q, max_new_tokens) for q in questions]
        times = interleaved(
            {
                "independent": lambda qs=questions: [
                    _alone(model, processor, image, q, max_new_tokens) for q in qs
                ],
                "prefix_reuse": lambda qs=questions: answer_questions(
                    model, processor, image, qs, max_new_tokens=max_new_tokens
                ),
            },
            repeats=repeats,
        )
        out[f"k{k}"] = {
            "speedup": times["independent"] / times["prefix_reuse"],
            "identical_answers": shared == alone,
            "independent_s": times["independent"],
            "prefix_reuse_s": times["prefix_reuse"],
        }
        log(
            f"  k={k}: prefix reuse {out[f'k{k}']['speedup']:.2f}x faster than {k} independent calls, "
            f"answers identical: {shared == alone}"
        )
    return out


def four_bit(model_dir: Path, repeats: int, max_new_tokens: int, log) -> dict[str, Any]:
    import torch

    from benchmarks.common import interleaved
    from training.evaluation.evaluate import load_model
    from training.evaluation.prompting import encode, render
    from training.quantization import weight_bytes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q4, processor = load_model(model_dir, device="cpu", quantize="4bit")
        full, _ = load_model(model_dir, device="cpu")
        half, _ = load_model(model_dir, device="cpu", dtype="bfloat16")
    layers = weight_bytes(q4.model.language_model.layers) / weight_bytes(half.model.language_model.layers)
    lm = weight_bytes(q4.model.language_model) / weight_bytes(half.model.language_model)
    inputs = encode(processor, [_image()], [render(processor, QUESTIONS[0])], padding_side="left")

    def run(model):
        with torch.inference_mode():
            return model.generate(
                **inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False
            )

    answer = processor.decode(run(q4)[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    times = interleaved({"fp32": lambda: run(full), "nf4": lambda: run(q4)}, repeats=repeats)
    result = {
        "lm_layers_bytes_vs_16bit": layers,
        "lm_with_embedding_bytes_vs_16bit": lm,
        "tokens_per_s_vs_fp32": times["fp32"] / times["nf4"],
        "answer_produced": bool(answer.strip()),
    }
    log(
        f"  4-bit: decoder layers {100 * layers:.1f}% of 16-bit, LM incl. embedding {100 * lm:.1f}%; "
        f"tokens/s {result['tokens_per_s_vs_fp32']:.2f}x of fp32 (CPU); answer produced: {result['answer_produced']}"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.prefix_reuse", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--shapes", default="small,paper-shallow")
    parser.add_argument("--quant-shapes", default="tiny,small")
    parser.add_argument("--ks", default="1,2,4,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    from training.tiny import save_tiny_model

    def log(line: str) -> None:
        print(line, flush=True)

    results: dict[str, Any] = {"prefix_reuse": {}, "four_bit": {}}
    ks = [int(k) for k in args.ks.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        built: dict[str, Path] = {}

        def model_dir(shape: str) -> Path:
            if shape not in built:
                built[shape] = save_tiny_model(Path(tmp) / shape / "model", _spec(shape))
            return built[shape]

        for shape in [s for s in args.shapes.split(",") if s]:
            start = time.perf_counter()
            log(f"prefix reuse, {shape} shape:")
            results["prefix_reuse"][shape] = prefix_reuse(
                model_dir(shape), ks, args.repeats, args.max_new_tokens, log
            )
            log(f"  ({time.perf_counter() - start:.0f} s)")
        for shape in [s for s in args.quant_shapes.split(",") if s]:
            log(f"4-bit vs 16/32-bit, {shape} shape:")
            results["four_bit"][shape] = four_bit(model_dir(shape), args.repeats, 16, log)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
