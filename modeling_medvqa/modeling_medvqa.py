"""MedVQA: BiomedCLIP's ViT-B/16 trunk -> MLP projector -> Llama-3 decoder (arXiv 2504.05575).

Written in the style of transformers' ``modeling_llava.py``: a backbone (:class:`MedVQAModel`: vision tower,
projector, language model, returning ``last_hidden_state``) and a head (:class:`MedVQAForConditionalGeneration`:
backbone + ``lm_head``).  This file travels to the Hub as remote code and imports only torch, transformers, timm.

Shapes (paper model, batch B, text length T including the image tokens):

    pixel_values (B, 3, 224, 224)
      -> vision_tower: timm ViT-B/16 blocks 0..10 (the penultimate block's output, ``vision_feature_layer=-2``;
         block 11 is never built), CLS dropped                                                  (B, 196, 768)
      -> multi_modal_projector: Linear(768, 4096) -> GELU -> Linear(4096, 4096)                  (B, 196, 4096)
    input_ids (B, T) with 196 ``<|image|>`` ids per image
      -> embed_input_ids: embed_tokens; image ids past the table (the real layout) get zero vectors (B, T, 4096)
      -> masked_scatter of the image features into the image positions
      -> Llama decoder                                                          last_hidden_state (B, T, 4096)
      -> lm_head (only the last ``logits_to_keep`` positions)                              logits (B, T', 128256)

Image features are computed once per ``generate`` call, before prefill, through transformers'
``mm_encoder_outputs`` mechanism (as LLaVA): decoding steps reuse the KV cache and never see ``pixel_values``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MultimodalBaseModelOutputWithPast,
    MultimodalCausalLMOutputWithPast,
)
from transformers.modeling_utils import slice_logits_to_keep
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, logging, torch_compilable_check
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

from .configuration_medvqa import MedVQAConfig, MedVQAVisionConfig

logger = logging.get_logger(__name__)

# Parameters timm's ViT keeps on the VisionTransformer module itself, outside any nn.Linear/LayerNorm.
_TIMM_VIT_BARE_PARAMETERS = ("pos_embed", "cls_token", "reg_token")


@dataclass
class MedVQAModelOutputWithPast(MultimodalBaseModelOutputWithPast):
    """Backbone output; ``image_outputs`` is :meth:`MedVQAModel.get_image_features`' output when images were given."""

    @property
    def image_hidden_states(self) -> torch.FloatTensor | None:
        logger.warning_once("`image_hidden_states` is deprecated; use `out.image_outputs.pooler_output`.")
        return None if self.image_outputs is None else self.image_outputs.pooler_output


@dataclass
class MedVQACausalLMOutputWithPast(MultimodalCausalLMOutputWithPast):
    """Head output; ``image_outputs`` as in :class:`MedVQAModelOutputWithPast`."""

    @property
    def image_hidden_states(self) -> torch.FloatTensor | None:
        logger.warning_once("`image_hidden_states` is deprecated; use `out.image_outputs.pooler_output`.")
        return None if self.image_outputs is None else self.image_outputs.pooler_output


class MedVQAVisionTower(nn.Module):
    """A timm ViT trunk cut after ``vision_feature_layer``, returning patch tokens without the prefix (CLS) tokens.

    The weights keep timm's names under ``trunk.``, the same names as open_clip's ``visual.trunk.`` in BiomedCLIP,
    so a BiomedCLIP checkpoint moves in by a prefix change.
    """

    def __init__(self, config: MedVQAVisionConfig, num_blocks: int) -> None:
        super().__init__()
        import timm  # imported here so that configuration-only users do not pay for timm's import

        self.trunk = timm.create_model(
            config.timm_model_name,
            pretrained=False,
            num_classes=0,
            img_size=config.image_size,
            **config.timm_kwargs,
        )
        if self.trunk.embed_dim != config.hidden_size or len(self.trunk.blocks) != config.num_hidden_layers:
            raise ValueError(
                f"timm model {config.timm_model_name!r} has width {self.trunk.embed_dim} and "
                f"{len(self.trunk.blocks)} blocks; the config says {config.hidden_size} and {config.num_hidden_layers}"
            )
        # Blocks after the feature layer would be computed and thrown away (LLaVA runs them): do not build them.
        # The final norm acts on the last block only, and LLaVA's hidden_states[-2] is pre-norm too.
        self.trunk.prune_intermediate_layers([num_blocks - 1], prune_norm=True, prune_head=True)
        self.num_prefix_tokens = self.trunk.num_prefix_tokens
        self.gradient_checkpointing = False

    def forward(
        self, pixel_values: torch.Tensor, output_hidden_states: bool = False
    ) -> BaseModelOutputWithPooling:
        """(B, 3, H, W) -> ``last_hidden_state`` (B, num_patches, hidden_size); with ``output_hidden_states`` also the
        patch tokens of the embeddings and after every built block, as transformers' vision models return them."""
        # timm checkpoints its blocks itself; transformers' gradient_checkpointing_enable sets our flag.
        trunk = self.trunk
        trunk.grad_checkpointing = self.gradient_checkpointing and self.training
        if not output_hidden_states:
            hidden = trunk.forward_features(pixel_values)[:, self.num_prefix_tokens :]
            return BaseModelOutputWithPooling(last_hidden_state=hidden)
        # forward_features step by step (timm's forward_intermediates gives the blocks' outputs but not the
        # embeddings'); _pos_embed is timm's own step that adds the position embedding and the prefix tokens.
        hidden = trunk.norm_pre(trunk.patch_drop(trunk._pos_embed(trunk.patch_embed(pixel_values))))
        hidden_states = [hidden]
        for block in trunk.blocks:
            hidden = block(hidden)
            hidden_states.append(hidden)
        hidden_states = tuple(state[:, self.num_prefix_tokens :] for state in hidden_states)
        return BaseModelOutputWithPooling(last_hidden_state=hidden_states[-1], hidden_states=hidden_states)


class MedVQAMultiModalProjector(nn.Module):
    """Linear(vision -> text) -> GELU -> Linear(text -> text), as LLaVA-1.5 and the paper."""

    def __init__(self, config: MedVQAConfig) -> None:
        super().__init__()
        vision_size, text_size = config.vision_config.hidden_size, config.text_config.hidden_size
        self.linear_1 = nn.Linear(vision_size, text_size, bias=config.projector_bias)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(text_size, text_size, bias=config.projector_bias)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(image_features)))


class MedVQAPreTrainedModel(PreTrainedModel):
    config: MedVQAConfig
    config_class = MedVQAConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer", "Block"]
    _skip_keys_device_placement = ["cache"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # No data-dependent Python branch in forward: static caches and torch.compile(fullgraph=True) work.
    _can_compile_fullgraph = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # timm's VisionTransformer owns bare parameters the generic init does not know.  transformers initialises the
        # module that owns a parameter missing from a checkpoint, so test the owner (not our tower wrapper); the
        # `init` functions leave parameters that were loaded alone.
        for name in _TIMM_VIT_BARE_PARAMETERS:
            param = module._parameters.get(name)
            if param is not None:
                init.trunc_normal_(param, std=self.config.vision_config.initializer_range)


class MedVQAModel(MedVQAPreTrainedModel):
    """The backbone: vision tower, projector and language model, without the LM head."""

    def __init__(self, config: MedVQAConfig) -> None:
        super().__init__(config)
        self.vision_tower = MedVQAVisionTower(config.vision_config, config.num_vision_blocks_used)
        self.multi_modal_projector = MedVQAMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    @can_return_tuple
    def get_image_features(
        self, pixel_values: torch.FloatTensor, **kwargs: Unpack[TransformersKwargs]
    ) -> tuple | BaseModelOutputWithPooling:
        """Encode images: ``last_hidden_state`` = patch tokens (B, N, D_v), ``pooler_output`` = projected (B, N, H),
        ``hidden_states`` = the patch tokens after each built ViT block when ``output_hidden_states=True``.

        ``generate`` calls this once before prefill (transformers' ``mm_encoder_outputs``); callers that ask several
        questions about one image can call it once and pass ``mm_encoder_outputs={"image": out}`` to ``forward``.
        """
        # Only the dtype is matched: the device is the caller's (or accelerate's hooks') business, and an offloaded
        # tower has its weights on the meta device.
        dtype = self.multi_modal_projector.linear_1.weight.dtype
        pixel_values = pixel_values.to(dtype=dtype)
        output_hidden_states = kwargs.get("output_hidden_states")
        if output_hidden_states is None:
            output_hidden_states = self.config.vision_config.output_hidden_states
        if output_hidden_states:
            image_outputs = self.vision_tower(pixel_values, output_hidden_states=True)
        else:
            image_outputs = self.vision_tower(pixel_values)
        image_outputs.pooler_output = self.multi_modal_projector(image_outputs.last_hidden_state)
        return image_outputs

    def embed_input_ids(self, input_ids: torch.LongTensor) -> torch.FloatTensor:
        """Token embeddings as ``forward`` computes them; build ``inputs_embeds`` with this.

        In the real layout the image id lies past the embedding table (``<|image|>`` is added to the tokenizer, not
        to the vocabulary the LM predicts): its positions get zero vectors, which :meth:`get_placeholder_mask`
        recognises in ``inputs_embeds`` and the image features then replace.  When the id is inside the table (as in
        transformers' test layouts) it is looked up like any token, as LLaVA does.
        """
        embed_tokens = self.get_input_embeddings()
        if self.config.image_token_id < embed_tokens.weight.shape[0]:
            return embed_tokens(input_ids)
        image_mask = input_ids == self.config.image_token_id
        embeds = embed_tokens(input_ids.masked_fill(image_mask, 0))
        return embeds.masked_fill(image_mask.unsqueeze(-1), 0.0)

    def get_placeholder_mask(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.FloatTensor,
        image_features: torch.FloatTensor,
    ) -> torch.BoolTensor:
        """(B, T, 1) mask of the image positions, from ``input_ids`` or else from ``inputs_embeds`` (positions equal
        to the image token's embedding); checks that there is one position per image feature."""
        if input_ids is None:
            image_id = torch.full(
                (), self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device
            )
            image_mask = (inputs_embeds == self.embed_input_ids(image_id).to(inputs_embeds.dtype)).all(-1)
        else:
            image_mask = input_ids == self.config.image_token_id
        n_tokens = image_mask.sum()
        torch_compilable_check(
            n_tokens * inputs_embeds.shape[-1] == image_features.numel(),
            lambda: (
                f"Image features and image tokens do not match: {int(n_tokens)} image tokens, "
                f"{image_features.shape[0]} images x {image_features.shape[1]} features"
            ),
        )
        return image_mask.unsqueeze(-1).to(inputs_embeds.device)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | MedVQAModelOutputWithPast:
        r"""
        mm_encoder_outputs (`dict[str, BaseModelOutputWithPooling]`, *optional*):
            ``{"image": get_image_features(pixel_values)}`` computed beforehand, instead of ``pixel_values``.

        Image ids without image features (a MedVQA assistant model in assisted decoding, which never sees the
        pixels; text that happens to hold the id) are embedded by :meth:`embed_input_ids`, as LLaVA does.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if pixel_values is not None and mm_encoder_outputs and mm_encoder_outputs.get("image") is not None:
            raise ValueError("You cannot specify both pixel_values and mm_encoder_outputs['image']")

        if inputs_embeds is None:
            inputs_embeds = self.embed_input_ids(input_ids)

        image_outputs = (mm_encoder_outputs or {}).get("image")
        if image_outputs is None and pixel_values is not None:
            image_outputs = self.get_image_features(pixel_values, return_dict=True, **kwargs)
        if image_outputs is not None:
            image_features = image_outputs.pooler_output
            if isinstance(image_features, (list, tuple)):  # transformers' per-image list layout
                image_features = torch.stack(list(image_features))
            image_features = image_features.to(inputs_embeds.device, inputs_embeds.dtype)
            image_mask = self.get_placeholder_mask(input_ids, inputs_embeds, image_features)
            inputs_embeds = inputs_embeds.masked_scatter(image_mask, image_features)

        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            return_dict=True,
            **kwargs,
        )
        return MedVQAModelOutputWithPast(**outputs, image_outputs=image_outputs)


class MedVQAForConditionalGeneration(MedVQAPreTrainedModel, GenerationMixin):
    """MedVQA with its LM head: answers questions about medical images with ``generate``.

    Example::

        model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which organ?"}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=[image], text=[prompt], return_tensors="pt")
        answer_ids = model.generate(**inputs, max_new_tokens=16)[:, inputs["input_ids"].shape[1]:]
    """

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    # As Llama: under tensor parallelism the vocabulary-sharded head gathers its logits (embed_tokens is sharded
    # by the language model's own plan).
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: MedVQAConfig) -> None:
        super().__init__(config)
        self.model = MedVQAModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def get_image_features(
        self, pixel_values: torch.FloatTensor, **kwargs: Unpack[TransformersKwargs]
    ) -> tuple | BaseModelOutputWithPooling:
        return self.model.get_image_features(pixel_values, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        # transformers writes auto_map only for the class being saved; add the backbone so AutoModel finds it too.
        if self._auto_class is not None:
            module = type(self).__module__.rsplit(".", 1)[-1]
            self.config.auto_map = {
                **(getattr(self.config, "auto_map", None) or {}),
                "AutoModel": f"{module}.MedVQAModel",
            }
        return super().save_pretrained(save_directory, *args, **kwargs)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | MedVQACausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Next-token targets (shifted inside the loss); -100 marks positions without loss (prompt, image, padding).
        logits_to_keep (`int` or `torch.Tensor`):
            Compute logits only for the last `logits_to_keep` positions (0 = all), or for the given indices.
        """
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            mm_encoder_outputs=mm_encoder_outputs,
            return_dict=True,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)

        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return MedVQACausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=outputs.image_outputs,
        )


__all__ = ["MedVQAForConditionalGeneration", "MedVQAModel", "MedVQAPreTrainedModel"]
