"""UserModel: every objective on both backbones, checkpoints that reload exactly, config validation."""

import pytest
import torch
from transformers import AutoModel

from use import UserModel, UserModelConfig
from use.objectives import OBJECTIVES

from .conftest import tiny_user_model


def batch_of_pairs(users=3, length=48, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 40, (2 * users, length), generator=generator)
    ids[:, 0] = 1  # [CLS]
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    ids[1, 30:] = 3  # [PAD]
    return ids, mask


@pytest.mark.parametrize("backbone_type", ["retnet", "gpt2"])
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_save_reload_gives_identical_losses(tmp_path, backbone_type, objective):
    model = tiny_user_model(backbone_type, objective)
    ids, mask = batch_of_pairs()
    with torch.no_grad():
        before = model(ids, mask)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        after = loaded(ids, mask)

    assert isinstance(loaded, UserModel)
    assert (tmp_path / "model.safetensors").exists()
    parts = {"clm_loss": "CLM", "fep_loss": "FEP", "sup_loss": "SUP"}
    for name, part in parts.items():
        if part in objective.split("_"):
            assert torch.isfinite(getattr(before, name))
            assert torch.equal(getattr(before, name), getattr(after, name))
        else:
            assert getattr(before, name) is None
    assert torch.equal(before.loss, after.loss)
    assert torch.equal(before.last_hidden_state, after.last_hidden_state)


def test_total_loss_is_sum_of_parts():
    model = tiny_user_model("retnet", "FEP_CLM_SUP")
    ids, mask = batch_of_pairs()
    output = model(ids, mask)
    assert output.loss.item() == pytest.approx((output.clm_loss + output.fep_loss + output.sup_loss).item(), abs=1e-6)


def test_clm_head_stays_tied_after_reload(tmp_path):
    model = tiny_user_model("retnet", "CLM")
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    ids, mask = batch_of_pairs()
    with torch.no_grad():
        loaded.get_input_embeddings().weight[7].add_(torch.randn(32))
        changed = loaded(ids, mask).clm_loss
        original = model(ids, mask).clm_loss
    # The CLM logits are the input embedding transposed, so moving one embedding row moves the loss.
    # (A constant shift would not: LayerNorm removes it on the way in and out.)
    assert not torch.equal(changed, original)
    assert not any("lm_head" in name for name, _ in loaded.named_parameters())


@pytest.mark.parametrize("contrastive_embedding", ["token", "state", "joint"])
def test_sup_embeddings_are_unit_vectors(contrastive_embedding):
    model = tiny_user_model("retnet", "SUP", contrastive_embedding=contrastive_embedding)
    ids, mask = batch_of_pairs()
    encoded = model.encode(ids, mask, use_cache=True)
    embeddings = model.contrastive_embeddings(encoded.last_hidden_state, mask, encoded.past_states)
    assert embeddings.shape == (6, model.config.contrastive_head_size)
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(6), atol=1e-5)


def test_every_objective_trains_all_its_heads():
    model = tiny_user_model("retnet", "FEP_CLM_SUP", contrastive_embedding="joint")
    model.train()
    ids, mask = batch_of_pairs()
    model(ids, mask).loss.backward()
    missing = [name for name, parameter in model.named_parameters() if parameter.grad is None]
    assert missing == []


@pytest.mark.parametrize(
    "settings,message",
    [
        (dict(backbone_type="lstm"), "backbone_type='lstm' is invalid"),
        (dict(backbone_type="gpt2", contrastive_embedding="state"), "needs a retention state"),
        (dict(objective="FEP", fep_window_size=0), "fep_window_size=0 must be at least 1"),
        (dict(objective="MLM"), "'MLM' is invalid"),
        (dict(contrastive_temperature=0.0), "must be positive"),
        (dict(vocab_size=5), "leaves no behavior tokens"),
    ],
)
def test_invalid_config_names_the_setting(settings, message):
    with pytest.raises(Exception, match=message):
        UserModelConfig(**settings)


def test_gpt2_refuses_past_states(retnet_user_model):
    gpt2 = tiny_user_model("gpt2", "CLM")
    ids, mask = batch_of_pairs()
    state = retnet_user_model.encode(ids, mask, use_cache=True).past_states
    with pytest.raises(ValueError, match="GPT-2 keeps no state"):
        gpt2.encode(ids, mask, past_states=state)
