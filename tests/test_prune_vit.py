"""Pruning a Vision Transformer: whole attention heads go (q, k, v and the output projection's
inputs together), the modules' head counts follow, and the pruned model saves, reloads and exports."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.stages.macs import count
from edgekit.stages.prune import PruneConfig, prune
from edgekit.model.saved import load_transformed, save_transformed

VIT_APP = Path(__file__).resolve().parent.parent / "sample_apps" / "vit_digits"
UNPRUNED_FLOAT_ACCURACY = 97.78  # the committed vit_digits weights on eval.npz (its README)
HEAD_DIM = 16  # TinyViT: dim 64, 4 heads


def _vit_module():
    spec = importlib.util.spec_from_file_location("vit_digits_model", VIT_APP / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def vit():
    model = _vit_module().build_model()
    model.load_state_dict(torch.load(VIT_APP / "weights.pt", weights_only=True))
    return model


@pytest.fixture(scope="module")
def eval_data():
    with np.load(VIT_APP / "eval.npz") as data:
        return torch.from_numpy(data["x"]), torch.from_numpy(data["y"])


def _prune(model, cfg: PruneConfig, x):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback to keeping the attention widths
        return prune(model, (x[:1],), cfg)


def _kept_heads(pruned: torch.Tensor, original: torch.Tensor, head_dim: int, dim: int = 0) -> list[int]:
    """Which of the original heads (blocks of head_dim rows, or columns with dim=1) the pruned weight holds, in order."""
    blocks = original.split(head_dim, dim)
    return [next(i for i, b in enumerate(blocks) if torch.equal(b, kept)) for kept in pruned.split(head_dim, dim)]


def test_half_the_heads_go_whole_with_q_k_v_and_proj_together(vit, eval_data):
    x, _ = eval_data
    model = _prune(copy.deepcopy(vit), PruneConfig(ratio=0.5, round_to=8), x)
    for before, after in zip(vit.blocks, model.blocks):
        a, a0 = after.attn, before.attn
        assert (a.num_heads, a.head_dim, a.dim) == (2, HEAD_DIM, 2 * HEAD_DIM)
        # the softmax scale the weights were trained with stays: heads are removed whole, head_dim is unchanged
        assert a.scale == a0.scale == HEAD_DIM ** -0.5
        heads = _kept_heads(a.q.weight, a0.q.weight, HEAD_DIM)
        assert len(set(heads)) == 2
        for name in ("k", "v"):  # the same heads (the same output channels) in q, k and v
            assert _kept_heads(getattr(a, name).weight, getattr(a0, name).weight, HEAD_DIM) == heads, name
            assert _kept_heads(getattr(a, name).bias, getattr(a0, name).bias, HEAD_DIM) == heads, name
        assert _kept_heads(a.proj.weight, a0.proj.weight, HEAD_DIM, dim=1) == heads  # proj reads those heads
        assert torch.equal(a.proj.bias, a0.proj.bias)  # proj's outputs are the residual stream: untouched
        assert after.mlp[0].out_features == 64  # MLP hidden 128 -> 64
    assert model.patch_embed.out_channels == model.dim == 64  # the residual width stays
    assert model.head.out_features == 10
    assert count(model, (x[:1],))["macs"] <= 0.55 * count(vit, (x[:1],))["macs"]
    assert model(x[:5]).shape == (5, 10)


@pytest.mark.parametrize("ratio, heads", [(0.25, 3), (0.75, 1), (0.9, 1)])
def test_head_count_follows_the_ratio_and_never_reaches_zero(vit, eval_data, ratio, heads):
    x, _ = eval_data
    model = _prune(copy.deepcopy(vit), PruneConfig(ratio=ratio, round_to=8), x)
    assert [b.attn.num_heads for b in model.blocks] == [heads] * 3
    assert all(b.attn.q.out_features == heads * HEAD_DIM for b in model.blocks)
    assert model(x[:2]).shape == (2, 10)


def test_macs_target_prunes_heads_step_by_step(vit, eval_data):
    """Over --prune-macs's iterative steps heads go at the schedule's pace, not all at once."""
    x, _ = eval_data
    before = count(vit, (x[:1],))["macs"]
    model = _prune(copy.deepcopy(vit), PruneConfig(macs_target=0.6, round_to=8), x)
    kept = count(model, (x[:1],))["macs"] / before
    assert 0.45 < kept <= 0.6
    assert [b.attn.num_heads for b in model.blocks] == [2, 2, 2]


def test_pruned_vit_saves_and_reloads_through_the_factory(vit, eval_data, tmp_path):
    x, _ = eval_data
    model = _prune(copy.deepcopy(vit), PruneConfig(ratio=0.5, round_to=8), x)
    save_transformed(model, tmp_path / "float_model.pt")
    rebuilt = load_transformed(_vit_module().build_model(), tmp_path / "float_model.pt")
    assert [b.attn.num_heads for b in rebuilt.blocks] == [2, 2, 2]
    assert rebuilt.blocks[0].attn.dim == 32 and rebuilt.blocks[0].attn.scale == HEAD_DIM ** -0.5
    with torch.no_grad():
        assert torch.allclose(rebuilt(x[:32]), model(x[:32]), atol=1e-6)


# ---------------------------------------------------------------- attention written other ways


class FusedAttention(nn.Module):
    """timm's layout: one qkv Linear, heads split by reshape + unbind."""

    def __init__(self, dim: int, num_heads: int, merge_by_input_width: bool):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.merge_by_input_width = merge_by_input_width

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1) @ v
        # timm merges the heads back to the input's width c: that only holds while heads * head_dim == c
        return self.proj(out.transpose(1, 2).reshape(b, n, c if self.merge_by_input_width else -1))


class TokenNet(nn.Module):
    def __init__(self, attention: nn.Module, dim: int = 32):
        super().__init__()
        self.embed, self.attn = nn.Linear(8, dim), attention
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        x = self.embed(x)
        x = x + self.attn(x)
        return self.head((x + self.mlp(x)).mean(1))


class OpaqueAttention(nn.Module):
    """Has num_heads but no q/k/v Linears the pruner can read."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_heads = 4
        self.mix = nn.Linear(dim, dim)

    def forward(self, x):
        return self.mix(x).reshape(x.shape[0], x.shape[1], self.num_heads, -1).flip(2).flatten(2)


def test_fused_qkv_attention_loses_whole_heads():
    torch.manual_seed(0)
    model, x = TokenNet(FusedAttention(32, 4, merge_by_input_width=False)), torch.randn(3, 6, 8)
    original = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the heads were pruned
        prune(model, (x[:1],), PruneConfig(ratio=0.5, round_to=8))
    assert (model.attn.num_heads, model.attn.head_dim) == (2, 8)
    q, k, v = model.attn.qkv.weight.chunk(3)
    q0, k0, v0 = original.attn.qkv.weight.chunk(3)
    heads = _kept_heads(q, q0, 8)
    assert len(set(heads)) == 2 and _kept_heads(k, k0, 8) == heads and _kept_heads(v, v0, 8) == heads
    assert model(x).shape == (3, 5)


@pytest.mark.parametrize("attention, reason", [
    (FusedAttention(32, 4, merge_by_input_width=True), "broke the model's forward"),
    (OpaqueAttention(32), "cannot prune the heads of OpaqueAttention"),
])
def test_attention_the_pruner_cannot_follow_keeps_its_width_with_a_warning(attention, reason):
    torch.manual_seed(0)
    model, x = TokenNet(attention), torch.randn(3, 6, 8)
    widths = [m.out_features for m in model.attn.modules() if isinstance(m, nn.Linear)]
    with pytest.warns(UserWarning, match=reason):
        prune(model, (x[:1],), PruneConfig(ratio=0.5, round_to=8))
    assert [m.out_features for m in model.attn.modules() if isinstance(m, nn.Linear)] == widths
    assert model.attn.num_heads == 4
    assert model.mlp[0].out_features == 32  # the rest of the model is still pruned
    assert model(x).shape == (3, 5)


# ---------------------------------------------------------------- the sample through the build


@pytest.fixture(scope="module")
def pruned_vit_build(tmp_path_factory) -> dict:
    from edgekit import api

    out = tmp_path_factory.mktemp("vit") / "vit_digits-rpi4"
    manifest = api.build(VIT_APP, "rpi4", api.recipe(prune=0.5, distill=True, distill_epochs=_distill_config().epochs), out=out)
    manifest["_out"] = out
    return manifest


def _distill_config():
    from edgekit.train.distill import DistillConfig

    return DistillConfig(epochs=6)  # 6 epochs: held-out accuracy is back above the unpruned model's


def _step(manifest: dict, stage: str) -> dict:
    return next(s for s in manifest["steps"] if s["stage"] == stage)


@pytest.mark.slow  # the ViT build with prune + 6 epochs of distillation: the digits CNN's runs by default
def test_vit_prune_distill_cuts_macs_and_keeps_int8_accuracy(pruned_vit_build):
    before, pruned, distilled = (_step(pruned_vit_build, s) for s in ("measure", "prune", "distill"))
    assert before["accuracy_float"] == pytest.approx(UNPRUNED_FLOAT_ACCURACY, abs=0.01)
    assert pruned["macs"] <= 0.55 * before["macs"]  # >= 45 % of the MACs gone
    assert pruned["params"] < 0.6 * before["params"]
    for step in (before, pruned, distilled):  # MACs, params and accuracy after every stage
        assert step["macs"] > 0 and step["params"] > 0 and step["accuracy_float"] is not None
    assert distilled["accuracy_float"] > pruned["accuracy_float"]
    assert pruned_vit_build["metrics"]["accuracy_artifact"] >= UNPRUNED_FLOAT_ACCURACY - 1.5


@pytest.mark.slow
def test_pruned_vit_reloads_in_a_fresh_process_and_exports_again(pruned_vit_build, tmp_path):
    """The factory-rebuilt model (its forward reshaping by the restored num_heads) quantizes and exports
    again; ONNX here because the digits test already re-exports a .pt2 program to ExecuTorch."""
    out = pruned_vit_build["_out"]
    script = textwrap.dedent(f"""
        import json, numpy as np, torch
        from edgekit.model.app import build_module, load_app
        from edgekit.formats import get_format
        from edgekit.formats.base import QuantConfig
        from edgekit.model.data import batches, load_npz
        from edgekit.model.saved import load_transformed

        spec = load_app({str(VIT_APP)!r})
        program = torch.export.load({str(out / 'float_model.pt2')!r}).module()
        rebuilt = load_transformed(build_module(spec), {str(out / 'float_model.pt')!r})
        x = torch.from_numpy(np.load({str(VIT_APP / 'eval.npz')!r})["x"][:16])
        with torch.no_grad():
            same = all(torch.allclose(program(x[i:i + 1]), rebuilt(x[i:i + 1]), atol=1e-5) for i in range(len(x)))
            batch = rebuilt(x).shape[0] == 16  # the reshapes follow the pruned head count at any batch
        backend = get_format("onnx")
        calib = load_npz(spec.calib, spec.inputs, "--calib", need_labels=False).take(32)
        q = backend.quantize(rebuilt, (x[:1],), batches(calib, spec.inputs), QuantConfig(input_names=("x",)))
        backend.export(q, (x[:1],), {str(tmp_path / 'again.onnx')!r})
        y = backend.load({str(tmp_path / 'again.onnx')!r}).run([x[:1].numpy()])[0]
        print(json.dumps({{"same": same, "batch": batch, "heads": [b.attn.num_heads for b in rebuilt.blocks],
                          "shape": list(y.shape), "agree": int(y.argmax(-1)[0]) == int(program(x[:1]).argmax(-1)[0])}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["same"] and result["batch"] and result["agree"]
    assert result["heads"] == [2, 2, 2]  # the pruned head count, not the factory's 4
    assert result["shape"] == [1, 10]
