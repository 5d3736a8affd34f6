"""LoRA on the language model only (peft), with the projector (and in ``joint`` the vision tower) trained in full."""

from __future__ import annotations

import re
from collections.abc import Sequence

from training.train.recipe import LoraSettings


def language_model_target_regex(target_modules: Sequence[str]) -> str:
    """A peft ``target_modules`` regex that matches the named projections inside the language model only.

    Plain names (``q_proj``) would also match same-named layers elsewhere; the vision tower's timm names differ
    today, but the regex keeps LoRA on the LM by construction.
    """
    names = "|".join(re.escape(name) for name in target_modules)
    return rf".*language_model\..*\.({names})"


def build_lora_config(settings: LoraSettings, modules_to_save: Sequence[str] = ("multi_modal_projector",)):
    """peft ``LoraConfig`` for the recipe: r, alpha, dropout on the LM projections; ``modules_to_save`` in full."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=language_model_target_regex(settings.target_modules),
        modules_to_save=list(modules_to_save),
        bias="none",
    )
