"""--prune-importance taylor and bn-scale: each ranks channels by what it claims to, end to end
on the digits CNN, and says clearly when the model or the data cannot support it."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.errors import UsageError
from edgekit.stages.prune import PruneConfig, prune

WIDTH = 16  # conv1's channels; ratio 0.5 with round_to 8 keeps 8 of them


class SmallCNN(nn.Module):
    def __init__(self, bn2: bool = True):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, WIDTH, 3, padding=1, bias=False), nn.BatchNorm2d(WIDTH)
        self.conv2 = nn.Conv2d(WIDTH, WIDTH, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(WIDTH) if bn2 else nn.Identity()
        self.fc = nn.Linear(WIDTH, 4)

    def forward(self, x):
        x = torch.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        return self.fc(x.mean((2, 3)))


def _kept_channels(pruned: torch.Tensor, original: torch.Tensor) -> set[int]:
    """Which of the original output channels (filters) survived, found by their weights."""
    return {next(i for i, g in enumerate(original) if torch.equal(f, g)) for f in pruned}


def _set_weights(model: SmallCNN, big: list[int], gamma: torch.Tensor) -> None:
    """conv1 filters and conv2's input columns large for channels `big`, small for the rest; bn1 scale = gamma."""
    scale = torch.full((WIDTH,), 0.1)
    scale[big] = 10.0
    with torch.no_grad():
        model.conv1.weight.mul_(scale.view(-1, 1, 1, 1))
        model.conv2.weight.mul_(scale.view(1, -1, 1, 1))
        model.bn1.weight.copy_(gamma)


def _prune(model, importance: str, batches=None) -> set[int]:
    """Prune a copy of `model` by half with this importance; the conv1 channels it kept."""
    model = copy.deepcopy(model)
    original = model.conv1.weight.detach().clone()
    prune(model, (torch.randn(1, 3, 8, 8),), PruneConfig(ratio=0.5, round_to=8, importance=importance), batches)
    assert model.conv1.out_channels == 8
    return _kept_channels(model.conv1.weight.detach(), original)


def test_bn_scale_keeps_the_channels_with_the_largest_abs_gamma_where_l2_does_not():
    torch.manual_seed(0)
    big_weights = list(range(8))  # channels 0..7: large conv weights but near-zero gamma
    gamma = torch.tensor([0.01 * (i + 1) for i in range(8)] + [(-1) ** i * (1.0 + 0.05 * i) for i in range(8)])
    model = SmallCNN().eval()
    _set_weights(model, big_weights, gamma)
    by_l2 = _prune(model, "l2")
    by_bn = _prune(model, "bn-scale")
    largest_gamma = set(torch.topk(gamma.abs(), 8).indices.tolist())  # 8..15, half of them negative
    assert by_bn == largest_gamma
    assert by_l2 == set(big_weights)  # the weights' norm points the other way: the two rankings differ


def test_taylor_drops_channels_the_loss_does_not_depend_on():
    """Channels 0..7 have the largest weights but conv2 ignores them: their Taylor score (w * dL/dw) is 0."""
    torch.manual_seed(0)
    model = SmallCNN(bn2=False).eval()
    dead = list(range(8))
    _set_weights(model, dead, torch.ones(WIDTH))
    with torch.no_grad():
        model.conv2.weight[:, dead] = 0.0
        model.bn1.weight[dead] = 10.0  # and large BN scales: l2 (and bn-scale) would keep them
    batches = [((torch.randn(32, 3, 8, 8),), torch.randint(0, 4, (32,))) for _ in range(2)]
    by_l2 = _prune(model, "l2")
    by_taylor = _prune(model, "taylor", batches)
    assert by_l2 == set(dead)
    assert by_taylor == set(range(8, WIDTH))


def test_taylor_without_labelled_batches_is_a_usage_error():
    with pytest.raises(UsageError, match="--prune-importance taylor needs labelled training data"):
        prune(SmallCNN().eval(), (torch.randn(1, 3, 8, 8),), PruneConfig(ratio=0.5, importance="taylor"))


def test_bn_scale_on_a_model_without_batchnorm_is_a_usage_error():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    with pytest.raises(UsageError, match="--prune-importance bn-scale .* no BatchNorm") as err:
        prune(model, (torch.randn(1, 3, 8, 8),), PruneConfig(ratio=0.5, importance="bn-scale"))
    assert "l2" in err.value.hint
    assert model[0].out_channels == 16  # nothing was pruned before the error


# ---------------------------------------------------------------- end to end on the digits CNN


@pytest.fixture(scope="module")
def digits_weights(digits_app) -> dict:
    return torch.load(digits_app / "weights.pt", weights_only=True)


def _digits_l2_channels(digits_app, weights: dict) -> set[int]:
    """The first conv's channels an l2 prune of the digits CNN keeps (what the other rankings are told apart from)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("digits_model", digits_app / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.build_model()
    model.load_state_dict(weights)
    prune(model, (torch.zeros(1, 1, 8, 8),), PruneConfig(ratio=0.5, round_to=8))
    return _kept_channels(model.features[0][0].weight.detach(), weights["features.0.0.weight"])


# end to end (~15-30 s each) with the slow tests; the importances themselves are unit-tested above
@pytest.mark.parametrize("importance", [pytest.param("taylor", marks=pytest.mark.slow), pytest.param("bn-scale", marks=pytest.mark.slow)])
def test_importance_runs_end_to_end_on_the_digits_cnn(importance, digits_app, digits_weights, tmp_path):
    from edgekit import api

    m = api.build(digits_app, "rpi4", api.recipe(prune=0.5, prune_importance=importance), out=tmp_path / "b")
    steps = {s["stage"]: s for s in m["steps"]}
    assert steps["prune"]["config"]["importance"] == importance
    assert steps["prune"]["macs"] <= 0.55 * steps["measure"]["macs"]
    assert m["metrics"]["samples"] > 0 and m["metrics"]["accuracy_artifact"] is not None  # the artifact ran
    saved = torch.load(tmp_path / "b" / "float_model.pt", weights_only=True)["state_dict"]
    kept = _kept_channels(saved["features.0.0.weight"], digits_weights["features.0.0.weight"])
    assert len(kept) == 16
    assert kept != _digits_l2_channels(digits_app, digits_weights)  # the flag reached the ranking
    if importance == "bn-scale":  # the 16 of 32 channels with the largest |gamma| of the first BatchNorm
        assert kept == set(torch.topk(digits_weights["features.0.1.weight"].abs(), 16).indices.tolist())


def _user_digits(digits_app, tmp_path, train_labels: bool | None):
    shutil.copy(digits_app / "model.py", tmp_path / "mynet.py")
    for name in ("weights.pt", "calib.npz", "eval.npz"):
        shutil.copy(digits_app / name, tmp_path / name)
    args = ["build", "--model", "mynet:build_model", "--input-shape", "1,1,8,8", "--weights", "weights.pt",
            "--calib", "calib.npz", "--eval", "eval.npz", "--prune", "0.5", "--prune-importance", "taylor"]
    if train_labels is not None:
        with np.load(digits_app / "train.npz") as train:
            np.savez(tmp_path / "train.npz", **({"x": train["x"], "y": train["y"]} if train_labels else {"x": train["x"]}))
        args += ["--train", "train.npz"]
    return args


@pytest.mark.parametrize("train_labels, message", [
    (None, "--prune-importance taylor needs training data"),
    (False, "has no labels array 'y'"),
])
def test_cli_taylor_without_labelled_train_data_exits_2(run_cli, digits_app, tmp_path, train_labels, message):
    proc = run_cli(*_user_digits(digits_app, tmp_path, train_labels), "--out", "out", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_bn_scale_on_the_vit_exits_2_naming_the_flag(run_cli, tmp_path):
    proc = run_cli("build", "sample_apps/vit_digits", "--prune", "0.5", "--prune-importance", "bn-scale",
                   "--out", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--prune-importance bn-scale" in proc.stderr and "no BatchNorm" in proc.stderr
    assert not (tmp_path / "out" / "model.pte").exists()
