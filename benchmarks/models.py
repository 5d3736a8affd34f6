"""Benchmark shapes, and our model and transformers' LLaVA built with the same shapes and random weights.

Same shapes means: a CLIP vision tower with the width, depth, heads, MLP width, image and patch size of our timm ViT
(GELU in both, where OpenAI CLIP would use quick-GELU: same cost, same math), the same Llama config, the same
projector (Linear -> GELU -> Linear, biases), the same LoRA (``build_lora_config``: LoRA on the language model's
projections, the projector trained in full), the same inputs.  The one structural difference is kept on purpose,
because it is part of what is measured: LLaVA runs every ViT layer, returns all hidden states and selects
``hidden_states[-2]``; ours builds the trunk only up to ``vision_feature_layer=-2`` (one block fewer) and returns the
patch tokens.  The language model weights and the projector are copied from ours into LLaVA, so both produce the
same text from the same image features up to the vision towers' (random, different) outputs.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Shape:
    """A benchmark shape: vision trunk, Llama, and the batch / token counts of a step."""

    name: str
    timm_model: str
    image_size: int
    text: dict[str, Any]
    batch: int
    text_tokens: int  # prompt text tokens per example (besides the image tokens)
    answer_tokens: int  # label positions per example
    gen_batch: int
    vision_layers: int | None = None  # cut the trunk's depth (shallow variant)
    gradient_checkpointing: bool = False


def _llama(h: int, inter: int, layers: int, heads: int, kv: int, vocab: int) -> dict[str, Any]:
    return {
        "model_type": "llama",
        "hidden_size": h,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "vocab_size": vocab,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
        "tie_word_embeddings": False,
    }


def get_shape(name: str, shallow: bool = False, recipe_batch: int = 8) -> Shape:
    """``tiny`` (the tiny preset), ``small`` (ViT-S/16 + a 4-layer Llama) or ``paper`` (ViT-B/16 + Llama-3-8B).

    ``paper`` with ``shallow``: the paper's widths and vocabulary with 2 ViT blocks and 1 decoder layer, for a CPU.
    """
    from modeling_medvqa.configuration_medvqa import LLAMA3_8B_INSTRUCT

    if name == "tiny":
        return Shape("tiny", "test_vit", 160, _llama(64, 128, 2, 4, 2, 610), 8, 32, 8, 4)
    if name == "small":
        return Shape("small", "vit_small_patch16_224", 224, _llama(512, 1536, 4, 8, 2, 8192), 4, 48, 8, 4)
    if name == "paper":
        text = {**LLAMA3_8B_INSTRUCT, "max_position_embeddings": 4096}
        text.pop("bos_token_id", None)
        text.pop("eos_token_id", None)
        if shallow:
            return Shape(
                "paper-shallow", "vit_base_patch16_224", 224, {**text, "num_hidden_layers": 1}, 1, 32, 8, 1, 2
            )
        # The recipe's per-device batch, a typical OmniMedVQA prompt (64 text tokens), bf16, checkpointing on.
        return Shape(
            "paper", "vit_base_patch16_224", 224, text, recipe_batch, 64, 16, recipe_batch, None, True
        )
    raise ValueError(f"unknown shape {name!r}")


def _vit_dims(shape: Shape) -> dict[str, int]:
    from training.train.planner import _timm_shape

    dims = dict(_timm_shape(shape.timm_model, shape.image_size))
    if shape.vision_layers:
        dims["num_hidden_layers"] = shape.vision_layers
    return dims


@contextmanager
def _built_in(dtype):
    """Create parameters directly in ``dtype``: an 8B model built in fp32 then cast would need 48 GB on the way."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_ours(shape: Shape, dtype, device: str = "cpu", attn: str = "sdpa"):
    """Our model with random weights at ``shape``; returns (model, config)."""
    import torch

    from modeling_medvqa import MedVQAConfig, MedVQAForConditionalGeneration

    vit = _vit_dims(shape)
    vocab = shape.text["vocab_size"]
    timm_kwargs = {"depth": shape.vision_layers} if shape.vision_layers else {}
    config = MedVQAConfig(
        vision_config={
            "timm_model_name": shape.timm_model,
            "image_size": shape.image_size,
            "patch_size": vit["patch_size"],
            "hidden_size": vit["hidden_size"],
            "num_hidden_layers": vit["num_hidden_layers"],
            "timm_kwargs": timm_kwargs,
        },
        text_config=dict(shape.text),
        image_token_id=vocab - 1,  # inside the vocabulary, so LLaVA can use the very same input_ids
    )
    config.text_config._attn_implementation = attn
    torch.manual_seed(0)
    with torch.device(device), _built_in(dtype):
        model = MedVQAForConditionalGeneration(config).to(dtype)
    model.config._attn_implementation = attn
    return model, config


def build_llava(shape: Shape, ours, dtype, device: str = "cpu", attn: str = "sdpa"):
    """transformers' LLaVA with the same shapes; the LM and projector weights are copied from ``ours``."""
    import torch
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    vit = _vit_dims(shape)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=vit["hidden_size"],
            intermediate_size=vit["mlp_hidden"],
            num_hidden_layers=vit["num_hidden_layers"],
            num_attention_heads=vit["num_heads"],
            image_size=shape.image_size,
            patch_size=vit["patch_size"],
            hidden_act="gelu",
        ),
        text_config=dict(shape.text),
        image_token_index=ours.config.image_token_id,
        image_seq_length=ours.config.image_seq_length,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
    )
    config._attn_implementation = attn
    config.text_config._attn_implementation = attn
    config.vision_config._attn_implementation = attn
    torch.manual_seed(1)
    with torch.device(device), _built_in(dtype):
        llava = LlavaForConditionalGeneration(config).to(dtype)
    llava.model.language_model.load_state_dict(ours.model.language_model.state_dict())
    llava.model.multi_modal_projector.load_state_dict(ours.model.multi_modal_projector.state_dict())
    llava.lm_head.load_state_dict(ours.lm_head.state_dict())
    return llava


def make_inputs(
    shape: Shape, config, batch: int, device: str = "cpu", *, with_answers: bool = True, seed: int = 0
):
    """input_ids (image tokens after a short header, then the question, then the answer), mask, labels, pixels.

    The first example is left-padded by 3 tokens, as batched prompts of different lengths are, so both models
    take their padding-mask paths.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    n_img = config.image_seq_length
    vocab = config.text_config.vocab_size
    text = shape.text_tokens + (shape.answer_tokens if with_answers else 0)
    seq = 4 + n_img + text
    ids = torch.randint(0, vocab - 1, (batch, seq), generator=g)
    ids[:, 4 : 4 + n_img] = config.image_token_id
    mask = torch.ones(batch, seq, dtype=torch.long)
    pad = 3
    ids[0, :pad] = 0
    mask[0, :pad] = 0
    labels = torch.full_like(ids, -100)
    if with_answers:
        labels[:, -shape.answer_tokens :] = ids[:, -shape.answer_tokens :]
    pixels = torch.randn(batch, 3, shape.image_size, shape.image_size, generator=g)
    out = {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}
    if with_answers:
        out["labels"] = labels
    return {k: v.to(device) for k, v in out.items()}


def train_step_flops(shape: Shape, config, batch: int, fused_positions: int) -> int:
    """Model FLOPs of one LoRA-stage training step of ours (recomputation not counted, as MFU does).

    Vision tower: forward only (frozen; nothing upstream needs its gradient).  Frozen linear layers of the LM:
    forward + input gradient (2x).  Attention scores: forward + backward (3x), the non-causal convention of
    PaLM/TRL (``compute_flops_per_token``).  LoRA and the projector: 3x.  LM head: the fused head projects
    ``fused_positions`` positions, forward + input gradient.
    """
    vit = _vit_dims(shape)
    d, m = vit["hidden_size"], vit["mlp_hidden"]
    v_tokens = config.image_seq_length + vit["num_prefix_tokens"]
    blocks = config.num_vision_blocks_used
    patch = vit["patch_size"]
    vision = batch * (
        config.image_seq_length * 2 * 3 * patch * patch * d
        + blocks * v_tokens * (2 * (4 * d * d + 2 * d * m) + 4 * v_tokens * d)
    )
    t = config.text_config
    h, inter = t.hidden_size, t.intermediate_size
    hd = getattr(t, "head_dim", None) or h // t.num_attention_heads
    q, kv = t.num_attention_heads * hd, t.num_key_value_heads * hd
    seq = 4 + config.image_seq_length + shape.text_tokens + shape.answer_tokens
    tokens = batch * seq
    linear = 2 * (h * q + 2 * h * kv + q * h + 3 * h * inter)
    attention = 4 * seq * q
    r = 8
    lora = 2 * r * (4 * h + q + 2 * kv + q + 2 * (h + inter) + inter + h)  # A and B of the seven targets
    lm = t.num_hidden_layers * tokens * (2 * linear + 3 * attention + 3 * lora)
    projector = 3 * batch * config.image_seq_length * 2 * (d * h + h * h)
    head = 2 * fused_positions * 2 * h * t.vocab_size
    return int(vision + lm + projector + head)
