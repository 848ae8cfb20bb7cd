"""Distillation: the loss pieces, and the same run on 1 process and on 2 real DDP processes (gloo)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from edgekit.errors import UsageError
from edgekit.stages.options import StageOptions
from edgekit.stages.prune import PruneConfig
from edgekit.train.distill import DistillConfig, make_trainable


class _Net(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU())
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        return self.head(self.body(x))


def test_feature_adapter_maps_student_width_to_teacher_width():
    x = (torch.zeros(2, 1, 8, 8),)
    trainable, s_taps, t_taps = make_trainable(_Net(16), _Net(48), DistillConfig(), x)
    assert isinstance(trainable.adapters[0], nn.Linear)
    assert (trainable.adapters[0].in_features, trainable.adapters[0].out_features) == (16, 48)
    trainable(*x)
    assert s_taps.values[0].shape == (2, 16)  # the head's input was tapped


def test_logit_only_distillation_has_no_adapters():
    trainable, s_taps, _ = make_trainable(_Net(16), _Net(48), DistillConfig(feature_weight=0), (torch.zeros(1, 1, 8, 8),))
    assert s_taps is None and len(trainable.adapters) == 0


def test_unknown_feature_name_is_a_usage_error():
    with pytest.raises(UsageError, match="--feature 'body.9'"):
        make_trainable(_Net(16), _Net(48), DistillConfig(features=("body.9",)), (torch.zeros(1, 1, 8, 8),))


@pytest.mark.parametrize("field, value, flag", [("temperature", 0, "--temperature"), ("alpha", 1.5, "--alpha"),
                                                ("epochs", 0, "--epochs")])
def test_bad_settings_name_the_flag(field, value, flag):
    with pytest.raises(UsageError, match=flag):
        DistillConfig(**{field: value}).check()


def test_two_ddp_processes_match_one_process(digits_app, tmp_path):
    """`edgekit distill --nproc 2`: two real worker processes under torchrun, gloo on this CPU box."""
    from edgekit import api

    cfg = DistillConfig(epochs=5, patience=5)
    one = api.distill(digits_app, "rpi4", StageOptions(prune=PruneConfig(ratio=0.5), distill=cfg, nproc=1), out=tmp_path / "one")
    two = api.distill(digits_app, "rpi4", StageOptions(prune=PruneConfig(ratio=0.5), distill=cfg, nproc=2), out=tmp_path / "two")
    assert two["processes"] == 2 and two["backend"] == "gloo"
    assert one["processes"] == 1
    assert len(two["history"]) == len(one["history"]) == 5
    assert two["accuracy_before"] == one["accuracy_before"] < 50  # the same pruned start
    assert abs(two["accuracy"] - one["accuracy"]) <= 1.0
    assert two["accuracy"] >= 98.0
    assert two["student"]["macs"] == one["student"]["macs"] < 0.55 * two["teacher"]["macs"]
    saved = json.loads((tmp_path / "two" / "distill.json").read_text())
    assert saved["accuracy"] == two["accuracy"]
    assert (tmp_path / "two" / "float_model.pt2").is_file()
