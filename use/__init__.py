"""use: dynamic user modeling with stateful sequence models (USE)."""

from .model import BackboneOutput, UserModel, UserModelConfig, UserModelOutput
from .retnet import RetNetConfig, RetNetModel, RetNetState

__all__ = [
    "BackboneOutput",
    "RetNetConfig",
    "RetNetModel",
    "RetNetState",
    "UserModel",
    "UserModelConfig",
    "UserModelOutput",
]
