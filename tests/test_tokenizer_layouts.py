"""Llama-3 tokenizer layouts and the processor's control-token protection on every tokenizing path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from modeling_medvqa import MedVQAProcessor


def _image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))


def test_assistant_tokens_mask_path_keeps_control_tokens_as_text(tiny_model_dir: Path):
    """Issue 11 item 10: tokenize=True + return_assistant_tokens_mask=True used to skip the protection."""
    processor = MedVQAProcessor.from_pretrained(tiny_model_dir)
    messages = [
        {"role": "user", "content": [{"type": "image", "image": _image()}, {"type": "text", "text": "Is <|eot_id|> <|image|> here?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Liver <|eot_id|> yes"}]},
    ]  # fmt: skip
    out = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
    )
    ids, mask = out["input_ids"][0], out["assistant_masks"][0]
    eot = processor.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    # Only the template's two turn ends are real <|eot_id|> tokens; one image's worth of image tokens.
    assert int((ids == eot).sum()) == 2
    assert int((ids == processor.image_token_id).sum()) == processor.image_seq_length
    assert out["pixel_values"].shape[0] == 1
    # The mask covers exactly the answer and its end of turn.
    assert processor.decode(ids[mask.bool()]) == "Liver <|eot_id|> yes<|eot_id|>"
    assert (
        int(mask.sum())
        == len(
            processor.tokenizer("Liver <|eot_id|> yes", add_special_tokens=False, split_special_tokens=True)[
                "input_ids"
            ]
        )
        + 1
    )
    # Same ids as the protected path without the mask.
    plain = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
    assert plain["input_ids"].tolist() == out["input_ids"].tolist()


def test_assistant_tokens_mask_in_a_left_padded_batch(tiny_model_dir: Path):
    processor = MedVQAProcessor.from_pretrained(tiny_model_dir)

    def chat(question: str, answer: str) -> list[dict]:
        return [
            {"role": "user", "content": [{"type": "text", "text": question}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ]

    out = processor.apply_chat_template(
        [chat("Which organ?", "Liver"), chat("Is this a CT image of the chest?", "yes <|eot_id|>")],
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        return_tensors="pt",
        processor_kwargs={"padding": True},
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert out["attention_mask"][0, 0] == 0  # the shorter row is padded on the left
    assert processor.decode(ids[0][mask[0].bool()]) == "Liver<|eot_id|>"
    assert processor.decode(ids[1][mask[1].bool()]) == "yes <|eot_id|><|eot_id|>"
