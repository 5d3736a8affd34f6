"""``medvqa ask``: answer one or more questions about one image (PNG/JPEG/TIFF/DICOM/NIfTI).

The image is loaded once (DICOM/NIfTI windowing through :func:`training.images.load_medical_image`) and encoded
once: its features go to ``generate`` as transformers' ``mm_encoder_outputs``, shared by all the questions, which
are decoded together in one left-padded batch.
"""

from __future__ import annotations

import argparse
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


def answer_questions(
    model, processor, image: Any, questions: list[str], *, max_new_tokens: int = 32
) -> list[str]:
    """Answers to several questions about one image, encoding the image once."""
    import torch

    if not questions or any(not q.strip() for q in questions):
        raise MedVQAUserError("--question", "empty question")
    prompts = [processor.apply_chat_template(user_messages(q), add_generation_prompt=True) for q in questions]
    # The standard processor path (placeholders expanded, left padding); its pixel_values are k copies of one
    # image, of which only the first is encoded.
    batch = processor(images=[image] * len(prompts), text=prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        features = model.get_image_features(batch["pixel_values"][:1].to(model.device))
        # One encoding, shared by every question (expand makes no copy).
        features.pooler_output = features.pooler_output.expand(len(prompts), -1, -1)
        output = model.generate(
            input_ids=batch["input_ids"].to(model.device),
            attention_mask=batch["attention_mask"].to(model.device),
            mm_encoder_outputs={"image": features},
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
    answers = processor.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return [a.strip() for a in answers]


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
