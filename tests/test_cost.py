"""The cost model against the published MobileNetV2 figures it is calibrated on (docs/cost_model.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.target import load_target
from edgekit.validate import cost
from edgekit.validate.graph import model_work

DOC = Path(__file__).resolve().parent.parent / "docs" / "cost_model.md"


@pytest.fixture(scope="module")
def mnv2_rows():
    return cost.mobilenet_v2_rows()


def test_mobilenet_v2_is_the_standard_network(mnv2_rows):
    macs = sum(r["macs"] for r in mnv2_rows)
    assert 295e6 < macs < 305e6  # the paper's 300 M multiply-adds at 224x224, width 1.0
    assert sum(r["kind"] == "depthwise_conv" for r in mnv2_rows) == 17


@pytest.mark.parametrize("entry", cost.PUBLISHED, ids=lambda e: f"{e[1]}-{e[5]}")
def test_prediction_within_1_5x_of_published(mnv2_rows, entry):
    row = next(r for r in cost.calibration_table(mnv2_rows) if r["core"] == entry[1] and r["dtype"] == entry[5])
    assert 1 / 1.5 <= row["ratio"] <= 1.5, row
    assert row["low_ms"] <= entry[6] <= row["high_ms"], row  # the range holds the published figure


@pytest.fixture(scope="module")
def networks():
    return {e[1]: cost.zoo_rows(e[1]) for e in cost.PUBLISHED_NETWORKS}


def test_stored_efficiencies_are_the_fit(mnv2_rows, networks):
    """CORE_EFFICIENCY and the fitted KIND_EFFICIENCY entries must be what calibrate() gives today: a
    change to the model's shape (factors, op accounting) without refitting fails here."""
    fitted = cost.calibrate(mnv2_rows, networks)
    for core, value in cost.CORE_EFFICIENCY.items():
        assert fitted[core] == pytest.approx(value, rel=0.02), (core, fitted[core])
    for kind in cost.FITTED_KINDS:
        assert fitted[kind] == pytest.approx(cost.KIND_EFFICIENCY[kind], rel=0.02), (kind, fitted[kind])


@pytest.mark.parametrize("entry", cost.PUBLISHED_NETWORKS, ids=lambda e: e[1])
def test_other_networks_published_on_the_pi5_within_1_5x(networks, entry):
    """ResNet-18 calibrates the k x k-conv factor; ResNet-50 and a DeiT-tiny-class ViT (whose
    attention matmuls, softmax, GELU and layer norms run in fp32 inside an int8 .pte) only check
    the model: their figures were fitted on by nothing."""
    [row] = cost.network_table(entries=[entry], networks=networks)
    assert 1 / 1.5 <= row["ratio"] <= 1.5, row
    assert row["low_ms"] <= entry[7] <= row["high_ms"], row


def test_attention_is_counted(networks):
    """DeiT-Ti is 1.26 GMACs in its paper (Touvron et al., 2021, Table 1): q k^T and the
    probabilities times v are in it, and their softmax's exponentials are charged."""
    rows = networks["deit_tiny"]
    assert 1.2e9 < sum(r["macs"] for r in rows) < 1.3e9
    attention = [r for r in rows if r["kind"] == "attention"]
    assert len(attention) == 12 and all(r["transcendental"] == 3 * 197 * 197 for r in attention)


def test_band_is_what_the_checks_justify(mnv2_rows, networks):
    """The calibrated band is the worst error over every published figure (the two networks no fit has
    seen included), rounded up, no wider -- and at most 1.6x end to end."""
    table = cost.calibration_table(mnv2_rows) + cost.network_table(networks=networks)
    worst = max(max(r["ratio"], 1 / r["ratio"]) for r in table)
    assert worst <= cost.BAND_CALIBRATED < worst + 0.01, (worst, cost.BAND_CALIBRATED)
    assert cost.BAND_CALIBRATED ** 2 <= 1.6


def _rows(model, shape):
    import torch

    return [r.to_json() for r in model_work(model, (torch.randn(*shape),))]


def test_converts_are_charged_where_int8_meets_float():
    """A layer norm between two int8 Linears costs a dequantize into it and a quantize out of it; a
    ReLU (fused into the Linear) costs none; a float artifact none."""
    import torch

    ln = _rows(torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 8)), (4, 64))
    relu = _rows(torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)), (4, 64))
    converts = cost.conversions(ln, "int8")
    linear, norm = (next(r["name"] for r in ln if r["op"] == op) for op in ("linear", "layer_norm"))
    assert converts == {(linear, norm): 4 * 32, (norm, None): 4 * 32}
    assert cost.conversions(relu, "int8") == {} and cost.conversions(ln, "fp32") == {}
    m = cost.Machine.from_target(load_target("rpi5"))
    assert cost.conversion_seconds(ln, "int8", m) > 0
    # an op outside the delegate runs in float too: converts on both sides of it
    assert len(cost.conversions(relu, "int8", outside={"relu"})) == 0  # fused: passes through
    assert len(cost.conversions(ln, "int8", outside={"linear"})) == 0  # everything float: no int8 left


def test_requantization_makes_short_reductions_cost_more_per_mac():
    """The same MACs over K = 16 (many outputs) take longer in int8 than over K = 1024 (few): each
    output is requantized once, whatever K (REQUANT_CYCLES_PER_OUTPUT)."""
    m = cost.Machine.from_target(load_target("rpi5"))
    eff, _ = cost.efficiency(m.core)
    macs = 2 ** 24
    short = {"kind": "linear", "op": "linear", "macs": macs, "weight_elems": 16 * 64, "in_elems": macs // 64,
             "out_elems": macs // 16}
    long = {"kind": "linear", "op": "linear", "macs": macs, "weight_elems": 1024 * 64, "in_elems": macs // 64,
            "out_elems": macs // 1024}
    assert cost.op_seconds(short, "int8", True, m, eff) > 1.2 * cost.op_seconds(long, "int8", True, m, eff)


def test_int8_ratio_is_not_fitted_yet_close(mnv2_rows):
    """Only one number per core is fitted; the int8 speed-up comes from the ISA tables."""
    table = {(r["core"], r["dtype"]): r for r in cost.calibration_table(mnv2_rows)}
    for core in ("a72", "a76"):
        predicted = table[(core, "fp32")]["predicted_ms"] / table[(core, "int8")]["predicted_ms"]
        published = table[(core, "fp32")]["published_ms"] / table[(core, "int8")]["published_ms"]
        assert 1 / 1.5 < predicted / published < 1.5


def test_predict_on_profiles(mnv2_rows):
    rpi4, rpi5, zero = (cost.predict(mnv2_rows, "int8", load_target(t)) for t in ("rpi4", "rpi5", "pi-zero2"))
    assert rpi5["latency_ms"] < rpi4["latency_ms"] < zero["latency_ms"]
    assert rpi4["calibrated"] and not zero["calibrated"]
    assert zero["high_ms"] / zero["low_ms"] > rpi4["high_ms"] / rpi4["low_ms"]  # wider when not calibrated
    assert cost.predict(mnv2_rows, "int8", load_target("host")) is None  # no model of x86 cores


def test_ops_off_the_delegate_cost_more(mnv2_rows):
    m = cost.Machine.from_target(load_target("rpi4"))
    assert cost.predict_ms(mnv2_rows, "int8", m, outside={"conv2d"}) > 5 * cost.predict_ms(mnv2_rows, "int8", m)


def test_elementwise_ops_off_the_delegate_are_not_free():
    """A layer norm left on ExecuTorch's portable kernels (scalar, one thread, ~10 cycles an element) costs
    far more than the same op on the delegate, though it has no MACs."""
    import torch

    block = torch.nn.Sequential(torch.nn.Linear(192, 192), torch.nn.LayerNorm(192), torch.nn.Linear(192, 192))
    rows = _rows(block, (197, 192))
    m = cost.Machine.from_target(load_target("rpi5"))
    on, off = (cost.predict_ms(rows, "int8", m, outside=o) for o in (frozenset(), {"layer_norm"}))
    norm = next(r for r in rows if r["op"] == "layer_norm")
    scalar_ms = norm["in_elems"] * cost.PORTABLE_CYCLES_PER_ELEMENT / (m.clock_ghz * 1e9) * 1e3
    assert off - on > 0.5 * scalar_ms and off > 1.4 * on  # minus what the op cost on the delegate


def test_doc_shows_the_calibration(mnv2_rows):
    text = DOC.read_text()
    for e in cost.PUBLISHED:
        assert f"| {e[6]} |" in text, e  # every published figure is in the doc's table
    for e in cost.PUBLISHED_NETWORKS:
        assert f"| {e[7]} |" in text, e
    for core, value in cost.CORE_EFFICIENCY.items():
        assert f"{value}" in text, core
    for kind in cost.FITTED_KINDS:
        assert f"{cost.KIND_EFFICIENCY[kind]}" in text, kind


def test_each_format_is_predicted_by_its_own_kernel_library(mnv2_rows):
    """QNNPACK's int8 loop does 4 MACs per instruction and has no dot-product kernels, MLAS has the
    same instruction mix as XNNPACK but no published figure: each format's prediction says so."""
    from edgekit.formats import all_formats

    assert {f.ARM_KERNELS for f in all_formats()} <= set(cost.KERNEL_LIBRARIES)
    for target, at_least in (("rpi5", 2.5), ("rpi4", 1.5)):  # 32 vs 8 MAC/cycle with SDOT; 16 vs 8 without
        pte, onnx, ptl = (cost.predict(mnv2_rows, "int8", load_target(target), kernels=k)
                          for k in ("xnnpack", "mlas", "qnnpack"))
        assert ptl["latency_ms"] > at_least * pte["latency_ms"], (target, pte, ptl)
        assert onnx["latency_ms"] == pte["latency_ms"] and pte["calibrated"] and not onnx["calibrated"]
        assert onnx["high_ms"] / onnx["low_ms"] > pte["high_ms"] / pte["low_ms"]  # uncalibrated: the wider band
        assert (pte["kernels"], onnx["kernels"], ptl["kernels"]) == ("XNNPACK", "MLAS", "QNNPACK")
