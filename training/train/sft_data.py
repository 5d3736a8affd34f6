"""Records -> TRL prompt-completion examples, and the collator that loads images on the fly.

TRL's ``SFTTrainer`` recognises a vision dataset by an ``images`` column and, for prompt-completion examples,
masks everything but the completion (the answer and its ``<|eot_id|>``): prompt, image and padding tokens carry no
loss.  We keep image *paths* in the dataset (DICOM/NIfTI need our loader, and decoding every image up front would
hold the whole set in memory) and load them in the collator, then hand over to TRL's own
``DataCollatorForVisionLanguageModeling`` for tokenization, padding and label masking.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling


def record_to_example(record: Mapping[str, Any], base_dir: str | Path | None = None) -> dict[str, Any]:
    """One record of DESIGN.md §4 -> a conversational prompt-completion example with an image path.

    The prompt is exactly what ``medvqa eval`` and ``medvqa ask`` send: one user turn with the image then the question.
    """
    image = Path(record["image"])
    if not image.is_absolute() and base_dir is not None:
        image = Path(base_dir) / image
    return {
        "images": [str(image)],
        "prompt": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": record["question"]}]}
        ],
        "completion": [{"role": "assistant", "content": [{"type": "text", "text": record["answer"]}]}],
    }


def build_sft_dataset(records: Iterable[Mapping[str, Any]], base_dir: str | Path | None = None):
    """A ``datasets.Dataset`` of prompt-completion examples (images as paths) for ``SFTTrainer``."""
    from datasets import Dataset

    return Dataset.from_list([record_to_example(r, base_dir) for r in records])


def _default_loader(path: str):
    from training.images import load_medical_image

    return load_medical_image(path, keep_gray=True)  # the processor resizes gray first


@dataclass
class MedVQACollator(DataCollatorForVisionLanguageModeling):
    """TRL's vision collator with completion-only loss, loading image paths with the medical image loader."""

    image_loader: Callable[[str], Any] | None = None
    completion_only_loss: bool = True
    # training.train.augment.TrainingAugmentation: (image, key) -> image, applied to each loaded image
    augment: Callable[[Any, str], Any] | None = None

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        loader = self.image_loader or _default_loader
        loaded = []
        for example in examples:
            example = dict(example)
            example["images"] = [loader(p) if isinstance(p, str) else p for p in example["images"]]
            if self.augment is not None:
                keys = _augmentation_keys(example)
                example["images"] = [self.augment(im, key) for im, key in zip(example["images"], keys)]
            loaded.append(example)
        return super().torch_call(loaded)


def _augmentation_keys(example: Mapping[str, Any]) -> list[str]:
    """One key per image of an example: its position and the prompt, so that the several questions about one image
    get different crops (the augmentation adds the image's pixels to the key, not its path)."""
    prompt = json.dumps(example.get("prompt"), sort_keys=True, ensure_ascii=False)
    return [f"{i}\0{prompt}" for i in range(len(example["images"]))]
