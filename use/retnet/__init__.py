"""RetNet backbone: configuration, model and the three retention forms."""

from transformers import AutoConfig, AutoModel

from .configuration_retnet import RetNetConfig
from .modeling_retnet import RetNetModel, RetNetOutput, RetNetState

AutoConfig.register("retnet", RetNetConfig)
AutoModel.register(RetNetConfig, RetNetModel)

__all__ = ["RetNetConfig", "RetNetModel", "RetNetOutput", "RetNetState"]
