"""Training step, generation and image reuse: ours vs transformers' LLaVA at the same shapes, in one process.

Training step = what TRL's SFTTrainer does for the ``lora`` stage: forward through the backbone with TRL's fused LM
head (``add_fused_lm_head``, the same patch SFTTrainer applies), backward, AdamW step, zero_grad; peft LoRA from
``build_lora_config`` on both models.  Generation = ``generate`` of 16 new tokens (greedy, no early stop) for a
batch of questions with one image each.  Image reuse = k questions about one image, the image encoded once
(``get_image_features`` + ``mm_encoder_outputs``) vs passed as pixels with every question.
"""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.common import interleaved, matmul_peak_flops, paired_ratio_iqr, timed
from benchmarks.models import Shape, build_llava, build_ours, make_inputs, train_step_flops

NEW_TOKENS = 16
REUSE_K = 4


def _lora_trainable(model, dtype):
    import torch
    from peft import get_peft_model
    from trl.trainer.utils import add_fused_lm_head

    from training.train.lora import build_lora_config
    from training.train.recipe import LoraSettings

    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # as SFTTrainer.__init__ does
    # Under DeepSpeed bf16 every parameter (LoRA too) is bf16; peft's fp32 adapters would be cast anyway.
    peft_model = get_peft_model(
        model, build_lora_config(LoraSettings()), autocast_adapter_dtype=dtype == torch.float32
    )
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    return peft_model, optimizer, sum(p.numel() for p in params)


def _step_fn(peft_model, optimizer, inputs):
    def step():
        out = peft_model(**inputs, fused_lm_head=True)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def train_step(shape: Shape, dtype, device: str, repeats: int, peak_n: int) -> dict[str, Any]:
    """Samples/s of ours and LLaVA, their ratio, and our MFU against a matmul measured in the same run."""
    import torch

    ours, config = build_ours(shape, dtype, device)
    llava = build_llava(shape, ours, dtype, device)
    if shape.gradient_checkpointing:
        for model in (ours, llava):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ours_peft, ours_opt, n_train = _lora_trainable(ours, dtype)
    llava_peft, llava_opt, n_train_llava = _lora_trainable(llava, dtype)
    inputs = make_inputs(shape, config, shape.batch, device)
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    medians, raw = interleaved(
        {
            "ours": _step_fn(ours_peft, ours_opt, inputs),
            "llava": _step_fn(llava_peft, llava_opt, inputs),
        },
        repeats=repeats,
        warmup=2,
        device=device,
        raw=True,
    )
    # TRL's fused head projects only label positions on CUDA (Triton), every position elsewhere.
    positions = (
        int((inputs["labels"][:, 1:] != -100).sum())
        if device.startswith("cuda")
        else shape.batch * (inputs["input_ids"].shape[1] - 1)
    )
    flops = train_step_flops(shape, config, shape.batch, positions)
    peak = matmul_peak_flops(device, dtype, peak_n)
    achieved = flops / medians["ours"]
    del ours_peft, llava_peft, ours, llava
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {
        "ours_samples_per_s": shape.batch / medians["ours"],
        "llava_samples_per_s": shape.batch / medians["llava"],
        "ratio": medians["llava"] / medians["ours"],
        "ratio_paired_median": statistics.median(b / a for a, b in zip(raw["ours"], raw["llava"])),
        "ratio_iqr": paired_ratio_iqr(raw["llava"], raw["ours"]),
        "mfu": achieved / peak,
        "ours_step_s": medians["ours"],
        "llava_step_s": medians["llava"],
        "ours_flops_per_step": flops,
        "ours_achieved_flops": achieved,
        "matmul_peak_flops": peak,
        "matmul_n": peak_n,
        "batch": shape.batch,
        "seq_len": int(inputs["input_ids"].shape[1]),
        "trainable_params": {"ours": n_train, "llava": n_train_llava},
        "vision_blocks_run": {
            "ours": config.num_vision_blocks_used,
            "llava": config.vision_config.num_hidden_layers,
        },
        "gradient_checkpointing": shape.gradient_checkpointing,
        "repeats": repeats,
    }


def _generation_config(image_token_id: int):
    from transformers import GenerationConfig

    # Exactly NEW_TOKENS tokens each, greedy; the image placeholder id can never be generated.
    return GenerationConfig(
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        suppress_tokens=[image_token_id],
    )


def generation(shape: Shape, dtype, device: str, repeats: int) -> dict[str, Any]:
    """Tokens/s of ``generate`` (16 new tokens, batch of questions with images), ours vs LLaVA."""
    import torch

    ours, config = build_ours(shape, dtype, device)
    llava = build_llava(shape, ours, dtype, device)
    ours.eval()
    llava.eval()
    gen = _generation_config(config.image_token_id)
    inputs = make_inputs(shape, config, shape.gen_batch, device, with_answers=False)
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    outputs = {}

    def run(name, model):
        def fn():
            outputs[name] = model.generate(**inputs, generation_config=gen)

        return fn

    with torch.inference_mode():
        medians, raw = interleaved(
            {"ours": run("ours", ours), "llava": run("llava", llava)}, repeats, device=device, raw=True
        )
    new = {name: int(out.shape[1] - inputs["input_ids"].shape[1]) for name, out in outputs.items()}
    assert new["ours"] == new["llava"] == NEW_TOKENS, new
    tokens = shape.gen_batch * NEW_TOKENS
    reuse = image_reuse(shape, ours, config, dtype, device, repeats)
    del ours, llava
    return {
        "generation": {
            "ours_tokens_per_s": tokens / medians["ours"],
            "llava_tokens_per_s": tokens / medians["llava"],
            "ratio": medians["llava"] / medians["ours"],
            "ratio_iqr": paired_ratio_iqr(raw["llava"], raw["ours"]),
            "ours_s": medians["ours"],
            "llava_s": medians["llava"],
            "batch": shape.gen_batch,
            "new_tokens": NEW_TOKENS,
            "prompt_len": int(inputs["input_ids"].shape[1]),
            "repeats": repeats,
        },
        "image_reuse": reuse,
    }


def image_reuse(
    shape: Shape, model, config, dtype, device: str, repeats: int, k: int = REUSE_K
) -> dict[str, Any]:
    """k questions about one image (one batch of k): the image encoded once vs passed with every question."""
    import torch
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    gen = _generation_config(config.image_token_id)
    inputs = make_inputs(shape, config, k, device, with_answers=False, seed=1)
    pixels = inputs["pixel_values"][:1].to(dtype)
    text = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    state: dict[str, Any] = {}

    def encode():
        state["features"] = model.get_image_features(pixels)

    def answer():
        features = state["features"]
        expanded = BaseModelOutputWithPooling(
            last_hidden_state=features.last_hidden_state.expand(k, -1, -1),
            pooler_output=features.pooler_output.expand(k, -1, -1),
        )
        state["once"] = model.generate(**text, mm_encoder_outputs={"image": expanded}, generation_config=gen)

    def once():
        encode()
        answer()

    def each():
        state["each"] = model.generate(
            **text, pixel_values=pixels.expand(k, -1, -1, -1), generation_config=gen
        )

    with torch.inference_mode():
        medians = interleaved({"once": once, "each": each}, repeats, device=device)
        encode_s = sorted(timed(encode, device) for _ in range(max(3, repeats)))[max(3, repeats) // 2]
        text_s = sorted(timed(answer, device) for _ in range(max(3, repeats)))[max(3, repeats) // 2]
    same = bool(torch.equal(state["once"], state["each"]))
    return {
        "k": k,
        "encode_once_s": medians["once"],
        "encode_each_s": medians["each"],
        "speedup": medians["each"] / medians["once"],
        "one_encoding_s": encode_s,
        "k_text_passes_s": text_s,
        "same_answers": same,
        "new_tokens": NEW_TOKENS,
    }
