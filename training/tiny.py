"""The ``tiny`` preset: small local stand-ins for BiomedCLIP and Llama-3 that build offline in seconds on a CPU.

They have the real structure, so they exercise the real loading code:
- a BiomedCLIP-like open_clip model (timm ``test_vit`` trunk, 160 px, 100 patch tokens, with open_clip's built-in
  text tower instead of PubMedBERT) saved as a ``local-dir:`` folder, exactly as open_clip saves Hub models;
- a 2-layer Llama saved with ``save_pretrained``;
- a byte-level BPE tokenizer trained locally, with Llama-3's special tokens in Llama-3's order, laid out as one of
  the three Llama-3 releases (``TOKENIZER_LAYOUTS``: base, first-release Instruct, current Instruct).

``save_tiny_model`` runs ``medvqa init`` on them, so its output is what a user gets from the real ``init``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The special tokens after the regular vocabulary (ids 128000.. in the real tokenizers), in their order.
# Llama-3.0 (Meta-Llama-3-8B and -Instruct) reserves the slots that Llama-3.1 later named.
LLAMA3_0_SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|reserved_special_token_2|>",
    "<|reserved_special_token_3|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|reserved_special_token_4|>",
    "<|eot_id|>",
]
LLAMA3_SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
]

# Meta's text-only chat templates (our own rendering of their behaviour): the current Instruct one adds the assistant
# header on request; the first Instruct release always appended it.
_TURNS = (
    "{%- for message in messages -%}"
    "{%- set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
    "+ message['content'] | trim + '<|eot_id|>' -%}"
    "{%- if loop.index0 == 0 -%}{%- set content = bos_token + content -%}{%- endif -%}"
    "{{- content -}}"
    "{%- endfor -%}"
)
_INSTRUCT_TEMPLATE = (
    _TURNS
    + "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)
_FIRST_RELEASE_TEMPLATE = _TURNS + "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}"


@dataclass(frozen=True)
class TokenizerLayout:
    """How a released Llama-3 tokenizer + generation config is laid out (what ``medvqa init`` must cope with)."""

    special_tokens: tuple[str, ...]
    eos_token: str  # the tokenizer's eos
    generation_eos: tuple[str, ...]  # generation_config.json's eos_token_id, as tokens
    bos_post_processor: bool  # whether tokenizer(...) adds <|begin_of_text|> by itself
    chat_template: str | None


TOKENIZER_LAYOUTS = {
    # Meta-Llama-3-8B: no chat template, everything ends at <|end_of_text|>.
    "base": TokenizerLayout(
        tuple(LLAMA3_0_SPECIAL_TOKENS), "<|end_of_text|>", ("<|end_of_text|>",), True, None
    ),
    # Meta-Llama-3-8B-Instruct as first released: no BOS post-processor, the template always opens an assistant
    # turn, and both eos fields name <|end_of_text|> only, although the model ends its turns with <|eot_id|>.
    "instruct-v1": TokenizerLayout(
        tuple(LLAMA3_0_SPECIAL_TOKENS),
        "<|end_of_text|>",
        ("<|end_of_text|>",),
        False,
        _FIRST_RELEASE_TEMPLATE,
    ),
    # The current Instruct files (Llama-3.1's named special tokens): eos <|eot_id|>, generation stops at either.
    "instruct": TokenizerLayout(
        tuple(LLAMA3_SPECIAL_TOKENS),
        "<|eot_id|>",
        ("<|end_of_text|>", "<|eot_id|>"),
        True,
        _INSTRUCT_TEMPLATE,
    ),
}

# Words the tiny tokenizer should keep whole: question templates and answers of medical VQA.
_CORPUS = """
What imaging modality is used in this image? Which modality was used to acquire this image?
Is this a CT image? Is this an MRI scan? Is this an X-Ray? Is this an ultrasound image? Is this a microscopy image?
Is this a fundus photograph? yes no Yes No. What organ is shown? Which organ is visible in this image?
What part of the body is shown? What is the anatomy shown? Is there a lesion in the image? Is there an abnormality?
CT Computed Tomography MRI MR Magnetic Resonance Imaging X-Ray radiograph Ultrasound Dermoscopy Microscopy
Fundus Photography OCT Optical Coherence Tomography Endoscopy Colposcopy Digital Photography Infrared Reflectance
brain head chest lung liver kidney heart abdomen pelvis spine knee eye retina skin cells cell nucleus tissue
histology histopathology immunohistochemistry stain blood vessel optic disc macula microaneurysm hemorrhage
normal abnormal benign malignant tumor nodule fracture pneumonia edema atrophy lesion mass cyst stone
What is the diagnosis? What disease is shown? Which of the following is shown? What type of cell is this?
axial sagittal coronal slice frame T1 T2 weighted contrast the a an of in is this image scan photo shown
"""


@dataclass(frozen=True)
class TinySpec:
    """Sizes of the tiny preset; defaults keep every test and the demo within seconds on 2 CPU cores."""

    vision_model: str = "test_vit"  # timm: width 64, 6 blocks, 16 px patches, 160 px
    image_size: int = 160
    clip_embed_dim: int = 32
    text_hidden_size: int = 64
    text_intermediate_size: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    text_initializer_range: float = 0.2
    tokenizer_vocab: int = 600
    tokenizer_layout: str = "instruct"  # a key of TOKENIZER_LAYOUTS
    seed: int = 0


def build_tiny_tokenizer(out_dir: str | Path, spec: TinySpec = TinySpec()):
    """Train a byte-level BPE tokenizer laid out as the Llama-3 release ``spec.tokenizer_layout``; save and return it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    layout = TOKENIZER_LAYOUTS[spec.tokenizer_layout]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.tokenizer_vocab,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([line for line in _CORPUS.splitlines() if line.strip()] * 4, trainer=trainer)
    tok.add_special_tokens(list(layout.special_tokens))
    if layout.bos_post_processor:
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A",
            pair="<|begin_of_text|> $A <|begin_of_text|> $B",
            special_tokens=[("<|begin_of_text|>", bos)],
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token=layout.eos_token,
        chat_template=layout.chat_template,
        # As Meta's files: transformers warns about this on every decode until `medvqa init` turns it off.
        clean_up_tokenization_spaces=True,
    )
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def build_tiny_llama(out_dir: str | Path, spec: TinySpec = TinySpec()) -> Path:
    """A 2-layer Llama + tokenizer saved with ``save_pretrained``, as a Hub Llama-3 checkpoint is laid out."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = build_tiny_tokenizer(out_dir, spec)
    generation_eos = tokenizer.convert_tokens_to_ids(
        list(TOKENIZER_LAYOUTS[spec.tokenizer_layout].generation_eos)
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden_size,
        intermediate_size=spec.text_intermediate_size,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_kv_heads,
        max_position_embeddings=1024,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=generation_eos,
        tie_word_embeddings=False,
        # At width 64 the usual std of 0.02 caps every logit near 1 (|w|*|h| ~ 0.16*8), so even a perfectly tuned
        # tiny model would stay close to uniform over the vocabulary; a wider init lets its answers become peaked.
        initializer_range=spec.text_initializer_range,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=generation_eos
    )
    model.save_pretrained(out_dir)
    return out_dir


def build_tiny_open_clip(out_dir: str | Path, spec: TinySpec = TinySpec()) -> str:
    """A BiomedCLIP-shaped open_clip model saved as open_clip saves Hub models; returns its ``local-dir:`` id."""
    import open_clip
    import torch
    from open_clip.push_to_hf_hub import save_config_for_hf
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # BiomedCLIP's own config with a small timm trunk and open_clip's built-in text tower (PubMedBERT needs the Hub).
    model_cfg = {
        "embed_dim": spec.clip_embed_dim,
        "vision_cfg": {
            "timm_model_name": spec.vision_model,
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": spec.image_size,
        },
        "text_cfg": {"context_length": 64, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }
    torch.manual_seed(spec.seed)
    model = open_clip.CLIP(**model_cfg)
    model.visual.image_mean = open_clip.OPENAI_DATASET_MEAN
    model.visual.image_std = open_clip.OPENAI_DATASET_STD
    save_file(model.state_dict(), out_dir / "open_clip_model.safetensors")
    save_config_for_hf(model, out_dir / "open_clip_config.json", model_config=model_cfg)
    return f"local-dir:{out_dir}"


def save_tiny_model(
    out_dir: str | Path, spec: TinySpec = TinySpec(), work_dir: str | Path | None = None
) -> Path:
    """Build the tiny bases and assemble a Hub-loadable MedVQA folder at ``out_dir`` (what ``medvqa init`` writes)."""
    from training.init_checkpoint import assemble_checkpoint

    out_dir = Path(out_dir)
    work = Path(work_dir) if work_dir is not None else out_dir.parent / f"{out_dir.name}-bases"
    vision_id = build_tiny_open_clip(work / "tiny-biomedclip", spec)
    text_dir = build_tiny_llama(work / "tiny-llama3", spec)
    assemble_checkpoint(vision_id, str(text_dir), out_dir, dtype="float32", seed=spec.seed)
    return out_dir
