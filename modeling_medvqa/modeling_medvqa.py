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
      -> embed_tokens (image ids are never looked up: they may lie outside the embedding table) (B, T, 4096)
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
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    BaseModelOutputWithPooling,
    CausalLMOutputWithPast,
)
from transformers.modeling_utils import slice_logits_to_keep

from .configuration_medvqa import MedVQAConfig, MedVQAVisionConfig


@dataclass
class MedVQAModelOutputWithPast(BaseModelOutputWithPast):
    """Backbone output; ``image_hidden_states`` are the projected image features (B, N, H) when images were given."""

    image_hidden_states: torch.FloatTensor | None = None


@dataclass
class MedVQACausalLMOutputWithPast(CausalLMOutputWithPast):
    """Head output; ``image_hidden_states`` as in :class:`MedVQAModelOutputWithPast`."""

    image_hidden_states: torch.FloatTensor | None = None


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

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_patches, hidden_size)."""
        # timm checkpoints its blocks itself; transformers' gradient_checkpointing_enable sets our flag.
        self.trunk.grad_checkpointing = self.gradient_checkpointing and self.training
        hidden = self.trunk.forward_features(pixel_values)
        return hidden[:, self.num_prefix_tokens :]


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

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # timm's ViT holds bare parameters the generic init does not know.
        if isinstance(module, MedVQAVisionTower):
            std = self.config.vision_config.initializer_range
            for name in ("pos_embed", "cls_token", "reg_token"):
                param = getattr(module.trunk, name, None)
                if isinstance(param, nn.Parameter):
                    nn.init.trunc_normal_(param, std=std)


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

    def get_image_features(self, pixel_values: torch.FloatTensor, **kwargs) -> BaseModelOutputWithPooling:
        """Encode images: ``last_hidden_state`` = patch tokens (B, N, D_v), ``pooler_output`` = projected (B, N, H).

        ``generate`` calls this once before prefill (transformers' ``mm_encoder_outputs``); callers that ask several
        questions about one image can call it once and pass ``mm_encoder_outputs={"image": out}`` to ``forward``.
        """
        weight = self.multi_modal_projector.linear_1.weight
        patch_tokens = self.vision_tower(pixel_values.to(device=weight.device, dtype=weight.dtype))
        return BaseModelOutputWithPooling(
            last_hidden_state=patch_tokens, pooler_output=self.multi_modal_projector(patch_tokens)
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs,
    ) -> MedVQAModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if pixel_values is not None and mm_encoder_outputs and mm_encoder_outputs.get("image") is not None:
            raise ValueError("You cannot specify both pixel_values and mm_encoder_outputs['image']")

        image_features = None
        if mm_encoder_outputs and mm_encoder_outputs.get("image") is not None:
            image_features = mm_encoder_outputs["image"].pooler_output
        elif pixel_values is not None:
            image_features = self.get_image_features(pixel_values).pooler_output
        if isinstance(image_features, (list, tuple)):
            image_features = torch.stack(list(image_features))

        image_mask = None
        if input_ids is not None:
            image_mask = input_ids == self.config.image_token_id
            # The placeholder id may lie past the embedding table (the image token is added to the tokenizer, not
            # to the vocabulary the LM predicts): look up a valid id, its row is overwritten below anyway.
            inputs_embeds = self.get_input_embeddings()(input_ids.masked_fill(image_mask, 0))

        if image_features is not None:
            if image_mask is None:
                raise ValueError(
                    "Images need input_ids with image tokens to mark where they go, not inputs_embeds"
                )
            n_tokens, n_features = int(image_mask.sum()), image_features.shape[0] * image_features.shape[1]
            if n_tokens != n_features:
                raise ValueError(
                    f"Image features and image tokens do not match: {n_tokens} image tokens in input_ids, "
                    f"{image_features.shape[0]} images x {image_features.shape[1]} features = {n_features}"
                )
            inputs_embeds = inputs_embeds.masked_scatter(
                image_mask.unsqueeze(-1), image_features.to(inputs_embeds.device, inputs_embeds.dtype)
            )
        elif (
            image_mask is not None
            and (cache is None or cache.get_seq_length() == 0)
            and bool(image_mask.any())
        ):
            raise ValueError(
                f"input_ids hold {int(image_mask.sum())} image tokens but no pixel_values were given"
            )

        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        return MedVQAModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
        )


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

    def get_image_features(self, pixel_values: torch.FloatTensor, **kwargs) -> BaseModelOutputWithPooling:
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

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs,
    ) -> MedVQACausalLMOutputWithPast:
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
            use_cache=use_cache,
            mm_encoder_outputs=mm_encoder_outputs,
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
            image_hidden_states=outputs.image_hidden_states,
        )


__all__ = ["MedVQAForConditionalGeneration", "MedVQAModel", "MedVQAPreTrainedModel"]
