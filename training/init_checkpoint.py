"""``medvqa init``: assemble the initial MedVQA checkpoint from a BiomedCLIP open_clip model and a Llama-3 model.

- vision: ``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224`` or ``local-dir:/path`` (or a plain
  folder in open_clip's Hub layout). The open_clip vision trunk (a timm ViT) moves into the MedVQA vision tower
  weight for weight; blocks after ``vision_feature_layer`` are dropped.
- text: a Llama-3 Hub id or folder (weights + tokenizer). The decoder and LM head move in unchanged.
- the projector is freshly initialised; ``<|image|>`` is added to the tokenizer (not to the LM's vocabulary: the
  model never looks it up and never predicts it, so the embedding table and LM head keep Llama-3's shapes).

The output is a Hub-loadable folder: weights (safetensors), config with ``auto_map``, remote code, processor.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from training.cli_types import any_int, random_seed
from training.errors import MedVQAUserError
from training.file_checks import check_model_folder, check_safetensors
from training.open_clip_config import check_model_cfg, read_open_clip_config
from training.output_dir import prepare_output_dir

IMAGE_TOKEN = "<|image|>"
END_OF_TURN = "<|eot_id|>"  # what our chat template writes after every turn, answers included
# Pad with a token that is never a target: Llama-3.1's right-pad token, else a reserved one (Llama-3.0).
_PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|reserved_special_token_0|>")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vision", required=True, help="open_clip id: hf-hub:ORG/NAME or local-dir:PATH (BiomedCLIP)"
    )
    parser.add_argument("--text", required=True, help="Llama-3 Hub id or folder (weights + tokenizer)")
    parser.add_argument("--out", required=True, type=Path, help="output model folder")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--vision-feature-layer", type=any_int, default=-2)
    parser.add_argument("--seed", type=random_seed, default=0, help="seed of the projector's initialisation")


def run(args: argparse.Namespace) -> int:
    out = assemble_checkpoint(
        args.vision,
        args.text,
        args.out,
        dtype=args.dtype,
        seed=args.seed,
        vision_feature_layer=args.vision_feature_layer,
    )
    print(f"wrote {out}")
    return 0


def normalize_open_clip_id(vision: str) -> str:
    """Accept ``hf-hub:``/``local-dir:`` ids and plain folders (as ``local-dir:``)."""
    if vision.startswith("hf-hub:"):
        return vision
    folder = vision.removeprefix("local-dir:")
    if vision.startswith("local-dir:") or Path(folder).is_dir():
        read_open_clip_config(folder)  # checked here: open_clip builds from it unchecked
        for weights in sorted(Path(folder).glob("*.safetensors")):  # open_clip prefers these over pickles
            check_safetensors(weights)
        return f"local-dir:{folder}"
    raise MedVQAUserError(
        vision, "not an open_clip id (hf-hub:ORG/NAME or local-dir:PATH) nor an existing folder"
    )


def load_open_clip(vision: str):
    """Load an open_clip model (with its text tower) by ``hf-hub:``/``local-dir:`` id; returns (model, model_cfg)."""
    import open_clip

    vision = normalize_open_clip_id(vision)
    model_cfg = open_clip.get_model_config(
        vision
    )  # a Hub id's config is fetched (or read from the cache) here
    if model_cfg is None:
        raise MedVQAUserError(vision, "open_clip found no model config for this id")
    if vision.startswith("hf-hub:"):  # a local folder's was checked by normalize_open_clip_id
        check_model_cfg(model_cfg, vision)
    try:
        model = open_clip.create_model(vision, pretrained=None)
    except (RuntimeError, AssertionError) as exc:
        # torch's load_state_dict, or open_clip's asserts while it resizes position embeddings on load: the
        # weights do not have the shapes the config gives
        if isinstance(exc, RuntimeError) and "Error(s) in loading state_dict" not in str(exc):
            raise
        raise MedVQAUserError(
            vision, f"the weights do not fit its open_clip config ({_first_cause(exc)})"
        ) from None
    return model, model_cfg


def _first_cause(exc: BaseException) -> str:
    """The first specific line of a weight-loading error: torch's ``load_state_dict`` puts a header line
    ("Error(s) in loading state_dict for X:") before the mismatches; open_clip's asserts are one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    return lines[1] if len(lines) > 1 else lines[0]


def vision_config_from_open_clip(clip_model, model_cfg: dict[str, Any]) -> dict[str, Any]:
    """The MedVQA vision config that reproduces an open_clip timm trunk and its preprocessing."""
    vision_cfg = model_cfg.get("vision_cfg", {})
    if "timm_model_name" not in vision_cfg:
        raise MedVQAUserError(
            "--vision", "the open_clip model's vision tower is not a timm trunk (BiomedCLIP's is)"
        )
    trunk = clip_model.visual.trunk
    image_size = vision_cfg.get("image_size", 224)
    image_size = image_size[0] if isinstance(image_size, (list, tuple)) else image_size
    return {
        "timm_model_name": vision_cfg["timm_model_name"],
        "image_size": int(image_size),
        "patch_size": int(trunk.patch_embed.patch_size[0]),
        "hidden_size": int(trunk.embed_dim),
        "num_hidden_layers": len(trunk.blocks),
        "image_mean": [float(x) for x in clip_model.visual.image_mean],
        "image_std": [float(x) for x in clip_model.visual.image_std],
    }


def copy_trunk_into_tower(trunk_state: dict[str, Any], tower) -> None:
    """Load an open_clip/timm trunk state dict into a :class:`MedVQAVisionTower` (extra blocks/norm dropped).

    Used by ``init`` and by the ``clip`` training stage, which puts its fine-tuned trunk back into the model.
    """
    wanted = tower.trunk.state_dict().keys()
    kept = {k: v for k, v in trunk_state.items() if k in wanted}
    dropped = sorted(set(trunk_state) - set(kept))
    n_blocks = len(tower.trunk.blocks)
    unexpected = [
        k
        for k in dropped
        if not (k.startswith("norm.") or (k.startswith("blocks.") and int(k.split(".")[1]) >= n_blocks))
    ]
    missing = sorted(set(wanted) - set(kept))
    if unexpected or missing:
        raise ValueError(
            f"vision trunk weights do not fit the tower: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    tower.trunk.load_state_dict(kept, strict=True)


def build_image_processor(vision_config: dict[str, Any]):
    """BiomedCLIP's preprocessing as a transformers image processor: shortest side bicubic, centre crop, normalize."""
    from transformers import CLIPImageProcessor
    from transformers.image_utils import PILImageResampling

    size = vision_config["image_size"]
    return CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": size},
        resample=PILImageResampling.BICUBIC,
        do_center_crop=True,
        crop_size={"height": size, "width": size},
        do_rescale=True,
        do_normalize=True,
        image_mean=vision_config["image_mean"],
        image_std=vision_config["image_std"],
        do_convert_rgb=True,
    )


def prepare_tokenizer(tokenizer):
    """Add ``<|image|>``, choose a pad token that is never a target, pad on the left for batched generation."""
    from modeling_medvqa.processing_medvqa import LLAMA3_IMAGE_CHAT_TEMPLATE

    tokenizer.add_special_tokens(
        {"additional_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False
    )
    if tokenizer.pad_token is None:
        vocab = tokenizer.get_vocab()
        pad = next((t for t in _PAD_CANDIDATES if t in vocab), None)
        if pad is None:
            tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
        else:
            tokenizer.pad_token = pad
    tokenizer.padding_side = "left"
    tokenizer.init_kwargs["padding_side"] = "left"  # saved with the tokenizer, so a reload pads left too
    # Our chat template ends every turn with <|eot_id|>; the base and the first Instruct release name
    # <|end_of_text|> as eos, which the model is never trained to emit after an answer.
    if END_OF_TURN in tokenizer.get_vocab():
        tokenizer.eos_token = END_OF_TURN
    # Meta ships `clean_up_tokenization_spaces: true`, which transformers ignores for BPE with a warning on every
    # decode; it would also strip the spaces of "CT ." style answers if honoured.
    tokenizer.clean_up_tokenization_spaces = False
    tokenizer.init_kwargs["clean_up_tokenization_spaces"] = False
    tokenizer.chat_template = LLAMA3_IMAGE_CHAT_TEMPLATE  # one template for tokenizer and processor
    return tokenizer


def generation_eos_ids(base_eos: int | list[int] | None, tokenizer) -> list[int]:
    """The base's eos ids plus ``<|eot_id|>``: every Llama-3 layout must stop where our template ends a turn.

    Meta-Llama-3-8B and the first Instruct release list only ``<|end_of_text|>`` in generation_config.json.
    """
    ids = [base_eos] if isinstance(base_eos, int) else list(base_eos or [])
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if end_of_turn is None or end_of_turn == tokenizer.unk_token_id:
        raise MedVQAUserError("--text", f"the tokenizer has no {END_OF_TURN} token (not a Llama-3 tokenizer)")
    return ids + [end_of_turn] if end_of_turn not in ids else ids


def assemble_checkpoint(
    vision: str,
    text: str,
    out_dir: str | Path,
    *,
    dtype: str = "bfloat16",
    seed: int = 0,
    vision_feature_layer: int = -2,
) -> Path:
    """Build the MedVQA checkpoint from BiomedCLIP (open_clip id) + Llama-3 (id or folder) and save it to ``out_dir``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    import modeling_medvqa  # noqa: F401  (its import registers the Auto classes: save_pretrained writes auto_map)
    from modeling_medvqa import MedVQAConfig, MedVQAForConditionalGeneration, MedVQAProcessor
    from modeling_medvqa.modeling_medvqa import MedVQAMultiModalProjector, MedVQAVisionTower

    torch_dtype = getattr(torch, dtype)
    if Path(text).exists():
        if not (Path(text) / "config.json").is_file():
            raise MedVQAUserError(text, "no config.json in that folder (a transformers Llama checkpoint)")
        check_model_folder(text)  # config.json readable, weights in safetensors
    vision = normalize_open_clip_id(vision)
    out_dir = prepare_output_dir(out_dir, "init")  # checked before the slow loads, written at the end

    clip_model, clip_cfg = load_open_clip(vision)
    vision_config = vision_config_from_open_clip(clip_model, clip_cfg)
    try:
        text_config = AutoConfig.from_pretrained(text)
        if text_config.model_type != "llama":
            raise MedVQAUserError(
                text, f"model_type is {text_config.model_type!r}, expected a Llama checkpoint"
            )
        tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(text))
    except OSError as exc:  # a Hub id that cannot be reached, or a file transformers needs and cannot find
        raise MedVQAUserError(text, f"cannot load the text model ({str(exc).splitlines()[0]})") from None
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_token_id < text_config.vocab_size:
        raise ValueError(
            f"{IMAGE_TOKEN} got id {image_token_id}, inside the LM vocabulary; expected it after it"
        )

    config = MedVQAConfig(
        vision_config=vision_config,
        text_config=text_config.to_dict(),
        vision_feature_layer=vision_feature_layer,
        image_token_id=image_token_id,
    )
    config.base_models = {"vision": vision.removeprefix("hf-hub:"), "text": str(text)}

    # The trunk's shapes against the tower its config describes (an image size that is not the weights' ...),
    # on the meta device: refused before the LM's weights load, and without touching the projector's seed.
    trunk_state = clip_model.visual.trunk.state_dict()
    with torch.device("meta"):
        probe = MedVQAVisionTower(config.vision_config, config.num_vision_blocks_used)
    try:
        copy_trunk_into_tower(trunk_state, probe)
    except RuntimeError as exc:
        raise MedVQAUserError(
            vision, f"the vision weights do not fit its open_clip config ({_first_cause(exc)})"
        ) from None

    # Build the shell on the meta device and move the real modules in: no 8B random initialisation, no copy.
    with torch.device("meta"):
        model = MedVQAForConditionalGeneration(config)
    language = AutoModelForCausalLM.from_pretrained(text, dtype=torch_dtype, use_safetensors=True)
    model.model.language_model = language.model
    model.lm_head = language.lm_head
    torch.manual_seed(seed)
    tower = MedVQAVisionTower(config.vision_config, config.num_vision_blocks_used)
    copy_trunk_into_tower(trunk_state, tower)
    model.model.vision_tower = tower.to(torch_dtype)
    projector = MedVQAMultiModalProjector(config)
    projector.apply(model._init_weights)
    model.model.multi_modal_projector = projector.to(torch_dtype)
    model.config.dtype = torch_dtype
    meta = [name for name, p in model.named_parameters() if p.is_meta]
    if meta:
        raise RuntimeError(f"parameters left uninitialised: {meta[:5]}")

    generation = GenerationConfig.from_model_config(text_config)
    if language.generation_config is not None:
        generation.eos_token_id = language.generation_config.eos_token_id or generation.eos_token_id
    generation.eos_token_id = generation_eos_ids(generation.eos_token_id, tokenizer)
    # Short factual answers: greedy decoding by default (Llama-3-Instruct's sampling defaults suit chat, not VQA).
    generation.do_sample = False
    generation.temperature = None
    generation.top_p = None
    generation.pad_token_id = tokenizer.pad_token_id
    generation.max_new_tokens = 32
    model.generation_config = generation

    image_processor = build_image_processor(vision_config)
    processor = MedVQAProcessor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_length=config.image_seq_length
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    (out_dir / "medvqa_init.json").write_text(
        json.dumps({"vision": vision, "text": str(text), "dtype": dtype, "seed": seed}, indent=2) + "\n"
    )
    return out_dir
