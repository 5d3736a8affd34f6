"""Regressions of the transformers conventions MedVQA broke (issue 11, items 1-8), in both image-id layouts.

Generation-level checks (assisted decoding, static cache, compile, inputs_embeds, offloading) are in
tests/test_generation.py; transformers' own common model tests in tests/test_transformers_common.py.
"""

from __future__ import annotations

import pytest
import torch
from medvqa_model_fixtures import LAYOUTS, VOCAB_SIZE, tiny_config, tiny_inputs
from safetensors.torch import load_file, save_file
from transformers.cache_utils import DynamicCache

from modeling_medvqa import MedVQAForConditionalGeneration, MedVQAModel


def _model(layout: str, cls=MedVQAForConditionalGeneration, **overrides):
    torch.manual_seed(0)
    config = tiny_config(layout, **overrides)
    return cls(config).eval(), config


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cache_passed_as_past_key_values_continues_the_sequence(layout):
    """Item 1: the deprecated name still carries the cache (transformers' deprecate_kwarg), so logits match."""
    model, config = _model(layout)
    inputs = tiny_inputs(config, batch_size=2)
    ids, pixels = inputs["input_ids"], inputs["pixel_values"]
    with torch.no_grad():
        full = model(input_ids=ids, pixel_values=pixels).logits
        prefix = model(input_ids=ids[:, :-2], pixel_values=pixels, use_cache=True)
        with pytest.warns(FutureWarning, match="past_key_values"):
            step = model(input_ids=ids[:, -2:], past_key_values=prefix.cache, use_cache=True)
    torch.testing.assert_close(step.logits, full[:, -2:], atol=1e-5, rtol=1e-4)
    # Without the cache the continuation would see only two tokens: the comparison above can fail.
    with torch.no_grad():
        alone = model(input_ids=ids[:, -2:]).logits
    assert not torch.allclose(alone, full[:, -2:], atol=1e-3)


@pytest.mark.parametrize("cls", [MedVQAModel, MedVQAForConditionalGeneration])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_return_dict_false_gives_the_output_as_a_tuple(layout, cls):
    """Item 2: can_return_tuple; the tuple holds the same tensors in ModelOutput order."""
    model, config = _model(layout, cls)
    inputs = tiny_inputs(config)
    with torch.no_grad():
        as_dict = model(**inputs)
        as_tuple = model(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict[0])
    features = model.get_image_features(inputs["pixel_values"], return_dict=False)
    assert isinstance(features, tuple)
    torch.testing.assert_close(
        features[0], model.get_image_features(inputs["pixel_values"]).last_hidden_state
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_image_ids_without_pixels_are_embedded_not_refused(layout):
    """Item 3: an empty cache and image ids but no pixels (an assistant model's first pass) runs, as in LLaVA."""
    model, config = _model(layout)
    inputs = tiny_inputs(config)
    with torch.no_grad():
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        with_image = model(**inputs)
    assert torch.isfinite(out.logits).all()
    # The image positions really got the pixels' features in the other call: the outputs differ.
    assert not torch.allclose(out.logits, with_image.logits, atol=1e-4)
    if layout == "real":  # ids past the table are zero vectors, not an index error
        embeds = model.model.embed_input_ids(inputs["input_ids"])
        n = config.image_seq_length
        assert embeds[:, :n].abs().sum() == 0 and (embeds[:, n:].abs().sum(-1) > 0).all()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_mismatched_image_tokens_and_images_raise(layout):
    model, config = _model(layout)
    inputs = tiny_inputs(config)
    with torch.no_grad(), pytest.raises(ValueError, match="Image features and image tokens do not match"):
        model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"][:1])


def test_checkpoint_without_vit_bare_parameters_initialises_them(tmp_path):
    """Item 4: transformers initialises the module that owns a missing parameter: timm's VisionTransformer."""
    model, config = _model("real")
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(weights)
    dropped = [k for k in state if k.endswith(("trunk.cls_token", "trunk.pos_embed"))]
    assert len(dropped) == 2
    save_file({k: v for k, v in state.items() if k not in dropped}, weights, metadata={"format": "pt"})
    reloaded = MedVQAForConditionalGeneration.from_pretrained(tmp_path).eval()
    trunk = reloaded.model.vision_tower.trunk
    for param in (trunk.cls_token.detach(), trunk.pos_embed.detach()):
        assert torch.isfinite(param).all() and 0 < param.abs().max() < 1.0
        assert float(param.std()) == pytest.approx(config.vision_config.initializer_range, rel=0.5)
    # Loaded parameters are left alone.
    torch.testing.assert_close(
        trunk.patch_embed.proj.weight, model.model.vision_tower.trunk.patch_embed.proj.weight
    )
    with torch.no_grad():
        assert torch.isfinite(reloaded(**tiny_inputs(config)).logits).all()


def test_tensor_parallel_plan_shards_the_head_like_the_embeddings():
    """Item 5: every vocabulary-sized weight has a rule, so embed_tokens and lm_head are sharded together."""
    model, _ = _model("real")
    plan = model.tp_plan
    assert plan["lm_head"] == "colwise_gather_output"
    assert plan["model.language_model.embed_tokens"] == "embedding_rowwise"
    vocab_weights = [n for n, p in model.named_parameters() if p.shape[0] == VOCAB_SIZE]
    assert sorted(n.rsplit(".", 1)[0] for n in vocab_weights) == [
        "lm_head",
        "model.language_model.embed_tokens",
    ]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_image_features_follow_transformers_output_conventions(layout):
    """Item 8: output_hidden_states on get_image_features, image_outputs on the model outputs."""
    model, config = _model(layout)
    inputs = tiny_inputs(config)
    with torch.no_grad():
        features = model.get_image_features(inputs["pixel_values"], output_hidden_states=True)
        out = model(**inputs, output_hidden_states=True)
    # As transformers' vision models: the embeddings' output, then one per block.
    assert len(features.hidden_states) == config.num_vision_blocks_used + 1
    torch.testing.assert_close(features.hidden_states[-1], features.last_hidden_state)
    assert not torch.allclose(features.hidden_states[0], features.hidden_states[-1])
    assert features.pooler_output.shape == (3, config.image_seq_length, config.text_config.hidden_size)
    torch.testing.assert_close(out.image_outputs.pooler_output, features.pooler_output)
    assert len(out.hidden_states) == config.text_config.num_hidden_layers + 1
    # The old name still answers (with a deprecation warning in the log).
    torch.testing.assert_close(out.image_hidden_states, features.pooler_output)


def test_dynamic_cache_is_what_generate_keeps():
    """The cache a forward returns is transformers' DynamicCache (``_skip_keys_device_placement`` names it)."""
    model, config = _model("real")
    with torch.no_grad():
        out = model(**tiny_inputs(config), use_cache=True)
    assert isinstance(out.cache, DynamicCache)
    assert out.cache.get_seq_length() == tiny_inputs(config)["input_ids"].shape[1]
