"""Training recipes: YAML files under ``configuration/recipes/`` read into typed, validated settings.

A recipe names the bases, the data, the settings every stage shares (``training``), LoRA, and per-stage overrides
(``stages.clip``, ``stages.lora``, ``stages.joint``).  Unknown keys are errors, so a typo never silently falls back
to a default.  Paths in a recipe are relative to the current directory unless absolute.
"""

from __future__ import annotations

import dataclasses
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


@dataclass
class DataSettings:
    train: str = "data/omnimedvqa_open/train.jsonl"
    val: str | None = None
    max_length: int | None = None  # tokens per example incl. image tokens; None = no truncation
    clip_text: str = "{modality} image. {question} {answer}"  # the caption of each image for the clip stage


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


def _build(cls, values: Any, where: str):
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise MedVQAUserError(where, f"expected a mapping, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise MedVQAUserError(where, f"unknown key(s) {unknown}; known: {sorted(names)}")
    return cls(**values)


def recipe_from_dict(raw: dict[str, Any], source: str = "<recipe>") -> Recipe:
    """Validate a recipe mapping (as read from YAML)."""
    if not isinstance(raw, dict):
        raise MedVQAUserError(source, "a recipe is a YAML mapping")
    allowed = {"name", "output_dir", "seed", "model", "data", "training", "lora", "stages", "hardware"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise MedVQAUserError(source, f"unknown top-level key(s) {unknown}; known: {sorted(allowed)}")
    for key in ("name", "output_dir"):
        if key not in raw:
            raise MedVQAUserError(source, f"missing required key {key!r}")
    stages_raw = raw.get("stages") or {}
    bad = sorted(set(stages_raw) - set(STAGES))
    if bad:
        raise MedVQAUserError(source, f"unknown stage(s) {bad}; stages are {list(STAGES)}")
    try:
        recipe = Recipe(
            name=str(raw["name"]),
            output_dir=str(raw["output_dir"]),
            seed=int(raw.get("seed", 42)),
            model=_build(ModelSettings, raw.get("model"), f"{source}: model"),
            data=_build(DataSettings, raw.get("data"), f"{source}: data"),
            training=_build(TrainingSettings, raw.get("training"), f"{source}: training"),
            lora=_build(LoraSettings, raw.get("lora"), f"{source}: lora"),
            stages={s: _build(StageSettings, stages_raw.get(s), f"{source}: stages.{s}") for s in STAGES},
            hardware=str(raw.get("hardware", "")),
            source_path=source,
        )
    except TypeError as exc:  # a wrong value type inside a section
        raise MedVQAUserError(source, str(exc)) from None
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe YAML file; user errors name the file and the key."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise MedVQAUserError(path, "recipe file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise MedVQAUserError(path, f"not valid YAML ({str(exc).splitlines()[0]})") from None
    return recipe_from_dict(raw, str(path))
