"""Unstructured magnitude pruning: permanent zeros, MACs unchanged, smaller when compressed."""

from __future__ import annotations

import io
import zlib

import pytest
import torch
from torch import nn

from edgekit.errors import UsageError
from edgekit.stages.macs import count
from edgekit.stages.sparsity import SparsityConfig, sparsify


def _zipped(model) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return len(zlib.compress(buf.getvalue(), 9))


def test_sparsity_is_permanent_and_honest_about_macs():
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 6 * 6, 10)), torch.randn(1, 3, 8, 8)
    macs, zipped = count(model, (x,))["macs"], _zipped(model)
    result = sparsify(model, SparsityConfig(0.6))
    assert result["weight_sparsity"] == pytest.approx(0.6, abs=0.01)
    assert not any(name.endswith("_orig") or name.endswith("_mask") for name, _ in model.named_buffers())
    assert "weight_orig" not in dict(model[0].named_parameters())
    assert count(model, (x,))["macs"] == macs  # dense kernels still do every multiply
    assert _zipped(model) < 0.7 * zipped


def test_bad_sparsity_names_the_flag():
    with pytest.raises(UsageError, match="--sparsity"):
        SparsityConfig(1.0).check()
