"""The upgraded-model format, registered with transformers' Auto classes on import."""

from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from .configuration import SwapVLMConfig
from .modeling import SwapVLMForConditionalGeneration, SwapVLMPreTrainedModel
from .processing import SwapVLMProcessor

AutoConfig.register(SwapVLMConfig.model_type, SwapVLMConfig, exist_ok=True)
AutoModelForImageTextToText.register(SwapVLMConfig, SwapVLMForConditionalGeneration, exist_ok=True)
AutoProcessor.register(SwapVLMConfig, SwapVLMProcessor, exist_ok=True)

__all__ = ["SwapVLMConfig", "SwapVLMForConditionalGeneration", "SwapVLMPreTrainedModel", "SwapVLMProcessor"]
