"""Run a tiny training stage (under ``accelerate launch`` or alone) and write, per rank, its losses and weights.

Launched by tests/test_deepspeed.py and tests/test_multinode.py as a real multi-process DeepSpeed run (ZeRO-2 or
ZeRO-3, one or two "machines"), and run as a plain single process for the reference; not a test module itself.

    python deepspeed_probe.py RECIPE DATA OUT [--stage lora] [--batch 4] [--steps 4] [--save-steps N]
        [--resume] [--last-only]

Each rank writes ``OUT/rank<R>.json`` (losses, world size, a digest of its trainable weights) and
``OUT/rank<R>.safetensors`` (the trainable weights, gathered whole under ZeRO-3).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch
from transformers import TrainerCallback

from training.train.pipeline import run_training
from training.train.recipe import load_recipe
from training.train.zero import gathered_parameters


class WeightDigest(TrainerCallback):
    """At the end of training, every rank writes its loss history and its trainable weights (whole)."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_end(self, args, state, control, model=None, **kwargs):
        from safetensors.torch import save_file

        trainable = [(n, p) for n, p in sorted(model.named_parameters()) if p.requires_grad]
        with gathered_parameters([p for _, p in trainable]):  # a collective under ZeRO-3: every rank calls it
            weights = {n: p.detach().float().cpu().clone().contiguous() for n, p in trainable}
        digest = hashlib.sha256()
        for name, data in weights.items():
            digest.update(name.encode() + data.numpy().tobytes())
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        losses = [h["loss"] for h in state.log_history if "loss" in h]
        payload = {
            "rank": rank,
            "losses": losses,
            "digest": digest.hexdigest(),
            "abs_sum": float(sum(w.abs().sum() for w in weights.values())),
            "world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
            "global_step": state.global_step,
            # Elements this rank stores of every parameter (ZeRO-3: its partitions; else the whole tensors).
            "stored_elements": sum(int(getattr(p, "ds_tensor", p).numel()) for p in model.parameters()),
        }
        save_file(weights, str(self.out / f"rank{rank}.safetensors"))
        (self.out / f"rank{rank}.json").write_text(json.dumps(payload))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("data")
    parser.add_argument("out", type=Path)
    parser.add_argument("--stage", default="lora")
    parser.add_argument("--batch", type=int, default=4, help="per-device batch")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--save-steps", type=int, default=1000)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--last-only", action="store_true", help="run only the last stage of --stage")
    args = parser.parse_args()

    recipe = load_recipe(args.recipe)
    recipe.output_dir = str(args.out / "run")
    recipe.training.report_to = []
    recipe.training.per_device_train_batch_size = args.batch
    recipe.training.gradient_accumulation_steps = 1
    recipe.training.logging_steps = 1
    recipe.training.save_steps = args.save_steps
    # "joint" runs lora first (its adapter starts the joint stage); "all" runs clip -> lora -> joint.
    stages = {"joint": ["lora", "joint"], "all": ["clip", "lora", "joint"]}.get(args.stage, [args.stage])
    for stage in stages:
        recipe.stage(stage).max_steps = args.steps
        recipe.stage(stage).per_device_train_batch_size = args.batch
    if args.last_only:
        stages = stages[-1:]
    run_training(
        recipe, stages, resume=args.resume, train_jsonl=args.data, callbacks=[WeightDigest(args.out)]
    )


if __name__ == "__main__":
    main()
