"""``medvqa plan``: the paper's verdict, sums, sharding, monotonicity, exit statuses, and the formulas against torch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.cli import main
from training.train.planner import (
    _count_medvqa,
    largest_fitting_batch,
    llama_layer_saved_bytes,
    model_config_for_recipe,
    plan_memory,
    zero3_gathered_elements,
)
from training.train.recipe import load_recipe

RECIPES = Path(__file__).resolve().parent.parent / "configuration" / "recipes"
PAPER = RECIPES / "paper_llama3_8b.yaml"
TINY = RECIPES / "tiny_cpu.yaml"
LLAMA70B = RECIPES / "llama3_70b_zero3.yaml"


@pytest.fixture(scope="module")
def paper():
    return load_recipe(PAPER)


def test_paper_setup_fits_two_a100_40gb_with_its_batch(paper, capsys):
    assert main(["plan", "--recipe", str(PAPER), "--gpus", "2", "--gpu-memory", "40", "--stage", "lora"]) == 0
    out = capsys.readouterr().out
    assert "verdict: FITS" in out and "largest per-device batch that fits:" in out
    plan = plan_memory(paper, "lora", 2, 40)
    assert plan.fits and plan.per_device_batch == 8 and plan.seq_len == 512
    # ~8.1 B parameters in bf16 (+ the projector's modules_to_save copy and LoRA), 2 bytes each.
    assert abs(plan.breakdown["weights"] / 2 - 8.17e9) / 8.17e9 < 0.01
    # LoRA r=8 on q, k, v, o, gate, up, down of 32 layers: r x (in + out) each; the projector in full.
    h, kv, inter = 4096, 1024, 14336
    lora = 32 * 8 * ((h + h) + 2 * (h + kv) + (h + h) + 2 * (h + inter) + (inter + h))
    assert plan.trainable_detail == {"lora": lora, "projector": 768 * h + h + h * h + h}
    largest = largest_fitting_batch(paper, "lora", 2, 40)
    assert largest >= 8
    assert plan_memory(paper, "lora", 2, 40, largest).fits
    assert not plan_memory(paper, "lora", 2, 40, largest + 1).fits
    # Without gradient checkpointing the recipe's batch would not fit: activations dominate.
    assert not plan_memory(paper, "lora", 2, 40, gradient_checkpointing=False).fits


def test_breakdown_sums_to_total_and_all_stages_plan(paper):
    for stage in ("clip", "lora", "joint"):
        plan = plan_memory(paper, stage, 2, 40)
        assert plan.total == sum(plan.breakdown.values())
        assert set(plan.breakdown) == {
            "weights",
            "gradients",
            "optimizer_states",
            "activations",
            "logits",
            "overhead",
        }
        assert all(v >= 0 for v in plan.breakdown.values())
        assert plan.headroom == plan.gpu_memory_bytes - plan.total
        assert plan.activations_no_checkpointing > plan.activations_checkpointing
    joint = plan_memory(paper, "joint", 2, 40)
    assert joint.trainable_detail["vision"] > 0  # the last 4 ViT blocks


def test_does_not_fit_exits_1(capsys):
    code = main(["plan", "--recipe", str(PAPER), "--gpus", "2", "--gpu-memory", "16", "--stage", "lora"])
    assert code == 1
    assert "DOES NOT FIT" in capsys.readouterr().out


def test_zero2_halves_optimizer_states_and_gradient_partitions(paper):
    one, two = plan_memory(paper, "lora", 1, 40), plan_memory(paper, "lora", 2, 40)
    assert abs(one.breakdown["optimizer_states"] - 2 * two.breakdown["optimizer_states"]) <= 2
    # Weights and activations are not sharded by ZeRO-2.
    assert one.breakdown["weights"] == two.breakdown["weights"]
    assert one.breakdown["activations"] == two.breakdown["activations"]
    assert one.breakdown["gradients"] > two.breakdown["gradients"]


def test_memory_grows_with_batch(paper):
    totals = [plan_memory(paper, "lora", 2, 40, batch).total for batch in (1, 2, 4, 8, 16, 32)]
    assert totals == sorted(totals) and len(set(totals)) == len(totals)
    fused = plan_memory(paper, "lora", 2, 40, 8)
    plain = plan_memory(paper, "lora", 2, 40, 8, fused_lm_head=False)
    assert plain.logits_plain > 100 * fused.logits_fused  # the fused head never holds (B, T, V) logits
    assert plain.total > fused.total


@pytest.mark.parametrize(
    "argv",
    [
        ["--recipe", "no/such/recipe.yaml", "--gpus", "2", "--gpu-memory", "40"],
        ["--recipe", "BAD", "--gpus", "2", "--gpu-memory", "40"],
        ["--recipe", str(PAPER), "--gpus", "0", "--gpu-memory", "40"],
        ["--recipe", str(PAPER), "--gpus", "2", "--gpu-memory", "40", "--stage", "nope"],
        ["--recipe", str(PAPER), "--gpus", "8", "--gpu-memory", "40", "--nodes", "0"],
        ["--recipe", str(PAPER), "--gpus", "8", "--gpu-memory", "40", "--zero", "1"],
    ],
)
def test_bad_input_exits_2_with_one_line(argv, tmp_path, capsys):
    if argv[1] == "BAD":
        bad = tmp_path / "bad.yaml"
        bad.write_text("name: x\noutput_dir: y\ntraining: {per_device_batch: 3}\n")
        argv = [argv[0], str(bad), *argv[2:]]
    try:
        code = main(["plan", *argv])
    except SystemExit as exc:  # argparse's own choices check
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_tiny_recipe_plans_offline_on_cpu_and_cuda():
    recipe = load_recipe(TINY)
    cpu = plan_memory(recipe, "lora", 1, 1, device="cpu")
    cuda = plan_memory(recipe, "lora", 1, 1)
    assert cpu.dtype == "float32" and cpu.breakdown["overhead"] == 0
    assert cpu.seq_len == 100 + 64 and cpu.image_tokens == 100
    assert cuda.breakdown["overhead"] >= 2**30
    assert plan_memory(recipe, "clip", 1, 1, device="cpu").trainable_params > 0


@pytest.mark.parametrize(
    ("dtype_name", "dropout", "padding"),
    [("float32", 0.0, False), ("float32", 0.05, True), ("bfloat16", 0.05, True), ("bfloat16", 0.0, True)],
)
def test_llama_layer_formula_matches_what_autograd_saves(dtype_name, dropout, padding):
    """The per-layer formula against the tensors autograd really saves (storages, parameters excluded)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaModel

    dtype = getattr(torch, dtype_name)
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    cfg = LlamaConfig(
        hidden_size=128,
        intermediate_size=320,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = get_peft_model(
        LlamaModel(cfg).to(dtype),
        LoraConfig(r=8, lora_alpha=32, lora_dropout=dropout, target_modules=list(targets)),
        autocast_adapter_dtype=False,
    ).train()
    batch, seq = 2, 48
    mask = torch.ones(batch, seq, dtype=torch.long)
    if padding:
        mask[0, :5] = 0
    skip = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    embeds = torch.randn(batch, seq, 128, dtype=dtype, requires_grad=True) * 1
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(inputs_embeds=embeds, attention_mask=mask)
    tokens = batch * seq
    a = 2 if dtype == torch.bfloat16 else 4
    predicted = 2 * llama_layer_saved_bytes(
        tokens,
        cfg,
        a,
        lora_r=8,
        lora_targets=targets,
        lora_dropout=dropout > 0,
        padding_mask=padding,
        device="cpu",
    )
    predicted += tokens * 4 * 128  # the final RMSNorm's fp32 input
    # Shared by all layers, counted outside the per-layer formula: the mask, RoPE's cos/sin, RMSNorm's 1/rms.
    measured = sum(saved.values())
    assert abs(measured - predicted) / measured < 0.05, (measured, predicted)


def test_cpu_prediction_within_20_percent_of_measured_peak(tiny_model_dir):
    """The planner against a real SFTTrainer step of the tiny lora stage, measured with the torch profiler."""
    import sys

    # benchmarks/ is not an installed package (python -m benchmarks.run runs from the repository root).
    sys.path.insert(0, str(RECIPES.parent.parent))
    from benchmarks.memory import planner_vs_measured

    result = planner_vs_measured(tiny_model_dir, load_recipe(TINY), "lora", steps=1)
    assert abs(result["error"]) < 0.20, result
    assert abs(result["layers_phase"]["error"]) < 0.20, result


def test_nodes_multiply_ranks_and_zero2_keeps_weights_whole(paper):
    one_node = plan_memory(paper, "lora", 16, 40)
    two_nodes = plan_memory(paper, "lora", 8, 40, nodes=2, zero_stage=2)
    assert two_nodes.ranks == 16 and two_nodes.breakdown == one_node.breakdown
    single = plan_memory(paper, "lora", 8, 40, nodes=1, zero_stage=2)
    assert (
        two_nodes.breakdown["weights"] == single.breakdown["weights"]
    )  # ZeRO-2: every rank holds every weight
    assert two_nodes.breakdown["optimizer_states"] < single.breakdown["optimizer_states"]


def test_zero3_shards_weights_over_all_ranks_plus_the_gathered_working_set(paper):
    z2 = plan_memory(paper, "lora", 8, 40, nodes=2, zero_stage=2)
    z3 = plan_memory(paper, "lora", 8, 40, nodes=2, zero_stage=3)
    config = model_config_for_recipe(paper)
    counts = _count_medvqa(
        json.dumps(config.to_dict(), sort_keys=True, default=str),
        json.dumps(paper.lora.__dict__, sort_keys=True),
        "lora",
        paper.stage("joint").vision_trainable_blocks,
    )
    h, vocab = config.text_config.hidden_size, config.text_config.vocab_size
    # The LM head (gathered whole by TRL's fused head) is the largest single module of Llama-3-8B.
    assert counts.largest_module == vocab * h
    assert zero3_gathered_elements(counts, h) == vocab * h
    # Norms, biases and the small LoRA matrices (<= 10 x hidden elements each) stay whole on every rank.
    assert 0 < counts.persistent < 2e-3 * counts.total
    expected = -(-(counts.total - counts.persistent) * 2 // 16) + counts.persistent * 2 + vocab * h * 2
    assert z3.breakdown["weights"] == expected
    assert z3.weights_gathered == vocab * h * 2
    # Everything else per rank is what ZeRO-2 gives; weights shrink by ~16x minus the working set.
    for key in ("gradients", "optimizer_states", "activations"):
        assert z3.breakdown[key] == z2.breakdown[key]
    assert z3.total < z2.total
    # More nodes: smaller partitions, never below the gathered working set.
    four = plan_memory(paper, "lora", 8, 40, nodes=4, zero_stage=3)
    assert z3.weights_gathered < four.breakdown["weights"] < z3.breakdown["weights"]


def test_llama3_70b_needs_zero3_on_two_nodes_of_80gb(capsys):
    recipe = load_recipe(LLAMA70B)
    assert recipe.training.zero_stage == 3
    assert recipe.training.global_batch_size == 128
    # ZeRO-2 keeps 141 GB of bf16 weights on every GPU: never fits on 80 GB.
    assert not plan_memory(recipe, "lora", 8, 80, nodes=2, zero_stage=2).fits
    plan = plan_memory(recipe, "lora", 8, 80, nodes=2)
    assert plan.zero_stage == 3 and plan.fits and 70e9 < plan.total_params < 72e9
    largest = largest_fitting_batch(recipe, "lora", 8, 80, nodes=2)
    assert largest >= 8
    assert not plan_memory(recipe, "lora", 8, 80, largest + 1, nodes=2).fits
    # On one node the partitions double; the batch that fits shrinks.
    assert largest_fitting_batch(recipe, "lora", 8, 80, nodes=1) < largest
    argv = ["plan", "--recipe", str(LLAMA70B), "--gpus", "8", "--nodes", "2", "--gpu-memory", "80"]
    assert main([*argv, "--stage", "lora"]) == 0
    out = capsys.readouterr().out
    assert "2 nodes x 8 x 80 GiB" in out and "ZeRO-3 1/16 + gathered" in out and "verdict: FITS" in out
    assert main([*argv, "--stage", "lora", "--zero", "2"]) == 1
