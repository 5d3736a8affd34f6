"""Run the tiny ``lora`` stage under ``accelerate launch`` and write, per rank, its last loss and a weight digest.

Launched by tests/test_deepspeed.py as a real multi-process DeepSpeed ZeRO-2 run; not a test module itself.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

from training.train.pipeline import run_training
from training.train.recipe import load_recipe


class WeightDigest(TrainerCallback):
    """At the end of training, every rank writes its loss history and a digest of its trainable weights."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_end(self, args, state, control, model=None, **kwargs):
        digest = hashlib.sha256()
        total = 0.0
        for name, param in sorted(model.named_parameters()):
            if param.requires_grad:
                data = param.detach().float().cpu().contiguous()
                digest.update(name.encode() + data.numpy().tobytes())
                total += float(data.abs().sum())
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        losses = [h["loss"] for h in state.log_history if "loss" in h]
        payload = {"rank": rank, "losses": losses, "digest": digest.hexdigest(), "abs_sum": total}
        payload["world_size"] = (
            torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        )
        (self.out / f"rank{rank}.json").write_text(json.dumps(payload))


def main() -> None:
    recipe_path, data, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    recipe = load_recipe(recipe_path)
    recipe.output_dir = str(out / "run")
    recipe.training.report_to = []
    recipe.training.per_device_train_batch_size = 4
    recipe.training.logging_steps = 1
    recipe.stage("lora").max_steps = 4
    run_training(recipe, ["lora"], train_jsonl=data, callbacks=[WeightDigest(out)])


if __name__ == "__main__":
    main()
