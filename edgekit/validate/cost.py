"""Predicted latency on the target: a roofline-style cost model over the exported graph.

For every op (rows from `edgekit.validate.graph`):

    compute_s = MACs / (clock * MAC_PER_CYCLE[dtype, ISA] * CORE_EFFICIENCY[core] * KIND_EFFICIENCY[kind] * threads_eff)
              + int8 outputs * REQUANT_CYCLES_PER_OUTPUT / (clock * threads_eff)
    memory_s  = bytes moved / (mem_bandwidth * BANDWIDTH_EFFICIENCY)
    op_s      = max(compute_s, memory_s) + OP_OVERHEAD_S

and the model's latency is the sum over ops, plus the int8 <-> fp32 converts an
int8 artifact runs on the graph's edges between int8 ops and ops left float.
Ops outside the delegate run on ExecuTorch's portable (scalar, single-threaded)
kernels. The result is a range (point / BAND, point * BAND), wider for cores no
published figure calibrates.

Fitted: CORE_EFFICIENCY, one number per core, on the two published MobileNetV2
figures of that core (fp32 and int8; see PUBLISHED), and the k x k-conv factor
on one published ResNet-18 figure. The int8/fp32 ratio is NOT fitted: it
follows from MAC_PER_CYCLE (SIMD width, dot-product) and the bytes each dtype
moves, so the residual error on the published pairs is a real test of the
model's shape; two more published networks only check it (PUBLISHED_NETWORKS).
docs/cost_model.md shows the calibration.

Each format runs its int8 ops on its own kernel library on ARM (the format
module's ARM_KERNELS): XNNPACK (.pte, .tflite), ONNX Runtime's MLAS (.onnx),
QNNPACK (.ptl). KERNEL_LIBRARIES says what each one's inner loop does per
instruction and what an op costs to dispatch; the published figures are
XNNPACK's, so the other libraries' predictions get the wider band.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgekit.target import decode_limit_at
from edgekit.validate.graph import model_work

# --- ISA throughput per core per cycle (peak), from the cores' public microarchitecture docs ------
# fp32: Cortex-A72 and A76 have 2x128-bit NEON FMA pipes -> 2 x 4 lanes = 8 fp32 MAC/cycle
#   (Arm Cortex-A72 / A76 Software Optimization Guides: FMLA Q-form, throughput 2/cycle).
# int8 without dot-product (ARMv8.0): XNNPACK's QS8 GEMMs widen int8 to int16 and use SMULL/SMLAL2
#   (8 MACs each); on 2 pipes that is 16 int8 MAC/cycle at best.
# int8 with dot-product (ARMv8.2 SDOT): 16 MACs per 128-bit instruction, 2 pipes -> 32 MAC/cycle.
# Cortex-A53: 64-bit NEON datapath, a 128-bit op takes 2 cycles -> half the A72 figures
#   (A53 TRM: in-order, dual-issue, 64-bit NEON): ESTIMATE, not calibrated.
MAC_PER_CYCLE = {
    ("fp32", False): 8.0,
    ("int8", False): 16.0,
    ("int8", True): 32.0,
    ("fp32", True): 8.0,  # dot-product does not help fp32
}
NARROW_NEON_CORES = {"a53": 0.5}  # cores whose NEON datapath is 64-bit: scale the peak


@dataclass(frozen=True)
class KernelLibrary:
    """What one runtime's ARM kernels do, where it differs between libraries."""

    name: str
    int8_dotprod: bool  # has SDOT/UDOT GEMM kernels it picks where the core has them
    int8_mac_per_cycle_no_dot: float  # its int8 inner loop's peak without them (2 NEON pipes)
    op_overhead: float  # per-op dispatch, in units of OP_OVERHEAD_CYCLES (XNNPACK's = 1)
    calibrated: bool  # the PUBLISHED figures are this library's


KERNEL_LIBRARIES = {
    # The published figures' library (XNNPACK's qs8/qc8 GEMMs: SMULL/SMLAL on int8 lanes, 8 MACs per
    # instruction, or SDOT where the core has it): the peaks above as they are.
    "xnnpack": KernelLibrary("XNNPACK", True, 16.0, 1.0, True),
    # ONNX Runtime's MLAS on aarch64: MlasGemmU8X8KernelNeon (UMULL/UADALP on 8-bit lanes) and, on
    # ARMv8.2 cores, MlasGemmU8X8KernelUdot / S8S8KernelSdot: the same instruction mix as XNNPACK's.
    # Per-node dispatch through ORT's executor: ESTIMATE the same as XNNPACK's. No published figure.
    "mlas": KernelLibrary("MLAS", True, 16.0, 1.0, False),
    # PyTorch's QNNPACK (q8gemm/q8conv 4x8 and 8x8 NEON, 8x8 aarch64 assembly): uint8 widened to int16
    # with the zero point subtracted, then SMLAL by lane on 16-bit lanes: 4 MACs per instruction,
    # 8 per cycle on 2 pipes, and no dot-product kernels. Each op goes through TorchScript's
    # interpreter and the c10 dispatcher (boxed IValue calls): ESTIMATE twice XNNPACK's dispatch.
    "qnnpack": KernelLibrary("QNNPACK", False, 8.0, 2.0, False),
}


def int8_peak(lib: KernelLibrary, dotprod: bool) -> float:
    """int8 MACs per cycle per core (before NARROW_NEON_CORES) for this library on this core."""
    return MAC_PER_CYCLE[("int8", True)] if dotprod and lib.int8_dotprod else lib.int8_mac_per_cycle_no_dot


# --- what a real kernel reaches of that peak, per op kind (ESTIMATES, see docs/cost_model.md) -----
# Dense conv / linear are GEMMs: the reference (1.0); the fitted core efficiency scales it.
# Depthwise 3x3: 9 MACs per output from 9 loads with no reuse across channels, so it is
#   bound by load throughput (1 128-bit load/cycle vs 2 FMA/cycle on A72/A76) -> at most 0.5
#   of GEMM; XNNPACK's dwconv micro-kernels get about 2/3 of that -> 0.35.
# matmul between activations (attention): packed on the fly, ~0.7 of a weight GEMM.
# The base (1.0) is a GEMM over pre-packed weights: 1x1 convolutions and Linear layers, most of
# MobileNetV2's MACs, which CORE_EFFICIENCY is fitted on. A k x k convolution reaches more of the peak
# (XNNPACK's indirect GEMM reuses each loaded input row k*k times, K = 9 * C_in instead of C_in):
# `dense_conv` is FITTED on the published ResNet-18 figure (calibrate()). Attention's two matmuls
# and other activation x activation products are packed on the fly.
KIND_EFFICIENCY = {"pointwise_conv": 1.0, "linear": 1.0, "dense_conv": 1.465, "depthwise_conv": 0.35, "matmul": 0.7,
                   "attention": 0.7}
FITTED_KINDS = ("dense_conv",)  # the KIND_EFFICIENCY entries calibrate() fits (the rest are estimates)
# What XNNPACK computes in fp32 inside an int8 .pte: no quantizer annotates these (its BMM and softmax
# configs are FP32 only; layer norm, GELU, SiLU stay float), so they read, write and multiply in fp32.
# Charged so for every format: the other quantizers leave about the same ops float (ORT's QDQ may
# quantize a softmax), a difference within the uncalibrated formats' wider band.
FLOAT_KINDS = {"matmul", "attention"}
FLOAT_OPS = {"softmax", "_softmax", "layer_norm", "native_layer_norm", "gelu", "silu", "sigmoid", "tanh", "erf",
             "exp", "group_norm", "native_group_norm"}
# Requantization of every int8 output: the epilogue of XNNPACK's QS8/QC8 GEMM, conv and dwconv
# micro-kernels (FP32 requantization, e.g. src/qs8-gemm/c4-neondot.c.in). Per 4x16 output tile it is
# ~120 NEON instructions -- bias into the accumulators, SCVTF, FMUL by the per-channel scale, FCVTNS,
# SQXTN/SQXTN2 to int16, SQADD of the output zero point, SQXTN/SQXTN2 to int8, SMAX, SMIN, stores --
# ~60 cycles on two NEON pipes: ~1 cycle per output (ESTIMATE from that count, not fitted). It is paid
# once per output whatever the reduction length K, so a GEMM over a few channels (MobileNetV2's 1x1
# convs over 16-32) reaches less of the peak than one over hundreds (ResNet-50's).
REQUANT_CYCLES_PER_OUTPUT = 1.0
REQUANT_KINDS = {"pointwise_conv", "dense_conv", "depthwise_conv", "linear"}
# Where an int8 artifact hands a tensor between an int8 op and one left float (FLOAT_KINDS, FLOAT_OPS,
# or outside the delegate), a convert op runs (the PT2E graph's dequantize/quantize nodes, XNNPACK's
# convert): it reads the tensor in one dtype and writes it in the other, 1 + 4 bytes per element, and
# is dispatched like any op. A dequantize per use, one quantize per tensor, as PT2E places them.
CONVERT_BYTES_PER_ELEMENT = 1 + 4
# Cycles per element of a vectorized fp32 exp/erf/tanh (XNNPACK's polynomial microkernels: ~15-20
# NEON instructions per 4 lanes on 2 pipes) -- ESTIMATE. Scalar (portable kernels): 4 lanes fewer.
TRANSCENDENTAL_CYCLES = 2.5

# Sustained/theoretical DRAM bandwidth: STREAM-like copies on LPDDR4 SoCs reach ~40-60 % of the
# bus's theoretical peak (the Pi 4 profile's 12.8 GB/s is theoretical); ESTIMATE 0.5.
BANDWIDTH_EFFICIENCY = 0.5
# Multi-threaded GEMM scaling: XNNPACK's pthreadpool splits each op in tiles; with per-op barriers
# 4 threads give ~3.2x on MobileNet-sized layers (ESTIMATE 0.8 per added thread's share).
PARALLEL_EFFICIENCY = 0.8
# Per-op fixed cost: operator dispatch + threadpool barrier, ~10 us on a 1.8 GHz A72 (ESTIMATE),
# i.e. ~18k cycles: scaled by clock.
OP_OVERHEAD_CYCLES = 18_000
# Portable (non-delegated) ExecuTorch kernels: scalar C++, one thread: ~1 MAC/cycle (ESTIMATE).
PORTABLE_MAC_PER_CYCLE = 1.0
# ... and their element-wise work (layer norm, masks, means: no MACs, but not free): guest instructions
# per input element of ExecuTorch 1.5's portable kernels, counted on an emulated Cortex-A76 (edgekit's
# arm64 runner, one op per program, two sizes): layer_norm 18.6, mean 19.5, gt + zeros_like + where
# 42.3 (14 an op), add 2.5 (vectorized). At ~1.5 instructions per cycle for such scalar loops: ~10
# cycles per element for the kernels a lint finding names (ESTIMATE; the add is the exception).
PORTABLE_CYCLES_PER_ELEMENT = 10.0
# Ops XNNPACK fuses into the preceding conv/linear (folded batch norm, clamps): no cost of their own.
FUSED_OPS = {"batch_norm", "_native_batch_norm_legit_no_training", "relu", "relu_", "relu6", "hardtanh",
             "hardtanh_", "clamp", "_native_batch_norm_legit", "dropout"}

# --- calibration: fraction of the peak a whole network reaches on each core, fitted on PUBLISHED ----
# Fitted by `calibrate()` (geometric-mean fit of the two figures per core); `python -m
# edgekit.validate.cost` prints the fit and its residuals. Values are rounded to 3 digits.
CORE_EFFICIENCY = {"a72": 0.187, "a76": 0.613}
# A53 (Pi Zero 2): no published figure with our setup. In-order, dual-issue: Arm quotes the A72 at
# ~1.9x the A53's per-clock performance on general code -> ESTIMATE a72 / 1.9.
DERIVED_EFFICIENCY = {"a53": ("a72", 1 / 1.9)}
# Uncertainty band (multiplicative): the worst error over every published figure, the two networks no
# fit has seen included (ResNet-50 1.253x over, DeiT-tiny 1.13x under; docs/cost_model.md), rounded up:
# a band of 1.26^2 = 1.59x end to end. Two check networks are few: one unlike all four may fall
# outside it. Uncalibrated cores and kernel libraries get a wider band (no figure bounds them).
BAND_CALIBRATED = 1.26
BAND_DERIVED = 2.0

# The published figures (ENVIRONMENT.md "Published numbers"): MobileNetV2 1.0 224x224, all 4 cores.
PUBLISHED = [
    # (source, core, clock_ghz, dotprod, mem_bandwidth_gbs, dtype, ms)
    ("XNNPACK README, Raspberry Pi 4", "a72", 1.8, False, 12.8, "fp32", 46.0),
    ("XNNPACK README, Raspberry Pi 4", "a72", 1.8, False, 12.8, "int8", 17.0),
    ("ExecuTorch + XNNPACK, Raspberry Pi 5", "a76", 2.4, True, 17.0, "fp32", 10.9),
    ("ExecuTorch + XNNPACK, Raspberry Pi 5", "a76", 2.4, True, 17.0, "int8", 4.0),
]
# Other networks' published Raspberry Pi 5 figures: int8 ExecuTorch .pte on XNNPACK, p50 latency, Arm's
# model cards on Hugging Face (Arm/<name>-int8-xnnpack-executorch; Cortex-A76, Raspberry Pi OS 64-bit).
# (source, edgekit.zoo module, core, clock_ghz, dotprod, mem_bandwidth_gbs, dtype, ms)
# FITTED_KINDS are fitted on the first (the one k x k-conv network); the others only check the model.
PUBLISHED_NETWORKS = [
    ("Arm model card resnet-18-int8-xnnpack-executorch", "resnet18", "a76", 2.4, True, 17.0, "int8", 8.751),
    ("Arm model card resnet-50-int8-xnnpack-executorch", "resnet50", "a76", 2.4, True, 17.0, "int8", 20.64),
    ("Arm model card deit-tiny-int8-xnnpack-executorch", "deit_tiny", "a76", 2.4, True, 17.0, "int8", 26.40),
]
CALIBRATION_NETWORKS = PUBLISHED_NETWORKS[:1]


@dataclass(frozen=True)
class Machine:
    """The parts of a target profile the model reads."""

    core: str  # "a72", "a76", "a53"
    clock_ghz: float
    dotprod: bool
    mem_bandwidth_gbs: float
    threads: int

    @classmethod
    def from_target(cls, target) -> "Machine | None":
        core = core_class(target.cpu)
        if core is None:
            return None
        return cls(core, target.clock_ghz, target.features.dotprod, target.mem_bandwidth_gbs,
                   min(target.threads, target.cores))


def core_class(cpu: str) -> str | None:
    """'cortex-a72' -> 'a72'; None for cores the model knows nothing about (x86 hosts)."""
    cpu = cpu.lower()
    for core in ("a72", "a76", "a53"):
        if core in cpu:
            return core
    return None


def efficiency(core: str, fitted: dict | None = None) -> tuple[float, bool]:
    """(fraction of peak, calibrated?) for a core class; `fitted`: calibrate()'s result."""
    table = {k: v for k, v in (fitted or {}).items() if k not in FITTED_KINDS} or CORE_EFFICIENCY
    if core in table:
        return table[core], True
    base, scale = DERIVED_EFFICIENCY[core]
    return table[base] * scale, False


def op_seconds(row, dtype: str, delegated: bool, m: Machine, core_eff: float,
               lib: KernelLibrary = KERNEL_LIBRARIES["xnnpack"], kinds: dict | None = None) -> float:
    """Seconds for one op. `row` has kind, op, macs, weight_elems, in_elems, out_elems[, transcendental];
    `kinds`: KIND_EFFICIENCY entries to use instead (calibrate()'s)."""
    if row["kind"] == "view" or row["op"] in FUSED_OPS:
        return 0.0
    if dtype == "int8" and (row["kind"] in FLOAT_KINDS or row["op"] in FLOAT_OPS):
        dtype = "fp32"  # left float in an int8 artifact
    hz = m.clock_ghz * 1e9
    bytes_per = 1 if dtype == "int8" else 4
    moved = (row["weight_elems"] + row["in_elems"] + row["out_elems"]) * bytes_per
    memory_s = moved / (m.mem_bandwidth_gbs * 1e9 * BANDWIDTH_EFFICIENCY)
    overhead_s = OP_OVERHEAD_CYCLES * lib.op_overhead / hz
    curves = row.get("transcendental", 0) * TRANSCENDENTAL_CYCLES
    if not delegated:  # portable kernels: scalar fp32, one thread
        elementwise = 0 if row["macs"] else row["in_elems"] * PORTABLE_CYCLES_PER_ELEMENT
        return max((row["macs"] / PORTABLE_MAC_PER_CYCLE + elementwise + curves * 4) / hz, memory_s) + overhead_s
    peak = int8_peak(lib, m.dotprod) if dtype == "int8" else MAC_PER_CYCLE[(dtype, m.dotprod)]
    peak *= NARROW_NEON_CORES.get(m.core, 1.0)
    threads_eff = 1 + (m.threads - 1) * PARALLEL_EFFICIENCY
    rate = hz * peak * core_eff * {**KIND_EFFICIENCY, **(kinds or {})}.get(row["kind"], 1.0) * threads_eff
    compute_s = (row["macs"] / rate if row["macs"] else 0.0) + curves / (hz * threads_eff)
    if dtype == "int8" and row["kind"] in REQUANT_KINDS:
        compute_s += row["out_elems"] * REQUANT_CYCLES_PER_OUTPUT / (hz * NARROW_NEON_CORES.get(m.core, 1.0) * threads_eff)
    return max(compute_s, memory_s) + overhead_s


def runs_float(row, dtype: str, outside: set[str] = frozenset()) -> bool:
    """Whether an op computes in fp32: every op of a float artifact; in an int8 one, what no quantizer
    annotates (FLOAT_KINDS, FLOAT_OPS) and what runs outside the delegate."""
    return dtype != "int8" or row["kind"] in FLOAT_KINDS or row["op"] in FLOAT_OPS or row["op"] in outside


def conversions(rows: list[dict], dtype: str, outside: set[str] = frozenset()) -> dict[tuple, int]:
    """The int8 <-> fp32 converts an int8 artifact runs between its int8 ops and the ops it leaves
    float, found on the graph's edges (`inputs`; views and fused ops pass a tensor through):
    {(producer, consumer) for a dequantize, (producer, None) for a quantize: elements}."""
    if dtype != "int8":
        return {}
    by_name = {r["name"]: r for r in rows}

    def producers(row):
        for name in row.get("inputs", ()):
            p = by_name.get(name)
            if p is None:
                continue
            if p["kind"] == "view" or p["op"] in FUSED_OPS:
                yield from producers(p)
            else:
                yield p

    converted = {}  # (producer, consumer or None) -> elements: a dequantize per use, a quantize per tensor
    for row in rows:
        if row["kind"] == "view" or row["op"] in FUSED_OPS:
            continue
        consumer_float = runs_float(row, dtype, outside)
        for p in producers(row):
            if runs_float(p, dtype, outside) != consumer_float:
                converted[(p["name"], row["name"] if consumer_float else None)] = p["out_elems"]
    return converted


def conversion_seconds(rows: list[dict], dtype: str, m: Machine, outside: set[str] = frozenset(),
                       lib: KernelLibrary = KERNEL_LIBRARIES["xnnpack"]) -> float:
    """Seconds of the converts (conversions()): memory traffic and one dispatch each."""
    hz = m.clock_ghz * 1e9
    bandwidth = m.mem_bandwidth_gbs * 1e9 * BANDWIDTH_EFFICIENCY
    return sum(n * CONVERT_BYTES_PER_ELEMENT / bandwidth + OP_OVERHEAD_CYCLES * lib.op_overhead / hz
               for n in conversions(rows, dtype, outside).values())


def predict_ms(rows, dtype: str, m: Machine, outside: set[str] = frozenset(), fitted: dict | None = None,
               kernels: str = "xnnpack") -> float:
    """Point estimate in ms. `rows`: OpWork rows or their dicts; `outside`: op names the delegate did
    not take; `kernels`: the format's ARM kernel library (KERNEL_LIBRARIES)."""
    eff, _ = efficiency(m.core, fitted)
    lib = KERNEL_LIBRARIES[kernels]
    kinds = {k: v for k, v in (fitted or {}).items() if k in FITTED_KINDS}
    rows = [r if isinstance(r, dict) else r.to_json() for r in rows]
    total = sum(op_seconds(row, dtype, row["op"] not in outside, m, eff, lib, kinds) for row in rows)
    return (total + conversion_seconds(rows, dtype, m, outside, lib)) * 1e3


def predict(rows, dtype: str, target, outside: set[str] = frozenset(), kernels: str = "xnnpack") -> dict | None:
    """The manifest's `prediction`: {low_ms, high_ms, latency_ms, target, kernels, ...}; None for
    non-ARM targets. The band is the calibrated one only where both the core and the kernel
    library are the published figures'."""
    m = Machine.from_target(target)
    if m is None:
        return None
    lib = KERNEL_LIBRARIES[kernels]
    _, core_calibrated = efficiency(m.core)
    calibrated = core_calibrated and lib.calibrated
    band = BAND_CALIBRATED if calibrated else BAND_DERIVED
    point = predict_ms(rows, dtype, m, outside, kernels=kernels)
    macs = sum((r if isinstance(r, dict) else r.to_json())["macs"] for r in rows)
    return {
        "target": target.name, "latency_ms": round(point, 3),
        "low_ms": round(point / band, 3), "high_ms": round(point * band, 3),
        "dtype": dtype, "threads": m.threads, "macs": macs, "core": m.core, "kernels": lib.name,
        "calibrated": calibrated, "source": "edgekit cost model (docs/cost_model.md)",
    }


# --- calibration -----------------------------------------------------------------------------------


def zoo_rows(name: str) -> list[dict]:
    """Per-op work of an edgekit.zoo network at 224x224 (the published figures' input)."""
    import importlib

    import torch

    model = importlib.import_module(f"edgekit.zoo.{name}").build_model()
    return [r.to_json() for r in model_work(model, (torch.zeros(1, 3, 224, 224),))]


def mobilenet_v2_rows():
    """Per-op work of the standard MobileNetV2 1.0 at 224x224 (the published figures' network)."""
    return zoo_rows("mobilenet_v2")


def _machine(entry) -> Machine:
    _, core, clock, dotprod, bw, _, _ = entry
    return Machine(core, clock, dotprod, bw, threads=4)


def _network_machine(entry) -> Machine:
    _, _, core, clock, dotprod, bw, _, _ = entry
    return Machine(core, clock, dotprod, bw, threads=4)


def calibrate(rows, networks: dict | None = None) -> dict:
    """Fit CORE_EFFICIENCY on the MobileNetV2 figures (`rows`: its work) and the FITTED_KINDS on
    CALIBRATION_NETWORKS (`networks`: name -> rows, made from the zoo when not given): per core the
    efficiency whose predictions match its figures in geometric mean, then the k x k-conv factor on
    its network, in turns until both settle. Latency is ~1/efficiency where compute dominates, so a
    few fixed-point rounds of the log-mean ratio converge."""
    networks = networks or {e[1]: zoo_rows(e[1]) for e in CALIBRATION_NETWORKS}
    fitted = {"dense_conv": KIND_EFFICIENCY["dense_conv"]}
    for _ in range(8):
        for core in sorted({e[1] for e in PUBLISHED}):
            entries = [e for e in PUBLISHED if e[1] == core]
            eff = fitted.get(core, 0.2)
            for _ in range(30):
                ratios = [predict_ms(rows, e[5], _machine(e), fitted={**fitted, core: eff}) / e[6] for e in entries]
                eff *= math.exp(sum(math.log(r) for r in ratios) / len(ratios))
            fitted[core] = eff
        for e in CALIBRATION_NETWORKS:
            for _ in range(30):  # a k x k conv's time is ~1 / its factor: the same fixed point
                ratio = predict_ms(networks[e[1]], e[6], _network_machine(e), fitted=fitted) / e[7]
                fitted["dense_conv"] *= ratio
    return fitted


def network_table(fitted: dict | None = None, entries=PUBLISHED_NETWORKS, networks: dict | None = None) -> list[dict]:
    """Each published network figure with the model's prediction, range and error ratio."""
    out = []
    for e in entries:
        rows = (networks or {}).get(e[1]) or zoo_rows(e[1])
        point = predict_ms(rows, e[6], _network_machine(e), fitted=fitted)
        out.append({"source": e[0], "network": e[1], "core": e[2], "dtype": e[6], "published_ms": e[7],
                    "predicted_ms": round(point, 2), "low_ms": round(point / BAND_CALIBRATED, 2),
                    "high_ms": round(point * BAND_CALIBRATED, 2), "ratio": round(point / e[7], 3),
                    "use": "calibration" if e in CALIBRATION_NETWORKS else "check"})
    return out


def calibration_table(rows, fitted: dict | None = None) -> list[dict]:
    """Each published figure with the model's prediction, range and error ratio."""
    out = []
    for e in PUBLISHED:
        m = _machine(e)
        point = predict_ms(rows, e[5], m, fitted=fitted)
        out.append({"source": e[0], "core": e[1], "dtype": e[5], "published_ms": e[6],
                    "predicted_ms": round(point, 2), "low_ms": round(point / BAND_CALIBRATED, 2),
                    "high_ms": round(point * BAND_CALIBRATED, 2), "ratio": round(point / e[6], 3)})
    return out


if __name__ == "__main__":  # python -m edgekit.validate.cost: refit and show the table in docs/cost_model.md
    rows = mobilenet_v2_rows()
    fitted = calibrate(rows)
    print("fitted CORE_EFFICIENCY and KIND_EFFICIENCY:", {k: round(v, 3) for k, v in fitted.items()})
    print("| figure | dtype | published ms | predicted ms (range) | predicted / published |")
    print("|---|---|---|---|---|")
    for r in calibration_table(rows):
        print(f"| {r['source']} | {r['dtype']} | {r['published_ms']} | {r['predicted_ms']} "
              f"({r['low_ms']}–{r['high_ms']}) | {r['ratio']} |")
    print()
    print("| figure | network | used for | published ms | predicted ms (range) | predicted / published |")
    print("|---|---|---|---|---|---|")
    for r in network_table():
        print(f"| {r['source']} | {r['network']} | {r['use']} | {r['published_ms']} | {r['predicted_ms']} "
              f"({r['low_ms']}–{r['high_ms']}) | {r['ratio']} |")


def decode_limit(bytes_per_token: dict, target) -> dict:
    """The most decode tokens/s the target's memory allows: each generated token reads every weight
    once and the KV cache, so tokens/s <= bandwidth / bytes per token. At the theoretical peak
    bandwidth (the profile's mem_bandwidth_gbs), not BANDWIDTH_EFFICIENCY's share: a physical limit,
    not a prediction. Models small enough to stay in the caches can beat it; large ones approach it."""
    total = sum(bytes_per_token.values())
    return {"tokens_per_s": decode_limit_at(target.mem_bandwidth_gbs, total), "bytes_per_token": total,
            "mem_bandwidth_gbs": target.mem_bandwidth_gbs}
