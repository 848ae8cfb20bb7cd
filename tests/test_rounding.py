"""GPTQ weight rounding (formats/rounding.py): weights left on the grid every runtime uses, and
on a net built to need it, closer to float than nearest rounding, in the real runtime too."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from conftest import app_toml, write_app
from edgekit import api
from edgekit.formats.rounding import QMAX, round_weights

# Pointwise convs whose input channels move together (8 latent signals mixed into 32 channels, as
# a trained net's features are correlated) and whose weight rows each hold one large weight, so
# the abs-max grid is coarse for the rest: nearest rounding's errors then add up along the
# correlated inputs, which is what GPTQ takes into account.
MIXER_MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Mixer(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.act, self.b = nn.Conv2d(32, 64, 1), nn.ReLU(), nn.Conv2d(64, 16, 1)

        def forward(self, x):
            return self.b(self.act(self.a(x))).mean((2, 3))

    def make():
        torch.manual_seed(0)
        model = Mixer()
        with torch.no_grad():
            for conv in (model.a, model.b):
                w = conv.weight.view(conv.out_channels, -1)
                w.normal_(0, 0.1)
                w[:, 0] = 3.0  # one weight per row 30 sigma out: the grid step is 3 / 127
        return model.eval()
    """
)
MIXER_APP = app_toml("mixer", [1, 32, 8, 8])


def _inputs(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(0).standard_normal((32, 8))  # the same mixing for every split
    latent = rng.standard_normal((n, 8, 8, 8))
    x = np.einsum("cl,nlhw->nchw", mix, latent) + 0.05 * rng.standard_normal((n, 32, 8, 8))
    return x.astype(np.float32)


def _mixer():
    namespace: dict = {}
    exec(MIXER_MODEL, namespace)  # noqa: S102 - the test's own model source
    return namespace["make"]()


def _batches(n, seed):
    return [(torch.from_numpy(x[None]),) for x in _inputs(n, seed)]


def _nearest(w: torch.Tensor) -> torch.Tensor:
    """What every runtime does to a float weight: per output channel, scale = max |w| / 127."""
    rows = w.reshape(w.shape[0], -1)
    scale = rows.abs().amax(1, keepdim=True) / QMAX
    return (torch.clamp(torch.round(rows / scale), -QMAX, QMAX) * scale).reshape(w.shape)


def _sqnr(ref, out) -> float:
    return float(10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean()))


@pytest.fixture(scope="module")
def rounded():
    model = _mixer()
    calib = _batches(32, 1)
    return model, *round_weights(model, calib[0], calib)


def test_rounded_weights_sit_on_the_grid_every_runtime_computes(rounded):
    model, out, record = rounded
    assert record["layers"] == 2 and record["left"] == [] and record["output_error_db"] > 0
    for name in ("a", "b"):
        w = getattr(out, name).weight.detach()
        # the runtime's own rule (max |w| / 127 per row) maps them to themselves: the levels GPTQ chose stay
        torch.testing.assert_close(_nearest(w), w, rtol=0, atol=1e-6)
        # so does a positive factor per output channel (a batch norm folded in later, equalization before)
        k = torch.linspace(0.5, 4.0, w.shape[0]).view(-1, 1, 1, 1)
        torch.testing.assert_close(_nearest(w * k), w * k, rtol=0, atol=1e-5)
        assert not torch.equal(w, _nearest(getattr(model, name).weight.detach())), "GPTQ chose other levels"
    assert torch.equal(model.a.weight, _mixer().a.weight), "the input model must not be modified"


def test_gptq_is_closer_to_float_than_nearest_on_inputs_it_never_saw(rounded):
    model, out, _ = rounded
    nearest = _mixer()
    with torch.no_grad():
        for conv in (nearest.a, nearest.b):
            conv.weight.copy_(_nearest(conv.weight))
        x = torch.from_numpy(_inputs(32, 2))
        ref, gptq, plain = model(x), out(x), nearest(x)
    assert _sqnr(ref, gptq) > _sqnr(ref, plain) + 3, (_sqnr(ref, gptq), _sqnr(ref, plain))


def test_what_gptq_leaves_alone():
    model = _mixer()
    calib = _batches(32, 1)
    out, record = round_weights(model, calib[0], calib, keep_float=("b",))
    assert torch.equal(out.b.weight, model.b.weight) and record["layers"] == 1
    assert record["left"] == [{"weight": "b.weight", "why": "its layer is kept float"}]

    head = nn.Sequential(nn.Flatten(), nn.Linear(64, 4)).eval()  # 8 samples, one row each, for 64 features
    few = [(torch.randn(1, 4, 4, 4),) for _ in range(8)]
    out, record = round_weights(head, few[0], few)
    assert record["layers"] == 0 and "too few" in record["left"][0]["why"]
    assert torch.equal(out[1].weight, head[1].weight)

    class Untraceable(nn.Module):
        def forward(self, x):
            return x * 2 if float(x.sum()) > 0 else x  # data-dependent Python control flow

    _, record = round_weights(Untraceable(), few[0], few)
    assert record["layers"] == 0 and "torch.export" in record["note"]


@pytest.fixture(scope="module")
def mixer_app(tmp_path_factory):
    return write_app(tmp_path_factory.mktemp("mixer"), MIXER_MODEL, MIXER_APP,
                     calib={"x": _inputs(32, 1)}, eval={"x": _inputs(32, 2)})


@pytest.mark.parametrize("fmt", ["onnx", pytest.param("executorch", marks=pytest.mark.slow)])
def test_gptq_brings_the_artifact_closer_to_float_in_its_runtime(mixer_app, tmp_path, fmt):
    """The whole int8 artifact (activations quantized too) in its real runtime, on the held-out inputs."""
    def build(rounding):
        recipe = api.recipe(formats=(fmt,), calibration="minmax", quality="fast", weight_rounding=rounding,
                            min_cosine=-1)
        return api.build(mixer_app, "rpi5", recipe, out=tmp_path / rounding)["formats"][fmt]

    nearest, gptq = build("nearest"), build("gptq")
    assert nearest["quantization"]["weight_rounding"] == "nearest" and "rounding" not in nearest["quantization"]
    assert gptq["quantization"]["weight_rounding"] == "gptq" and gptq["quantization"]["rounding"]["layers"] == 2
    assert gptq["metrics"]["sqnr_db"] > nearest["metrics"]["sqnr_db"] + 2, (nearest["metrics"], gptq["metrics"])

    if fmt == "onnx":  # the debugger names the weights' rounding where it was nearest, and not after GPTQ
        def advice(build):
            doc = api.debug(tmp_path / build, format=fmt)
            return [g["diagnosis"] for g in doc["layers"] if g["node"] in doc["top"] and g["op"] == "Conv"]
        assert any("--weight-rounding gptq" in d for d in advice("nearest")), advice("nearest")
        assert not any("--weight-rounding gptq" in d for d in advice("gptq"))
