"""Low-rank factorisation: exact where the weight's rank allows it, skipped where it would not save MACs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekit.errors import UsageError
from edgekit.stages.lowrank import LowRankConfig, factorise
from edgekit.stages.macs import count


def _low_rank_mlp(rank: int = 12) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 10))
    with torch.no_grad():  # a weight of true rank 12: energy 0.999 must find it
        model[0].weight.copy_(torch.randn(256, rank) @ torch.randn(rank, 128) / 10)
    return model.eval()


def test_energy_threshold_finds_the_true_rank_and_keeps_outputs():
    model, x = _low_rank_mlp(), torch.randn(8, 128)
    before, reference = count(model, (x[:1],)), model(x)
    rows = factorise(model, LowRankConfig(energy=0.999))
    assert rows[0] == {"layer": "0", "in": 128, "out": 256, "rank": 12}
    assert torch.allclose(model(x), reference, atol=1e-3)
    # 128*256 MACs became 12*(128+256); the 256x10 head needs ~all its rank and stays
    assert count(model, (x[:1],))["macs"] < 0.25 * before["macs"]


def test_layers_where_the_rank_would_not_save_macs_are_left_alone():
    model = _low_rank_mlp()
    rows = factorise(model, LowRankConfig(rank_fraction=0.9))
    # 128x256 at rank 116: 116*(128+256) > 128*256, kept; 256x10 at rank 9: 9*266 < 2560, split
    assert [r["layer"] for r in rows] == ["2"] and isinstance(model[0], nn.Linear)


def test_one_by_one_conv_is_factorised_as_two_convs():
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Conv2d(64, 64, 1)), torch.randn(2, 64, 4, 4)
    factorise(model, LowRankConfig(rank_fraction=0.25))
    assert [type(m) for m in model[0]] == [nn.Conv2d, nn.Conv2d] and model[0][0].out_channels == 16
    assert model(x).shape == (2, 64, 4, 4)


def test_bad_fraction_names_the_flag():
    with pytest.raises(UsageError, match="--lowrank must be"):
        LowRankConfig(rank_fraction=2.0).check()


def test_a_factorised_model_saves_and_reloads_without_unpickling(tmp_path):
    """float_model.pt records each split (kind, sizes, rank): a fresh model from the factory is split
    the same way and loads the weights with torch.load(weights_only=True); no .pt2 is needed."""
    from edgekit.model.saved import load_transformed, save_transformed

    model, x = _low_rank_mlp(), torch.randn(8, 128)
    factorise(model, LowRankConfig(energy=0.999))
    save_transformed(model, tmp_path / "float_model.pt")
    fresh = _low_rank_mlp(rank=3)  # the factory's model: other weights, unsplit
    load_transformed(fresh, tmp_path / "float_model.pt")
    assert [type(m).__name__ for m in fresh] == [type(m).__name__ for m in model]
    assert torch.equal(fresh(x), model(x))
