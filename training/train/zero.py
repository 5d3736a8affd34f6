"""DeepSpeed ZeRO-3 for the training stages: gather before reading weights, save adapters whole, load bases whole.

Under ZeRO-3 every rank holds only a slice of each parameter (``param.ds_tensor``; ``param`` itself is an empty
placeholder between uses).  Anything that reads weights outside the engine's forward/backward -- saving the adapter,
a digest in a test, copying the tuned CLIP trunk -- must gather them first (``deepspeed.zero.GatheredParameters``,
a collective: every rank enters it).  Everything here is a no-op without ZeRO-3, so the stages call it always.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch


def deepspeed_launch() -> bool:
    """Whether this process was started by ``accelerate launch --use_deepspeed`` (or a DeepSpeed accelerate config)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def distributed_state():
    """accelerate's ``PartialState``, created here first so that a DeepSpeed launch without GPUs works.

    accelerate picks no process-group backend on a machine without an accelerator (one process, no DeepSpeed);
    naming gloo makes it initialise DeepSpeed's communication over gloo with DeepSpeed's CPU accelerator, which is
    how the CPU tests run the real ZeRO-2/ZeRO-3 engine.  On GPUs accelerate's own choice (NCCL) stands.
    """
    from accelerate import PartialState

    if deepspeed_launch() and not torch.cuda.is_available():
        return PartialState(backend="gloo")
    return PartialState()


def is_partitioned(param: torch.nn.Parameter) -> bool:
    """True for a parameter ZeRO-3 has partitioned (it carries DeepSpeed's ``ds_id``)."""
    return hasattr(param, "ds_id")


def gathered_parameters(params: Iterable[torch.nn.Parameter], modifier_rank: int | None = None):
    """DeepSpeed's ``GatheredParameters`` over the partitioned ones among ``params``; a null context otherwise.

    Every rank must enter it (it all-gathers).  With ``modifier_rank`` set, that rank's in-place changes are
    scattered back to every rank's partition on exit.
    """
    partitioned = [p for p in params if is_partitioned(p)]
    if not partitioned:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=modifier_rank)


def is_adapter_parameter(name: str) -> bool:
    """Whether a peft model's parameter belongs to the saved adapter: LoRA matrices and ``modules_to_save`` copies
    (the projector; in ``joint`` the whole vision tower, frozen early blocks included)."""
    return "lora_" in name or ".modules_to_save." in name


class Zero3AdapterSaveMixin:
    """Mix into a ``Trainer`` subclass whose model is a peft model: under ZeRO-3, ``save_model`` (the final adapter
    and every checkpoint's) gathers only the adapter's parameters and writes them with peft's ``save_pretrained``.

    transformers' own ZeRO-3 path gathers the trainable parameters only (``exclude_frozen_parameters``), which
    would leave the frozen early ViT blocks of the joint stage's vision-tower copy out of the adapter; the generic
    path (``stage3_gather_16bit_weights_on_model_save``) would gather the whole base model onto rank 0 first
    (141 GB for Llama-3-70B).  Optimizer and engine states still go to DeepSpeed's sharded checkpoint.
    """

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        model = self.accelerator.unwrap_model(self.model)
        if not (self.is_deepspeed_enabled and any(is_partitioned(p) for p in model.parameters())):
            return super().save_model(output_dir, _internal_call=_internal_call)
        output_dir = output_dir or self.args.output_dir
        adapter = [p for n, p in model.named_parameters() if is_adapter_parameter(n)]
        with gathered_parameters(adapter):
            if self.args.should_save:
                Path(output_dir).mkdir(parents=True, exist_ok=True)
                model.save_pretrained(output_dir, safe_serialization=True)
                if self.processing_class is not None:
                    self.processing_class.save_pretrained(output_dir)
        self.accelerator.wait_for_everyone()


@contextmanager
def whole_weights_loading() -> Iterator[None]:
    """Inside this block ``from_pretrained`` loads models whole, not partitioned by ZeRO-3's ``zero.Init``.

    transformers partitions every model it loads while a ZeRO-3 ``TrainingArguments`` is alive (it keeps a weak
    reference to the DeepSpeed config); the merge step needs the base whole on one process.  There is no public
    switch for this, so the reference is set aside (``unset_hf_deepspeed_config``) and put back afterwards.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved
