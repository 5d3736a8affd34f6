"""``medvqa ask``: answer one or more questions about one image (PNG/JPEG/TIFF/DICOM/NIfTI).

The image is loaded once (DICOM/NIfTI windowing through :func:`training.images.load_medical_image`) and encoded
once: its features go to ``generate`` as transformers' ``mm_encoder_outputs``, shared by all the questions, which
are decoded together in one left-padded batch.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from training.cli_types import nonneg_int, positive_int
from training.errors import MedVQAUserError
from training.prompts import user_messages


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


def load_model(model: str | Path):
    """Model + processor through the Auto classes, as a user would load a pushed checkpoint."""
    from training.evaluation.evaluate import load_model as load_for_inference

    path = Path(model)
    looks_local = path.exists() or str(model).startswith((".", "/", "~"))
    if looks_local and not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise MedVQAUserError(model, "not a model folder (no config.json or adapter_config.json)")
    # a local folder is checked (config, safetensors weights) inside; a Hub id that cannot be reached is a user error
    return load_for_inference(model)


def model_inputs(processor, image: Any, questions: list[str]):
    """The processor's batch for several questions about one image (placeholders expanded, left padding).

    Its ``pixel_values`` are k copies of one image; :func:`encode_image` encodes only the first.
    """
    if not questions or any(not q.strip() for q in questions):
        raise MedVQAUserError("--question", "empty question")
    prompts = [processor.apply_chat_template(user_messages(q), add_generation_prompt=True) for q in questions]
    return processor(images=[image] * len(prompts), text=prompts, return_tensors="pt", padding=True)


def encode_image(model, pixel_values):
    """The image features of the first image in ``pixel_values``, for ``generate(mm_encoder_outputs=...)``.

    Encode once, then pass the result to :func:`answer_questions` / :func:`stream_answer` for every question
    about the same image.
    """
    import torch

    with torch.no_grad():
        return model.get_image_features(pixel_values[:1].to(model.device))


def _shared(features, k: int):
    """``features`` for a batch of k prompts without copying (expand) and without touching the original."""
    return type(features)(
        last_hidden_state=features.last_hidden_state,
        pooler_output=features.pooler_output.expand(k, -1, -1),
    )


def answer_questions(
    model, processor, image: Any, questions: list[str], *, max_new_tokens: int = 32, features=None
) -> list[str]:
    """Answers to several questions about one image, encoding the image once (or not at all: ``features``)."""
    import torch

    batch = model_inputs(processor, image, questions)
    if features is None:
        features = encode_image(model, batch["pixel_values"])
    with torch.no_grad():
        output = model.generate(
            input_ids=batch["input_ids"].to(model.device),
            attention_mask=batch["attention_mask"].to(model.device),
            mm_encoder_outputs={"image": _shared(features, len(questions))},
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
    answers = processor.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return [a.strip() for a in answers]


def stream_answer(
    model,
    processor,
    image: Any,
    question: str,
    *,
    features=None,
    max_new_tokens: int = 32,
    timeout: float | None = 600.0,
) -> Iterator[str]:
    """The answer to one question, yielded as it grows (the text so far after each decoded word piece).

    Greedy like :func:`answer_questions`, so the last value equals its answer.  ``generate`` runs in a thread
    and hands tokens to transformers' ``TextIteratorStreamer``; an error in ``generate`` is raised here.
    ``timeout`` bounds the wait for one token.
    """
    import threading

    import torch
    from transformers import TextIteratorStreamer

    batch = model_inputs(processor, image, [question])
    if features is None:
        features = encode_image(model, batch["pixel_values"])
    streamer = TextIteratorStreamer(
        processor.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=timeout
    )
    failure: list[BaseException] = []

    def generate() -> None:
        try:
            with torch.no_grad():
                model.generate(
                    input_ids=batch["input_ids"].to(model.device),
                    attention_mask=batch["attention_mask"].to(model.device),
                    mm_encoder_outputs={"image": _shared(features, 1)},
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
    model, processor = load_model(args.model)
    for question, answer in zip(
        args.question,
        answer_questions(model, processor, image, args.question, max_new_tokens=args.max_new_tokens),
    ):
        print(f"Q: {question}\nA: {answer}")
    return 0
