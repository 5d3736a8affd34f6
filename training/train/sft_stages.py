"""Stages ``lora`` and ``joint``: TRL's SFTTrainer on the MedVQA model with peft LoRA on the language model.

- ``lora``: LoRA (r, alpha, dropout, target modules from the recipe) on the LM + the projector trained in full
  (peft ``modules_to_save``); the vision tower frozen.
- ``joint``: starts from the ``lora`` adapter (LoRA + projector) and also trains the vision tower's last N blocks
  (the whole tower is a ``modules_to_save`` copy whose earlier blocks stay frozen), each part at its own rate.

Each stage writes ``<output_dir>/<stage>/adapter`` (adapter-only, with the processor) and, when asked, ``merged``
(LoRA merged into the weights; a full model folder).  Both load through the Auto classes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.train.augment import TrainingAugmentation
from training.train.checkpoints import (
    CompleteCheckpointMixin,
    ModuleLearningRatesMixin,
    last_complete_checkpoint,
)
from training.train.lora import build_lora_config
from training.train.recipe import Recipe
from training.train.zero import (
    Zero3AdapterSaveMixin,
    deepspeed_launch,
    gathered_parameters,
    is_adapter_parameter,
    whole_weights_loading,
)

PROJECTOR = "multi_modal_projector"
VISION = "vision_tower"


@dataclass
class StageResult:
    """What a stage produced and how it went (losses as logged by the Trainer)."""

    stage: str
    output_dir: Path
    losses: list[float] = field(default_factory=list)
    train_samples_per_second: float | None = None
    train_runtime_s: float | None = None
    adapter_dir: Path | None = None
    merged_dir: Path | None = None
    model_dir: Path | None = None
    resumed_from: Path | None = None

    @property
    def first_loss(self) -> float | None:
        return self.losses[0] if self.losses else None

    @property
    def last_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


def train_stage(trainer, stage: str, output_dir: Path, resume: bool) -> StageResult:
    """Run ``trainer`` (from the last complete checkpoint when ``resume``) and report how the stage went."""
    checkpoint = last_complete_checkpoint(output_dir) if resume else None
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    return StageResult(
        stage=stage,
        output_dir=output_dir,
        losses=[h["loss"] for h in trainer.state.log_history if "loss" in h],
        train_samples_per_second=output.metrics.get("train_samples_per_second"),
        train_runtime_s=time.perf_counter() - started,
        resumed_from=checkpoint,
    )


def _sft_trainer_class():
    from trl import SFTTrainer

    class MedVQASFTTrainer(
        Zero3AdapterSaveMixin, CompleteCheckpointMixin, ModuleLearningRatesMixin, SFTTrainer
    ):
        """SFTTrainer with whole-or-nothing checkpoints, per-module learning rates and ZeRO-3 adapter saves."""

    return MedVQASFTTrainer


def training_arguments(recipe: Recipe, stage: str, output_dir: Path, **overrides: Any):
    """``SFTConfig`` for a stage from the recipe's shared settings and the stage's overrides."""
    import torch
    from trl import SFTConfig

    t = recipe.training
    s = recipe.stage(stage)
    on_gpu = torch.cuda.is_available()
    # Under `accelerate launch --use_deepspeed` on a machine without GPUs (the CPU tests), use_cpu must stay off:
    # accelerate only hands the model to DeepSpeed's engine (its CPU accelerator, over gloo; see
    # training.train.zero.distributed_state) when use_cpu is False, and would silently fall back to plain DDP.
    on_deepspeed_cpu = deepspeed_launch() and not on_gpu
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        seed=recipe.seed,
        data_seed=recipe.seed,
        per_device_train_batch_size=recipe.stage_value(stage, "per_device_train_batch_size"),
        gradient_accumulation_steps=recipe.stage_value(stage, "gradient_accumulation_steps"),
        num_train_epochs=s.num_train_epochs,
        max_steps=s.max_steps,
        learning_rate=s.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=recipe.stage_value(stage, "warmup_steps"),
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optim,
        # QLoRA: TRL keeps the trainable weights of a quantised model in bf16 (the QLoRA paper's advice) beside the
        # fp32 parts prepare_model_for_kbit_training keeps, so bf16 autocast is needed on a CPU too.
        bf16=t.bf16 and (on_gpu or bool(recipe.model.quantize)),
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        report_to=list(t.report_to),
        dataloader_num_workers=t.dataloader_num_workers,
        remove_unused_columns=False,
        max_length=recipe.data.max_length,
        use_cpu=not on_gpu and not on_deepspeed_cpu,
        ddp_backend="gloo" if on_deepspeed_cpu else None,
    )
    kwargs.update(overrides)
    return SFTConfig(**kwargs)


def load_base(model_dir: Path, recipe: Recipe, *, quantize: str | None = None):
    """The MedVQA checkpoint a stage starts from, in the recipe's dtype, and its processor.

    ``quantize`` (QLoRA, ``model.quantize`` of the recipe): the language model's decoder layers load in 4-bit NF4 /
    8-bit through bitsandbytes (:mod:`training.quantization`, the settings inference uses), and peft's
    ``prepare_model_for_kbit_training`` freezes the base, keeps the unquantised parts (vision tower, projector,
    embeddings, norms, LM head) in fp32 for stable training and makes checkpointed inputs carry gradients.
    """
    import torch

    from modeling_medvqa import MedVQAForConditionalGeneration, MedVQAProcessor

    dtype = getattr(torch, recipe.model.dtype)
    if dtype == torch.bfloat16 and not torch.cuda.is_available():
        dtype = torch.float32  # bf16 matmuls on CPU are slow and lossy; the CPU path trains in fp32
    kwargs: dict[str, Any] = {}
    if quantize:
        from accelerate import PartialState

        from training.quantization import quantization_config

        kwargs["quantization_config"] = quantization_config(quantize, dtype)
        # bitsandbytes quantises while loading onto this process's device (each rank its own copy).
        kwargs["device_map"] = {"": PartialState().device}
    model = MedVQAForConditionalGeneration.from_pretrained(
        model_dir, dtype=dtype, attn_implementation=recipe.training.attn_implementation, **kwargs
    )
    if quantize:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=recipe.training.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    return model, MedVQAProcessor.from_pretrained(model_dir)


def build_peft_model(model, recipe: Recipe, stage: str, lora_adapter: Path | None = None):
    """Wrap the model with LoRA for ``stage``; ``joint`` also trains the vision tower's last N blocks."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    modules_to_save = [PROJECTOR] + ([VISION] if stage == "joint" else [])
    peft_model = get_peft_model(model, build_lora_config(recipe.lora, modules_to_save))
    if lora_adapter is not None:
        # The lora adapter holds LoRA + projector; the vision tower copy keeps its (post-clip) base weights.
        state = get_peft_model_state_dict(peft_model)
        loaded = load_file(str(Path(lora_adapter) / "adapter_model.safetensors"))
        missing = sorted(set(state) - set(loaded) - {k for k in state if f".{VISION}." in k})
        if missing:
            raise ValueError(f"the lora adapter lacks weights the joint stage needs: {missing[:5]}")
        state.update(loaded)
        # Under ZeRO-3 the projector copy may be partitioned: gather it, every rank loads the same file.
        adapter = [p for n, p in peft_model.named_parameters() if is_adapter_parameter(n)]
        with gathered_parameters(adapter, modifier_rank=0):
            result = set_peft_model_state_dict(peft_model, state)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"the lora adapter does not fit the joint model: {unexpected[:5]}")
    if stage == "joint":
        freeze_vision_except_last_blocks(peft_model, recipe.stage("joint").vision_trainable_blocks)
    return peft_model


def freeze_vision_except_last_blocks(peft_model, trainable_blocks: int | None) -> None:
    """In the trainable copy of the vision tower, keep only the last ``trainable_blocks`` ViT blocks trainable."""
    tower = peft_model.base_model.model.model.vision_tower.modules_to_save["default"]
    if trainable_blocks is None:
        return
    blocks = tower.trunk.blocks
    first_trainable = max(len(blocks) - trainable_blocks, 0)
    for name, param in tower.named_parameters():
        in_block = name.startswith("trunk.blocks.")
        index = int(name.split(".")[2]) if in_block else -1
        param.requires_grad = in_block and index >= first_trainable


def run_sft_stage(
    recipe: Recipe,
    stage: str,
    base_dir: Path,
    train_records: list[dict],
    records_base: Path | None,
    *,
    lora_adapter: Path | None = None,
    resume: bool = False,
    merge: bool = False,
    callbacks: list | None = None,
) -> StageResult:
    """Train stage ``lora`` or ``joint`` and save its adapter (and the merged model when ``merge``)."""
    from transformers import set_seed

    from training.train.sft_data import MedVQACollator, build_sft_dataset

    output_dir = Path(recipe.output_dir) / stage
    # The training arguments first: under ZeRO-3 they make from_pretrained build the model already partitioned
    # (deepspeed.zero.Init), so no process ever holds the whole base (Llama-3-70B: 141 GB in bf16).
    args = training_arguments(recipe, stage, output_dir)
    model, processor = load_base(base_dir, recipe, quantize=recipe.model.quantize)
    # After loading, before LoRA: its initialisation draws from the seed, and how much randomness loading consumes
    # differs with and without zero.Init.
    set_seed(recipe.seed)
    peft_model = build_peft_model(model, recipe, stage, lora_adapter)
    s = recipe.stage(stage)
    rates = {PROJECTOR: s.projector_learning_rate or s.learning_rate}
    if stage == "joint":
        rates[VISION] = s.vision_learning_rate or s.learning_rate

    augment = stage_augmentation(recipe, processor)
    trainer = _sft_trainer_class()(
        model=peft_model,
        args=args,
        train_dataset=build_sft_dataset(train_records, records_base),
        processing_class=processor,
        data_collator=MedVQACollator(processor=processor, max_length=recipe.data.max_length, augment=augment),
        callbacks=[*(callbacks or []), *([augment.epoch_callback()] if augment else [])],
    )
    trainer.module_learning_rates = rates
    result = train_stage(trainer, stage, output_dir, resume)
    result.adapter_dir = output_dir / "adapter"
    trainer.save_model(str(result.adapter_dir))
    if trainer.accelerator.is_main_process:
        # Trainer.save_model also pickles the TrainingArguments there; the adapter folder ships safetensors only
        # (the checkpoints keep their copy for resume).
        (result.adapter_dir / "training_args.bin").unlink(missing_ok=True)
        processor.save_pretrained(result.adapter_dir)
        _note_base(result.adapter_dir, base_dir)
    if merge:
        result.merged_dir = output_dir / "merged"
        if trainer.accelerator.is_main_process:
            # QLoRA too: the adapter merges into the unquantised base, not into rounded 4-bit weights
            merge_saved_adapter(base_dir, result.adapter_dir, recipe, result.merged_dir)
        trainer.accelerator.wait_for_everyone()
    return result


def merge_saved_adapter(base_dir: Path, adapter_dir: Path, recipe: Recipe, out_dir: Path) -> Path:
    """Merge the saved adapter into a whole copy of the base and save a full model folder (one process).

    The adapter on disk was gathered whole when it was saved, and the base is read whole from its checkpoint
    (outside ZeRO-3's partitioning), so this works alike after a single-GPU, ZeRO-2 or ZeRO-3 run.
    """
    from peft import PeftModel

    with whole_weights_loading():
        model, processor = load_base(base_dir, recipe)
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    return merge_adapter(peft_model, processor, out_dir)


def stage_augmentation(recipe: Recipe, processor) -> TrainingAugmentation | None:
    """The shared training augmentation at the processor's input size, when the recipe asks for it."""
    if not recipe.data.augment:
        return None
    size = processor.image_processor.crop_size
    return TrainingAugmentation(
        size["height"] if isinstance(size, dict) else size.height, recipe.seed
    )  # a SizeDict


def merge_adapter(peft_model, processor, out_dir: Path) -> Path:
    """Fold LoRA into the weights and save a full, Hub-loadable model folder with its processor."""
    import modeling_medvqa  # noqa: F401  (registers the Auto classes so save_pretrained writes auto_map)

    merged = peft_model.merge_and_unload()
    merged.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def _note_base(adapter_dir: Path, base_dir: Path) -> None:
    """Say in the adapter folder which base it needs (peft records it too, as base_model_name_or_path)."""
    (adapter_dir / "BASE_MODEL.txt").write_text(
        "This folder holds a LoRA adapter (+ the projector) for the MedVQA model in:\n"
        f"  {base_dir}\nLoad it with AutoModelForImageTextToText.from_pretrained(<this folder>, "
        "trust_remote_code=True) while that base is reachable, or use the merged folder.\n"
    )
