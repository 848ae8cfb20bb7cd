"""The graph rewrites that keep a .pte on the XNNPACK delegate (formats/xnnpack_rewrites.py):
each exact, and each moving a real architecture's op from the portable kernels to the delegate."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.formats import executorch, xnnpack_rewrites
from edgekit.formats.base import QuantConfig, torch_export


class Means(nn.Module):
    """Global average pooling written four ways, and a mean the delegate cannot take."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return (y.mean((2, 3)) + y.mean((-1, -2)) + y.mean((2, 3), keepdim=True).flatten(1)
                + y.mean(1).mean((1, 2))[:, None])


def test_the_global_mean_rewrite_is_exact_and_leaves_other_means_alone():
    example = (torch.randn(2, 3, 12, 12),)
    model = Means().eval()
    graph = torch_export(model, example).module()
    records = xnnpack_rewrites.keep_on_delegate(graph, example)
    [record] = records
    assert len(record["nodes"]) == 2 and record["checked"] == "identical outputs on the example input"
    means = [n for n in graph.graph.nodes if n.target == torch.ops.aten.mean.dim]
    keepdims = sorted(bool(n.args[2]) if len(n.args) > 2 else False for n in means)
    assert keepdims == [False, False, True, True, True]  # the 3-D means keep theirs
    with torch.no_grad():
        assert torch.equal(graph(*example), model(*example))


def _lowered(model, example, tmp_path, name):
    calib = [(torch.randn_like(example[0]),) for _ in range(4)]
    qmodel = executorch.quantize(model, example, calib, QuantConfig())
    return executorch.export(qmodel, example, tmp_path / name)


class MeanPooled(nn.Module):
    """conv -> ReLU -> x.mean((2, 3)) -> Linear: a ResNet's head as it is usually written."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 16, 3), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


# MobileNetV3-Small is heavy here: tests/test_real_models.py builds it in every format in CI's slow job.
@pytest.mark.parametrize("architecture", ["mean-pooled head", pytest.param("mobilenet_v3_small", marks=pytest.mark.heavy)])
def test_a_mean_pooled_net_stays_on_the_delegate(architecture, tmp_path, monkeypatch):
    """x.mean((2, 3)) (MobileNetV3's reference code pools so): without the rewrite the mean runs on
    ExecuTorch's portable kernels; with it every op is delegated."""
    if architecture == "mobilenet_v3_small":
        from edgekit.zoo.mobilenet_v3 import build_model

        torch.manual_seed(0)
        model, example = build_model().eval(), (torch.randn(1, 3, 96, 96),)
    else:
        torch.manual_seed(0)
        model, example = MeanPooled().eval(), (torch.randn(1, 3, 16, 16),)
    lowering = _lowered(model, example, tmp_path, "model.pte")
    assert lowering["ops_outside_delegate"] == [], lowering["ops_outside_delegate"]
    assert [r["rewrite"] for r in lowering["rewrites"]] == [xnnpack_rewrites.REWRITES[0][0]]
    assert executorch.lint(tmp_path / "model.pte")["findings"] == []
    monkeypatch.setattr(xnnpack_rewrites, "REWRITES", [])
    monkeypatch.setattr(xnnpack_rewrites, "LOWERING_REWRITES", [])  # whose mean rewrite would take it after quantization
    plain = _lowered(model, example, tmp_path, "plain.pte")
    assert "mean" in plain["ops_outside_delegate"] and plain["rewrites"] == []


# ---------------------------------------------------------------- after quantization: float ops


class Encoder(nn.Module):
    """What the lowering rewrites take, each in a form users write: a LayerNorm over a 4-D
    channels-last tensor (ConvNeXt's), q, k, v unbound from one projection, SDPA with an explicit
    scale, without one, with a float and with a boolean mask, attention written out with 4-D
    matmuls, a class token selected, tokens mean-pooled, and a causal SDPA (a decoder's)."""

    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.heads, self.qkv, self.norm, self.norm4 = heads, nn.Linear(dim, 3 * dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, mask):
        n, t, c = x.shape
        y = self.norm4(x.reshape(n, 2, t // 2, c)).reshape(n, t, c)
        q, k, v = self.qkv(self.norm(y)).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3)
        b = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        masked = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        # a padding-style boolean mask: every query keeps at least its own key
        keep = (mask > 0) | torch.eye(t, dtype=torch.bool)
        bool_masked = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        causal = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        written_out = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * 0.25, dim=-1) @ v
        out = (a + b + masked + bool_masked + causal + written_out).transpose(1, 2).reshape(n, t, c)
        return out[:, 0] + out.mean(1)


def test_the_lowering_rewrites_compute_the_float_model():
    torch.manual_seed(0)
    model, example = Encoder().eval(), (torch.randn(2, 6, 16), torch.randn(2, 1, 6, 6))
    graph = torch_export(model, example).module()
    rewritten = copy.deepcopy(graph)
    records = xnnpack_rewrites.lower_float_ops(rewritten, copy.deepcopy(graph), example)
    assert {r["rewrite"]: len(r["nodes"]) for r in records} == {
        name: count for (name, *_), count in zip(xnnpack_rewrites.LOWERING_REWRITES, (2, 5, 1, 1, 2, 1))}
    assert all(r["checked"].startswith("on the float graph: outputs within") for r in records)
    sdpa = torch.ops.aten.scaled_dot_product_attention.default
    assert [n.target for n in rewritten.graph.nodes].count(sdpa) == 0  # the causal one too
    left = {n.target for n in rewritten.graph.nodes if n.op == "call_function"}
    assert not left & {torch.ops.aten.layer_norm.default, torch.ops.aten.select.int, torch.ops.aten.unbind.int,
                       torch.ops.aten.matmul.default}
    means = [n for n in rewritten.graph.nodes if n.target == torch.ops.aten.mean.dim]
    assert means and all(n.args[1] == [2, 3] and n.args[2] for n in means)  # every mean in the delegate's form
    unseen = (torch.randn(2, 6, 16) * 10, torch.randn(2, 1, 6, 6))  # not the example the check ran on
    with torch.no_grad():
        torch.testing.assert_close(rewritten(*unseen), model(*unseen), rtol=1e-4, atol=1e-4)


def test_a_causal_attention_over_a_longer_key_sequence_keeps_the_top_left_triangle():
    """is_causal with L != S (a decoder step over a cache): SDPA keeps keys j <= i, aligned at the top
    left; the rewrite's constant mask must do the same."""
    class Causal(nn.Module):
        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    example = (torch.randn(1, 2, 3, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8))
    graph = torch_export(Causal().eval(), example).module()
    rewritten = copy.deepcopy(graph)
    records = xnnpack_rewrites.lower_float_ops(rewritten, copy.deepcopy(graph), example)
    assert [r for r in records if r["nodes"]] and all(r["checked"].startswith("on the float graph") for r in records)
    unseen = tuple(torch.randn_like(t) for t in example)
    with torch.no_grad():
        torch.testing.assert_close(rewritten(*unseen), Causal()(*unseen), rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # ~40 s; the rewrites it relies on are tested one by one above, in the default run
def test_a_vision_transformer_stays_on_the_delegate_and_keeps_its_outputs(tmp_path, monkeypatch):
    """A DeiT-class ViT (F.scaled_dot_product_attention, nn.LayerNorm, a class token): the tutorial
    path leaves its layer norms, the attention's safe softmax and its copies on the portable kernels;
    with the rewrites every op is delegated, and the .pte in ExecuTorch computes what its quantized
    graph does in Python."""
    from edgekit.zoo.deit_tiny import build_small

    model, example = build_small(), (torch.randn(1, 3, 32, 32),)
    calib = [(torch.randn_like(example[0]),) for _ in range(4)]
    qmodel = executorch.quantize(model, example, calib, QuantConfig())
    lowering = executorch.export(qmodel, example, tmp_path / "vit.pte")
    assert lowering["ops_outside_delegate"] == [], lowering["ops_outside_delegate"]
    assert executorch.lint(tmp_path / "vit.pte")["findings"] == []
    assert {r["rewrite"] for r in lowering["rewrites"]} == {name for name, *_ in xnnpack_rewrites.LOWERING_REWRITES[:4]}

    runner = executorch.load(tmp_path / "vit.pte")
    held_out = [torch.randn_like(example[0]) for _ in range(8)]
    with torch.no_grad():
        simulated = torch.cat([qmodel(x) for x in held_out]).numpy()
        reference = torch.cat([model(x) for x in held_out])
    ran = torch.from_numpy(np.concatenate([runner.run([x.numpy()])[0] for x in held_out]))
    assert torch.nn.functional.cosine_similarity(ran, torch.from_numpy(simulated)).min() > 0.999
    assert torch.nn.functional.cosine_similarity(ran, reference).mean() > 0.99

    monkeypatch.setattr(xnnpack_rewrites, "LOWERING_REWRITES", [])
    plain = _lowered(model, example, tmp_path, "plain.pte")
    assert {"native_layer_norm", "where", "any", "select_copy"} <= set(plain["ops_outside_delegate"])



@pytest.mark.slow  # ~30 s; the transformer rewrites' own tests above stay in the default run
def test_a_trained_vit_written_out_keeps_its_accuracy_on_the_delegate(tmp_path):
    """The vit_digits sample (trained weights; attention written out with torch.matmul, LayerNorm,
    tokens mean-pooled) on real held-out digits: every op on the delegate, accuracy kept."""
    from conftest import REPO
    from edgekit import api

    m = api.build(REPO / "sample_apps" / "vit_digits", "rpi5", api.recipe(formats=("executorch",), quality="fast"),
                  out=tmp_path / "vit")
    record = m["formats"]["executorch"]
    assert record["lowering"]["ops_outside_delegate"] == [], record["lowering"]
    rewrites = {r["rewrite"] for r in record["lowering"]["rewrites"]}
    assert {name for name, *_ in xnnpack_rewrites.LOWERING_REWRITES} - rewrites == {
        xnnpack_rewrites.LOWERING_REWRITES[i][0] for i in (1, 2, 3)}  # no SDPA, class token or unbind in it
    assert record["gate"]["passed"]
    assert record["metrics"]["accuracy_artifact"] >= record["metrics"]["accuracy_float"] - 0.5, record["metrics"]


def test_a_rewrite_that_moves_the_float_outputs_is_not_applied():
    """A boolean mask that drops every key of one query: SDPA's safe softmax gives that row zeros,
    the additive mask an average of the dropped keys. The check on the float graph sees it, and the
    quantized graph keeps the original op; the record says why."""
    import torch.nn.functional as F

    class Dropped(nn.Module):
        def forward(self, q, mask):
            return F.scaled_dot_product_attention(q, q, q, attn_mask=mask)

    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    mask[..., 0, :] = False  # query 0 keeps no key
    example = (torch.randn(1, 2, 4, 8), mask)
    graph = torch_export(Dropped().eval(), example).module()
    quantized = copy.deepcopy(graph)  # stands in for the converted graph: the same ops
    [record] = xnnpack_rewrites.lower_float_ops(quantized, copy.deepcopy(graph), example)
    assert record["applied"] is False and "the artifact keeps these ops" in record["checked"]
    assert any(n.target == torch.ops.aten.scaled_dot_product_attention.default for n in quantized.graph.nodes)


class RMSNormed(nn.Module):
    """A decoder's norm as transformers' Llama writes it: the mean of squares over the last dim."""

    def __init__(self):
        super().__init__()
        self.weight, self.fc = nn.Parameter(torch.rand(16) + 0.5), nn.Linear(16, 16)

    def forward(self, x):
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.fc(self.weight * (x * torch.rsqrt(variance + 1e-5)))


def test_the_mean_rewrite_takes_a_decoders_norm_over_a_symbolic_token_count():
    """pool_means (the decoder .pte export's rewrite): the token count stays symbolic, the graph computes
    the same at token counts the export never saw, and the lowered program keeps no mean outside XNNPACK."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    torch.manual_seed(0)
    model = RMSNormed().eval()
    tokens = torch.export.Dim("tokens", min=1, max=64)
    program = torch.export.export(model, (torch.randn(1, 4, 16),), dynamic_shapes=({1: tokens},))
    [record] = xnnpack_rewrites.pool_means(program.graph_module)
    assert len(record["nodes"]) == 1
    [mean] = [n for n in program.graph_module.graph.nodes if n.target == torch.ops.aten.mean.dim]
    assert mean.args[1] == [2, 3] and mean.args[2]
    with torch.no_grad():
        for n in (1, 7, 64):
            x = torch.randn(1, n, 16)
            torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    outside = executorch._ops_outside_delegate(lowered.exported_program().graph_module)
    assert "mean" not in outside, outside
