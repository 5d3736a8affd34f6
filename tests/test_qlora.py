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
