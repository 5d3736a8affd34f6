"""Configuration of the MedVQA model: BiomedCLIP ViT-B/16 (timm trunk) -> MLP projector -> Llama-3.

The defaults are the model of "A Lightweight Large Vision-language Model for Multimodal Medical Images"
(arXiv 2504.05575): BiomedCLIP's ``vit_base_patch16_224`` at 224 px with OpenAI CLIP mean/std, and the shapes of
Meta-Llama-3-8B-Instruct.  This file travels to the Hub with the checkpoint (remote code): it imports only
transformers, huggingface_hub (a dependency of transformers) and the standard library.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# open_clip's OPENAI_DATASET_MEAN / STD, which BiomedCLIP's preprocessing uses.
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# Meta-Llama-3-8B-Instruct's config.json, the parts that define shapes and behaviour.
LLAMA3_8B_INSTRUCT = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
    "hidden_act": "silu",
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128009],
    "tie_word_embeddings": False,
}


@strict
class MedVQAVisionConfig(PreTrainedConfig):
    """The timm vision trunk (BiomedCLIP's is ``vit_base_patch16_224``).

    ``timm_kwargs`` are passed to ``timm.create_model`` on top of the named architecture (used by the tiny preset
    to shrink a ViT); ``hidden_size``/``patch_size`` must agree with the architecture and are checked at build time.
    """

    model_type = "medvqa_vision"
    base_config_key = "vision_config"

    timm_model_name: str = "vit_base_patch16_224"
    timm_kwargs: dict | None = None
    image_size: int = 224
    patch_size: int = 16
    hidden_size: int = 768
    num_hidden_layers: int = 12
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.image_mean is None:
            self.image_mean = list(OPENAI_CLIP_MEAN)
        if self.image_std is None:
            self.image_std = list(OPENAI_CLIP_STD)
        if self.timm_kwargs is None:
            self.timm_kwargs = {}
        super().__post_init__(**kwargs)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@strict
class MedVQAConfig(PreTrainedConfig):
    """MedVQA = vision trunk + projector (Linear -> GELU -> Linear) + Llama decoder.

    Args:
        vision_config: a :class:`MedVQAVisionConfig` or its dict.
        text_config: a Llama config (or dict); defaults to Meta-Llama-3-8B-Instruct's shapes.
        vision_feature_layer: which ViT block output feeds the projector (-2: the penultimate block, as LLaVA).
            Blocks after it are not built at all, so they cost neither memory nor time.
        image_token_id: id of ``<|image|>`` in the tokenizer (added by ``medvqa init``).
        image_seq_length: image tokens per image = patch tokens (the CLS token is dropped): 196 at 224 px / 16.
    """

    model_type = "medvqa"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=MedVQAVisionConfig),
        "text_config": SubConfigSpec(
            config_class=AutoConfig, model_type="llama", init_kwargs=LLAMA3_8B_INSTRUCT
        ),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    vision_feature_layer: int = -2
    projector_hidden_act: str = "gelu"
    projector_bias: bool = True
    image_token_id: int = 128256
    image_seq_length: int | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.image_seq_length is None:
            self.image_seq_length = self.vision_config.num_patches
        if self.image_seq_length != self.vision_config.num_patches:
            raise ValueError(
                f"image_seq_length={self.image_seq_length} but the vision trunk gives "
                f"{self.vision_config.num_patches} patch tokens ({self.vision_config.image_size} px / "
                f"{self.vision_config.patch_size} px patches)"
            )
        layers = self.vision_config.num_hidden_layers
        if not -layers <= self.vision_feature_layer < layers:
            raise ValueError(
                f"vision_feature_layer={self.vision_feature_layer} outside a {layers}-block trunk"
            )

    @property
    def num_vision_blocks_used(self) -> int:
        """Blocks of the trunk that run: up to and including ``vision_feature_layer``."""
        layers = self.vision_config.num_hidden_layers
        return self.vision_feature_layer % layers + 1


__all__ = ["MedVQAConfig", "MedVQAVisionConfig", "LLAMA3_8B_INSTRUCT", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD"]
