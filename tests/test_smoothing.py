"""SmoothQuant activation smoothing (formats/smoothing.py): exact in float where the module doc says
it is, left alone where it is not, and on a net built to need it closer to float in the real
runtimes, chosen by --quality auto; on real transformer architectures it finds the pre-LN pairs."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from conftest import app_toml, write_app
from edgekit import api
from edgekit.errors import BuildGateFailed, UsageError
from edgekit.formats.smoothing import smooth

# A pre-LN transformer block as GPT-style / ViT / Llama models write it: a LayerNorm feeding two
# Linears, an RMSNorm (Llama's: its weight times the normalised x) feeding the MLP. Both norms carry
# outlier channels (40x the rest, as trained transformers' do, LLM.int8()), and the Linears' columns
# for them are 40x smaller, so every channel matters equally to the output. One per-tensor
# activation scale on the norms' outputs leaves the other channels a level or two.
OUTLIER_MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn

    class RMSNorm(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(d))

        def forward(self, x):
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    class Block(nn.Module):
        def __init__(self, d=64):
            super().__init__()
            self.norm1, self.q, self.v, self.o = nn.LayerNorm(d), nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
            self.norm2, self.up, self.down = RMSNorm(d), nn.Linear(d, 2 * d), nn.Linear(2 * d, 16)

        def forward(self, x):
            h = self.norm1(x)
            x = x + self.o(torch.relu(self.q(h)) * self.v(h))
            h = self.norm2(x)
            return self.down(torch.relu(self.up(h))).mean(1)

    OUTLIERS, FACTOR = 3, 40.0

    def make():
        torch.manual_seed(0)
        model = Block()
        with torch.no_grad():
            for norm, consumers in ((model.norm1, (model.q, model.v)), (model.norm2, (model.up,))):
                norm.weight[:OUTLIERS] = FACTOR
                for layer in consumers:
                    layer.weight[:, :OUTLIERS] /= FACTOR
        return model.eval()
    """
)
OUTLIER_APP = app_toml("outliers", [1, 8, 64])


def _inputs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 8, 64)).astype(np.float32)


def _model():
    namespace: dict = {}
    exec(OUTLIER_MODEL, namespace)  # noqa: S102 - the test's own model source
    return namespace["make"]()


def _batches(n: int, seed: int):
    return [(torch.from_numpy(x[None]),) for x in _inputs(n, seed)]


@pytest.fixture(scope="module")
def outlier_app(tmp_path_factory):
    return write_app(tmp_path_factory.mktemp("outliers"), OUTLIER_MODEL, OUTLIER_APP,
                     calib={"x": _inputs(32, 1)}, eval={"x": _inputs(32, 2)})


def test_layer_norm_and_rms_norm_pairs_are_smoothed_exactly_on_any_input():
    model = _model()
    calib = _batches(16, 1)
    smoothed, record = smooth(model, calib[0], calib, alpha=0.5)
    assert record["pairs"] == 2
    assert [(x["producer"], x["kind"], x["consumers"]) for x in record["layers"]] == [
        ("norm1", "layer_norm", ["q", "v"]), ("norm2", "rms_norm", ["up"])]
    assert record["outlier_ratio_before"] > 20 and record["outlier_ratio_after"] < 3, record
    unseen = torch.from_numpy(_inputs(8, 3) * 5)  # far outside the calibration data: the identity is exact
    with torch.no_grad():
        torch.testing.assert_close(smoothed(unseen), model(unseen), rtol=1e-4, atol=1e-5)
    assert not torch.equal(smoothed.norm1.weight, model.norm1.weight), "the smoothed model's weights were not changed"
    assert torch.equal(model.norm1.weight, _model().norm1.weight), "the input model must not be modified"


def test_a_norm_with_any_other_reader_and_untraceable_models_are_left_alone():
    class PostLN(nn.Module):  # BERT's: the LayerNorm's output is also the residual stream
        def __init__(self):
            super().__init__()
            self.norm, self.fc = nn.LayerNorm(16), nn.Linear(16, 16)

        def forward(self, x):
            h = self.norm(x)
            return h + self.fc(h)

    x = (torch.randn(1, 4, 16),)
    model = PostLN().eval()
    same, record = smooth(model, x, [x])
    assert record["pairs"] == 0 and "residual" in record["note"]
    assert torch.equal(same.norm.weight, model.norm.weight) and torch.equal(same.fc.weight, model.fc.weight)

    class Untraceable(nn.Module):
        def forward(self, x):
            return x * 2 if float(x.sum()) > 0 else x  # data-dependent Python control flow

    _, record = smooth(Untraceable(), x, [x])
    assert record["pairs"] == 0 and "torch.export" in record["note"]


def test_real_pre_ln_architectures_are_found_and_kept_exact():
    """transformers' ViT (LayerNorm before q/k/v and before the MLP) and Llama (RMSNorm), as their
    own code writes them: every norm that feeds Linears only is smoothed, and the float outputs stay."""
    from transformers import LlamaConfig, LlamaModel, ViTConfig, ViTModel

    vit = ViTModel(ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                             image_size=32, patch_size=8), add_pooling_layer=False).eval()
    llama = LlamaModel(LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                   intermediate_size=128, vocab_size=100, use_cache=False)).eval()
    for model, inputs, pairs in ((vit, lambda g: torch.randn(1, 3, 32, 32, generator=g), 4),
                                 (llama, lambda g: torch.randint(0, 100, (1, 8), generator=g), 4)):
        g = torch.Generator().manual_seed(0)
        calib = [(inputs(g),) for _ in range(4)]
        smoothed, record = smooth(model, calib[0], calib)
        assert record["pairs"] == pairs, record
        assert all(x["consumers"] for x in record["layers"])
        with torch.no_grad():
            for (x,) in calib[:2]:
                torch.testing.assert_close(smoothed(x).last_hidden_state, model(x).last_hidden_state,
                                           rtol=1e-4, atol=1e-4)


def test_smooth_quant_is_checked_before_any_work(outlier_app, tmp_path):
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(UsageError, match="--smooth-quant"):
            api.build(outlier_app, "rpi5", api.recipe(smooth_quant=bad), out=tmp_path / "b")
    with pytest.raises(UsageError, match="--smooth-quant applies to --quant static"):
        api.build(outlier_app, "rpi5", api.recipe(smooth_quant=0.5, quant="dynamic"), out=tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_the_flag_reaches_the_recipe_and_a_bad_alpha_is_a_usage_error(outlier_app, tmp_path, run_cli):
    from edgekit.recipe import BuildRecipe, recipe_from_options

    proc = run_cli("build", str(outlier_app), "--smooth-quant", "2", "--out", str(tmp_path / "b"))
    assert proc.returncode == 2 and "--smooth-quant 2" in proc.stderr and "between 0 and 1" in proc.stderr, proc.stderr
    assert not (tmp_path / "b").exists()
    recipe = recipe_from_options(smooth_quant=0.6)
    (tmp_path / "recipe.toml").write_text(recipe.to_toml())
    assert BuildRecipe.from_file(tmp_path / "recipe.toml").quant.smooth_quant == 0.6


@pytest.mark.parametrize("fmt", ["onnx", pytest.param("executorch", marks=pytest.mark.slow)])
def test_smoothing_brings_the_artifact_closer_to_float_and_auto_chooses_it(outlier_app, tmp_path, fmt):
    """In the format's real runtime, on held-out inputs: the plain static artifact against the one
    --quality auto made, which smoothed because the plain one missed the gate on the calibration inputs."""
    recipe = dict(formats=(fmt,), calibration="minmax")
    with pytest.raises(BuildGateFailed) as plain_failure:
        api.build(outlier_app, "rpi5", api.recipe(**recipe, quality="fast"), out=tmp_path / "plain")
    plain = plain_failure.value.manifest["formats"][fmt]
    assert "smoothing" not in plain["quantization"]
    auto = api.build(outlier_app, "rpi5", api.recipe(**recipe), out=tmp_path / "auto")["formats"][fmt]
    tries = auto["quality"]["tries"]
    smoothed = "static int8 (minmax + SmoothQuant alpha 0.5)"
    assert tries[0]["method"] == "static int8 (minmax)" and not tries[0]["passed"]
    assert auto["quality"]["chosen"] == smoothed and [t for t in tries if t["method"] == smoothed][0]["passed"]
    record = auto["quantization"]["smoothing"]
    assert auto["quantization"]["smooth_quant"] == 0.5 and record["pairs"] == 2
    # judged on the evaluation inputs, which played no part in the choice
    assert auto["gate"]["passed"]
    assert auto["metrics"]["sqnr_db"] > plain["metrics"]["sqnr_db"] + 6, (plain["metrics"], auto["metrics"])

    if fmt == "onnx":  # the debugger names the outliers on the plain artifact, and shows them gone
        plain_debug = api.debug(tmp_path / "plain", format=fmt)
        auto_debug = api.debug(tmp_path / "auto", format=fmt)
        [before] = [g for g in plain_debug["layers"] if g["op"] == "LayerNormalization"]
        [after] = [g for g in auto_debug["layers"] if g["op"] == "LayerNormalization"]
        assert "a few features set the range" in before["diagnosis"] and "--smooth-quant" in before["diagnosis"]
        assert "features set the range" not in after["diagnosis"] and after["sqnr_db"] > before["sqnr_db"] + 6
        assert auto_debug["output_sqnr_db"] > plain_debug["output_sqnr_db"] + 6
