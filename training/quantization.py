"""4-bit and 8-bit weights through bitsandbytes, as transformers loads them (``BitsAndBytesConfig``).

One place for the quantisation settings that inference (``ask``, ``eval``, ``app``) and QLoRA training share:

* ``4bit``: NF4 with double quantisation (the quantisation constants are quantised too), the QLoRA paper's format;
  matmuls run in ``compute_dtype`` (bf16 on a GPU).
* ``8bit``: LLM.int8 (8-bit weights with fp16 outlier columns).

Only the language model's decoder layers are quantised. The vision tower and the projector stay in 16/32-bit (a ViT
of 86 M parameters gains little and loses accuracy), and so does the LM head, as transformers keeps it by default
for every quantised causal LM. bitsandbytes ships a CPU backend, so the same code runs (slowly) without a GPU.
"""

from __future__ import annotations

import argparse
from typing import Any

QUANTIZE_CHOICES = ("4bit", "8bit")
KEEP_UNQUANTIZED = ("model.vision_tower", "model.multi_modal_projector", "model.visual", "lm_head")
"""Module names (from the model's root) that bitsandbytes must leave alone; transformers matches them as prefixes
at a module boundary, so ``model.vision_tower`` covers every layer of the tower.  MedVQA, LLaVA and Gemma 3 name
their vision parts ``vision_tower`` / ``multi_modal_projector``, Qwen2-VL ``visual``."""


def add_quantize_argument(parser: argparse.ArgumentParser) -> None:
    """``--quantize 4bit|8bit``, shared by the inference commands."""
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE_CHOICES,
        default=None,
        help="load the language model in 4-bit NF4 or 8-bit (bitsandbytes); vision tower and projector stay 16/32-bit",
    )


def quantization_config(quantize: str, compute_dtype: Any):
    """transformers' ``BitsAndBytesConfig`` for ``quantize`` (``4bit`` or ``8bit``), LM decoder layers only."""
    from transformers import BitsAndBytesConfig

    if quantize == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            llm_int8_skip_modules=list(KEEP_UNQUANTIZED),
        )
    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(KEEP_UNQUANTIZED))
    raise ValueError(f"unknown quantisation {quantize!r}; choose one of {QUANTIZE_CHOICES}")


def weight_bytes(module) -> int:
    """Bytes the weights of ``module`` occupy: parameters, buffers and bitsandbytes' quantisation constants.

    ``Params4bit`` keeps its absmax (and, with double quantisation, the nested absmax and code) in a ``QuantState``
    beside the packed weight, and ``Int8Params`` its row scales in ``SCB``; they count as weight memory too.
    """
    seen: set[int] = set()
    total = 0

    def add(tensor) -> None:
        nonlocal total
        if tensor is None or id(tensor) in seen:
            return
        seen.add(id(tensor))
        total += tensor.numel() * tensor.element_size()

    for tensor in list(module.parameters()) + list(module.buffers()):
        add(tensor)
        state = getattr(tensor, "quant_state", None)
        if state is not None:
            add(state.absmax)
            add(state.code)
            if state.state2 is not None:
                add(state.state2.absmax)
                add(state.state2.code)
                add(state.offset)
        add(getattr(tensor, "SCB", None))
    return total
