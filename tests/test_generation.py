"""MedVQA under transformers' generation strategies, in both image-id layouts, each checked against greedy search
with the default dynamic cache (the sdist of transformers ships no GenerationTesterMixin, so these are ours)."""

from __future__ import annotations

import pytest
import torch
from medvqa_model_fixtures import LAYOUTS, tiny_config, tiny_inputs

from modeling_medvqa import MedVQAForConditionalGeneration

NEW_TOKENS = 6


def _model(layout: str, seed: int = 0) -> MedVQAForConditionalGeneration:
    torch.manual_seed(seed)
    # Wider init than the default 0.02 so that the random model's next-token choices are not near-ties.
    config = tiny_config(layout)
    config.text_config.initializer_range = 0.2
    return MedVQAForConditionalGeneration(config).eval()


def _generate(model, inputs: dict, **kwargs) -> torch.Tensor:
    """New tokens only; always NEW_TOKENS of them (eos cannot end a row early)."""
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=1, **kwargs
        )
    return out[:, -NEW_TOKENS:]


@pytest.fixture(scope="module", params=LAYOUTS)
def setup(request):
    """(model, inputs, dynamic-cache greedy answer) for one layout; rows hold different images and texts."""
    model = _model(request.param)
    inputs = tiny_inputs(model.config, batch_size=2, seed=1)
    return model, inputs, _generate(model, inputs, do_sample=False)


def test_greedy_equals_argmax_of_full_forward_passes(setup):
    """The dynamic-cache greedy answer is what full recomputation without a cache picks, token by token."""
    model, inputs, greedy = setup
    ids = inputs["input_ids"]
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            logits = model(input_ids=ids, pixel_values=inputs["pixel_values"]).logits[:, -1]
            logits[:, 2] = float("-inf")  # eos, as min_new_tokens does
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(ids[:, -NEW_TOKENS:], greedy)
    assert len(set(greedy.flatten().tolist())) > 1  # not a degenerate constant answer


def test_sampling_with_top_k_1_is_greedy_and_seeded_sampling_repeats(setup):
    model, inputs, greedy = setup
    assert torch.equal(_generate(model, inputs, do_sample=True, top_k=1), greedy)
    torch.manual_seed(3)
    first = _generate(model, inputs, do_sample=True, temperature=2.0, top_k=0)
    torch.manual_seed(3)
    assert torch.equal(_generate(model, inputs, do_sample=True, temperature=2.0, top_k=0), first)


def test_beam_search_scores_match_a_full_forward_of_each_beam(setup):
    """Beams share the images through transformers' mm_encoder_outputs expansion: each returned beam's score is the
    log-probability a cache-free forward of that sequence gives; one beam is greedy's answer."""
    model, inputs, greedy = setup
    prompt = inputs["input_ids"].shape[1]
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, num_beams=3,
            num_return_sequences=3, length_penalty=0.0, do_sample=False, output_scores=True,
            return_dict_in_generate=True, pad_token_id=1,
        )  # fmt: skip
        pixels = inputs["pixel_values"].repeat_interleave(3, dim=0)
        logits = model(input_ids=out.sequences, pixel_values=pixels).logits[:, prompt - 1 : -1]
    # Beam search applies min_new_tokens' eos mask after the log-softmax: the scores are unrenormalised.
    chosen = logits.log_softmax(-1).gather(-1, out.sequences[:, prompt:, None]).squeeze(-1).sum(-1)
    torch.testing.assert_close(out.sequences_scores, chosen, atol=1e-4, rtol=1e-4)
    # Beam search with three beams never ends below greedy: greedy's answer scores at most the best beam.
    with torch.no_grad():
        greedy_full = torch.cat([inputs["input_ids"], greedy], dim=1)
        g_logits = model(input_ids=greedy_full, pixel_values=inputs["pixel_values"]).logits[
            :, prompt - 1 : -1
        ]
    greedy_score = g_logits.log_softmax(-1).gather(-1, greedy[..., None]).squeeze(-1).sum(-1)
    assert (out.sequences_scores.view(2, 3)[:, 0] >= greedy_score - 1e-4).all()


def test_static_cache_gives_the_greedy_answer(setup):
    model, inputs, greedy = setup
    assert torch.equal(_generate(model, inputs, do_sample=False, cache_implementation="static"), greedy)


def test_assisted_decoding_with_medvqa_as_main_and_as_assistant(setup):
    """A second (differently initialised) MedVQA drafts; the main model verifies: the answer is the main's greedy.
    The assistant gets the image ids but never the pixels (only the main model encodes images), which used to
    raise.  Assisted decoding takes one row at a time."""
    model, inputs, greedy = setup
    real = model.config.image_token_id >= model.config.text_config.vocab_size
    assistant = _model("real" if real else "in_vocab", seed=1)
    assistant.generation_config.num_assistant_tokens = 3
    for row in range(inputs["input_ids"].shape[0]):
        one = {k: v[row : row + 1] for k, v in inputs.items()}
        answer = _generate(model, one, do_sample=False, assistant_model=assistant)
        assert torch.equal(answer, greedy[row : row + 1])


def test_inputs_embeds_with_pixel_values_gives_the_greedy_answer(setup):
    """generate(inputs_embeds=..., pixel_values=...): the image positions are found in the embeddings."""
    model, inputs, greedy = setup
    embeds = model.model.embed_input_ids(inputs["input_ids"])
    with torch.no_grad():
        out = model.generate(
            inputs_embeds=embeds, pixel_values=inputs["pixel_values"], attention_mask=inputs["attention_mask"],
            max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=1,
        )  # fmt: skip
    assert torch.equal(out[:, -NEW_TOKENS:], greedy)


def test_decoding_through_the_past_key_values_alias_gives_the_greedy_answer(setup):
    """A manual decoding loop that hands the cache back as ``past_key_values=`` (the deprecated name)."""
    model, inputs, greedy = setup
    answer = []
    with torch.no_grad(), pytest.warns(FutureWarning, match="past_key_values"):
        out = model(**inputs, use_cache=True)
        attention = inputs["attention_mask"]
        for _ in range(NEW_TOKENS):
            logits = out.logits[:, -1]
            logits[:, 2] = float("-inf")
            token = logits.argmax(-1, keepdim=True)
            answer.append(token)
            attention = torch.cat([attention, torch.ones_like(token)], dim=1)
            out = model(input_ids=token, attention_mask=attention, past_key_values=out.cache, use_cache=True)
    assert torch.equal(torch.cat(answer, dim=1), greedy)


@pytest.mark.slow
def test_compiled_fullgraph_forward_gives_the_greedy_answer(setup):
    """torch.compile(fullgraph=True) of the forward (prefill with pixels, then static-cache decoding steps)."""
    model, inputs, greedy = setup
    torch._dynamo.reset()
    # fullgraph=True makes any graph break (a data-dependent Python branch) an error; aot_eager traces as inductor
    # does (dynamo + AOTAutograd) without its minutes of C++ code generation on a CPU.
    compiled = torch.compile(model.forward, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        eager = model(**inputs).logits
        prefill = compiled(**inputs).logits
    torch.testing.assert_close(prefill, eager, atol=1e-4, rtol=1e-4)
    original = model.forward
    model.forward = compiled
    try:
        answer = _generate(model, inputs, do_sample=False, cache_implementation="static")
    finally:
        model.forward = original
    assert torch.equal(answer, greedy)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_offloaded_to_cpu_and_disk_gives_the_in_memory_answer(layout, tmp_path):
    """device_map="auto" with a CPU budget smaller than the model: the rest goes to disk (accelerate hooks load
    the weights per module), and the greedy answer is the in-memory model's."""
    model = _model(layout)
    inputs = tiny_inputs(model.config, batch_size=2, seed=1)
    expected = _generate(model, inputs, do_sample=False)
    model.save_pretrained(tmp_path / "model")
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    offloaded = MedVQAForConditionalGeneration.from_pretrained(
        tmp_path / "model",
        device_map="auto",
        max_memory={"cpu": size * 2 // 3},
        offload_folder=tmp_path / "offload",
    ).eval()
    placements = set(offloaded.hf_device_map.values())
    assert "disk" in placements and "cpu" in placements, offloaded.hf_device_map
    assert torch.equal(_generate(offloaded, inputs, do_sample=False), expected)
