"""Deployability lint: what in the artifact will not run on the fast int8 kernels of the target.

Read from the artifact itself (what the device will execute), not from the model:

  .pte   ops the XNNPACK delegate did not take: they run on ExecuTorch's portable
         kernels (scalar C++, one thread, fp32), found as KernelCalls in the program
  .onnx  compute ops not between DequantizeLinear and QuantizeLinear: ORT's CPU
         provider runs them in float (no QDQ fusion)
  .ptl   compute ops left as aten:: float ops next to quantized:: ones (QNNPACK
         takes only the quantized:: ones)

Dynamic input shapes are findings too (`dynamic_shape`): a `.pte` input whose
tensor is not STATIC in the program, an `.onnx` input with a symbolic or
missing dim. edgekit's own builds export fixed shapes; this catches artifacts
made elsewhere and models whose export let a dim float.

Each finding has one line of advice. With the model's per-op work (graph.py) the
lint also gives the share of MACs on the fast path.
"""

from __future__ import annotations

from pathlib import Path

# Names of the exported graph's ops for the same computation as the artifact's op names.
ALIASES = {"convolution": "conv2d", "_convolution": "conv2d", "addmm": "linear", "mm": "linear",
           "Conv": "conv2d", "Gemm": "linear", "MatMul": "linear", "ConvTranspose": "conv_transpose2d"}
# The float graph's op names an artifact op may come from (cost model: which rows run off the fast path).
# Coarse on purpose: a 3-D conv left outside also marks the model's 2-D convs as outside, erring slow.
GRAPH_NAMES = {"convolution": {"conv1d", "conv2d", "conv3d"}, "_convolution": {"conv1d", "conv2d", "conv3d"},
               "addmm": {"linear", "addmm"}, "mm": {"linear", "mm", "matmul"}}


def graph_names(ops) -> set[str]:
    out = set()
    for op in ops:
        out |= GRAPH_NAMES.get(op, {op})
    return out
# Ops that cost real arithmetic: left in float they matter; elementwise leftovers matter less.
COMPUTE_OPS = {"conv1d", "conv2d", "conv3d", "convolution", "linear", "addmm", "mm", "matmul", "bmm", "lstm", "gru",
               "conv_transpose2d", "embedding_bag", "einsum", "baddbmm"}
ONNX_COMPUTE = {"Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "Attention", "Einsum"}
# Pure data movement: a QDQ chain stays quantized through these.
ONNX_PASSTHROUGH = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Shape", "Gather",
                    "Slice", "Concat", "Cast", "Constant"}
NOT_COMPUTE_PTE = {"quantize_per_tensor", "dequantize_per_tensor", "_to_dim_order_copy", "_clone_dim_order"}

ADVICE = {
    "cumsum": "XNNPACK has no cumsum: compute it outside the model, or as a matmul with a triangular ones matrix",
    "sort": "sorting stays on portable kernels: do it after the model (e.g. top-k in the app)",
    "topk": "top-k stays on portable kernels: run it on the outputs in the app",
    "embedding": "embedding lookups are not delegated (cheap gathers); fine unless the table is large",
    "index": "advanced indexing is not delegated: use slicing, or move it out of forward()",
    "grid_sampler_2d": "grid_sample is not delegated: precompute the grid or resample outside the model",
    "native_layer_norm": "layer norm outside XNNPACK: check the export kept it as one op (affine, last dim)",
}
GENERIC_PTE = ("runs on ExecuTorch's portable kernels (scalar, one thread): replace it with ops XNNPACK takes "
               "(conv, linear, add/mul, pooling, clamp/relu, softmax) or move it out of forward()")
ONNX_ADVICE = ("runs in float on ORT's CPU provider: quantize it (check quantize_static's op_types_to_quantize) "
               "or keep it if it is cheap")
PTL_ADVICE = ("runs in float in the lite interpreter: make it a quantizable module (nn.Conv2d/nn.Linear, not a "
              "functional call) so FX quantization replaces it with a quantized:: op")


def lint(artifact: Path, work: list[dict] | None = None) -> dict:
    """Findings for one artifact; `work` (rows of graph.model_work as dicts) adds MAC shares."""
    suffix = Path(artifact).suffix
    if suffix == ".pte":
        findings, fast = _pte(Path(artifact))
    elif suffix == ".onnx":
        findings, fast = _onnx(Path(artifact))
    elif suffix == ".ptl":
        findings, fast = _ptl(Path(artifact))
    else:
        return {"findings": [], "checked": False, "why": f"no lint for {suffix} artifacts"}
    findings = findings + _dynamic_inputs(Path(artifact))
    doc = {"checked": True, "fast_path": fast, "findings": findings,
           "ops_outside": sorted({f["op"] for f in findings if f["op"] != DYNAMIC})}
    if work is not None:
        doc.update(_mac_share(work, findings))
    return doc


DYNAMIC = "dynamic_shape"
DYNAMIC_ADVICE = {
    ".pte": ("ExecuTorch plans memory for the upper bound and XNNPACK rebuilds its operators whenever the shape "
             "changes: export with the shape the device feeds (--input-shape) unless it really varies"),
    ".onnx": ("ONNX Runtime's mobile execution providers (XNNPACK, NNAPI) take fixed shapes only, and so do the native "
              "benchmark tools: fix it (python -m onnxruntime.tools.make_dynamic_shape_fixed) or export with --input-shape"),
}


def _dynamic_inputs(path: Path) -> list[dict]:
    """One finding per input with a dim that is not fixed in the artifact."""
    if path.suffix == ".pte":
        names = _pte_dynamic_inputs(path)
    elif path.suffix == ".onnx":
        names = _onnx_dynamic_inputs(path)
    else:
        return []  # the lite interpreter takes any shape its TorchScript graph takes
    return [{**_finding(DYNAMIC, 1, DYNAMIC_ADVICE[path.suffix], f"input {name}"), "macs": 0} for name in names]


def _pte_dynamic_inputs(path: Path) -> list[str]:
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(path.read_bytes()).program
    found = []
    for plan in program.execution_plan:
        for n, index in enumerate(plan.inputs):
            val = plan.values[index].val
            dynamism = getattr(val, "shape_dynamism", None)
            if dynamism is not None and int(getattr(dynamism, "value", dynamism)) != 0:  # 0: TensorShapeDynamism.STATIC
                found.append(f"{n} of {plan.name} (sizes {list(val.sizes)} at most)")
    return found


def _onnx_dynamic_inputs(path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    found = []
    for i in graph.input:
        if i.name in initializers:
            continue
        dims = i.type.tensor_type.shape.dim
        loose = [f"dim {k} '{d.dim_param}'" if d.dim_param else f"dim {k} unknown"
                 for k, d in enumerate(dims) if not d.HasField("dim_value")]
        if loose:
            found.append(f"{i.name} ({', '.join(loose)})")
    return found


def _mac_share(work: list[dict], findings: list[dict]) -> dict:
    """Share of the model's MACs on the fast path. The artifact's own MACs per finding where the
    format records sizes (.pte); else the float graph's MACs of ops with the same name."""
    total = sum(r["macs"] for r in work)
    if all("macs" in f for f in findings):
        slow = sum(f["macs"] for f in findings)
    else:
        names = {ALIASES.get(f["op"], f["op"]) for f in findings}
        slow = sum(r["macs"] for r in work if ALIASES.get(r["op"], r["op"]) in names)
    return {"macs_total": total, "macs_outside": slow,
            "macs_fast_share": round(max(0.0, 1.0 - slow / total), 4) if total else None}


def _finding(op: str, count: int, advice: str, where: str) -> dict:
    return {"op": op, "count": count, "where": where, "advice": advice}


# --- .pte -----------------------------------------------------------------------------------------


def pte_ops_outside(path: Path) -> dict[str, dict]:
    """{op short name: {"count", "macs"}} for KernelCalls outside every delegate.

    MACs are read from the program's own tensor sizes: convolution: out elements x
    weight elements per output channel; linear/mm/addmm/bmm: out elements x the
    input's last dim; other ops: 0 (elementwise, data movement).
    """
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(path.read_bytes()).program
    found: dict[str, dict] = {}
    for plan in program.execution_plan:
        for chain in plan.chains:
            for ins in chain.instructions:
                args = ins.instr_args
                if type(args).__name__ != "KernelCall":
                    continue
                name = plan.operators[args.op_index].name.split("::")[-1]
                if name in NOT_COMPUTE_PTE:
                    continue
                row = found.setdefault(name, {"count": 0, "macs": 0})
                row["count"] += 1
                row["macs"] += _kernel_macs(name, [_sizes(plan.values[i].val) for i in args.args])
    return found


def _sizes(val) -> list[int] | None:
    sizes = getattr(val, "sizes", None)
    return list(sizes) if sizes is not None else None


def _kernel_macs(name: str, sizes: list) -> int:
    import math

    tensors = [s for s in sizes if s is not None]
    if len(tensors) < 2:
        return 0
    out = math.prod(tensors[-1])  # out-variant kernels take their output last
    if name in ("convolution", "_convolution"):
        return out * math.prod(tensors[1][1:])  # weight (Cout, Cin/groups, k...)
    if name in ("linear", "mm", "addmm", "bmm", "matmul"):
        x = tensors[1] if name == "addmm" else tensors[0]
        return out * x[-1]
    return 0


def _pte(path: Path):
    found = pte_ops_outside(path)
    findings = [{**_finding(op, r["count"], ADVICE.get(op, GENERIC_PTE), "ExecuTorch portable kernels"), "macs": r["macs"]}
                for op, r in sorted(found.items())]
    return findings, "XNNPACK delegate"


# --- .onnx ----------------------------------------------------------------------------------------


def _onnx(path: Path):
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    initializers = {i.name for i in graph.initializer}

    def from_dq(name: str, depth=0) -> bool:
        if name in initializers or not name:
            return True  # weights/biases: ORT quantizes them with the op when the activations are QDQ
        n = producer.get(name)
        if n is None or depth > 8:
            return False
        if n.op_type == "DequantizeLinear":
            return True
        return n.op_type in ONNX_PASSTHROUGH and from_dq(n.input[0], depth + 1)

    def into_q(name: str, depth=0) -> bool:
        users = consumers.get(name, [])
        if not users or depth > 8:
            return False
        return all(u.op_type == "QuantizeLinear" or (u.op_type in ONNX_PASSTHROUGH and all(into_q(o, depth + 1) for o in u.output))
                   for u in users)

    counts: dict[str, list[str]] = {}
    for n in graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") or n.op_type in ONNX_PASSTHROUGH:
            continue
        data_inputs = [i for i in n.input if i and i not in initializers]
        quantized = all(from_dq(i) for i in data_inputs) and all(into_q(o) for o in n.output)
        if not quantized and (n.op_type in ONNX_COMPUTE or data_inputs):
            counts.setdefault(n.op_type, []).append(n.name)
    findings = [_finding(op, len(names), ONNX_ADVICE, "ONNX Runtime CPU, float") for op, names in sorted(counts.items())]
    return findings, "QDQ int8 kernels"


# --- .ptl -----------------------------------------------------------------------------------------


def _ptl(path: Path):
    from torch.jit.mobile import _export_operator_list, _load_for_lite_interpreter

    ops = _export_operator_list(_load_for_lite_interpreter(str(path)))
    findings = []
    for full in sorted(ops):
        ns, _, rest = full.partition("::")
        op = rest.split(".")[0]
        if ns == "aten" and op in COMPUTE_OPS:
            findings.append(_finding(op, 1, PTL_ADVICE, "lite interpreter, float"))
    return findings, "QNNPACK quantized ops"
