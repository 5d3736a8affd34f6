"""MedVQA remote code: the files in this folder travel to the Hub with every checkpoint.

Importing the package registers the classes with transformers' Auto classes, locally (so this repo can use
``AutoModelForImageTextToText`` without ``trust_remote_code``) and for ``save_pretrained`` (which then writes
``auto_map`` and copies these files next to the weights).
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .configuration_medvqa import MedVQAConfig, MedVQAVisionConfig
from .modeling_medvqa import MedVQAForConditionalGeneration, MedVQAModel, MedVQAPreTrainedModel
from .processing_medvqa import LLAMA3_IMAGE_CHAT_TEMPLATE, MedVQAProcessor

MedVQAConfig.register_for_auto_class()
MedVQAModel.register_for_auto_class("AutoModel")
MedVQAForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
MedVQAProcessor.register_for_auto_class("AutoProcessor")

AutoConfig.register(MedVQAConfig.model_type, MedVQAConfig, exist_ok=True)
AutoConfig.register(MedVQAVisionConfig.model_type, MedVQAVisionConfig, exist_ok=True)
AutoModel.register(MedVQAConfig, MedVQAModel, exist_ok=True)
AutoModelForImageTextToText.register(MedVQAConfig, MedVQAForConditionalGeneration, exist_ok=True)
AutoProcessor.register(MedVQAConfig, MedVQAProcessor, exist_ok=True)

__all__ = [
    "LLAMA3_IMAGE_CHAT_TEMPLATE",
    "MedVQAConfig",
    "MedVQAForConditionalGeneration",
    "MedVQAModel",
    "MedVQAPreTrainedModel",
    "MedVQAProcessor",
    "MedVQAVisionConfig",
]
