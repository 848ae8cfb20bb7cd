"""Per-op work of a model, read from its exported graph: MACs and tensor sizes.

The float model is captured with `torch.export` (the same capture the backends
lower), and every call in the graph becomes one row. Shapes come from the
graph's own fake-tensor metadata, so nothing is run. The cost model and the
lint both read these rows; the dtype an op runs in (int8/fp32) and whether a
delegate takes it are decided by the caller from the artifact, not here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

# Ops that only move or reinterpret data: no arithmetic, and XNNPACK/ORT fold most
# of them into their neighbours' memory layout.
VIEW_OPS = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "permute", "transpose", "t", "contiguous",
            "expand", "alias", "clone", "detach", "_assert_tensor_metadata", "dropout", "getitem", "lift_fresh_copy"}
# Ops that evaluate an exp, erf or tanh per output element (a polynomial of a few dozen instructions).
TRANSCENDENTAL_OPS = {"softmax", "_softmax", "log_softmax", "_log_softmax", "gelu", "silu", "sigmoid", "tanh", "erf",
                      "exp", "elu", "mish"}
POOL_OPS = {"max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "mean", "max_pool2d_with_indices"}


@dataclass
class OpWork:
    name: str  # the graph node's name ("conv2d_3")
    op: str  # the aten op's short name ("conv2d")
    # pointwise_conv (1x1), dense_conv (k x k), depthwise_conv, linear, matmul (activation x
    # activation), attention (scaled_dot_product_attention), elementwise, pool, view, other
    kind: str
    macs: int  # multiply-accumulates
    weight_elems: int  # parameters read (0 for activations-only ops)
    in_elems: int  # activation elements read
    out_elems: int  # activation elements written
    transcendental: int = 0  # elements through an exp/erf/tanh (softmax, GELU, SiLU, sigmoid, tanh)
    inputs: tuple[str, ...] = ()  # names of the rows whose outputs this op reads (its producers)

    def to_json(self) -> dict:
        return asdict(self)


def model_work(model, example_inputs: tuple) -> list[OpWork]:
    """One row per op of `model` captured with torch.export on `example_inputs`."""
    import torch

    try:
        model = model.eval()
    except NotImplementedError:
        pass  # a module from torch.export.load(...).module() is already in eval form and refuses eval()
    with torch.no_grad():
        program = torch.export.export(model, tuple(example_inputs), strict=False)
    return graph_work(program.graph_module.graph)


def graph_work(graph) -> list[OpWork]:
    rows = []
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        op = short_name(node.target)
        out = _numel(node.meta.get("val"))
        ins = [a for a in node.all_input_nodes]
        if op in ("conv1d", "conv2d", "conv3d", "convolution", "_convolution"):
            row = _conv(node, op, out)
        elif op in ("linear", "addmm", "mm", "matmul", "bmm"):
            row = _matmul(node, op, out)
        elif op == "scaled_dot_product_attention":
            row = _attention(node, op, out)
        elif op in VIEW_OPS:
            row = OpWork(node.name, op, "view", 0, 0, 0, 0)
        else:
            kind = "pool" if op in POOL_OPS else "elementwise"
            in_elems = sum(_numel(a.meta.get("val")) for a in ins)
            row = OpWork(node.name, op, kind, 0, 0, in_elems, out, out if op in TRANSCENDENTAL_OPS else 0)
        row.inputs = tuple(a.name for a in ins if a.op == "call_function")
        rows.append(row)
    return rows


def short_name(target) -> str:
    """aten.conv2d.default -> conv2d; aten::linear -> linear."""
    name = getattr(target, "__name__", str(target))
    name = name.replace("::", ".")
    parts = name.split(".")
    if parts[0] == "aten" and len(parts) >= 2:
        return parts[1]
    return parts[-2] if len(parts) >= 3 else parts[0]


def _conv(node, op: str, out: int) -> OpWork:
    x, w = node.args[0], node.args[1]
    wshape = tuple(w.meta["val"].shape)  # (Cout, Cin/groups, kh[, kw])
    groups = _conv_groups(node, op)
    per_out = math.prod(wshape[1:])  # Cin/groups * kh * kw MACs for each output element
    cin = tuple(x.meta["val"].shape)[1]
    kind = "depthwise_conv" if groups > 1 and groups == cin else \
        "pointwise_conv" if math.prod(wshape[2:]) == 1 else "dense_conv"
    return OpWork(node.name, op, kind, out * per_out, math.prod(wshape), _numel(x.meta.get("val")), out)


def _conv_groups(node, op: str) -> int:
    # conv2d(input, weight, bias, stride, padding, dilation, groups)
    # convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups)
    index = 8 if op in ("convolution", "_convolution") else 6
    if len(node.args) > index:
        return int(node.args[index])
    return int(node.kwargs.get("groups", 1))


def _matmul(node, op: str, out: int) -> OpWork:
    if op == "addmm":  # addmm(bias, x, w)
        a, b = node.args[1], node.args[2]
    else:
        a, b = node.args[0], node.args[1]
    ashape = tuple(a.meta["val"].shape)
    k = ashape[-1]
    weight = b.op == "get_attr" or b.op == "placeholder" and _is_param(b)
    kind = "linear" if op in ("linear", "addmm") or weight else "matmul"
    return OpWork(node.name, op, kind, out * k, _numel(b.meta.get("val")) if kind == "linear" else 0,
                  _numel(a.meta.get("val")) + (0 if kind == "linear" else _numel(b.meta.get("val"))), out)


def _attention(node, op: str, out: int) -> OpWork:
    """scaled_dot_product_attention(q, k, v): q k^T and its softmax, then that times v, per batch
    and head: L*S*E + L*S*Ev MACs and L*S exponentials."""
    q, k, v = (tuple(a.meta["val"].shape) for a in node.args[:3])
    batch = math.prod(q[:-2])
    scores = batch * q[-2] * k[-2]
    return OpWork(node.name, op, "attention", scores * (q[-1] + v[-1]), 0,
                  math.prod(q) + math.prod(k) + math.prod(v), out, scores)


def _is_param(node) -> bool:
    # torch.export lifts parameters to placeholders named p_<fqn>; user inputs keep their names.
    return node.name.startswith(("p_", "b_", "c_"))


def _numel(val) -> int:
    if val is None:
        return 0
    if isinstance(val, (tuple, list)):
        return sum(_numel(v) for v in val)
    shape = getattr(val, "shape", None)
    return int(math.prod(shape)) if shape is not None else 0


def total_macs(rows: list[OpWork]) -> int:
    return sum(r.macs for r in rows)
