"""Answer several questions about the same image(s) with the image prefix prefilled once per image.

The prompt puts the image first (``<|begin_of_text|>`` + user header + 196 image tokens, then the question), so
every question about one image starts with the same tokens, and prefilling them through the language model is most
of the cost of a short answer.  Here that shared prefix is run once per distinct image, its KV cache (transformers'
``DynamicCache``) is copied to one row per question (``batch_select_indices``), and ``generate`` extends the copies
with the questions as one batch.

Questions differ in length.  Left padding would put the pad tokens before the prefix and shift it, so each row is
instead laid out as ``[shared prefix][pads][question suffix]``: the pads sit between the cached prefix and the
suffix, the attention mask hides them, and ``generate`` derives the position ids from the mask (cumulative sum), so
every suffix token gets exactly the position it has in the unpadded prompt.  Each row therefore computes what the
question alone computes, and greedy answers equal one-question-at-a-time answers (``tests/test_shared_prefix.py``).
No attention code is written here: the cache, the masks and the positions are transformers' own.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def supports_shared_prefix(model) -> bool:
    """MedVQA models: their chat template puts the image first and their forward takes a cache and pixel values.

    Other families are left to their own batched ``generate`` (Qwen2-VL needs grid inputs with its pixels, Gemma 3
    may put a system turn first; the scheme itself is family-independent but only MedVQA is tested with it).
    """
    return getattr(model.config, "model_type", None) == "medvqa"


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by all ``rows``."""
    shortest = min(len(row) for row in rows)
    for i in range(shortest):
        token = rows[0][i]
        if any(row[i] != token for row in rows):
            return i
    return shortest


def generate_with_shared_prefix(
    model,
    processor,
    images: Sequence[Any],
    prompts: Sequence[str],
    image_index: Sequence[int],
    *,
    max_new_tokens: int = 32,
) -> list[str]:
    """Greedy answers to rendered ``prompts`` (``prompting.render``); prompt ``i`` is about ``images[image_index[i]]``.

    Each distinct image is encoded and its prompt prefix (everything up to and including the image tokens, and any
    further tokens all the questions share) is prefilled once; the questions are then decoded together.
    """
    output, start = generate_ids_with_shared_prefix(
        model, processor, images, prompts, image_index, max_new_tokens=max_new_tokens
    )
    answers = processor.batch_decode(output[:, start:], skip_special_tokens=True)
    return [a.strip() for a in answers]


def generate_ids_with_shared_prefix(
    model,
    processor,
    images: Sequence[Any],
    prompts: Sequence[str],
    image_index: Sequence[int],
    **generate_kwargs: Any,
):
    """``generate``'s output for :func:`generate_with_shared_prefix` and the column where the answers start.

    ``generate_kwargs`` go to ``generate`` (``max_new_tokens``; ``output_scores`` for checks); decoding is greedy.
    """
    import torch

    from training.evaluation.prompting import encode

    if len(prompts) != len(image_index):
        raise ValueError("one image index per prompt")
    # Tokenise as every other caller does (image placeholders expanded, control tokens in questions kept as text);
    # one distinct image per row would be enough, but the processor wants one image per placeholder.
    batch = encode(processor, [images[i] for i in image_index], prompts, padding_side="right")
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    rows = [batch["input_ids"][r, :n].tolist() for r, n in enumerate(lengths)]
    # At least one token of every prompt must remain for generate to run (identical questions share everything).
    prefix = min(common_prefix_length(rows), min(lengths) - 1)
    image_token = model.config.image_token_id
    if any(image_token in row[prefix:] for row in rows):
        raise ValueError(
            "the chat template does not put the image before the question; no shared image prefix"
        )

    device = model.device
    distinct = sorted(set(image_index))
    first_row = {image: image_index.index(image) for image in distinct}
    pixel_values = batch["pixel_values"][[first_row[i] for i in distinct]]
    with torch.inference_mode():
        cache = _prefill(model, [rows[0][:prefix]] * len(distinct), pixel_values)
        # One copy of its image's prefix per question (indexing makes new tensors: rows never alias).
        slot = {image: position for position, image in enumerate(distinct)}
        cache.batch_select_indices(torch.tensor([slot[i] for i in image_index], device=device))

        width = max(lengths) - prefix
        pad_id = processor.tokenizer.pad_token_id
        pad_id = pad_id if pad_id is not None else 0
        input_ids = torch.full((len(rows), prefix + width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), prefix + width), dtype=torch.long)
        for r, row in enumerate(rows):
            suffix = row[prefix:]
            input_ids[r, :prefix] = torch.tensor(row[:prefix])
            input_ids[r, prefix + width - len(suffix) :] = torch.tensor(suffix)
            attention_mask[r, :prefix] = 1
            attention_mask[r, prefix + width - len(suffix) :] = 1
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            cache=cache,
            do_sample=False,
            **generate_kwargs,
        )
    return output, prefix + width


def _prefill(model, prefix_ids: list[list[int]], pixel_values):
    """Run the prefix rows (with their images) through the model; their ``DynamicCache``."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config.get_text_config())
    model(
        input_ids=torch.tensor(prefix_ids, device=model.device),
        pixel_values=pixel_values.to(model.device),
        cache=cache,
        use_cache=True,
        logits_to_keep=1,  # the prefix's own logits are never used
    )
    return cache


@dataclass
class ImagePrefix:
    """One image's prompt prefix (through its last image token), prefilled: token ids and KV cache (batch 1).

    For a conversation about one image (the app): each question extends a copy of ``cache``.  On the paper's model
    it holds 32 layers x 2 x 8 KV heads x 128 x ~200 tokens in bf16, about 26 MiB.
    """

    input_ids: list[int]
    cache: Any


def prefill_image_prefix(model, processor, image: Any) -> ImagePrefix:
    """Encode ``image`` and prefill the prompt up to and including its image tokens, once."""
    import torch

    from training.evaluation.prompting import encode, render

    batch = encode(processor, [image], [render(processor, "?")], padding_side="right")
    ids = batch["input_ids"][0].tolist()
    image_token = model.config.image_token_id
    end = max((i for i, token in enumerate(ids) if token == image_token), default=-1) + 1
    if end == 0:
        raise ValueError("the prompt holds no image tokens")
    with torch.no_grad():  # not inference_mode: the cache is copied and extended later, outside it
        cache = _prefill(model, [ids[:end]], batch["pixel_values"])
    return ImagePrefix(input_ids=ids[:end], cache=cache)


def extend_prefix_inputs(prefix: ImagePrefix, processor, image: Any, prompt: str) -> dict[str, Any]:
    """``generate`` inputs for a rendered ``prompt`` about the image of ``prefix``: the whole prompt's ids and a
    private copy of the prefix cache, so that only the question is prefilled and ``prefix`` stays reusable."""
    import torch

    from training.evaluation.prompting import encode

    ids = encode(processor, [image], [prompt], padding_side="right")["input_ids"][0].tolist()
    n = len(prefix.input_ids)
    if ids[:n] != prefix.input_ids or len(ids) <= n:
        raise ValueError(
            "the prompt does not extend the image prefix (the template must put the image first)"
        )
    cache = prefix.cache
    device = cache.layers[0].keys.device
    return {
        "input_ids": torch.tensor([ids], device=device),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long, device=device),
        "cache": copy.deepcopy(cache),
    }
