"""MedVQA processor: BiomedCLIP image preprocessing + Llama-3 tokenizer + Llama-3 chat template with images.

The standard path::

    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")

``apply_chat_template`` renders ``{"type": "image"}`` blocks as one ``<|image|>`` placeholder; ``__call__`` expands
each placeholder into ``image_seq_length`` image tokens (196 for ViT-B/16 at 224 px).

User text can never create control tokens: before rendering, control tokens inside message strings (``<|eot_id|>``,
``<|image|>``, ...) are wrapped in transformers' private markers (``mark_control_tokens``), and ``__call__`` then
encodes them as plain text, so they neither end a turn nor open an image slot.  The tokenizer pads on the left,
as batched generation needs.  This file travels to the Hub as remote code (torch/transformers only).
"""

from __future__ import annotations

import re

from transformers import ProcessorMixin
from transformers.utils import chat_template_utils

_MARK_START = getattr(chat_template_utils, "_CONTROL_TOKEN_START", None)

# Llama-3-Instruct's template, extended with content blocks and `{% generation %}` around assistant text so that
# `return_assistant_tokens_mask=True` marks exactly the tokens a model should learn to produce.
LLAMA3_IMAGE_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{%- set text = message['content'] | trim -%}"
    "{%- else -%}"
    "{%- set parts = namespace(items=[]) -%}"
    "{%- for block in message['content'] -%}"
    "{%- if block['type'] == 'image' -%}{%- set parts.items = parts.items + ['<|image|>'] -%}"
    "{%- elif block['type'] == 'text' -%}{%- set parts.items = parts.items + [block['text'] | trim] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set text = parts.items | join('\\n') -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{- text + '<|eot_id|>' -}}{% endgeneration %}"
    "{%- else -%}"
    "{{- text + '<|eot_id|>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)


class MedVQAProcessor(ProcessorMixin):
    """Image processor (resize shortest side bicubic, centre crop, normalize) + Llama-3 tokenizer.

    Args:
        image_processor: a CLIP-style image processor configured with BiomedCLIP's preprocessing.
        tokenizer: the Llama-3 tokenizer with ``<|image|>`` added (``medvqa init`` adds it).
        chat_template: defaults to :data:`LLAMA3_IMAGE_CHAT_TEMPLATE`.
        image_token: the placeholder string, one per image in the prompt.
        image_seq_length: image tokens per image (patch tokens, CLS dropped).
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template: str | None = None,
        image_token: str = "<|image|>",
        image_seq_length: int = 196,
        **kwargs,
    ) -> None:
        self.image_token = image_token
        self.image_seq_length = image_seq_length
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"The tokenizer has no {image_token!r} token; `medvqa init` adds it")
        super().__init__(
            image_processor, tokenizer, chat_template=chat_template or LLAMA3_IMAGE_CHAT_TEMPLATE
        )

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.image_token * self.image_seq_length

    def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs) -> None:
        """As transformers', but the error names both counts and control tokens marked as user text don't count."""
        if text is not None and images is not None and self.image_token is not None:
            from transformers.image_utils import make_flat_list_of_images

            texts = [text] if isinstance(text, str) else list(text)
            n_placeholders = sum(_count_unmarked(t, self.image_token) for t in texts)
            n_images = len(make_flat_list_of_images(images))
            if n_placeholders != n_images:
                raise ValueError(
                    f"The prompts hold {n_placeholders} image placeholder(s) ({self.image_token}) but "
                    f"{n_images} image(s) were passed; each image needs exactly one placeholder"
                )
        super().validate_inputs(images=images, text=text, videos=videos, audio=audio, **kwargs)

    def __call__(self, images=None, text=None, **kwargs):
        """Tokenize prompts (placeholders expanded) and preprocess images; see ``ProcessorMixin.__call__``."""
        if images is not None:
            images = _images_to_8bit(images)
            shortest = (getattr(self.image_processor, "size", None) or {}).get("shortest_edge")
            if shortest:
                images = _resize_gray_first(images, shortest)
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            if _MARK_START is not None and any(_MARK_START in t for t in texts):
                # Strings rendered by our apply_chat_template carry marked user control tokens: encode them as text.
                kwargs.setdefault("sanitize_control_tokens", True)
            bos = self.tokenizer.bos_token
            if bos is not None and texts and all(t.startswith(bos) for t in texts):
                kwargs.setdefault(
                    "add_special_tokens", False
                )  # the chat template wrote <|begin_of_text|> already
        return super().__call__(images=images, text=text, **kwargs)

    def apply_chat_template(self, conversation, chat_template: str | None = None, **kwargs):
        """Render messages with content blocks; control tokens in user strings are marked so they stay plain text."""
        if kwargs.get("tokenize"):
            if kwargs.get("return_assistant_tokens_mask"):
                return self._tokenize_chat_with_assistant_mask(conversation, chat_template, **kwargs)
            kwargs.setdefault("sanitize_control_tokens", True)
            return super().apply_chat_template(conversation, chat_template=chat_template, **kwargs)
        conversation = self._mark_user_control_tokens(conversation, chat_template)
        return super().apply_chat_template(conversation, chat_template=chat_template, **kwargs)

    def _tokenize_chat_with_assistant_mask(self, conversation, chat_template: str | None, **kwargs):
        """``tokenize=True, return_assistant_tokens_mask=True`` with the control-token protection kept.

        transformers refuses ``sanitize_control_tokens`` together with the mask, because it finds the assistant tokens
        through character offsets, which the sanitised encoding does not give.  So: tokenize with the protection, then
        find each ``{% generation %}`` span's tokens by encoding the rendered prompt up to the span's ends the same
        way (and check that those prefixes are prefixes of the real ids, so a tokenizer merging across the boundary
        raises instead of giving a shifted mask).
        """
        from transformers.utils.chat_template_utils import encode_marked_chat, render_jinja_template

        kwargs.pop("return_assistant_tokens_mask")
        if not kwargs.get("return_dict"):
            raise ValueError(
                "`return_assistant_tokens_mask=True` requires `return_dict=True` and `tokenize=True`"
            )
        out = super().apply_chat_template(
            conversation, chat_template=chat_template, sanitize_control_tokens=True, **kwargs
        )
        template = self._resolve_chat_template(chat_template)
        conversations, _ = self._normalize_conversations(conversation)
        prompts, spans = render_jinja_template(
            conversations=[self._mark_user_control_tokens(c, template) for c in conversations],
            chat_template=template,
            return_assistant_tokens_mask=True,
            add_generation_prompt=kwargs.get("add_generation_prompt", False),
            **self.tokenizer.special_tokens_map,
        )

        def encode(rendered: str) -> list[int]:  # what __call__ makes of a rendered prompt
            expanded = _expand_unmarked(rendered, self.image_token, self.image_token * self.image_seq_length)
            return encode_marked_chat(self.tokenizer, expanded)

        input_ids = [list(map(int, row)) for row in out["input_ids"]]
        attention = [list(map(int, row)) for row in out["attention_mask"]]
        masks = []
        for prompt, prompt_spans, ids, attended in zip(prompts, spans, input_ids, attention):
            kept = [i for i, a in enumerate(attended) if a]  # padding sits outside the prompt's own tokens
            own = [ids[i] for i in kept]
            mask = [0] * len(ids)
            for start, end in prompt_spans:
                first, last = encode(prompt[:start]), encode(prompt[:end])
                if own[: len(first)] != first or own[: len(last)] != last:
                    raise ValueError("The tokenizer merges tokens across an assistant turn's boundary")
                for position in kept[len(first) : len(last)]:
                    mask[position] = 1
            masks.append(mask)
        out["assistant_masks"] = masks
        out.convert_to_tensors(
            tensor_type=kwargs.get("return_tensors") if kwargs.get("return_tensors") != "auto" else None
        )
        return out

    def _mark_user_control_tokens(self, conversation, chat_template: str | None):
        mark = getattr(chat_template_utils, "mark_control_tokens", None)
        patterns = getattr(chat_template_utils, "_get_control_token_patterns", None)
        template = chat_template or self.chat_template
        if isinstance(template, dict):
            template = template.get("default", next(iter(template.values())))
        control_tokens = getattr(self.tokenizer, "_get_control_tokens", None)
        if mark is None or patterns is None or control_tokens is None:
            # An older transformers without the marking machinery: refuse rather than let user text forge tokens.
            specials = [t for t in self.tokenizer.all_special_tokens + [self.image_token] if t]
            for text in _iter_strings(conversation):
                found = [t for t in specials if t in text]
                if found:
                    raise ValueError(f"Message text contains the control token(s) {found}; remove them")
            return conversation
        control_re, _ = patterns(tuple(control_tokens(template)))
        return mark(conversation, control_re)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]


def _to_8bit(image):
    """High-bit-depth images (PIL modes I;16/I/F, numpy uint16/int32/float) -> 8-bit, full range kept.

    PIL's own ``convert("RGB")`` clips 16-bit values at 255, which turns most 12/16-bit scans white. We stretch the
    image's min..max to 0..255 instead (medvqa's loader applies proper DICOM/NIfTI windows before this point).
    """
    import numpy as np
    from PIL import Image

    if isinstance(image, Image.Image):
        if image.mode not in ("I;16", "I;16B", "I;16L", "I", "F"):
            return image
        array = np.asarray(image)
    elif isinstance(image, np.ndarray) and image.dtype != np.uint8:
        array = image
    else:
        return image
    array = array.astype(np.float32)
    low, high = float(array.min()), float(array.max())
    scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
    return Image.fromarray(scaled.round().astype(np.uint8))


def _resize_gray_first(images, shortest_edge: int):
    """8-bit gray PIL images: bicubic resize of the one channel first, then RGB (as open_clip's transform does).

    Converting a 2048 x 1792 radiograph to RGB before resizing triples the pixels the resize must touch; the
    image processor's own resize of the result is then a no-op in size.  Sizes follow torchvision's
    ``Resize(int)`` rule (shortest side = ``shortest_edge``, the other truncated), which BiomedCLIP's
    preprocessing uses, so the pixels match open_clip's.
    """
    from PIL import Image

    if isinstance(images, (list, tuple)):
        return [_resize_gray_first(image, shortest_edge) for image in images]
    if not isinstance(images, Image.Image) or images.mode != "L":
        return images
    width, height = images.size
    if width <= height:
        size = (shortest_edge, int(shortest_edge * height / width))
    else:
        size = (int(shortest_edge * width / height), shortest_edge)
    if size != images.size:
        images = images.resize(size, Image.BICUBIC)
    return images.convert("RGB")


def _images_to_8bit(images):
    if isinstance(images, (list, tuple)):
        return [_images_to_8bit(image) for image in images]
    return _to_8bit(images)


def _count_unmarked(text: str, token: str) -> int:
    """Occurrences of ``token`` in ``text`` that are not user text marked by ``mark_control_tokens``."""
    if _MARK_START is None:
        return text.count(token)
    return text.count(token) - text.count(_MARK_START + token)


def _expand_unmarked(text: str, token: str, replacement: str) -> str:
    """Replace the occurrences of ``token`` that ``mark_control_tokens`` did not mark as user text."""
    if _MARK_START is None:
        return text.replace(token, replacement)
    return re.sub(f"(?<!{re.escape(_MARK_START)}){re.escape(token)}", lambda _m: replacement, text)


def _iter_strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _iter_strings(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _iter_strings(value)


__all__ = ["MedVQAProcessor", "LLAMA3_IMAGE_CHAT_TEMPLATE"]
