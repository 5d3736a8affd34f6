"""What each question is asked as, for any image-text-to-text model: the prompt modes and the family adapters.

The prompt is always the user turn of ``training.prompts.user_messages`` (the image, then the text) rendered by the
model's own processor and chat template, so there is no per-model prompt code. Two things vary:

- the prompt mode: ``open`` asks the question as our model is asked it; ``mc`` asks OmniMedVQA's multiple-choice
  question with the record's options, the release's raw strings when kept (records without options are asked the
  open question);
- an adapter, only for a family whose processor does not know how to prompt it (``ADAPTERS``; today: a Hub port
  that ships without a chat template).

``encode`` turns rendered prompts and images into model inputs: one image per prompt, nested per sample (which
every processor accepts and Gemma 3's requires), and no second BOS when the template already wrote one (the rule
of transformers' ``ProcessorMixin.apply_chat_template``, which we cannot call directly because the option-loss
rows need the rendered text).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from training.errors import MedVQAUserError
from training.evaluation.scorers import mc_options
from training.prompts import user_messages

PROMPT_MODES = ("open", "mc")

# OmniMedVQA's multiple-choice instruction (the benchmark's question-answering prompt), with its option layout.
MC_INSTRUCTION = (
    "This is a medical Question with several Options, and there is only one correct answer among these options. "
    "Please select the correct answer for the question. Remember, you can only select one option."
)
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def mc_question(question: str, options: Sequence[str]) -> str:
    """OmniMedVQA's multiple-choice prompt: the instruction, the question, the lettered options, "### Answer:"."""
    listed = " ".join(f"({_LETTERS[i]}) {option}" for i, option in enumerate(options))
    return (
        f"{MC_INSTRUCTION} The Question is: {question}\n### The candidate Options are: {listed}\n### Answer:"
    )


def question_text(record: Mapping[str, Any], mode: str) -> str:
    """The text asked for ``record`` in prompt ``mode`` (``open`` or ``mc``).

    ``mc`` lists the options that ``mc_qa_score`` compares the answer with (``scorers.mc_options``): the release's
    raw option strings when the record keeps them, as OmniMedVQA's own prompt does, else the cleaned ones.
    """
    if mode not in PROMPT_MODES:
        raise MedVQAUserError(
            "--prompt", f"unknown prompt mode {mode!r} (choose from {', '.join(PROMPT_MODES)})"
        )
    options = mc_options(record) if record.get("options") else []
    if mode == "mc" and options:
        return mc_question(str(record["question"]), options)
    return str(record["question"])


@dataclass(frozen=True)
class Adapter:
    """A family quirk the processor does not handle. ``chat_template``: used when the processor has none."""

    name: str
    reason: str
    chat_template: str | None = None


ADAPTERS: dict[str, Adapter] = {
    adapter.name: adapter
    for adapter in (
        Adapter(
            "llava_med",
            "LLaVA-Med v1.5 ports to the llava-hf layout (chaoyinshe/llava-med-v1.5-mistral-7b-hf) ship no chat "
            "template; LLaVA-Med was trained with Mistral-instruct turns: [INST] <image>\\n question [/INST]",
            chat_template=(
                "{% for message in messages %}"
                "{% if message['role'] == 'user' %}[INST] "
                "{% for item in message['content'] %}"
                "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}"
                "{{ item['text'] | trim }}{% endif %}"
                "{% endfor %} [/INST]"
                "{% else %}"
                "{% for item in message['content'] %}{% if item['type'] == 'text' %} {{ item['text'] | trim }}"
                "{% endif %}{% endfor %}</s>"
                "{% endif %}"
                "{% endfor %}"
            ),
        ),
    )
}


def get_adapter(name: str | None) -> Adapter | None:
    """The adapter called ``name`` (``None``: no adapter); an unknown name is a user error."""
    if name is None:
        return None
    if name not in ADAPTERS:
        raise MedVQAUserError("--adapter", f"unknown adapter {name!r} (known: {', '.join(sorted(ADAPTERS))})")
    return ADAPTERS[name]


def apply_adapter(processor, adapter: Adapter | None) -> None:
    """Give ``processor`` what ``adapter`` supplies; a processor that already knows its chat template keeps it."""
    if (
        adapter is not None
        and adapter.chat_template is not None
        and not getattr(processor, "chat_template", None)
    ):
        processor.chat_template = adapter.chat_template


def render(processor, text: str, answer: str | None = None) -> str:
    """The prompt string of one question (with the generation prompt), or with ``answer`` as the assistant turn."""
    messages = user_messages(text)
    if answer is None:
        return processor.apply_chat_template(messages, add_generation_prompt=True)
    turn = {"role": "assistant", "content": [{"type": "text", "text": answer}]}
    return processor.apply_chat_template([*messages, turn], add_generation_prompt=False)


def encode(processor, images: Sequence[Any], prompts: Sequence[str], *, padding_side: str):
    """Model inputs (``BatchFeature``) for one image per rendered prompt, padded on ``padding_side``."""
    bos = getattr(processor.tokenizer, "bos_token", None)
    kwargs: dict[str, Any] = {}
    if bos is not None and all(p.startswith(bos) for p in prompts):
        kwargs["add_special_tokens"] = False  # the template wrote BOS already
    return processor(
        images=[[image] for image in images],
        text=list(prompts),
        return_tensors="pt",
        padding=True,
        padding_side=padding_side,
        **kwargs,
    )
