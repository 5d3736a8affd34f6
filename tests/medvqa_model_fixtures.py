"""Tiny in-memory MedVQA configs and inputs in both image-id layouts (no tokenizer, no files).

- ``"in_vocab"``: the image id is an ordinary row of the embedding table, as in transformers' own VLM testers;
- ``"real"``: the image id equals the LM's vocabulary size, as ``medvqa init`` builds it from a Llama-3 tokenizer.
"""

from __future__ import annotations

import torch

from modeling_medvqa import MedVQAConfig

LAYOUTS = ("in_vocab", "real")
VOCAB_SIZE = 99
PAD_ID = 1
IMAGE_SIZE = 32  # test_vit has 16 px patches: 4 image tokens per image


def tiny_config(layout: str, **overrides) -> MedVQAConfig:
    """A 2-block ViT (width 32) + 2-layer Llama (width 32) MedVQA config in the given image-id layout."""
    image_token_id = {"in_vocab": 3, "real": VOCAB_SIZE}[layout]
    kwargs = dict(
        vision_config={
            "timm_model_name": "test_vit",
            "timm_kwargs": {"embed_dim": 32, "depth": 2, "num_heads": 2},
            "image_size": IMAGE_SIZE,
            "patch_size": 16,
            "hidden_size": 32,
            "num_hidden_layers": 2,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": VOCAB_SIZE,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "pad_token_id": PAD_ID,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "tie_word_embeddings": False,
        },
        vision_feature_layer=-1,
        image_token_id=image_token_id,
    )
    kwargs.update(overrides)
    return MedVQAConfig(**kwargs)


def tiny_inputs(config: MedVQAConfig, batch_size: int = 3, text_length: int = 7, seed: int = 0) -> dict:
    """Random text ids (never the image id) with one image's placeholders at the front of every row, as LLaVA's tester."""
    generator = torch.Generator().manual_seed(seed)
    n_image = config.image_seq_length
    input_ids = torch.randint(4, VOCAB_SIZE, (batch_size, n_image + text_length), generator=generator)
    input_ids[:, :n_image] = config.image_token_id
    size = config.vision_config.image_size
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": torch.rand((batch_size, 3, size, size), generator=generator),
    }
