"""Tiny randomly initialised image-text-to-text models of other families, for testing and benchmarking the baseline
path of ``medvqa eval`` offline (no weights can be downloaded here).

Each one is built from its transformers config class (LLaVA, Gemma 3, Qwen2-VL, Idefics3), saved with
``save_pretrained`` next to its real processor class (``LlavaProcessor``, ``Gemma3Processor``, ``Qwen2VLProcessor``,
``Idefics3Processor``) and a byte-level
BPE tokenizer trained locally with that family's special tokens and a chat template in that family's turn format.
The folders are laid out as the Hub checkpoints are, so they load with ``AutoModelForImageTextToText`` and
``AutoProcessor`` and nothing in the evaluation knows which family it is reading.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.tiny import _CORPUS

# Chat templates in each family's turn format (written for these tests; the Hub repos ship their own).
_LLAVA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}"
    "{% if message['role'] == 'user' %} {% else %}</s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
_GEMMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<start_of_image>{% elif item['type'] == 'text' %}{{ item['text'] | trim }}"
    "{% endif %}"
    "{% endfor %}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
_QWEN2_VL_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_IDEFICS3_TEMPLATE = (
    "<|im_start|>"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}:"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>{% elif item['type'] == 'text' %}"
    "{{ (' ' if message['role'] == 'assistant' else '') + item['text'] | trim }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

_HIDDEN = 32


def _tokenizer(
    special: list[str],
    *,
    bos: str | None,
    eos: str,
    pad: str,
    chat_template: str,
    extra: dict[str, str] | None = None,
    vocab: int = 400,
):
    """A byte-level BPE tokenizer trained on the medical-question corpus, with ``special`` tokens added."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator([line for line in _CORPUS.splitlines() if line.strip()] * 4, trainer=trainer)
    tok.add_special_tokens(special)
    if bos is not None:  # as Llama and Gemma: the tokenizer adds BOS when asked for special tokens
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        extra_special_tokens=extra or {},
        chat_template=chat_template,
    )


def build_tiny_llava(out_dir: str | Path, seed: int = 0) -> Path:
    """LLaVA-1.5 layout: CLIP vision tower (30 px, 6 px patches, CLS dropped: 25 image tokens) + Llama."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = _tokenizer(
        ["<s>", "</s>", "<unk>", "<pad>", "<image>"],
        bos="<s>",
        eos="</s>",
        pad="<pad>",
        chat_template=_LLAVA_TEMPLATE,
        extra={"image_token": "<image>"},
    )
    vision = CLIPVisionConfig(
        hidden_size=_HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=30, patch_size=6, projection_dim=_HIDDEN,
    )  # fmt: skip
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=_HIDDEN, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_seq_length=25,
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}),
        tokenizer=tokenizer,
        patch_size=6,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=_LLAVA_TEMPLATE,
    )
    return _save(LlavaForConditionalGeneration, config, processor, tokenizer, out_dir, seed)


def build_tiny_gemma3(out_dir: str | Path, seed: int = 0) -> Path:
    """MedGemma / Gemma 3 layout: SigLIP vision tower (32 px, 8 px patches) pooled to 4 soft tokens + Gemma 3."""
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    tokenizer = _tokenizer(
        ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
         "<end_of_image>", "<image_soft_token>"],
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        chat_template=_GEMMA3_TEMPLATE,
        extra={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"},
    )  # fmt: skip
    ids = dict(zip(("boi", "eoi", "image", "eot"), tokenizer.convert_tokens_to_ids(
        ["<start_of_image>", "<end_of_image>", "<image_soft_token>", "<end_of_turn>"])))  # fmt: skip
    vision = SiglipVisionConfig(
        hidden_size=_HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=32, patch_size=8,
    )  # fmt: skip
    text = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=_HIDDEN, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window=16,
        layer_types=["sliding_attention", "full_attention"], max_position_embeddings=512, initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=[tokenizer.eos_token_id, ids["eot"]],
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=4,
        boi_token_index=ids["boi"],
        eoi_token_index=ids["eoi"],
        image_token_index=ids["image"],
        eos_token_id=[tokenizer.eos_token_id, ids["eot"]],
    )
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        image_seq_length=4,
        chat_template=_GEMMA3_TEMPLATE,
    )
    return _save(Gemma3ForConditionalGeneration, config, processor, tokenizer, out_dir, seed)


def build_tiny_qwen2_vl(out_dir: str | Path, seed: int = 0) -> Path:
    """Qwen2-VL layout: native-resolution ViT (14 px patches, 2x2 merge, images kept under 56x56) + Qwen2."""
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = _tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
         "<|video_pad|>"],
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        chat_template=_QWEN2_VL_TEMPLATE,
    )  # fmt: skip
    ids = dict(zip(("start", "end", "image", "video"), tokenizer.convert_tokens_to_ids(
        ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"])))  # fmt: skip
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": _HIDDEN, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
            "initializer_range": 0.2, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
        },
        vision_config={
            "depth": 2, "embed_dim": _HIDDEN, "hidden_size": _HIDDEN, "num_heads": 2, "mlp_ratio": 2,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
        },
        image_token_id=ids["image"], video_token_id=ids["video"],
        vision_start_token_id=ids["start"], vision_end_token_id=ids["end"],
    )  # fmt: skip
    pixels = {"shortest_edge": 28 * 28, "longest_edge": 56 * 56}  # at most 2x2 merged patches: 4 image tokens
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=pixels),
        video_processor=Qwen2VLVideoProcessor(size=pixels),
        tokenizer=tokenizer,
        chat_template=_QWEN2_VL_TEMPLATE,
    )
    return _save(Qwen2VLForConditionalGeneration, config, processor, tokenizer, out_dir, seed)


def build_tiny_idefics3(out_dir: str | Path, seed: int = 0) -> Path:
    """SmolVLM / Idefics3 layout: SigLIP-like tower (32 px, 8 px patches, pixel shuffle 2: 4 tokens per tile),
    images split into up to 2x2 tiles of 32 px plus the whole image (so prompts differ in length) + Llama."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    tiles = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tokenizer = _tokenizer(
        ["<|im_start|>", "<|endoftext|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
         "<global-img>", *tiles],
        bos="<|im_start|>",
        eos="<end_of_utterance>",
        pad="<|endoftext|>",
        chat_template=_IDEFICS3_TEMPLATE,
    )  # fmt: skip
    config = Idefics3Config(
        vision_config={
            "hidden_size": _HIDDEN, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "image_size": 32, "patch_size": 8,
        },
        text_config={
            "model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": _HIDDEN, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 512, "initializer_range": 0.2, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
        },
        scale_factor=2,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )  # fmt: skip
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessor(
            size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=True
        ),
        tokenizer=tokenizer,
        image_seq_len=4,
        chat_template=_IDEFICS3_TEMPLATE,
    )
    return _save(Idefics3ForConditionalGeneration, config, processor, tokenizer, out_dir, seed)


def _save(model_class, config, processor, tokenizer, out_dir: str | Path, seed: int) -> Path:
    import torch
    from transformers import GenerationConfig

    out = Path(out_dir)
    torch.manual_seed(seed)
    model = model_class(config).eval()
    eos = config.get_text_config().eos_token_id
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


TINY_FAMILIES: dict[str, Callable[..., Path]] = {
    "llava": build_tiny_llava,
    "gemma3": build_tiny_gemma3,
    "qwen2_vl": build_tiny_qwen2_vl,
    "idefics3": build_tiny_idefics3,
}


def build_tiny_vlm(family: str, out_dir: str | Path, **kwargs: Any) -> Path:
    """Build and save the tiny model of ``family`` (a key of ``TINY_FAMILIES``) into ``out_dir``."""
    return TINY_FAMILIES[family](out_dir, **kwargs)
