"""Eval throughput vs transformers' ``pipeline("image-text-to-text")``, side by side on the same questions.

``python -m benchmarks.eval_vs_pipeline [--family llava|gemma3|qwen2_vl | --model ID_OR_DIR] [--questions 24]
[--batch-size 8] [--max-new-tokens 16] [--prompt open|mc] [--repeats 5] [--device cpu|cuda] [--out FILE]``

Both answer the same questions about the same PIL images (loaded once by our loader, outside the timing) with the
same model object, batch size and greedy settings; the pipeline gets chat messages with the image inside and pads
on the left (its tokenizer's side is set so, as batched generation needs). The two run interleaved, and the
result is the ratio of their median times: questions/s ours / questions/s pipeline (>= 1.0 means ours is at
least as fast), with the spread of the per-repeat ratios and whether the answers agree.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import interleaved, machine, paired_ratio_iqr

_QUESTIONS = [
    ("Is this a CT image?", "yes", ["CT", "MRI"]),
    ("What modality is used?", "MRI", ["CT", "MRI", "X-Ray"]),
    ("Which organ is shown?", "liver", ["liver", "lung"]),
    ("Is there a lesion?", "no", ["yes", "no"]),
    ("What organ is visible in this image?", "brain", ["brain", "lung", "liver", "heart"]),
]


def write_questions(folder: Path, n: int) -> Path:
    """``n`` records over 6 synthetic PNGs of different sizes (gray and RGB); returns the JSONL."""
    import numpy as np
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        question, answer, options = _QUESTIONS[i % len(_QUESTIONS)]
        image = f"images/img{i % 6}.png"
        shape = (48 + 16 * (i % 3), 64) + ((3,) if i % 2 else ())
        Image.fromarray((np.random.RandomState(i % 6).rand(*shape) * 255).astype("uint8")).save(
            folder / image
        )
        record = {
            "question_id": str(i),
            "image": image,
            "question": question,
            "answer": answer,
            "options": options,
        }
        lines.append(json.dumps(record) + "\n")
    path = folder / "questions.jsonl"
    path.write_text("".join(lines), encoding="utf-8")
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.eval_vs_pipeline", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--family", default="llava", help="tiny model family (training/tiny_vlms.py)")
    parser.add_argument("--model", default=None, help="a real model folder or Hub id instead of a tiny one")
    parser.add_argument("--questions", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--prompt", choices=("open", "mc"), default="open")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared machine more threads than free cores make every "
        "figure noise; 0 leaves torch's default)",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch
    from transformers import pipeline

    from training.evaluation import prompting
    from training.evaluation.evaluate import ImageLoader, accepts_gray, generate_answers
    from training.evaluation.vlm_loading import load_vlm
    from training.tiny_vlms import build_tiny_vlm

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_id = args.model or build_tiny_vlm(args.family, Path(tmp) / args.family)
        data = write_questions(Path(tmp) / "data", args.questions)
        model, processor = load_vlm(model_id, device=args.device, dtype=args.dtype)
        records = [json.loads(line) for line in data.read_text().splitlines()]
        loader = ImageLoader(data, keep_gray=accepts_gray(processor))
        images = [loader(r) for r in records]  # decoded once: neither side times the PNG decoding

        def ours() -> list[str]:
            return generate_answers(
                model,
                processor,
                records,
                loader,
                batch_size=args.batch_size,
                max_new_tokens=args.max_new_tokens,
                prompt=args.prompt,
            )

        processor.tokenizer.padding_side = "left"  # the pipeline pads with the tokenizer's side
        pipe = pipeline("image-text-to-text", model=model, processor=processor)
        chats = [
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": image},
                        {"type": "text", "text": prompting.question_text(record, args.prompt)},
                    ],
                }
            ]
            for record, image in zip(records, images)
        ]

        def reference() -> list[str]:
            out = pipe(
                text=chats,
                batch_size=args.batch_size,
                generate_kwargs={"max_new_tokens": args.max_new_tokens, "do_sample": False},
                return_full_text=False,
            )
            return [o[0]["generated_text"].strip() for o in out]

        answers_ours, answers_pipe = ours(), reference()
        medians, raw = interleaved(
            {"pipeline": reference, "ours": ours}, repeats=args.repeats, device=str(model.device), raw=True
        )
    n = len(records)
    result = {
        "model": str(args.model or f"tiny {args.family}"),
        "model_class": type(model).__name__,
        "device": str(model.device),
        "questions": n,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "prompt": args.prompt,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "ours_questions_per_s": round(n / medians["ours"], 3),
        "pipeline_questions_per_s": round(n / medians["pipeline"], 3),
        "ratio": round(medians["pipeline"] / medians["ours"], 3),
        "ratio_iqr": [round(x, 3) for x in paired_ratio_iqr(raw["pipeline"], raw["ours"])],
        "ratio_per_repeat": [round(p / o, 3) for p, o in zip(raw["pipeline"], raw["ours"])],
        "same_answers": sum(a == b for a, b in zip(answers_ours, answers_pipe)),
        "machine": machine(),
    }
    print(
        f"eval vs pipeline('image-text-to-text') [{result['model']} on {result['device']}, {n} questions, batch "
        f"{args.batch_size}, {args.max_new_tokens} new tokens, prompt {args.prompt}]: ours "
        f"{result['ours_questions_per_s']} q/s, pipeline {result['pipeline_questions_per_s']} q/s, ratio ours/pipeline "
        f"{result['ratio']:.2f}x (IQR {result['ratio_iqr'][0]:.2f}-{result['ratio_iqr'][1]:.2f}, median of "
        f"{statistics.median(result['ratio_per_repeat']):.2f} per repeat); same answers {result['same_answers']}/{n}"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
