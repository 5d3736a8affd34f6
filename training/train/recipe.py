"""Training recipes: YAML files under ``configuration/recipes/`` read into typed, validated settings.

A recipe names the bases, the data, the settings every stage shares (``training``), LoRA, and per-stage overrides
(``stages.clip``, ``stages.lora``, ``stages.joint``).  Unknown keys are errors, so a typo never silently falls back
to a default.  Paths in a recipe are relative to the current directory unless absolute.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.errors import MedVQAUserError

STAGES = ("clip", "lora", "joint")


@dataclass
class ModelSettings:
    vision: str = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"  # or "tiny"
    text: str = "meta-llama/Meta-Llama-3-8B-Instruct"  # or "tiny"
    dtype: str = "bfloat16"
    vision_feature_layer: int = -2
    init_checkpoint: str | None = None  # an existing `medvqa init` folder to start from instead of the bases
    quantize: str | None = (
        None  # QLoRA: "4bit" (NF4) / "8bit" base language model in lora/joint (bitsandbytes)
    )


@dataclass
class DataSettings:
    train: str = "data/omnimedvqa_open/train.jsonl"
    val: str | None = None
    max_length: int | None = None  # tokens per example incl. image tokens; None = no truncation
    clip_text: str = "{modality} image. {question} {answer}"  # the caption of each image for the clip stage
    augment: bool = False  # random crops and greyscale on training images (train/augment.py)


@dataclass
class TrainingSettings:
    """Settings every stage shares (HF TrainingArguments names where one exists)."""

    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 8
    num_gpus: int = (
        2  # the launch the recipe is written for (all GPUs of all nodes); the global batch uses it
    )
    zero_stage: int = (
        2  # the DeepSpeed ZeRO stage it is written for (`medvqa plan`'s default; the launch decides)
    )
    bf16: bool = True
    optim: str = "adamw_torch"
    lr_scheduler_type: str = "cosine"
    warmup_steps: int = 100
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = True
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int = 2
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    dataloader_num_workers: int = 4
    attn_implementation: str = "sdpa"

    @property
    def global_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.num_gpus


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class StageSettings:
    """One stage; unset fields take the ``training`` value."""

    enabled: bool = True
    num_train_epochs: float = 1.0
    max_steps: int = -1
    learning_rate: float = 2e-4
    projector_learning_rate: float | None = (
        None  # lora/joint: the projector's own rate (default: learning_rate)
    )
    vision_learning_rate: float | None = None  # clip/joint: the vision trunk's rate (default: learning_rate)
    vision_trainable_blocks: int | None = None  # joint: train the last N ViT blocks (None: all)
    per_device_train_batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    warmup_steps: int | None = None


@dataclass
class Recipe:
    name: str
    output_dir: str
    seed: int = 42
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    stages: dict[str, StageSettings] = field(default_factory=lambda: {s: StageSettings() for s in STAGES})
    hardware: str = ""
    source_path: str | None = None

    def stage(self, name: str) -> StageSettings:
        return self.stages[name]

    def stage_value(self, name: str, key: str) -> Any:
        """A stage's setting, falling back to the shared ``training`` value when the stage leaves it unset."""
        value = getattr(self.stages[name], key, None)
        return getattr(self.training, key) if value is None else value

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("source_path")
        return data


# ---------------------------------------------------------------------------------------------------- schema
# Every value of a recipe is checked here, once, against its field's type and range, so a wrong value is one line
# naming the key instead of a traceback deep inside transformers.  Types come from the dataclasses' annotations;
# ranges and choices from the tables below.

DTYPES = ("float32", "bfloat16", "float16")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
_MAX_SEED = 2**32  # numpy's and torch's seeds are below this

# key -> (lowest allowed, inclusive?) for numbers; the same rule in every section that has the key.
_AT_LEAST_ONE = {
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_gpus",
    "logging_steps",
    "save_steps",
    "save_total_limit",
    "r",
    "alpha",
    "max_length",
}
_AT_LEAST_ZERO = {"warmup_steps", "dataloader_num_workers", "vision_trainable_blocks", "weight_decay"}
_ABOVE_ZERO = {
    "learning_rate",
    "projector_learning_rate",
    "vision_learning_rate",
    "num_train_epochs",
    "max_grad_norm",
}


def _type_name(kind: Any) -> str:
    return {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}.get(
        kind, getattr(kind, "__name__", str(kind))
    )


def _check_value(key: str, value: Any, annotation: Any, where: str) -> Any:
    """``value`` checked against a field's annotation (int, float, bool, str, list[str], X | None) and range."""
    args = typing.get_args(annotation)
    if type(None) in args:  # Optional
        if value is None:
            return None
        annotation = next(a for a in args if a is not type(None))
    elif value is None:
        raise MedVQAUserError(where, f"{key}: must not be empty (null)")
    if typing.get_origin(annotation) is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise MedVQAUserError(where, f"{key}: expected a list of strings, got {value!r:.60}")
        return list(value)
    if annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise MedVQAUserError(where, f"{key}: must be a finite number, got {value!r}")
    else:
        ok = isinstance(value, annotation)
    if not ok:
        raise MedVQAUserError(
            where, f"{key}: expected {_type_name(annotation)}, got {type(value).__name__} {value!r:.60}"
        )
    if annotation is float:
        value = float(value)
    if key in _AT_LEAST_ONE and value < 1:
        raise MedVQAUserError(where, f"{key}: must be at least 1, got {value!r}")
    if key in _AT_LEAST_ZERO and value < 0:
        raise MedVQAUserError(where, f"{key}: must be 0 or more, got {value!r}")
    if key in _ABOVE_ZERO and not value > 0:
        raise MedVQAUserError(where, f"{key}: must be greater than 0, got {value!r}")
    return value


def _check_choices(section: str, values: dict[str, Any], where: str) -> None:
    """Values with a closed set of choices (dtype, optimizer, scheduler, attention, dropout, max_steps)."""
    if section == "model" and "dtype" in values and values["dtype"] not in DTYPES:
        raise MedVQAUserError(where, f"dtype: {values['dtype']!r} is not one of {', '.join(DTYPES)}")
    if section == "model" and values.get("quantize") not in (
        None,
        "4bit",
        "8bit",
    ):  # quantization.QUANTIZE_CHOICES
        raise MedVQAUserError(where, f"quantize: {values['quantize']!r} is not one of 4bit, 8bit (or null)")
    if section == "training":
        if "optim" in values or "lr_scheduler_type" in values:
            from transformers.trainer_utils import SchedulerType
            from transformers.training_args import OptimizerNames

            for key, enum in (("optim", OptimizerNames), ("lr_scheduler_type", SchedulerType)):
                allowed = [e.value for e in enum]
                if key in values and values[key] not in allowed:
                    raise MedVQAUserError(
                        where,
                        f"{key}: {values[key]!r} is not one of transformers' {', '.join(allowed[:8])}, ...",
                    )
        if "zero_stage" in values and values["zero_stage"] not in (2, 3):  # the planner's ZERO_STAGES
            raise MedVQAUserError(where, f"zero_stage: 2 or 3 (DeepSpeed ZeRO), got {values['zero_stage']!r}")
        if "attn_implementation" in values and values["attn_implementation"] not in ATTN_IMPLEMENTATIONS:
            raise MedVQAUserError(
                where,
                f"attn_implementation: {values['attn_implementation']!r} is not one of {', '.join(ATTN_IMPLEMENTATIONS)}",
            )
    if section == "lora" and "dropout" in values and not 0 <= values["dropout"] < 1:
        raise MedVQAUserError(where, f"dropout: must be in [0, 1), got {values['dropout']!r}")
    if section == "stage" and "max_steps" in values and values["max_steps"] != -1 and values["max_steps"] < 1:
        raise MedVQAUserError(where, f"max_steps: -1 (use epochs) or at least 1, got {values['max_steps']!r}")
    if section == "data" and "clip_text" in values:
        try:
            values["clip_text"].format(modality="", question="", answer="")
        except (KeyError, IndexError, ValueError) as exc:
            raise MedVQAUserError(
                where,
                f"clip_text: {values['clip_text']!r} is not a template of {{modality}}, {{question}}, {{answer}} ({exc})",
            ) from None


def _build(cls, values: Any, where: str, section: str):
    """A settings dataclass from a recipe section: unknown keys named, every value type- and range-checked."""
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise MedVQAUserError(where, f"expected a mapping of settings, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, values)) - names)
    if unknown:
        raise MedVQAUserError(where, f"unknown key(s) {unknown}; known: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    checked = {key: _check_value(key, value, hints[key], where) for key, value in values.items()}
    _check_choices(section, checked, where)
    return cls(**checked)


def recipe_from_dict(raw: Any, source: str = "<recipe>") -> Recipe:
    """Validate a recipe mapping (as read from YAML): keys, types, ranges and choices; one error names the key."""
    if not isinstance(raw, dict):
        raise MedVQAUserError(source, f"a recipe is a YAML mapping of settings, got {type(raw).__name__}")
    allowed = {"name", "output_dir", "seed", "model", "data", "training", "lora", "stages", "hardware"}
    unknown = sorted(set(map(str, raw)) - allowed)
    if unknown:
        raise MedVQAUserError(source, f"unknown top-level key(s) {unknown}; known: {sorted(allowed)}")
    for key in ("name", "output_dir"):
        if key not in raw:
            raise MedVQAUserError(source, f"missing required key {key!r}")
        if not isinstance(raw[key], str) or not raw[key].strip():
            raise MedVQAUserError(source, f"{key}: expected a non-empty string, got {raw[key]!r:.60}")
    seed = raw.get("seed", 42)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < _MAX_SEED:
        raise MedVQAUserError(source, f"seed: expected a whole number in [0, 2**32), got {seed!r:.60}")
    hardware = raw.get("hardware", "")
    if not isinstance(hardware, str | None):
        raise MedVQAUserError(source, f"hardware: expected a string, got {hardware!r:.60}")
    stages_raw = raw.get("stages") or {}
    if not isinstance(stages_raw, dict):
        raise MedVQAUserError(
            source,
            f"stages: expected a mapping of {', '.join(STAGES)} to their settings, got {type(stages_raw).__name__}",
        )
    bad = sorted(set(map(str, stages_raw)) - set(STAGES))
    if bad:
        raise MedVQAUserError(source, f"unknown stage(s) {bad}; stages are {list(STAGES)}")
    return Recipe(
        name=raw["name"],
        output_dir=raw["output_dir"],
        seed=seed,
        model=_build(ModelSettings, raw.get("model"), f"{source}: model", "model"),
        data=_build(DataSettings, raw.get("data"), f"{source}: data", "data"),
        training=_build(TrainingSettings, raw.get("training"), f"{source}: training", "training"),
        lora=_build(LoraSettings, raw.get("lora"), f"{source}: lora", "lora"),
        stages={
            s: _build(StageSettings, stages_raw.get(s), f"{source}: stages.{s}", "stage") for s in STAGES
        },
        hardware=hardware or "",
        source_path=source,
    )


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe YAML file; user errors name the file and the key."""
    from training.file_checks import read_yaml

    path = Path(path)
    return recipe_from_dict(read_yaml(path, "recipe"), str(path))
