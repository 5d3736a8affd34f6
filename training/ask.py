"""``medvqa ask``: answer one or more questions about one image (PNG/JPEG/TIFF/DICOM/NIfTI).

The image is loaded once (DICOM/NIfTI windowing through :func:`training.images.load_medical_image`), encoded once,
and its prompt prefix (up to and including the image tokens) is prefilled through the language model once; the
questions extend copies of that KV cache and are decoded together (:mod:`training.shared_prefix`).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from training.cli_types import nonneg_int, positive_int
from training.errors import MedVQAUserError
from training.quantization import add_quantize_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="model folder or Hub id (loaded with trust_remote_code)"
    )
    parser.add_argument("--image", required=True, help="PNG/JPEG/TIFF/DICOM/NIfTI file")
    parser.add_argument("--question", action="append", required=True, help="a question; repeat for several")
    parser.add_argument("--max-new-tokens", type=positive_int, default=32)
    parser.add_argument(
        "--frame", type=nonneg_int, default=None, help="DICOM frame / NIfTI volume (default: middle)"
    )
    parser.add_argument(
        "--axis", type=nonneg_int, default=None, choices=[0, 1, 2], help="NIfTI axis (default: 2, axial)"
    )
    parser.add_argument(
        "--slice", dest="slice_index", type=nonneg_int, default=None, help="NIfTI slice (default: middle)"
    )
    add_quantize_argument(parser)


def load_model(model: str | Path, quantize: str | None = None):
    """Model + processor through the Auto classes, as a user would load a pushed checkpoint."""
    from training.evaluation.evaluate import load_model as load_for_inference

    path = Path(model)
    looks_local = path.exists() or str(model).startswith((".", "/", "~"))
    if looks_local and not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise MedVQAUserError(model, "not a model folder (no config.json or adapter_config.json)")
    # a local folder is checked (config, safetensors weights) inside; a Hub id that cannot be reached is a user error
    return load_for_inference(model, quantize=quantize)


def answer_questions(
    model, processor, image: Any, questions: list[str], *, max_new_tokens: int = 32
) -> list[str]:
    """Greedy answers to several questions about one image: one image encoding, one prefix prefill."""
    from training.evaluation.prompting import render
    from training.shared_prefix import generate_with_shared_prefix

    if not questions or any(not q.strip() for q in questions):
        raise MedVQAUserError("--question", "empty question")
    prompts = [render(processor, q) for q in questions]
    return generate_with_shared_prefix(
        model, processor, [image], prompts, [0] * len(questions), max_new_tokens=max_new_tokens
    )


def stream_answer(
    model,
    processor,
    image: Any,
    question: str,
    *,
    prefix=None,
    max_new_tokens: int = 32,
    timeout: float | None = 600.0,
) -> Iterator[str]:
    """The answer to one question, yielded as it grows (the text so far after each decoded word piece).

    Greedy like :func:`answer_questions`, so the last value equals its answer.  ``prefix``: the image's prefilled
    prompt prefix (:func:`training.shared_prefix.prefill_image_prefix`), kept by the caller across the questions of
    a conversation so that only the question is prefilled; made here when not given.  ``generate`` runs in a thread
    and hands tokens to transformers' ``TextIteratorStreamer``; an error in ``generate`` is raised here.
    ``timeout`` bounds the wait for one token.
    """
    import threading

    import torch
    from transformers import TextIteratorStreamer

    from training.evaluation.prompting import render
    from training.shared_prefix import extend_prefix_inputs, prefill_image_prefix

    if prefix is None:
        prefix = prefill_image_prefix(model, processor, image)
    inputs = extend_prefix_inputs(prefix, processor, image, render(processor, question))
    streamer = TextIteratorStreamer(
        processor.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=timeout
    )
    failure: list[BaseException] = []

    def generate() -> None:
        try:
            with torch.no_grad():
                model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    streamer=streamer,
                )
        except BaseException as exc:  # handed to the consumer below, which re-raises it
            failure.append(exc)
            streamer.end()

    worker = threading.Thread(target=generate, name="medvqa-generate", daemon=True)
    worker.start()
    text, shown = "", None
    for piece in streamer:
        text += piece
        if text.strip() != shown:
            shown = text.strip()
            yield shown
    worker.join()
    if failure:
        raise failure[0]
    if shown is None:  # nothing decoded (e.g. only special tokens): the answer is empty
        yield ""


def run(args: argparse.Namespace) -> int:
    from training.images import load_medical_image

    image = load_medical_image(
        args.image, frame=args.frame, axis=args.axis, slice_index=args.slice_index, keep_gray=True
    )
    model, processor = load_model(args.model, quantize=args.quantize)
    for question, answer in zip(
        args.question,
        answer_questions(model, processor, image, args.question, max_new_tokens=args.max_new_tokens),
    ):
        print(f"Q: {question}\nA: {answer}")
    return 0
