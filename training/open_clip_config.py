"""Read and check an open_clip ``open_clip_config.json`` (the Hub layout BiomedCLIP ships in) before open_clip
builds a model from it.

open_clip turns ``model_cfg`` into keyword arguments of its ``CLIP`` class and its ``CLIPVisionCfg`` /
``CLIPTextCfg`` dataclasses without checking them, so a string image size, a number as the timm model name or a
``vision_cfg`` that is a list ends in a traceback deep inside timm or torch, and an image size of 10**12 in an
overflow inside ``torch.empty``. Here each key is checked against those classes' own fields and type hints (so the
check follows the installed open_clip), sizes are bounded, and the preprocessing mean and std must be three finite
numbers each. Every refusal names the file and the key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

from training.errors import MedVQAUserError
from training.file_checks import read_json_object

CONFIG_NAME = "open_clip_config.json"
MAX_IMAGE_SIZE = 4096  # pixels a side; BiomedCLIP uses 224, the largest released CLIPs 448
# Estimated parameters of the towers open_clip builds itself from the config (a timm trunk or a Hugging Face text
# model is sized by its name instead). Above every released CLIP (EVA-CLIP-18B); stops a config that would
# allocate terabytes before torch tries.
MAX_TOWER_PARAMETERS = 20e9
# Fields that are sizes: a count of something, at least 1.
_SIZES = {
    "embed_dim", "width", "heads", "layers", "head_width", "patch_size", "image_size", "context_length",
    "vocab_size", "attn_pooler_queries", "attn_pooler_heads",
}  # fmt: skip
# Top-level keys that create_model handles before calling CLIP (open_clip.factory): the text tower's class, and
# CoCa's decoder (checked as a mapping only; such a model has no timm trunk, which init refuses later anyway).
_FACTORY_KEYS = {"custom_text": bool, "multimodal_cfg": dict}


def read_open_clip_config(folder: str | Path) -> dict[str, Any]:
    """The checked contents of ``FOLDER/open_clip_config.json``.

    Raises:
        MedVQAUserError: the file is missing, not a JSON object, has no ``model_cfg`` mapping, or a key of
            ``model_cfg`` / ``preprocess_cfg`` is unknown to open_clip, of the wrong type or out of range.
    """
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise MedVQAUserError(folder, f"no {CONFIG_NAME} in that folder (an open_clip Hub-layout folder)")
    config = read_json_object(path, CONFIG_NAME)
    model_cfg = config.get("model_cfg")
    if not isinstance(model_cfg, dict):
        raise MedVQAUserError(path, "has no model_cfg mapping (open_clip's)")
    check_model_cfg(model_cfg, path)
    preprocess = config.get("preprocess_cfg", {})
    if not isinstance(preprocess, dict):
        raise MedVQAUserError(path, f"preprocess_cfg must be a mapping, got {_kind(preprocess)}")
    for key in ("mean", "std"):
        if key in preprocess:
            _check_channels(preprocess[key], f"preprocess_cfg.{key}", path, positive=key == "std")
    return config


def check_model_cfg(model_cfg: dict[str, Any], path: str | Path) -> None:
    """Check ``model_cfg`` against open_clip's ``CLIP`` arguments and tower dataclasses (see the module doc)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    hints = typing.get_type_hints(CLIP.__init__)  # every argument of CLIP is annotated
    hints.pop("return", None)
    hints["cast_dtype"] = str | None  # a torch dtype in Python, its name in JSON
    hints.update(_FACTORY_KEYS)
    for key, value in model_cfg.items():
        if key not in hints:
            raise MedVQAUserError(path, f"model_cfg.{key} is not a key of open_clip's CLIP model config")
        if key not in ("vision_cfg", "text_cfg"):  # the towers are checked field by field below
            _check_value(value, hints[key], f"model_cfg.{key}", path)
    if "embed_dim" not in model_cfg:
        raise MedVQAUserError(path, "model_cfg has no embed_dim")
    towers = 0.0
    for key, cls in (("vision_cfg", CLIPVisionCfg), ("text_cfg", CLIPTextCfg)):
        tower = model_cfg.get(key, {})
        if not isinstance(tower, dict):
            raise MedVQAUserError(path, f"model_cfg.{key} must be a mapping, got {_kind(tower)}")
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        for name, value in tower.items():
            where = f"model_cfg.{key}.{name}"
            if name not in fields:
                raise MedVQAUserError(path, f"{where} is not a field of open_clip's {cls.__name__}")
            if value is not None:  # open_clip's own configs write null for "not used" (a ResNet's patch_size)
                _check_value(value, hints[name], where, path)
        towers += _tower_parameters(tower, key, cls)
    if towers > MAX_TOWER_PARAMETERS:
        raise MedVQAUserError(
            path,
            f"model_cfg describes towers of ~{towers:.3g} parameters (more than {MAX_TOWER_PARAMETERS:.0e})",
        )
    vision = model_cfg.get("vision_cfg", {})
    name = vision.get("timm_model_name")
    if name is not None:
        import timm

        if not timm.is_model(name):
            raise MedVQAUserError(path, f"model_cfg.vision_cfg.timm_model_name {name!r} is not a timm model")


def _tower_parameters(tower: dict[str, Any], key: str, cls: type) -> float:
    """A rough parameter count (12 width^2 a transformer layer, plus embeddings) of a tower open_clip builds from
    the config's sizes; 0 for a timm trunk or a Hugging Face text model, whose size their name fixes."""
    if "timm_model_name" in tower or "hf_model_name" in tower:
        return 0.0
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}

    def get(name: str) -> Any:  # null means "not used": open_clip falls back on its default
        value = tower.get(name)
        return defaults[name] if value is None else value

    width, layers = get("width"), get("layers")
    layers = sum(layers) if isinstance(layers, (list, tuple)) else layers
    total = 12.0 * layers * width * width
    if key == "vision_cfg":
        size = get("image_size")
        side = max(size) if isinstance(size, (list, tuple)) else size
        total += (side / (tower.get("patch_size") or 1)) ** 2 * width  # a ResNet (no patches): every pixel
    else:
        total += (get("vocab_size") + get("context_length")) * width
    return total


def _check_value(value: Any, hint: Any, where: str, path: str | Path) -> None:
    if not _matches(value, hint):
        raise MedVQAUserError(path, f"{where} must be {_describe(hint)}, got {value!r:.60}")
    name = where.rsplit(".", 1)[-1]
    if name not in _SIZES or value is None:
        return
    sizes = value if isinstance(value, list) else [value]
    if min(sizes) < 1:
        raise MedVQAUserError(path, f"{where} must be at least 1, got {value!r}")
    if name == "image_size" and max(sizes) > MAX_IMAGE_SIZE:
        raise MedVQAUserError(path, f"{where} must be at most {MAX_IMAGE_SIZE} pixels, got {value!r:.60}")


def _matches(value: Any, hint: Any) -> bool:
    """``value`` (parsed JSON) fits the type hint: JSON lists stand for tuples, ints for floats, never bools."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arm) for arm in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is tuple:
        args = typing.get_args(hint)
        return isinstance(value, list) and len(value) == len(args) and all(map(_matches, value, args))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    return True  # a hint this check does not model: open_clip decides


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arm) for arm in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin is tuple:
        args = typing.get_args(hint)
        return f"a list of {len(args)} " + {int: "integers", float: "numbers"}.get(args[0], str(args[0]))
    return {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
        dict: "a mapping",
    }.get(hint, str(hint))


def _check_channels(value: Any, where: str, path: Path, *, positive: bool) -> None:
    numbers = isinstance(value, list) and len(value) == 3 and all(_matches(v, float) for v in value)
    if not numbers or (positive and min(value) <= 0):
        need = "three positive numbers" if positive else "three finite numbers"
        raise MedVQAUserError(path, f"{where} must be {need}, got {value!r:.60}")


def _kind(value: Any) -> str:
    return type(value).__name__
