"""Predict the per-GPU memory of a training stage before launching it (``medvqa plan``).

``plan_memory(recipe, stage, gpus, gpu_memory_gb)`` returns a :class:`Plan` whose ``breakdown`` (bytes per GPU) adds
up to ``total``:

``weights``
    Every parameter, counted exactly on a model built on the ``meta`` device from the recipe's config and wrapped
    with the stage's real peft set-up (``training.train.sft_stages.build_peft_model``), so LoRA matrices and the
    ``modules_to_save`` copies (the projector; in ``joint`` the whole vision tower) are included.  Under DeepSpeed
    with bf16, the engine casts every parameter to bf16 (LoRA too, although peft builds it in fp32): 2 bytes each.
    ZeRO-2 keeps every weight whole on every rank.  ZeRO-3 (``--zero 3``) partitions them over all ranks
    (``--gpus`` x ``--nodes``) and gathers them module by module when they run: each rank holds 1/R of the
    weights, the small ones kept whole (``stage3_param_persistence_threshold``, "auto" = 10 x hidden: norms,
    biases) and the gathered working set (see :func:`zero3_gathered_elements`).
``gradients``
    ZeRO-2 and ZeRO-3 partition gradients: each rank keeps 1/N of the trainable gradients (4 bytes, fp32 accumulation),
    plus the fp32 copy of its partition made at the optimizer step (4 bytes / N) and the two reduce buckets
    (``reduce_bucket_size`` = hidden_size**2 elements each with ``"auto"``, double-buffered by ``overlap_comm``).
``optimizer_states``
    AdamW: exp_avg and exp_avg_sq (8 bytes) and, when training in bf16, the fp32 master weights (4 bytes), all
    sharded 1/N across ranks by ZeRO (stage 1 and 2 shard optimizer states).
``activations``
    Tensors autograd saves for the backward, plus the working set of one layer's backward (see below).
``logits``
    TRL 1.16's ``SFTTrainer`` never materialises the ``(B, T, V)`` logits: its fused LM head projects only the
    label positions, in tiles of at most 4096 tokens x 32768 vocabulary columns (the tile buffer is allocated at
    that full width whatever the vocabulary), and keeps per-token statistics.
    The plain figure (``logits_plain``: 12 bytes per position and vocabulary entry -- bf16 logits, their fp32
    upcast and log-softmax in the forward, two fp32 gradients in the backward) is shown for users who disable it.
``overhead``
    CUDA context, cuBLAS/cuDNN workspaces, NCCL buffers: a fixed ``CUDA_OVERHEAD_BYTES`` (1 GiB), plus
    ``FRAGMENTATION`` (10%) of the activations and logits for the caching allocator's fragmentation.  These two are
    typical figures, not measured here (no GPU was available when the planner was written).

Activations (per token; ``a`` = bytes of the training dtype, h = hidden, q = heads x head_dim, k = kv heads x
head_dim, I = intermediate, n = heads, r = LoRA rank).  Derived from what autograd saves in transformers 5's
``LlamaDecoderLayer`` with SDPA and peft LoRA on all seven projections, and checked tensor by tensor with
``torch.autograd.graph.saved_tensors_hooks`` (``tests/test_planner.py``):

* RMSNorm saves its input upcast to fp32: 4h, twice per layer (frozen weight: nothing else of size h).
* A frozen ``Linear`` saves nothing (only its weight).  LoRA's ``lora_A`` saves its input; with dropout that is the
  dropout output, and dropout also keeps its mask: a + 1 bytes per input element on CUDA (``native_dropout``, bool
  mask), 2a on CPU (a float noise tensor).  Without dropout, the shared input is saved once.
  q/k/v take the normed input (h), o_proj the attention output (q), gate/up the normed input (h), down the product
  (I).  Each ``lora_A`` output is saved by ``lora_B``: r elements per target.
* RoPE saves only cos/sin (per position).  SDPA saves q, k, v, its output (a x q each; with a padding mask k and v
  are repeated to all heads by ``repeat_kv``, otherwise they stay a x k thanks to ``enable_gqa``), the logsumexp
  (4n) and the mask (B x T x T).  Its output is already (B, T, heads, dim) in memory, so ``transpose().contiguous()``
  is free and o_proj's LoRA input shares it.  No T x T matrix: the fused kernels are used (flash/memory-efficient on
  CUDA, flash on CPU).
* MLP: silu saves the gate output, the product saves silu's output and up's output: 3aI (+ down's LoRA input).

  Llama layer = 8h + a(q + kq + kv + q) + 4n + LoRA inputs + 3aI + 7ar, with kq = kv = q under a padding mask.
  For Llama-3-8B in bf16 with LoRA dropout on CUDA that is ~262 KiB per token per layer.

* Outside the layers: the projector saves the vision output (a x (N+1) x d_v per image), GELU's input and output
  (2a x h per image token); the final RMSNorm 4h; the fused LM head the label positions' hidden states.
* Gradient checkpointing (non-reentrant, per decoder layer, and per ViT block): each layer keeps only its input
  (a x h); the backward recomputes one layer at a time, so the peak adds one layer's saved tensors.
* Working set of a layer's backward: beyond the saved tensors (released as their nodes run), about one
  hidden-sized and one intermediate-sized gradient and the RMSNorm backward's fp32 temporaries: a(h + I) + 8h,
  calibrated against the peak measured on CPU outside the LM head (``benchmarks``; errors in docs/benchmarks.md).
* The LM head runs between the forward and the layers' backward, when only the saved tensors are alive, so the peak
  is saved + max(head, layers' working set); the ``logits`` line is what the head adds beyond that working set.
* ViT blocks that train (``joint``: the last N; ``clip``: all), timm pre-norm block, per token with width d and
  MLP ratio m: norm1 input, qkv input, qkv output (3), SDPA output (shared with proj's input), norm2 input, fc1
  input, fc1 output and GELU output (m each) = (7 + 2m) a d + LayerNorm statistics (16 bytes).  Frozen blocks save
  nothing (no input needs a gradient).  The ``clip`` stage's text tower (PubMedBERT, a post-norm BERT encoder at
  its context length) is counted with the same block formula plus two dropout masks per layer.

Sequence length: ``data.max_length`` when the recipe sets it (the collator pads to the longest example, so this is
the worst case), else ``image_seq_length`` + :data:`TYPICAL_TEXT_TOKENS`.  Label positions per example (answer +
``<|eot_id|>``): :data:`TYPICAL_ANSWER_TOKENS`.  Both can be overridden (``--seq-len``).

``device="cpu"`` plans the CPU run instead (what ``benchmarks`` measures): fp32 (``load_base`` trains in fp32 on
CPU), a plain ``Trainer`` without DeepSpeed (full fp32 gradients, AdamW states without master copy), TRL's fused
head scoring every position with torch ops instead of Triton, no CUDA overhead.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.cli_types import positive_float, positive_int
from training.errors import MedVQAUserError
from training.open_clip_config import read_open_clip_config
from training.train.recipe import STAGES, Recipe, load_recipe

GIB = 1024**3
TYPICAL_TEXT_TOKENS = 64
"""Text tokens per example when the recipe sets no ``max_length``: chat headers (~10), an OmniMedVQA question
(~20-40) and a short answer; a round, slightly generous figure."""
TYPICAL_ANSWER_TOKENS = 16
"""Label positions per example (answer + ``<|eot_id|>``): OmniMedVQA answers are a few words."""
CUDA_OVERHEAD_BYTES = 1 * GIB
"""CUDA context (~0.5 GiB), NCCL buffers (~0.3 GiB), cuBLAS/cuDNN workspaces and DeepSpeed's own buffers."""
ZERO3_MAX_LIVE_PARAMETERS = 10**9
"""``stage3_max_live_parameters`` of configuration/deepspeed/zero3.json (DeepSpeed's default): the most parameter
elements ZeRO-3 keeps gathered at once, unless a single module is larger."""
ZERO_STAGES = (2, 3)
FRAGMENTATION = 0.10
"""Share of the activations and logits added for the caching allocator's fragmentation."""
NF4_BLOCK = 64  # bitsandbytes' 4-bit blocksize: one absmax per 64 weights
NF4_NESTED_BLOCK = 256  # double quantisation: the absmax values are 8-bit, one fp32 scale per 256 of them
NF4_BYTES_PER_WEIGHT = 0.5 + 1 / NF4_BLOCK + 4 / (NF4_BLOCK * NF4_NESTED_BLOCK)
"""Bytes per weight of an NF4 matrix with double quantisation: packed 4-bit codes, an 8-bit absmax per block of 64
and an fp32 scale per 256 blocks (tests/test_planner.py checks it against bitsandbytes' own storage)."""
ADAM_8BIT_BYTES_PER_PARAM = 2 + 2 * 4 / 256
"""bitsandbytes' 8-bit AdamW: two uint8 states and an fp32 absmax per 256 elements for each."""
FUSED_TOKEN_TILE = 4096  # trl.kernels.chunked_logprob.TOKEN_CHUNK_SIZE
FUSED_VOCAB_TILE = 32768  # trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE
CPU_FUSED_TILE_COPIES = 7
"""On CPU, TRL folds each logits tile with torch ops; besides the tile buffer its backward keeps seven
vocabulary-wide fp32 temporaries alive at once (y, z, log p, p, the gradient and two products), as the profiler's
allocation events of the tiny run show."""
BERT_BASE = {"vocab": 30522, "hidden": 768, "layers": 12, "heads": 12, "intermediate": 3072, "positions": 512}
"""PubMedBERT (BiomedCLIP's text tower) is BERT-base shaped; its config needs the Hub, so its shapes are kept here."""

_KNOWN_VISION = {"hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"}
_KNOWN_TEXT = {"meta-llama/Meta-Llama-3-8B-Instruct", "meta-llama/Meta-Llama-3-8B"}
LLAMA3_70B = {
    "model_type": "llama",
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
    "tie_word_embeddings": False,
}
"""Meta-Llama-3-70B(-Instruct)'s shapes, from its public config.json (gated on the Hub, so kept here for offline
planning)."""
_KNOWN_TEXT_70B = {"meta-llama/Meta-Llama-3-70B-Instruct", "meta-llama/Meta-Llama-3-70B"}


@dataclass
class Plan:
    """Predicted per-GPU memory of one stage; ``breakdown`` values (bytes) add up to :attr:`total`."""

    recipe: str
    stage: str
    gpus: int
    gpu_memory_bytes: int
    per_device_batch: int
    seq_len: int
    image_tokens: int
    answer_tokens: int
    dtype: str
    device: str
    gradient_checkpointing: bool
    fused_lm_head: bool
    total_params: int
    trainable_params: int
    trainable_detail: dict[str, int]
    breakdown: dict[str, int]
    activations_checkpointing: int
    activations_no_checkpointing: int
    logits_fused: int
    logits_plain: int
    notes: list[str] = field(default_factory=list)
    nodes: int = 1
    zero_stage: int = 2
    weights_gathered: int = 0  # ZeRO-3: bytes of the gathered working set inside ``weights``
    quantize: str | None = None  # QLoRA: the recipe's model.quantize (4bit / 8bit base language model)
    optim: str = "adamw_torch"

    @property
    def ranks(self) -> int:
        """Data-parallel ranks: GPUs per node x nodes."""
        return self.gpus * self.nodes

    @property
    def total(self) -> int:
        return sum(self.breakdown.values())

    @property
    def headroom(self) -> int:
        return self.gpu_memory_bytes - self.total

    @property
    def fits(self) -> bool:
        return self.headroom >= 0

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data.update(total=self.total, headroom=self.headroom, fits=self.fits, ranks=self.ranks)
        return data


# ----------------------------------------------------------------------------------------------------------------
# Model shapes from a recipe (no weights, no network)


def _tiny_vocab_size() -> int:
    from training.tiny import build_tiny_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        return len(build_tiny_tokenizer(tmp))


@functools.lru_cache(maxsize=16)
def _timm_shape(name: str, image_size: int, kwargs_json: str = "{}") -> dict[str, int]:
    import timm
    import torch

    with torch.device("meta"):
        trunk = timm.create_model(
            name, pretrained=False, num_classes=0, img_size=image_size, **json.loads(kwargs_json)
        )
    return {
        "hidden_size": int(trunk.embed_dim),
        "num_hidden_layers": len(trunk.blocks),
        "patch_size": int(trunk.patch_embed.patch_size[0]),
        "num_heads": int(trunk.blocks[0].attn.num_heads),
        "mlp_hidden": int(trunk.blocks[0].mlp.fc1.out_features),
        "num_prefix_tokens": int(trunk.num_prefix_tokens),
    }


def _open_clip_cfg(vision: str) -> dict[str, Any] | None:
    """The open_clip model config of a ``local-dir:`` id / folder, or a tiny one for ``tiny``; None for Hub ids."""
    if vision == "tiny":
        from training.tiny import TinySpec, build_tiny_open_clip

        with tempfile.TemporaryDirectory() as tmp:
            build_tiny_open_clip(tmp, TinySpec())
            return json.loads((Path(tmp) / "open_clip_config.json").read_text())["model_cfg"]
    folder = vision.removeprefix("local-dir:")
    if vision.startswith("local-dir:") or Path(folder).is_dir():
        return read_open_clip_config(folder)["model_cfg"]
    return None


def _vision_config(vision: str) -> dict[str, Any]:
    if vision in _KNOWN_VISION:
        return {}  # MedVQAVisionConfig's defaults are BiomedCLIP's trunk
    cfg = _open_clip_cfg(vision)
    if cfg is None:
        raise MedVQAUserError(
            vision,
            "cannot read this vision model's shapes offline; use a local-dir: folder or model.init_checkpoint",
        )
    vision_cfg = cfg.get("vision_cfg", {})
    if "timm_model_name" not in vision_cfg:
        raise MedVQAUserError(vision, "the open_clip vision tower is not a timm trunk")
    size = vision_cfg.get("image_size", 224)
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    shape = _timm_shape(vision_cfg["timm_model_name"], size)
    return {
        "timm_model_name": vision_cfg["timm_model_name"],
        "image_size": size,
        "patch_size": shape["patch_size"],
        "hidden_size": shape["hidden_size"],
        "num_hidden_layers": shape["num_hidden_layers"],
    }


def _text_config(text: str) -> dict[str, Any]:
    from modeling_medvqa.configuration_medvqa import LLAMA3_8B_INSTRUCT

    if text in _KNOWN_TEXT:
        return dict(LLAMA3_8B_INSTRUCT)
    if text in _KNOWN_TEXT_70B:
        return dict(LLAMA3_70B)
    if text == "tiny":
        from training.tiny import TinySpec

        spec = TinySpec()
        return {
            "model_type": "llama",
            "vocab_size": _tiny_vocab_size(),
            "hidden_size": spec.text_hidden_size,
            "intermediate_size": spec.text_intermediate_size,
            "num_hidden_layers": spec.text_layers,
            "num_attention_heads": spec.text_heads,
            "num_key_value_heads": spec.text_kv_heads,
            "max_position_embeddings": 1024,
            "tie_word_embeddings": False,
        }
    path = Path(text) / "config.json"
    if path.is_file():
        return json.loads(path.read_text())
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(text).to_dict()
    except Exception as exc:  # offline and not cached: a user-fixable input
        raise MedVQAUserError(
            text, f"cannot read this language model's config ({type(exc).__name__}); use a local folder"
        ) from None


def model_config_for_recipe(recipe: Recipe):
    """The :class:`MedVQAConfig` a recipe trains: from ``model.init_checkpoint`` if set, else from the bases."""
    from modeling_medvqa import MedVQAConfig

    if recipe.model.init_checkpoint:
        path = Path(recipe.model.init_checkpoint) / "config.json"
        if not path.is_file():
            raise MedVQAUserError(recipe.model.init_checkpoint, "model.init_checkpoint has no config.json")
        return MedVQAConfig.from_pretrained(recipe.model.init_checkpoint)
    return MedVQAConfig(
        vision_config=_vision_config(recipe.model.vision),
        text_config=_text_config(recipe.model.text),
        vision_feature_layer=recipe.model.vision_feature_layer,
    )


# ----------------------------------------------------------------------------------------------------------------
# Parameter counts (exact, on the meta device)


@dataclass(frozen=True)
class ParamCounts:
    total: int
    trainable: int
    detail: dict[str, int]  # trainable parameters by part
    persistent: int = 0  # ZeRO-3: parameters at or below the persistence threshold, kept whole on every rank
    largest_module: int = (
        0  # the most parameters one module owns directly (ZeRO-3 gathers a module at a time)
    )
    largest_layer: int = 0  # the most parameters of one decoder layer / transformer block


def zero3_gathered_elements(counts: ParamCounts, hidden_size: int) -> int:
    """Parameter elements a ZeRO-3 rank holds gathered at the peak, beyond its partition.

    DeepSpeed fetches the parameters of the module about to run and prefetches ahead up to
    ``stage3_prefetch_bucket_size`` ("auto" = 0.9 x hidden**2 elements), releasing them after use; at most
    ``stage3_max_live_parameters`` stay gathered, except that a single module is always gathered whole.  The
    peak is therefore one decoder layer (its projections run back to back, and the backward re-gathers them) plus
    the prefetch bucket, or the largest single module -- the LM head, which TRL's fused head gathers whole
    (``trl.trainer.utils.maybe_gather_lm_head_ctx``), and the token embedding -- whichever is larger.
    """
    prefetch = int(0.9 * hidden_size * hidden_size)
    layer = min(counts.largest_layer + prefetch, ZERO3_MAX_LIVE_PARAMETERS)
    return max(counts.largest_module, layer)


def _zero3_stats(model, threshold: int) -> tuple[int, int, int]:
    """(persistent parameters, largest module's own parameters, largest block's parameters) of a (meta) model."""
    persistent = sum(p.numel() for p in model.parameters() if p.numel() <= threshold)
    largest_module = max(
        (sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0
    )
    blocks = [
        m
        for m in model.modules()
        if type(m).__name__.endswith(("DecoderLayer", "Block", "ResidualAttentionBlock", "BertLayer"))
    ]
    largest_layer = max((sum(p.numel() for p in b.parameters()) for b in blocks), default=0)
    return persistent, largest_module, largest_layer


@functools.lru_cache(maxsize=32)
def _count_medvqa(config_json: str, lora_json: str, stage: str, vision_blocks: int | None) -> ParamCounts:
    import torch

    from modeling_medvqa import MedVQAConfig, MedVQAForConditionalGeneration
    from training.train.recipe import LoraSettings, StageSettings
    from training.train.sft_stages import build_peft_model

    config = MedVQAConfig.from_dict(json.loads(config_json))
    stub = Recipe(name="plan", output_dir="-", lora=LoraSettings(**json.loads(lora_json)))
    stub.stages["joint"] = StageSettings(vision_trainable_blocks=vision_blocks)
    with torch.device("meta"):
        model = MedVQAForConditionalGeneration(config)
        peft_model = build_peft_model(model, stub, stage)
    total = trainable = 0
    detail = {"lora": 0, "projector": 0, "vision": 0, "other": 0}
    for name, param in peft_model.named_parameters():
        total += param.numel()
        if not param.requires_grad:
            continue
        trainable += param.numel()
        part = (
            "lora"
            if "lora_" in name
            else "projector"
            if "multi_modal_projector" in name
            else "vision"
            if "vision_tower" in name
            else "other"
        )
        detail[part] += param.numel()
    # stage3_param_persistence_threshold "auto": transformers fills 10 x the model's hidden size (the LM's here).
    persistent, largest_module, largest_layer = _zero3_stats(peft_model, 10 * config.text_config.hidden_size)
    return ParamCounts(
        total, trainable, {k: v for k, v in detail.items() if v}, persistent, largest_module, largest_layer
    )


@dataclass(frozen=True)
class ClipShapes:
    """The open_clip model the ``clip`` stage trains: a timm ViT (all blocks) and a text encoder."""

    vit: dict[str, int]
    image_size: int
    text_width: int
    text_layers: int
    text_mlp: int
    text_context: int
    text_dropout: bool
    params: int
    zero3: ParamCounts | None = (
        None  # persistence / largest-module statistics for ZeRO-3 (trainable = params)
    )


@functools.lru_cache(maxsize=8)
def _clip_shapes(vision: str) -> ClipShapes:
    import torch

    cfg = _open_clip_cfg(vision) if vision not in _KNOWN_VISION else None
    if cfg is None:  # BiomedCLIP: ViT-B/16 + PubMedBERT (BERT-base) + MLP projection, embed dim 512
        from transformers import BertConfig, BertModel

        vit = _timm_shape("vit_base_patch16_224", 224)
        b = BERT_BASE
        with torch.device("meta"):
            bert = BertModel(
                BertConfig(
                    vocab_size=b["vocab"],
                    hidden_size=b["hidden"],
                    num_hidden_layers=b["layers"],
                    num_attention_heads=b["heads"],
                    intermediate_size=b["intermediate"],
                    max_position_embeddings=b["positions"],
                ),
                add_pooling_layer=False,
            )
            import timm

            trunk = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
        proj = 768 * 512 + 768 * 640 + 640 * 512 + 1  # vision linear head, text MLP head, logit_scale
        params = sum(p.numel() for p in bert.parameters()) + sum(p.numel() for p in trunk.parameters()) + proj
        stats = [_zero3_stats(m, 10 * vit["hidden_size"]) for m in (bert, trunk)]
        zero3 = ParamCounts(
            params, params, {}, sum(s[0] for s in stats), max(s[1] for s in stats), max(s[2] for s in stats)
        )
        return ClipShapes(vit, 224, b["hidden"], b["layers"], b["intermediate"], 256, True, params, zero3)
    import open_clip

    text_cfg = cfg.get("text_cfg", {})
    if "hf_model_name" in text_cfg:
        raise MedVQAUserError(
            vision, "a Hugging Face text tower other than BiomedCLIP's cannot be sized offline"
        )
    vision_cfg = cfg["vision_cfg"]
    size = vision_cfg.get("image_size", 224)
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    with torch.device("meta"):
        model = open_clip.CLIP(**cfg)
    width = int(text_cfg.get("width", 512))
    params = sum(p.numel() for p in model.parameters())
    vit = _timm_shape(vision_cfg["timm_model_name"], size)
    return ClipShapes(
        vit=vit,
        image_size=size,
        text_width=width,
        text_layers=int(text_cfg.get("layers", 12)),
        text_mlp=int(width * text_cfg.get("mlp_ratio", 4.0)),
        text_context=int(text_cfg.get("context_length", 77)),
        text_dropout=False,
        params=params,
        zero3=ParamCounts(params, params, {}, *_zero3_stats(model, 10 * vit["hidden_size"])),
    )


# ----------------------------------------------------------------------------------------------------------------
# Activation formulas (bytes)


def llama_layer_saved_bytes(
    tokens: int,
    text_config,
    act_bytes: int,
    *,
    lora_r: int,
    lora_targets: tuple[str, ...],
    lora_dropout: bool,
    padding_mask: bool = True,
    device: str = "cuda",
) -> int:
    """Bytes autograd saves in one ``LlamaDecoderLayer`` (LoRA on ``lora_targets``, frozen base) for ``tokens``."""
    a = act_bytes
    h = text_config.hidden_size
    n = text_config.num_attention_heads
    hd = getattr(text_config, "head_dim", None) or h // n
    q = n * hd
    kv = text_config.num_key_value_heads * hd
    inter = text_config.intermediate_size
    drop = (a + 1) if device == "cuda" else 2 * a  # dropout output + mask (bool on CUDA, float noise on CPU)
    targets = set(lora_targets)
    per_token = 4 * h + 4 * h  # the two RMSNorm inputs in fp32
    # LoRA inputs: one saved copy per target with dropout; the shared input once without.
    in_dims = {
        "q_proj": h,
        "k_proj": h,
        "v_proj": h,
        "o_proj": q,
        "gate_proj": h,
        "up_proj": h,
        "down_proj": inter,
    }
    if lora_dropout:
        per_token += sum(drop * in_dims[t] for t in targets if t in in_dims)
    else:
        if targets & {"q_proj", "k_proj", "v_proj"}:
            per_token += a * h  # normed attention input
        if targets & {"gate_proj", "up_proj"}:
            per_token += a * h  # normed MLP input
        if "down_proj" in targets:
            per_token += a * inter  # silu(gate) * up
        # o_proj's input shares the SDPA output's storage
    per_token += len(targets) * lora_r * a  # lora_A outputs, saved by lora_B
    kv_saved = q if padding_mask else kv  # repeat_kv under a padding mask, enable_gqa otherwise
    per_token += a * (q + 2 * kv_saved + q) + 4 * n  # SDPA: q, k, v, output, logsumexp
    per_token += 3 * a * inter  # gate output (silu), silu output and up output (the product)
    return tokens * per_token


def llama_layer_backward_bytes(tokens: int, text_config, act_bytes: int) -> int:
    """Working set of one decoder layer's backward: incoming gradient, MLP gradients, RMSNorm fp32 temporaries."""
    h, inter = text_config.hidden_size, text_config.intermediate_size
    # Saved tensors are released as their nodes run, so beyond them the backward holds about one hidden-sized and
    # one intermediate-sized gradient plus the RMSNorm backward's fp32 temporaries (calibrated on CPU, see module doc).
    return tokens * (act_bytes * h + act_bytes * inter + 2 * 4 * h)


def vit_block_saved_bytes(
    tokens: int, width: int, mlp_hidden: int, act_bytes: int, dropout_masks: int = 0
) -> int:
    """Bytes one trainable pre-norm transformer block saves (timm ViT block; BERT layers with ``dropout_masks``)."""
    return tokens * (act_bytes * (7 * width + 2 * mlp_hidden) + 16 + dropout_masks * width)


def vit_block_backward_bytes(tokens: int, width: int, mlp_hidden: int, act_bytes: int) -> int:
    return tokens * act_bytes * (2 * width + 2 * mlp_hidden)


# ----------------------------------------------------------------------------------------------------------------
# The plan


def _dtype_bytes(recipe: Recipe, device: str) -> tuple[str, int]:
    if device == "cpu":
        return "float32", 4  # load_base trains in fp32 on CPU whatever the recipe says
    if recipe.training.bf16 or recipe.model.dtype == "bfloat16":
        return "bfloat16", 2
    return recipe.model.dtype, 4 if recipe.model.dtype == "float32" else 2


def quantized_linear_shapes(text_config) -> tuple[int, int]:
    """(weights, output rows) of the decoder layers' seven projections: what bitsandbytes quantises."""
    h, inter = text_config.hidden_size, text_config.intermediate_size
    hd = getattr(text_config, "head_dim", None) or h // text_config.num_attention_heads
    q, kv = text_config.num_attention_heads * hd, text_config.num_key_value_heads * hd
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * inter
    rows = q + 2 * kv + h + 2 * inter + h
    return per_layer * text_config.num_hidden_layers, rows * text_config.num_hidden_layers


def quantized_weight_bytes(text_config, quantize: str) -> tuple[int, int]:
    """(bytes of the quantised projections, how many weights they hold) for ``quantize`` 4bit / 8bit."""
    elements, rows = quantized_linear_shapes(text_config)
    if quantize == "4bit":
        return math.ceil(elements * NF4_BYTES_PER_WEIGHT), elements
    return elements + 4 * rows, elements  # LLM.int8: one byte per weight, an fp32 scale per output row


def _qlora_memory(counts, text_config, quantize: str, optim: str) -> tuple[int, int, int, list[str]]:
    """(weights, gradients, optimizer states) of one QLoRA process, and notes.

    The decoder projections are 4-bit / 8-bit; ``prepare_model_for_kbit_training`` keeps every other frozen weight
    in fp32 (embeddings, LM head, norms, vision tower, the projector's frozen original); TRL keeps the trainable
    ones of a quantised model in bf16, so their gradients are bf16 too.  No ZeRO: each GPU holds all of it.
    """
    quant_bytes, quant_elements = quantized_weight_bytes(text_config, quantize)
    frozen_rest = counts.total - quant_elements - counts.trainable
    weights = quant_bytes + frozen_rest * 4 + counts.trainable * 2
    gradients = counts.trainable * 2
    eight_bit = "8bit" in optim
    optimizer = math.ceil(counts.trainable * (ADAM_8BIT_BYTES_PER_PARAM if eight_bit else 8))
    notes = [
        f"QLoRA: decoder projections {'NF4 4-bit + double quantisation' if quantize == '4bit' else 'LLM.int8 8-bit'}"
        f" ({quant_bytes / GIB:.2f} GiB), other frozen weights fp32, trainable bf16; no DeepSpeed, nothing sharded",
        f"optimizer {optim}: "
        + ("8-bit AdamW states" if eight_bit else "32-bit AdamW states")
        + (
            "; paged: under memory pressure they move to host memory (counted here on the GPU)"
            if "paged" in optim
            else ""
        ),
    ]
    return int(weights), int(gradients), int(optimizer), notes


def default_seq_len(recipe: Recipe, image_tokens: int) -> int:
    """The sequence length the planner assumes: ``data.max_length``, else image tokens + typical text."""
    return int(recipe.data.max_length or image_tokens + TYPICAL_TEXT_TOKENS)


def plan_memory(
    recipe: Recipe,
    stage: str,
    gpus: int,
    gpu_memory_gb: float,
    per_device_batch: int | None = None,
    *,
    seq_len: int | None = None,
    answer_tokens: int | None = None,
    gradient_checkpointing: bool | None = None,
    fused_lm_head: bool = True,
    padding_mask: bool = True,
    device: str = "cuda",
    nodes: int = 1,
    zero_stage: int | None = None,
) -> Plan:
    """Predict per-GPU memory of ``stage`` (``clip``, ``lora`` or ``joint``) of ``recipe`` on ``gpus`` GPUs.

    Args:
        recipe: a loaded recipe (:func:`training.train.recipe.load_recipe`).
        gpus: GPUs per node; the data-parallel ranks are ``gpus`` x ``nodes``, and ZeRO shards over all of them.
        gpu_memory_gb: memory of one GPU in GiB (an A100 40GB is 40).
        per_device_batch: overrides the stage's ``per_device_train_batch_size``.
        seq_len: tokens per example incl. image tokens (default: :func:`default_seq_len`).
        answer_tokens: label positions per example (default :data:`TYPICAL_ANSWER_TOKENS`).
        gradient_checkpointing: overrides the recipe's setting.
        fused_lm_head: False plans the plain ``(B, T, V)`` logits instead of TRL's fused head.
        padding_mask: whether batches carry padding (then SDPA gets a mask and K/V are repeated to all heads).
        device: ``"cuda"`` (DeepSpeed ZeRO, the recipe's dtype) or ``"cpu"`` (plain Trainer, fp32; for checks).
        nodes: machines, each with ``gpus`` GPUs.
        zero_stage: DeepSpeed ZeRO stage, 2 or 3 (default: the recipe's ``training.zero_stage``).
    """
    if stage not in STAGES:
        raise MedVQAUserError(stage, f"unknown stage; stages are {list(STAGES)}")
    if gpus < 1:
        raise MedVQAUserError("--gpus", "must be at least 1")
    if nodes < 1:
        raise MedVQAUserError("--nodes", "must be at least 1")
    zero_stage = int(recipe.training.zero_stage if zero_stage is None else zero_stage)
    if zero_stage not in ZERO_STAGES:
        raise MedVQAUserError("--zero", f"ZeRO stage must be one of {list(ZERO_STAGES)}")
    if not (gpu_memory_gb > 0 and math.isfinite(gpu_memory_gb)):
        raise MedVQAUserError("--gpu-memory", "must be a positive, finite number of GiB")
    # None means "the recipe's"; a 0 given by a caller is refused below, never replaced by the default
    batch = int(
        recipe.stage_value(stage, "per_device_train_batch_size")
        if per_device_batch is None
        else per_device_batch
    )
    if batch < 1:
        raise MedVQAUserError("--batch", "must be at least 1")
    checkpointing = (
        recipe.training.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    )
    dtype, a = _dtype_bytes(recipe, device)
    ranks = gpus * nodes if device == "cuda" else 1
    if stage == "clip":
        plan = _plan_clip(
            recipe, gpus, ranks, gpu_memory_gb, batch, dtype, a, checkpointing, device, zero_stage
        )
        plan.nodes, plan.zero_stage = nodes, zero_stage
        return plan

    config = model_config_for_recipe(recipe)
    text = config.text_config
    counts = _count_medvqa(
        json.dumps(config.to_dict(), sort_keys=True, default=str),
        json.dumps(recipe.lora.__dict__, sort_keys=True),
        stage,
        recipe.stage("joint").vision_trainable_blocks,
    )
    image_tokens = int(config.image_seq_length)
    seq = int(default_seq_len(recipe, image_tokens) if seq_len is None else seq_len)
    if seq <= image_tokens:
        raise MedVQAUserError("--seq-len", f"must exceed the {image_tokens} image tokens")
    answers = int(answer_tokens or TYPICAL_ANSWER_TOKENS)
    tokens = batch * seq
    h, vocab, layers = text.hidden_size, text.vocab_size, text.num_hidden_layers

    # Weights, gradients, optimizer states.
    notes: list[str] = []
    gathered = 0
    quantize = recipe.model.quantize
    if device == "cuda" and quantize:
        weights, gradients, optimizer, quant_notes = _qlora_memory(
            counts, text, quantize, recipe.training.optim
        )
        notes.extend(quant_notes)
    elif device == "cuda":
        weights, gathered = zero_weight_bytes(counts, a, ranks, zero_stage, h)
        bucket = 2 * min(h * h, max(counts.trainable, 1)) * 4  # two reduce buckets (overlap_comm), fp32
        gradients = math.ceil(counts.trainable * (4 + 4) / ranks) + bucket
        optimizer = math.ceil(counts.trainable * ((4 if a < 4 else 0) + 8) / ranks)
        notes.append(_zero_note(zero_stage, gpus, nodes, gathered))
    else:
        weights = counts.total * 4
        gradients = counts.trainable * 4
        optimizer = counts.trainable * 8
        notes.append("CPU run: plain Trainer, fp32, unsharded")

    # Activations.
    vit = _timm_shape(
        config.vision_config.timm_model_name,
        config.vision_config.image_size,
        json.dumps(config.vision_config.timm_kwargs or {}, sort_keys=True),
    )
    vit_tokens = batch * (image_tokens + vit["num_prefix_tokens"])
    targets = tuple(recipe.lora.target_modules)
    layer_saved = llama_layer_saved_bytes(
        tokens,
        text,
        a,
        lora_r=recipe.lora.r,
        lora_targets=targets,
        lora_dropout=recipe.lora.dropout > 0,
        padding_mask=padding_mask,
        device=device,
    )
    layer_bwd = llama_layer_backward_bytes(tokens, text, a)
    if device == "cuda" and quantize:
        # bitsandbytes dequantises one projection at a time for its matmul (forward and input gradient): the largest
        # one (an MLP matrix) in the compute dtype joins the working set.
        layer_bwd += text.hidden_size * text.intermediate_size * a
    # Pixel values (fp32 from the collator), input_ids, attention_mask, labels (int64).  accelerate's data loader
    # fetches the next batch ahead; on CPU it lives beside the current one, on GPU it stays in host memory.
    inputs = (batch * 3 * config.vision_config.image_size**2 * 4 + 3 * tokens * 8) * (
        2 if device == "cpu" else 1
    )
    outside = (
        vit_tokens * config.vision_config.hidden_size * a  # projector's linear_1 input (the vision output)
        + batch * image_tokens * 2 * h * a  # GELU input and output
        + tokens * 4 * h  # the final RMSNorm input (fp32); the layers count their own norms
        + (batch * seq * seq * 4 if padding_mask else 0)  # the 4-D SDPA mask, shared by all layers
        + inputs
    )
    # Saved tensors, then the working set of the layers' backward (under checkpointing: one recomputed layer).
    vision_saved = vision_ckpt = vision_work = vision_work_ckpt = 0
    if stage == "joint":
        n_train = recipe.stage("joint").vision_trainable_blocks or config.num_vision_blocks_used
        n_train = min(n_train, config.num_vision_blocks_used)
        block = vit_block_saved_bytes(vit_tokens, vit["hidden_size"], vit["mlp_hidden"], a)
        vision_saved = n_train * block
        vision_ckpt = n_train * vit_tokens * vit["hidden_size"] * a
        vision_work = vit_block_backward_bytes(vit_tokens, vit["hidden_size"], vit["mlp_hidden"], a)
        vision_work_ckpt = block + vision_work
    saved_plain = outside + layers * layer_saved + vision_saved
    saved_ckpt = outside + layers * tokens * h * a + vision_ckpt
    work_plain = max(layer_bwd, vision_work)
    work_ckpt = max(layer_saved + layer_bwd, vision_work_ckpt)
    act_plain = saved_plain + work_plain
    act_ckpt = saved_ckpt + work_ckpt

    # Logits.
    positions = batch * (seq - 1)
    # TRL allocates its tile buffer at the full tile width (4096 tokens x 32768 columns) even for a smaller
    # vocabulary; only the fold's temporaries are vocabulary-sized.
    if device == "cuda":
        labelled = batch * answers  # Triton path: only label positions are projected
        rows = min(labelled, FUSED_TOKEN_TILE)
        logits_fused = rows * FUSED_VOCAB_TILE * a + labelled * h * (a + 4) + labelled * 4 * 8
    else:
        # Without Triton every position is projected, and the torch fold keeps several fp32 tiles alive.
        rows = min(positions, FUSED_TOKEN_TILE)
        logits_fused = (
            rows * FUSED_VOCAB_TILE * 4
            + CPU_FUSED_TILE_COPIES * rows * min(vocab, FUSED_VOCAB_TILE) * 4
            + positions * h * (a + 4)
            + positions * 4 * 8
        )
    logits_plain = positions * vocab * 12
    logits = logits_fused if fused_lm_head else logits_plain
    if not fused_lm_head:
        notes.append("plain logits: the fused LM head of TRL's SFTTrainer is off")

    activations = act_ckpt if checkpointing else act_plain
    # The LM head runs between the forward and the layers' backward, when only the saved tensors are alive: the peak
    # is saved + max(head, layers' working set), so the logits line is what the head adds beyond that working set.
    work = work_ckpt if checkpointing else work_plain
    logits_extra = max(0, logits - work)
    overhead = (
        (CUDA_OVERHEAD_BYTES + int(FRAGMENTATION * (activations + logits_extra))) if device == "cuda" else 0
    )
    breakdown = {
        "weights": int(weights),
        "gradients": int(gradients),
        "optimizer_states": int(optimizer),
        "activations": int(activations),
        "logits": int(logits_extra),
        "overhead": int(overhead),
    }
    return Plan(
        recipe=recipe.name,
        stage=stage,
        gpus=gpus,
        gpu_memory_bytes=int(gpu_memory_gb * GIB),
        per_device_batch=batch,
        seq_len=seq,
        image_tokens=image_tokens,
        answer_tokens=answers,
        dtype=dtype,
        device=device,
        gradient_checkpointing=bool(checkpointing),
        fused_lm_head=fused_lm_head,
        total_params=counts.total,
        trainable_params=counts.trainable,
        trainable_detail=dict(counts.detail),
        breakdown=breakdown,
        activations_checkpointing=int(act_ckpt),
        activations_no_checkpointing=int(act_plain),
        logits_fused=int(logits_fused),
        logits_plain=int(logits_plain),
        notes=notes,
        nodes=nodes,
        zero_stage=zero_stage,
        weights_gathered=int(gathered),
        quantize=quantize if device == "cuda" else None,
        optim=recipe.training.optim,
    )


def zero_weight_bytes(
    counts: ParamCounts, a: int, ranks: int, zero_stage: int, hidden_size: int
) -> tuple[int, int]:
    """(weight bytes per rank, of which gathered working set) under ZeRO ``zero_stage`` over ``ranks`` ranks."""
    if zero_stage < 3:
        return counts.total * a, 0
    sharded = counts.total - counts.persistent
    gathered = zero3_gathered_elements(counts, hidden_size) * a
    return math.ceil(sharded * a / ranks) + counts.persistent * a + gathered, gathered


def _zero_note(zero_stage: int, gpus: int, nodes: int, gathered: int) -> str:
    ranks = gpus * nodes
    where = f"{ranks} rank(s)" + (f" ({nodes} nodes x {gpus} GPUs)" if nodes > 1 else "")
    if zero_stage < 3:
        return (
            f"DeepSpeed ZeRO-2 over {where}: gradients and optimizer states sharded 1/{ranks}, weights whole"
        )
    return (
        f"DeepSpeed ZeRO-3 over {where}: weights, gradients and optimizer states sharded 1/{ranks}; "
        f"the weights line includes {gathered / GIB:.2f} GiB gathered at a time"
    )


def _plan_clip(
    recipe, gpus, ranks, gpu_memory_gb, batch, dtype, a, checkpointing, device, zero_stage=2
) -> Plan:
    shapes = _clip_shapes(recipe.model.vision)
    vit = shapes.vit
    image_tokens = (shapes.image_size // vit["patch_size"]) ** 2
    vit_tokens = batch * (image_tokens + vit["num_prefix_tokens"])
    text_tokens = batch * shapes.text_context
    masks = (1 if device == "cuda" else a) * 2 if shapes.text_dropout else 0
    v_block = vit_block_saved_bytes(vit_tokens, vit["hidden_size"], vit["mlp_hidden"], a)
    t_block = vit_block_saved_bytes(text_tokens, shapes.text_width, shapes.text_mlp, a, masks)
    v_bwd = vit_block_backward_bytes(vit_tokens, vit["hidden_size"], vit["mlp_hidden"], a)
    t_bwd = vit_block_backward_bytes(text_tokens, shapes.text_width, shapes.text_mlp, a)
    inputs = batch * 3 * shapes.image_size**2 * 4 + text_tokens * 8
    act_plain = inputs + vit["num_hidden_layers"] * v_block + shapes.text_layers * t_block + max(v_bwd, t_bwd)
    act_ckpt = (
        inputs
        + vit["num_hidden_layers"] * vit_tokens * vit["hidden_size"] * a
        + shapes.text_layers * text_tokens * shapes.text_width * a
        + max(v_block + v_bwd, t_block + t_bwd)
    )
    logits = 3 * batch * batch * gpus * 4  # image-text similarities, their softmax and gradient (fp32)
    params = shapes.params
    gathered = 0
    if device == "cuda":
        weights, gathered = zero_weight_bytes(shapes.zero3, a, ranks, zero_stage, vit["hidden_size"])
        gradients = math.ceil(params * 8 / ranks) + 2 * min(vit["hidden_size"] ** 2, params) * 4
        optimizer = math.ceil(params * ((4 if a < 4 else 0) + 8) / ranks)
    else:
        weights, gradients, optimizer = params * 4, params * 4, params * 8
    activations = act_ckpt if checkpointing else act_plain
    overhead = (CUDA_OVERHEAD_BYTES + int(FRAGMENTATION * (activations + logits))) if device == "cuda" else 0
    return Plan(
        recipe=recipe.name,
        stage="clip",
        gpus=gpus,
        gpu_memory_bytes=int(gpu_memory_gb * GIB),
        per_device_batch=batch,
        seq_len=shapes.text_context,
        image_tokens=image_tokens,
        answer_tokens=0,
        dtype=dtype,
        device=device,
        gradient_checkpointing=bool(checkpointing),
        fused_lm_head=False,
        total_params=params,
        trainable_params=params,
        trainable_detail={"open_clip": params},
        breakdown={
            "weights": int(weights),
            "gradients": int(gradients),
            "optimizer_states": int(optimizer),
            "activations": int(activations),
            "logits": int(logits),
            "overhead": int(overhead),
        },
        activations_checkpointing=int(act_ckpt),
        activations_no_checkpointing=int(act_plain),
        logits_fused=int(logits),
        logits_plain=int(logits),
        notes=["open_clip model trained in full (vision + text tower); the MedVQA model is not loaded"]
        + ([_zero_note(zero_stage, gpus, ranks // gpus, gathered)] if device == "cuda" else []),
        weights_gathered=int(gathered),
    )


def largest_fitting_batch(
    recipe: Recipe, stage: str, gpus: int, gpu_memory_gb: float, limit: int = 1 << 14, **kwargs: Any
) -> int:
    """The largest per-device batch whose plan fits (0 if even 1 does not); ``kwargs`` go to :func:`plan_memory`."""

    def fits(batch: int) -> bool:
        return plan_memory(recipe, stage, gpus, gpu_memory_gb, batch, **kwargs).fits

    if not fits(1):
        return 0
    low, high = 1, 2
    while high <= limit and fits(high):
        low, high = high, high * 2
    high = min(high, limit + 1)
    while high - low > 1:  # fits(low) and not fits(high): memory grows monotonically with the batch
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


# ----------------------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, type=Path, help="recipe YAML")
    parser.add_argument("--gpus", required=True, type=positive_int, help="GPUs per node")
    parser.add_argument(
        "--gpu-memory", required=True, type=positive_float, help="memory of one GPU in GiB (A100 40GB: 40)"
    )
    parser.add_argument(
        "--stage", default="all", choices=[*STAGES, "all"], help="stage to plan (default: all)"
    )
    parser.add_argument("--batch", type=positive_int, help="per-device batch (default: the recipe's)")
    parser.add_argument("--seq-len", type=positive_int, help="tokens per example incl. image tokens")
    parser.add_argument(
        "--nodes", type=positive_int, default=1, help="machines, each with --gpus GPUs (default 1)"
    )
    parser.add_argument(
        "--zero",
        type=int,
        choices=ZERO_STAGES,
        help="DeepSpeed ZeRO stage (default: the recipe's training.zero_stage)",
    )
    parser.add_argument("--plain-logits", action="store_true", help="plan without TRL's fused LM head")
    parser.add_argument("--json", action="store_true", help="print the plans as JSON instead of a table")


def _gib(n: int) -> str:
    return f"{n / GIB:8.2f}"


def format_plan(plan: Plan, largest: int) -> str:
    """The table ``medvqa plan`` prints for one stage."""
    detail = ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in plan.trainable_detail.items())
    head = [
        f"stage {plan.stage}: recipe {plan.recipe}, "
        + (f"{plan.nodes} nodes x " if plan.nodes > 1 else "")
        + f"{plan.gpus} x {plan.gpu_memory_bytes / GIB:g} GiB, "
        f"{plan.dtype}, {'CUDA' if plan.device == 'cuda' else 'CPU'}",
        f"  parameters {plan.total_params / 1e9:.3f} B, trainable {plan.trainable_params / 1e6:.1f} M ({detail})",
        f"  per-device batch {plan.per_device_batch}, sequence {plan.seq_len} tokens"
        + (
            f" ({plan.image_tokens} image + {plan.seq_len - plan.image_tokens} text)"
            if plan.stage != "clip"
            else ""
        )
        + f", gradient checkpointing {'on' if plan.gradient_checkpointing else 'off'}",
        "",
        f"  {'component':<46}{'GiB/GPU':>8}  share",
    ]
    zero = f" (ZeRO-{plan.zero_stage}, 1/{plan.ranks})" if plan.device == "cuda" and not plan.quantize else ""
    labels = {
        "weights": f"weights ({plan.dtype}"
        + (f", ZeRO-3 1/{plan.ranks} + gathered" if plan.device == "cuda" and plan.zero_stage == 3 else "")
        + ")",
        "gradients": "gradients" + zero,
        "optimizer_states": ("8-bit AdamW states" if "8bit" in plan.optim else "AdamW states") + zero,
        "activations": "activations" + (" (checkpointed)" if plan.gradient_checkpointing else ""),
        "logits": "logits"
        + (" (fused head, beyond working set)" if plan.fused_lm_head else " (plain, beyond working set)"),
        "overhead": "CUDA/framework overhead",
    }
    if plan.quantize:
        labels["weights"] = (
            f"weights (LM {'NF4 4-bit' if plan.quantize == '4bit' else '8-bit'}, rest fp32/bf16)"
        )
        labels["gradients"] = "gradients (bf16, trainable only)"
    rows = [f"  {labels[k]:<46}{_gib(v)}  {100 * v / plan.total:4.1f}%" for k, v in plan.breakdown.items()]
    other_act = (
        plan.activations_no_checkpointing if plan.gradient_checkpointing else plan.activations_checkpointing
    )
    tail = [
        f"  {'total':<46}{_gib(plan.total)}",
        f"  {'GPU memory':<46}{_gib(plan.gpu_memory_bytes)}",
        f"  {'headroom':<46}{_gib(plan.headroom)}",
        "",
        f"  activations {'without' if plan.gradient_checkpointing else 'with'} gradient checkpointing would be "
        f"{other_act / GIB:.2f} GiB; plain logits {plan.logits_plain / GIB:.2f} GiB "
        f"(fused head {plan.logits_fused / GIB:.3f} GiB)",
        *[f"  note: {n}" for n in plan.notes],
        f"  verdict: {'FITS' if plan.fits else 'DOES NOT FIT'}; largest per-device batch that fits: {largest}",
    ]
    return "\n".join(head + rows + tail)


def run(args: argparse.Namespace) -> int:
    """``medvqa plan``: print each stage's table; exit 1 when a stage does not fit."""
    import warnings

    warnings.filterwarnings(
        "ignore", category=FutureWarning
    )  # peft/transformers deprecation notes on meta models
    recipe = load_recipe(args.recipe)
    stages = [s for s in STAGES if recipe.stage(s).enabled] if args.stage == "all" else [args.stage]
    kwargs: dict[str, Any] = {
        "seq_len": args.seq_len,
        "fused_lm_head": not args.plain_logits,
        "nodes": args.nodes,
        "zero_stage": args.zero,
    }
    plans, out = [], []
    for stage in stages:
        plan = plan_memory(recipe, stage, args.gpus, args.gpu_memory, args.batch, **kwargs)
        largest = largest_fitting_batch(recipe, stage, args.gpus, args.gpu_memory, **kwargs)
        plans.append(plan)
        out.append(
            json.dumps({**plan.to_dict(), "largest_batch": largest})
            if args.json
            else format_plan(plan, largest)
        )
    print(("\n" if args.json else "\n\n").join(out))
    return 0 if all(p.fits for p in plans) else 1
