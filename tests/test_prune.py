"""Channel pruning on its own: DepGraph keeps the graph consistent, widths stay multiples of round_to."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekit.errors import UsageError
from edgekit.stages.macs import count
from edgekit.stages.prune import PruneConfig, prune, schedule
from edgekit.zoo.mobilenet_v2 import build_model, build_small


def _convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_mobilenet_v2_definition_matches_the_paper():
    # Sandler et al. 2018, Table 3: 300M multiply-adds, 3.4M parameters at width 1.0, 224x224
    cost = count(build_model(), (torch.zeros(1, 3, 224, 224),))
    assert 290e6 < cost["macs"] < 330e6 and 3.3e6 < cost["params"] < 3.6e6


def test_mobilenet_v2_prunes_through_depthwise_and_residual_adds():
    torch.manual_seed(0)
    model, x = build_small(), torch.randn(4, 3, 32, 32)
    before = count(model, (x[:1],))
    prune(model, (x[:1],), PruneConfig(ratio=0.5, round_to=8))
    after = count(model, (x[:1],))
    assert after["macs"] < 0.6 * before["macs"]
    assert model(x).shape == (4, 10)
    for conv in _convs(model):
        assert conv.out_channels % 8 == 0, conv
        if conv.groups > 1:  # depthwise stays depthwise, with its channels matched
            assert conv.groups == conv.in_channels == conv.out_channels
    assert model.classifier[-1].out_features == 10  # the output layer is never pruned


def test_prune_macs_target_stops_at_the_first_step_under_it():
    torch.manual_seed(0)
    model, x = build_small(), torch.randn(1, 3, 32, 32)
    before = count(model, (x,))["macs"]
    prune(model, (x,), PruneConfig(macs_target=0.6, round_to=8))
    kept = count(model, (x,))["macs"] / before
    assert 0.35 < kept <= 0.6


@pytest.mark.parametrize("cfg, flag", [
    (PruneConfig(ratio=1.5), "--prune"),
    (PruneConfig(macs_target=0.0), "--prune-macs"),
    (PruneConfig(), "--prune"),
    (PruneConfig(ratio=0.5, importance="random"), "--prune-importance"),
    (PruneConfig(ratio=0.5, steps=0), "--prune-steps"),
])
def test_bad_prune_settings_name_the_flag(cfg, flag):
    with pytest.raises(UsageError, match=flag):
        cfg.check()


def test_cli_rejects_bad_ratio_with_exit_2(run_cli, digits_app):
    proc = run_cli("build", str(digits_app), "--prune", "1.5")
    assert proc.returncode == 2
    assert "--prune must be between 0 and 1" in proc.stderr


def test_distill_without_training_data_is_a_usage_error(run_cli, tmp_path):
    proc = run_cli("build", "--model", "edgekit.zoo.mobilenet_v2:build_small", "--input-shape", "1,3,32,32",
                   "--prune", "0.5", "--distill")
    assert proc.returncode == 2
    assert "--distill needs training data" in proc.stderr and "--train" in proc.stderr


@pytest.mark.parametrize("cfg, distilling, cuts", [
    # with distillation, every cut before the last keeps half of what the one before it left
    (PruneConfig(macs_target=0.5), True, [0.5]),
    (PruneConfig(macs_target=0.35), True, [0.35]),
    (PruneConfig(macs_target=0.25), True, [0.5, 0.25]),
    (PruneConfig(macs_target=0.15), True, [0.5, 0.15]),
    (PruneConfig(macs_target=0.1), True, [0.5, 0.25, 0.1]),
    (PruneConfig(macs_target=0.1), False, [0.1]),  # nothing trained between cuts: one cut
    (PruneConfig(macs_target=0.25, steps=3), True, [0.629961, 0.39685, 0.25]),  # N cuts: geometric
    (PruneConfig(macs_target=0.25, steps=1), True, [0.25]),
])
def test_prune_macs_cuts_in_rounds_when_distilling(cfg, distilling, cuts):
    planned = schedule(cfg, distilling)
    assert [c.macs_target for c in planned] == cuts and all(c.steps == 1 for c in planned)


def test_prune_ratio_is_one_cut_unless_steps_say_otherwise():
    assert [c.ratio for c in schedule(PruneConfig(ratio=0.5), True)] == [0.5]
    two = schedule(PruneConfig(ratio=0.5, steps=2), True)
    assert len(two) == 2 and (1 - two[0].ratio) * (1 - two[1].ratio) == pytest.approx(0.5, abs=1e-5)


def test_prune_steps_without_distillation_is_refused_with_exit_2(run_cli, digits_app, tmp_path):
    proc = run_cli("build", str(digits_app), "--prune-macs", "0.25", "--prune-steps", "2", "--out", str(tmp_path / "b"))
    assert proc.returncode == 2 and "--prune-steps 2" in proc.stderr and "--distill" in proc.stderr
    assert not (tmp_path / "b").exists()
