"""transformers' own common model tests (ModelTesterMixin of the installed release) run against MedVQA.

The tester is modelled on transformers' LLaVA tester (tests/models/llava/test_modeling_llava.py): a tiny config,
``batch_size`` rows of random text ids with one image's placeholders at the front, one image per row.  It runs in
both image-id layouts: ``in_vocab`` (the image id is an embedding row, as transformers' testers have it) and
``real`` (id == vocabulary size, as ``medvqa init`` builds it).  The test sources come from the transformers sdist
that ``make install`` fetches (tests/transformers_sdist.py); only tests that cannot apply to a timm vision trunk are
overridden, each with its reason.
"""

from __future__ import annotations

import unittest

import pytest
import torch
from medvqa_model_fixtures import IMAGE_SIZE, PAD_ID, VOCAB_SIZE, tiny_config
from transformers_sdist import import_sdist_module

from modeling_medvqa import MedVQAConfig, MedVQAForConditionalGeneration, MedVQAModel

common = import_sdist_module("test_modeling_common")
ConfigTester = import_sdist_module("test_configuration_common").ConfigTester

# The mixin decides which classes are backbones (no loss to train) and which heads get labels by looking their names
# up in transformers' built-in mapping tables.  MedVQA is remote code, so it is not in them: give the sdist module
# copies of those two tables that also name MedVQA (transformers' own dicts stay untouched).
common.MODEL_MAPPING_NAMES = {**common.MODEL_MAPPING_NAMES, "medvqa": "MedVQAModel"}
common.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES = {
    **common.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    "medvqa": "MedVQAForConditionalGeneration",
}


class MedVQAModelTester:
    """The LLaVA tester's shapes for MedVQA: 3 rows, 7 text tokens + 4 image tokens (32 px image, 16 px patches)."""

    def __init__(self, parent: unittest.TestCase, layout: str, text_length: int = 7) -> None:
        self.parent = parent
        self.layout = layout
        self.batch_size = 3
        self.num_channels = 3
        self.image_size = IMAGE_SIZE
        self.is_training = True
        self.vocab_size = VOCAB_SIZE
        self.pad_token_id = PAD_ID
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 4
        self.num_image_tokens = tiny_config(layout).image_seq_length
        self.seq_length = text_length + self.num_image_tokens
        self.encoder_seq_length = self.seq_length

    def get_config(self) -> MedVQAConfig:
        return tiny_config(self.layout)

    def prepare_config_and_inputs(self):
        config = self.get_config()
        pixel_values = common.floats_tensor(
            [self.batch_size, self.num_channels, self.image_size, self.image_size]
        )
        return config, pixel_values

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values = self.prepare_config_and_inputs()
        # As LLaVA's tester: random ids that avoid the image id, then the image's placeholders at the front.
        input_ids = (
            common.ids_tensor([self.batch_size, self.seq_length], config.text_config.vocab_size - 2) + 2
        )
        input_ids[input_ids == config.image_token_id] = self.pad_token_id
        input_ids[:, : self.num_image_tokens] = config.image_token_id
        attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
        return config, {
            "pixel_values": pixel_values,
            "input_ids": input_ids,
            "attention_mask": attention_mask,
        }


class _MedVQACommonTests(common.ModelTesterMixin):
    all_model_classes = (MedVQAModel, MedVQAForConditionalGeneration)
    _is_composite = True
    layout = "in_vocab"

    def setUp(self) -> None:
        self.model_tester = MedVQAModelTester(self, self.layout)
        self.config_tester = ConfigTester(
            self,
            config_class=MedVQAConfig,
            has_text_modality=False,
            common_properties=["image_token_id", "vision_feature_layer", "image_seq_length"],
            **self.model_tester.get_config().to_diff_dict(),
        )

    def test_config(self) -> None:
        self.config_tester.run_common_tests()

    # Overridden, each for its reason (counted in the README's conformity section).

    @unittest.skip("the sdist ships no GenerationTesterMixin; tests/test_generation.py covers generate")
    def test_generation_tester_mixin_inheritance(self) -> None: ...

    @unittest.skip(
        "timm's ViT attention never returns its weights (output_attentions cannot apply to the trunk)"
    )
    def test_get_image_features_attentions(self) -> None: ...

    @unittest.skip("the timm trunk is not a PreTrainedModel: it picks F.scaled_dot_product_attention itself")
    def test_sdpa_can_dispatch_composite_models(self) -> None: ...


@pytest.mark.slow
class MedVQAInVocabModelTest(_MedVQACommonTests, unittest.TestCase):
    layout = "in_vocab"


@pytest.mark.slow
class MedVQARealLayoutModelTest(_MedVQACommonTests, unittest.TestCase):
    layout = "real"

    # The image id is the vocabulary size by design, so the embedding table has no row for it (model.model.
    # embed_input_ids embeds it; tests/test_generation.py uses that for inputs_embeds), and resizing the vocabulary
    # moves its end over the id.  These tests look ids up in, or clamp them to, the table; the in-vocab layout runs
    # them.

    @unittest.skip("looks the image id up in get_input_embeddings(); the real id is past the table")
    def test_inputs_embeds(self) -> None: ...

    @unittest.skip("looks the image id up in get_input_embeddings(); the real id is past the table")
    def test_inputs_embeds_matches_input_ids(self) -> None: ...

    @unittest.skip("clamps input_ids below the resized vocabulary: the real image ids become text")
    def test_resize_tokens_embeddings(self) -> None: ...

    @unittest.skip("clamps input_ids below the resized vocabulary: the real image ids become text")
    def test_resize_embeddings_untied(self) -> None: ...
