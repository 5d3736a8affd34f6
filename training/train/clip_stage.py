"""Stage ``clip``: BiomedCLIP fine-tuned on its own on the training images, as the paper does first.

The whole open_clip model (timm vision trunk + text tower: PubMedBERT for BiomedCLIP, open_clip's built-in one in
the tiny preset) is trained with open_clip's own ``ClipLoss`` on image–caption pairs built from the training
records (``data.clip_text``, e.g. "CT image. Which organ is shown? brain").  One caption per distinct image: two
captions of one image in a batch would be false negatives of each other.  The transformers ``Trainer`` runs it,
so checkpoints, resume, logging and DeepSpeed behave as in the other stages.

Outputs under ``<output_dir>/clip/``: ``open_clip/`` (the tuned model in open_clip's Hub layout, a ``local-dir:``
id) and ``model/`` (the MedVQA checkpoint whose vision tower now holds the tuned trunk).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.train.checkpoints import (
    CompleteCheckpointMixin,
    ModuleLearningRatesMixin,
)
from training.train.recipe import Recipe
from training.train.sft_stages import StageResult, train_stage
from training.train.zero import gathered_parameters, whole_weights_loading


class OpenClipContrastive(nn.Module):
    """open_clip model + ``ClipLoss`` as one module whose forward returns ``{"loss": ...}`` for the Trainer."""

    def __init__(self, clip_model: nn.Module, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        import open_clip

        self.clip = clip_model
        # DeepSpeed moves parameters through byte views (broadcast, ZeRO partitions), which a 0-dim tensor does not
        # allow: open_clip's scalar logit_scale trains as a 1-element parameter (save_open_clip restores the scalar).
        if clip_model.logit_scale.dim() == 0:
            clip_model.logit_scale = nn.Parameter(clip_model.logit_scale.detach().reshape(1))
        # DeepSpeed's "auto" bucket sizes are filled from `model.config.hidden_size` by transformers; an open_clip
        # model has no config, so name the vision tower's width (the larger tower of BiomedCLIP and the tiny one).
        from transformers import PretrainedConfig

        self.config = PretrainedConfig(hidden_size=_vision_width(clip_model))
        # Across ranks, gather features (with gradients) so every rank contrasts against the global batch.
        self.loss_fn = open_clip.ClipLoss(gather_with_grad=world_size > 1, rank=rank, world_size=world_size)

    def forward(self, pixel_values: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        image_features = self.clip.encode_image(pixel_values, normalize=True)
        text_features = self.clip.encode_text(text, normalize=True)
        loss = self.loss_fn(image_features, text_features, self.clip.logit_scale.exp())
        return {"loss": loss}


def _vision_width(clip_model: nn.Module) -> int:
    trunk = getattr(clip_model.visual, "trunk", None)
    return int(getattr(trunk, "embed_dim", 0) or getattr(clip_model.visual, "output_dim", 512))


def image_caption_pairs(
    records: list[dict[str, Any]], base_dir: Path | None, template: str
) -> list[dict[str, str]]:
    """One (image path, caption) pair per distinct image, captioned from its first record."""
    pairs: dict[str, str] = {}
    for record in records:
        image = Path(record["image"])
        path = str(image if image.is_absolute() or base_dir is None else Path(base_dir) / image)
        if path not in pairs:
            pairs[path] = template.format_map({k: v for k, v in record.items() if isinstance(v, str)})
    return [{"image": path, "caption": caption} for path, caption in pairs.items()]


class ClipCollator:
    """Loads images with the medical loader, augments them (when asked), applies open_clip's train transform,
    tokenizes captions."""

    def __init__(self, transform, tokenizer, augment=None) -> None:
        self.transform = transform
        self.augment = augment  # a training.train.augment.TrainingAugmentation, the same as the SFT stages'
        self.text_tokenizer = tokenizer  # not `tokenizer`: Trainer would try to save_pretrained it

    def _image(self, path: str):
        from training.images import load_medical_image

        image = load_medical_image(path, keep_gray=True)
        # one caption per image: the pixels alone key the draw
        return self.transform(self.augment(image, "") if self.augment is not None else image)

    def __call__(self, examples: list[dict[str, str]]) -> dict[str, torch.Tensor]:
        pixels = torch.stack([self._image(e["image"]) for e in examples])
        return {"pixel_values": pixels, "text": self.text_tokenizer([e["caption"] for e in examples])}


def save_open_clip(clip_model: nn.Module, source_id: str, out_dir: Path) -> str:
    """Save a tuned open_clip model in open_clip's Hub layout (config + safetensors); returns its local-dir id."""
    import json

    import open_clip
    from open_clip.push_to_hf_hub import save_config_for_hf
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    state = clip_model.state_dict()
    state["logit_scale"] = state["logit_scale"].reshape(
        ()
    )  # open_clip's layout: a scalar (see OpenClipContrastive)
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        out_dir / "open_clip_model.safetensors",
    )
    save_config_for_hf(
        clip_model, out_dir / "open_clip_config.json", model_config=open_clip.get_model_config(source_id)
    )
    if source_id.startswith("local-dir:"):  # carry a Hub text tokenizer's files along (PubMedBERT's)
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            src = Path(source_id[len("local-dir:") :]) / name
            if src.is_file():
                (out_dir / name).write_bytes(src.read_bytes())
    json.loads(
        (out_dir / "open_clip_config.json").read_text()
    )  # fail here, not at the next load, if malformed
    return f"local-dir:{out_dir}"


def run_clip_stage(
    recipe: Recipe,
    vision_id: str,
    base_dir: Path,
    train_records: list[dict[str, Any]],
    records_base: Path | None,
    *,
    resume: bool = False,
    callbacks: list | None = None,
) -> StageResult:
    """Fine-tune the open_clip model contrastively, then write a MedVQA checkpoint with the tuned vision trunk."""
    import open_clip
    from accelerate import PartialState
    from datasets import Dataset
    from transformers import Trainer, set_seed

    from modeling_medvqa import MedVQAForConditionalGeneration, MedVQAProcessor
    from training.init_checkpoint import load_open_clip
    from training.train.augment import TrainingAugmentation
    from training.train.sft_stages import training_arguments

    output_dir = Path(recipe.output_dir) / "clip"
    state = PartialState()
    set_seed(recipe.seed)
    clip_model, _ = load_open_clip(vision_id)
    pp = open_clip.get_model_preprocess_cfg(clip_model)
    transform = open_clip.image_transform(
        pp["size"], is_train=True, mean=pp["mean"], std=pp["std"], interpolation=pp.get("interpolation")
    )
    tokenizer = open_clip.get_tokenizer(vision_id)
    pairs = image_caption_pairs(train_records, records_base, recipe.data.clip_text)
    args = training_arguments(recipe, "clip", output_dir, max_length=None)
    stage = recipe.stage("clip")

    class ClipTrainer(CompleteCheckpointMixin, ModuleLearningRatesMixin, Trainer):
        """Trainer for the open_clip module (no SFT specifics)."""

    augment = TrainingAugmentation(pp["size"], recipe.seed) if recipe.data.augment else None
    trainer = ClipTrainer(
        model=OpenClipContrastive(clip_model, rank=state.process_index, world_size=state.num_processes),
        args=args,
        train_dataset=Dataset.from_list(pairs),
        data_collator=ClipCollator(transform, tokenizer, augment),
        callbacks=[*(callbacks or []), *([augment.epoch_callback()] if augment else [])],
    )
    if stage.vision_learning_rate is not None:
        trainer.module_learning_rates = {"clip.visual.": stage.vision_learning_rate}
    result = train_stage(trainer, "clip", output_dir, resume)
    result.model_dir = output_dir / "model"
    tuned = trainer.accelerator.unwrap_model(trainer.model).clip
    # Under ZeRO-3 each rank holds a slice of every weight: gather the (small) CLIP model whole on every rank
    # (a collective), then the main process writes it; the MedVQA base is read whole, outside ZeRO-3's zero.Init.
    with gathered_parameters(list(tuned.parameters())):
        if state.is_main_process:
            from training.init_checkpoint import copy_trunk_into_tower

            save_open_clip(tuned, vision_id, output_dir / "open_clip")
            with whole_weights_loading():
                model = MedVQAForConditionalGeneration.from_pretrained(base_dir)
            copy_trunk_into_tower(tuned.visual.trunk.state_dict(), model.model.vision_tower)
            model.save_pretrained(result.model_dir)
            MedVQAProcessor.from_pretrained(base_dir).save_pretrained(result.model_dir)
    state.wait_for_everyone()
    return result
