"""QLoRA: the 1x24 GB recipe is the issue's setup, and its ``lora`` stage runs on the tiny model on a CPU with a 4-bit
NF4 base (bitsandbytes' CPU backend), 8-bit AdamW and gradient checkpointing, through the same ``medvqa train`` code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_fixtures import write_colour_dataset

from training.train.recipe import load_recipe

pytest.importorskip("bitsandbytes")

REPO = Path(__file__).resolve().parents[1]
QLORA_RECIPE = REPO / "configuration" / "recipes" / "qlora_1gpu_24gb.yaml"
TINY_RECIPE = REPO / "configuration" / "recipes" / "tiny_cpu.yaml"


def test_qlora_recipe_is_the_issues_setup():
    recipe = load_recipe(QLORA_RECIPE)
    assert recipe.model.quantize == "4bit" and recipe.model.text == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert (recipe.lora.r, recipe.lora.alpha) == (8, 32)
    t = recipe.training
    assert t.bf16 and t.gradient_checkpointing and t.optim == "paged_adamw_8bit"
    assert t.num_gpus == 1 and t.global_batch_size == 128


@pytest.mark.slow
def test_qlora_lora_stage_runs_on_cpu(tmp_path: Path):
    import bitsandbytes as bnb
    from transformers import TrainerCallback

    from training.train.pipeline import run_training

    seen: dict[str, object] = {}

    class Inspect(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
            if "optimizer" in seen:
                return
            seen["optimizer"] = optimizer
            seen["linear"] = type(
                model.base_model.model.model.language_model.layers[0].self_attn.q_proj.base_layer
            )
            seen["state"] = {state["state1"].dtype for state in optimizer.state.values() if "state1" in state}

    data = write_colour_dataset(tmp_path / "data", n=24)
    recipe = load_recipe(TINY_RECIPE)
    recipe.output_dir = str(tmp_path / "run")
    recipe.training.report_to = []
    recipe.model.quantize = "4bit"
    recipe.training.optim = "paged_adamw_8bit"
    recipe.training.bf16 = True  # as the QLoRA recipe: bf16 compute (autocast, on a CPU too)
    recipe.training.gradient_checkpointing = True
    recipe.training.logging_steps = 1
    recipe.stage("lora").max_steps = 6
    recipe.training.per_device_train_batch_size = 4
    result = run_training(recipe, ["lora"], train_jsonl=data, callbacks=[Inspect()])["lora"]

    assert seen["linear"] is bnb.nn.Linear4bit  # the base really was 4-bit
    optimizer = getattr(seen["optimizer"], "optimizer", seen["optimizer"])  # accelerate wraps it
    assert isinstance(optimizer, bnb.optim.optimizer.Optimizer8bit)
    # 8-bit states for the tensors of >= 4096 elements (bitsandbytes' min_8bit_size: the projector here), 32-bit for
    # the tiny model's small LoRA matrices
    assert torch.uint8 in seen["state"]
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert len(result.losses) >= 6 and result.last_loss < result.first_loss
    adapter = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # LoRA B starts at zero: it trained
    # The merged folder is the full-precision model (the adapter merged into the unquantised base).
    from modeling_medvqa import MedVQAForConditionalGeneration

    merged = MedVQAForConditionalGeneration.from_pretrained(result.merged_dir)
    q_proj = merged.model.language_model.layers[0].self_attn.q_proj
    assert type(q_proj) is torch.nn.Linear and q_proj.weight.dtype == torch.float32


def test_planner_qlora_fits_one_24_and_one_16_gb_gpu_where_bf16_lora_does_not_fit_16():
    from training.train.planner import plan_memory

    qlora = load_recipe(QLORA_RECIPE)
    for gib in (24, 16):
        plan = plan_memory(qlora, "lora", 1, gib)
        assert plan.fits, (gib, plan.breakdown)
        assert plan.quantize == "4bit" and plan.breakdown["weights"] < 8 * 2**30  # vs ~16 GiB in bf16
    # the same model and batch unquantised on one 16 GB GPU: the bf16 weights alone take ~15 GiB
    bf16 = load_recipe(QLORA_RECIPE)
    bf16.model.quantize = None
    bf16.training.optim = "adamw_torch"
    assert not plan_memory(bf16, "lora", 1, 16).fits


def test_planner_nf4_bytes_match_bitsandbytes_storage(tmp_path):
    """The planner's 4-bit weight bytes equal what bitsandbytes stores for the decoder projections (codebooks of a
    few hundred bytes per matrix aside)."""
    import bitsandbytes as bnb

    from training.evaluation.evaluate import load_model
    from training.tiny import TinySpec, save_tiny_model
    from training.train.planner import quantized_weight_bytes

    spec = TinySpec(text_hidden_size=256, text_intermediate_size=512, text_heads=4, text_kv_heads=2)
    model, _ = load_model(save_tiny_model(tmp_path / "model", spec), device="cpu", quantize="4bit")
    stored = 0
    for module in model.model.language_model.layers.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state = module.weight.quant_state
            stored += module.weight.numel() * module.weight.element_size()  # packed 4-bit codes
            stored += state.absmax.numel() * state.absmax.element_size()  # 8-bit absmax (double quantisation)
            stored += state.state2.absmax.numel() * state.state2.absmax.element_size()  # their fp32 scales
    predicted, _ = quantized_weight_bytes(model.config.text_config, "4bit")
    assert abs(predicted - stored) / stored < 0.01, (predicted, stored)
