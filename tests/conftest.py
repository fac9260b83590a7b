"""Shared fixtures: tiny random models in the real checkpoint classes."""

import pytest
import torch

from use import RetNetConfig, RetNetModel, UserModel, UserModelConfig


def tiny_retnet(dtype=torch.float32, chunk_size=512, **overrides) -> RetNetModel:
    torch.manual_seed(0)
    config = RetNetConfig(
        vocab_size=40, hidden_size=32, num_hidden_layers=2, num_heads=4, hidden_dropout=0.0, chunk_size=chunk_size,
        **overrides,
    )
    return RetNetModel(config).to(dtype).eval()


def tiny_user_model(backbone_type="retnet", objective="FEP_SUP", **overrides) -> UserModel:
    torch.manual_seed(0)
    settings = dict(
        backbone_type=backbone_type, vocab_size=40, hidden_size=32, num_hidden_layers=2, num_heads=4,
        dropout=0.0, objective=objective, fep_window_size=3, chunk_size=64,
    )
    settings.update(overrides)
    return UserModel(UserModelConfig(**settings)).eval()


@pytest.fixture
def retnet_user_model() -> UserModel:
    return tiny_user_model("retnet")
