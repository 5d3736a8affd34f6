"""The image prefix prefilled once per image: greedy answers equal answering each question alone, token for token,
with the logits of every step close, for questions of different lengths, several images per batch, and k = 1..8."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from training.evaluation.prompting import render
from training.prompts import user_messages
from training.shared_prefix import common_prefix_length, generate_ids_with_shared_prefix

QUESTIONS = [
    "Is this a CT image?",
    "What imaging modality is used in this image?",
    "Which organ is visible in this image? Is there a lesion in the image? What is the diagnosis?",
    "yes",
    "Is this a CT image?",  # a repeated question: its whole prompt is shared with its twin
    "What part of the body is shown?",
    "Is there an abnormality?",
    "What type of cell is this? Which modality was used to acquire this image?",
]
WORDS = "What organ is shown in this image CT MRI Is there a lesion yes no the of brain".split()
MAX_NEW = 10


@pytest.fixture(scope="module")
def model_and_processor(tiny_model_dir):
    from training.evaluation.evaluate import load_model

    return load_model(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (70 + 10 * i, 90, 3), dtype=np.uint8)) for i in range(3)]


def _alone(model, processor, image, question):
    """The reference: one question, one unpadded prompt, a full prefill; new token ids and per-step logits."""
    prompt = processor.apply_chat_template(user_messages(question), add_generation_prompt=True)
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    out = model.generate(
        **inputs,
        max_new_tokens=MAX_NEW,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
    )
    return out.sequences[0, inputs["input_ids"].shape[1] :].tolist(), [s[0] for s in out.scores]


def _prompts(processor, questions):
    return [render(processor, q) for q in questions]


def _check_equal(model, processor, images, questions, image_index):
    out, start = generate_ids_with_shared_prefix(
        model,
        processor,
        images,
        _prompts(processor, questions),
        image_index,
        max_new_tokens=MAX_NEW,
        output_scores=True,
        return_dict_in_generate=True,
    )
    for row, (question, image) in enumerate(zip(questions, image_index)):
        ids, scores = _alone(model, processor, images[image], question)
        shared = out.sequences[row, start:].tolist()
        # The batch keeps padding a finished row; up to the reference's end the tokens must be the same.
        assert shared[: len(ids)] == ids, (question, shared, ids)
        for step, reference in enumerate(scores):
            torch.testing.assert_close(out.scores[step][row], reference, rtol=1e-4, atol=1e-4)


def test_common_prefix_length():
    assert common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_length([[5, 6], [5, 6]]) == 2
    assert common_prefix_length([[1], [2]]) == 0


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_k_questions_on_one_image_equal_each_alone(model_and_processor, images, k):
    model, processor = model_and_processor
    questions = QUESTIONS[:k]
    lengths = {len(processor.tokenizer(q)["input_ids"]) for q in questions}
    # the suffixes really differ in length, so the middle padding is exercised
    assert k == 1 or len(lengths) > 1
    _check_equal(model, processor, images, questions, [0] * k)


def test_several_images_in_one_batch_equal_each_alone(model_and_processor, images):
    model, processor = model_and_processor
    index = [2, 0, 0, 1, 2, 0, 1]
    _check_equal(model, processor, images, QUESTIONS[: len(index)], index)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=9).map(" ".join), min_size=1, max_size=5)
)
def test_any_questions_equal_each_alone(model_and_processor, images, questions):
    model, processor = model_and_processor
    _check_equal(model, processor, images, questions, [i % 2 for i in range(len(questions))])


def test_prefix_is_prefilled_once_per_image(model_and_processor, images):
    """The vision tower sees each distinct image once; the LM sees the prefix once per image, then only suffixes."""
    model, processor = model_and_processor
    vision_batches, lm_inputs = [], []
    tower, lm = model.model.vision_tower, model.model.language_model
    h1 = tower.register_forward_hook(lambda m, args, out: vision_batches.append(args[0].shape[0]))
    h2 = lm.register_forward_pre_hook(
        lambda m, args, kwargs: lm_inputs.append(tuple(kwargs["inputs_embeds"].shape[:2])), with_kwargs=True
    )
    try:
        out, start = generate_ids_with_shared_prefix(
            model, processor, images, _prompts(processor, QUESTIONS[:6]), [0, 1, 0, 1, 0, 0], max_new_tokens=3
        )
    finally:
        h1.remove()
        h2.remove()
    assert vision_batches == [2]  # two distinct images, encoded together once
    prefix_batch, prefix_len = lm_inputs[0]
    assert prefix_batch == 2 and prefix_len > model.config.image_seq_length  # header + all image tokens
    suffix_batch, suffix_len = lm_inputs[1]
    assert suffix_batch == 6 and suffix_len == start - prefix_len  # only the question suffixes are prefilled
    assert all(shape == (6, 1) for shape in lm_inputs[2:])  # then one token per step


def test_eval_groups_questions_by_image_and_keeps_order(model_and_processor, images, tmp_path):
    from training.evaluation.evaluate import ImageLoader, generate_answers

    model, processor = model_and_processor
    for i, image in enumerate(images):
        image.save(tmp_path / f"{i}.png")
    records = [{"image": f"{i % 3}.png", "question": q} for i, q in enumerate(QUESTIONS)]
    loader = ImageLoader(tmp_path / "test.jsonl")
    batched = generate_answers(model, processor, records, loader, batch_size=4, max_new_tokens=MAX_NEW)
    for record, answer in zip(records, batched):
        image = loader(record)
        ids, _ = _alone(model, processor, image, record["question"])
        assert answer == processor.decode(ids, skip_special_tokens=True).strip()
