"""open_clip_config.json is checked against open_clip's own config classes before open_clip builds from it: every
config open_clip ships passes, the tiny stand-in and BiomedCLIP's layout pass, and each bad value or a config that
does not fit its weights ends `medvqa init` with exit 2 and one line naming the file and the key."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from training.cli import main
from training.errors import MedVQAUserError
from training.open_clip_config import check_model_cfg, read_open_clip_config

# BiomedCLIP's open_clip_config.json as published on the Hub (microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224)
BIOMEDCLIP = {
    "model_cfg": {
        "embed_dim": 512,
        "vision_cfg": {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "image_size": 224},
        "text_cfg": {"hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                     "hf_tokenizer_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                     "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 256},
    },
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
}  # fmt: skip


def _shipped_configs() -> list[Path]:
    import open_clip

    return sorted((Path(open_clip.__file__).parent / "model_configs").glob("*.json"))


def test_every_config_open_clip_ships_passes():
    files = _shipped_configs()
    assert len(files) > 50  # the check ran on open_clip's real configs, not on an empty folder
    for path in files:
        check_model_cfg(json.loads(path.read_text()), path)


def test_biomedclip_layout_passes(tmp_path):
    (tmp_path / "open_clip_config.json").write_text(json.dumps(BIOMEDCLIP))
    assert read_open_clip_config(tmp_path)["model_cfg"]["vision_cfg"]["image_size"] == 224


def _set(*keys: str, value: Any) -> Callable[[dict], None]:
    def edit(config: dict) -> None:
        node = config
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return edit


BAD = [
    ("image-size-string", _set("model_cfg", "vision_cfg", "image_size", value="big"), "vision_cfg.image_size must"),
    ("image-size-bool", _set("model_cfg", "vision_cfg", "image_size", value=True), "vision_cfg.image_size must"),
    ("image-size-negative", _set("model_cfg", "vision_cfg", "image_size", value=-5), "at least 1"),
    ("image-size-10e12", _set("model_cfg", "vision_cfg", "image_size", value=10**12), "at most 4096"),
    ("image-size-triple", _set("model_cfg", "vision_cfg", "image_size", value=[1, 2, 3]), "a list of 2 integers"),
    ("timm-name-number", _set("model_cfg", "vision_cfg", "timm_model_name", value=3), "timm_model_name must"),
    ("timm-name-unknown", _set("model_cfg", "vision_cfg", "timm_model_name", value="no_such_vit"), "not a timm"),
    ("vision-cfg-list", _set("model_cfg", "vision_cfg", value=[1]), "model_cfg.vision_cfg must be a mapping"),
    ("embed-dim-string", _set("model_cfg", "embed_dim", value="32"), "model_cfg.embed_dim must be an integer"),
    ("unknown-top-key", _set("model_cfg", "bogus", value=1), "model_cfg.bogus is not a key"),
    ("unknown-tower-key", _set("model_cfg", "text_cfg", "depth", value=2), "not a field of open_clip's CLIPTextCfg"),
    ("text-width-1e7", _set("model_cfg", "text_cfg", "width", value=10**7), "parameters"),
    ("nan-logit-scale", _set("model_cfg", "init_logit_scale", value=float("nan")), "init_logit_scale must"),
    ("mean-string", _set("preprocess_cfg", "mean", value="x"), "preprocess_cfg.mean must be three"),
    ("std-zero", _set("preprocess_cfg", "std", value=[0.2, 0, 0.3]), "preprocess_cfg.std must be three positive"),
    ("preprocess-list", _set("preprocess_cfg", value=[]), "preprocess_cfg must be a mapping"),
    # values of the right type that do not fit the weights: refused when the weights load, not with a traceback
    ("image-size-not-the-weights", _set("model_cfg", "vision_cfg", "image_size", value=[224, 224]), "do not fit"),
    ("embed-dim-not-the-weights", _set("model_cfg", "embed_dim", value=16), "do not fit"),
    ("text-width-not-the-weights", _set("model_cfg", "text_cfg", "width", value=32), "do not fit"),
]  # fmt: skip


@pytest.mark.parametrize(("edit", "reason"), [pytest.param(e, r, id=i) for i, e, r in BAD])
def test_init_refuses_a_bad_open_clip_config(tiny_bases, tmp_path, capsys, edit, reason):
    vision = tmp_path / "clip"
    shutil.copytree(tiny_bases["vision"].removeprefix("local-dir:"), vision)
    config = json.loads((vision / "open_clip_config.json").read_text())
    edit(config)
    (vision / "open_clip_config.json").write_text(json.dumps(config))
    argv = [
        "init",
        "--vision",
        f"local-dir:{vision}",
        "--text",
        tiny_bases["text"],
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(vision) in err and reason in err, err
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_the_untouched_tiny_config_still_builds(tiny_bases, tmp_path):
    assert main(["init", "--vision", tiny_bases["vision"], "--text", tiny_bases["text"], "--out",
                 str(tmp_path / "o")]) == 0  # fmt: skip
    assert (tmp_path / "o" / "model.safetensors").is_file()


def test_plan_reads_the_checked_config(tmp_path):
    from training.train.planner import _open_clip_cfg

    bad = json.loads(json.dumps(BIOMEDCLIP))
    bad["model_cfg"]["vision_cfg"]["image_size"] = "224"
    (tmp_path / "open_clip_config.json").write_text(json.dumps(bad))
    with pytest.raises(MedVQAUserError, match="image_size must"):
        _open_clip_cfg(f"local-dir:{tmp_path}")
