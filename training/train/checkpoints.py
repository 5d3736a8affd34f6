"""Checkpoints that are either whole or ignored, and per-module learning rates, for transformers' Trainer.

transformers writes ``checkpoint-N/`` file by file; a run killed mid-save leaves a folder that
``get_last_checkpoint`` would happily resume from.  :class:`CompleteCheckpointMixin` writes a marker as the very
last act of a save (after every rank has written its shards, via a temporary file and ``os.replace``, which is
atomic), and :func:`last_complete_checkpoint` resumes only from folders that carry it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

COMPLETE_MARKER = "medvqa_complete.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def write_json_atomic(path: str | Path, payload: dict[str, Any]) -> None:
    """Write JSON so that readers see either the old file or the whole new one, never a part."""
    path = Path(path)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        json.dump(payload, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(handle.name, path)


def last_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest ``checkpoint-N`` folder under ``output_dir`` whose save finished, or None."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = []
    for child in output_dir.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and (child / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


class CompleteCheckpointMixin:
    """Mix into a ``Trainer`` subclass: marks each checkpoint complete once every rank has saved it."""

    def _save_checkpoint(self, model, trial) -> None:  # transformers' hook, called at each save step
        super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            write_json_atomic(folder / COMPLETE_MARKER, {"global_step": self.state.global_step})


class ModuleLearningRatesMixin:
    """Mix into a ``Trainer`` subclass: parameters whose name contains a key of ``module_learning_rates`` train at
    that rate (e.g. the projector faster than LoRA, the vision trunk slower); the rest at ``args.learning_rate``.

    The schedule (cosine with warm-up) scales every group alike.  With DeepSpeed this optimizer is the client
    optimizer that ZeRO-2 wraps and shards (our ZeRO config has no ``optimizer`` section on purpose).
    """

    module_learning_rates: dict[str, float] = {}

    def create_optimizer(self, model=None):
        if self.optimizer is not None or not self.module_learning_rates:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[float, float], list] = {}
        for name, param in opt_model.named_parameters():
            if not param.requires_grad:
                continue
            lr = next(
                (v for k, v in self.module_learning_rates.items() if k in name), self.args.learning_rate
            )
            weight_decay = self.args.weight_decay if name in decay else 0.0
            groups.setdefault((lr, weight_decay), []).append(param)
        param_groups = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(param_groups, lr=self.args.learning_rate, **optimizer_kwargs)
        return self.optimizer
