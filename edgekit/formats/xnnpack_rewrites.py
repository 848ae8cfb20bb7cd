"""Graph rewrites that keep an exported model on the XNNPACK delegate (the `.pte` format).

Each rewrite replaces ops the partitioner refuses by the same arithmetic in ops it takes, and is
recorded in the manifest (`lowering.rewrites`). What executorch 1.5.1's XnnpackPartitioner refuses
is read from its configs (backends/xnnpack/partition/config): an op left out runs on ExecuTorch's
portable kernels, scalar and on one thread.

Before quantization (`keep_on_delegate`), on torch.export's graph, so the quantizer annotates
what the lowering will see; each is checked on the build's example input against the graph
before it (the outputs must be identical: they change no arithmetic):

- global mean with keepdim=False: `x.mean((2, 3))`, the usual way to write global average
  pooling: MeanDimConfig lowers mean.dim over H and W of a 4-D tensor to XNNPACK's global
  average pooling only with keepdim=True. Rewritten as mean(keepdim=True) and a view to (N, C).

After quantization (`lower_float_ops`), on the converted graph: ops the PT2E quantizers leave in
float (no XNNPACK quantizer annotates them) and the partitioner has no config for, rewritten into
float ops it takes. Done on the float graph first and checked there against it on the example
input (the same function up to fp32 rounding: LOWERING_TOLERANCE), then on the converted graph:

- layer norm over the last dim (`nn.LayerNorm`; no LayerNorm config): mean and variance as
  XNNPACK's global average pooling over a (rows, tokens, C, 1) view (MeanDimConfig's 4-D,
  dims (2, 3), keepdim form), then sub, mul, rsqrt, the affine by mul and add;
- `F.scaled_dot_product_attention` without dropout or GQA (causal or not): its decomposition leaves a
  "safe softmax" (any, eq, logical_not, where, full_like) for fully masked rows, and
  expand/squeeze copies for its matmuls. Rewritten as bmm(q, k^T) * scale [+ mask], softmax
  over the last dim, bmm(., v) on (batch x heads) 3-D views (a boolean mask made additive first:
  _attention says where that differs);
- `x[:, 0]` (aten.select, a ViT's class token; no select config): a slice of width 1 and a
  view; `q, k, v = qkv.unbind(0)` (its split and squeeze copies): the same, for each of them;
- attention written out, `torch.matmul(q, k.transpose(-2, -1))` on 4-D tensors: its
  decomposition broadcasts through expand copies; rewritten as bmm on 3-D reshapes;
- a mean over other dims than a 4-D tensor's H and W (tokens mean-pooled, `x.mean(1)`): the
  kept dims permuted first and the reduced ones flattened, so it is MeanDimConfig's form.
"""

from __future__ import annotations

from edgekit.errors import FormatUnsupported


def keep_on_delegate(graph_module, example_inputs: tuple) -> list[dict]:
    """Apply every rewrite to torch.export's module (in place); the records of those that changed it."""
    import torch

    records = _apply(graph_module, REWRITES)
    if records:
        # The rewrites changed the graph only: until recompile() the module still runs the code
        # generated from the graph before them, so the reference costs a forward only when needed.
        with torch.no_grad():
            before = graph_module(*example_inputs)
        _recompile(graph_module)
        with torch.no_grad():
            after = graph_module(*example_inputs)
        leaves = zip(torch.utils._pytree.tree_leaves(before), torch.utils._pytree.tree_leaves(after))
        if not all(torch.equal(a, b) for a, b in leaves if isinstance(a, torch.Tensor)):
            raise FormatUnsupported(f"the graph rewrites {[r['rewrite'] for r in records]} changed the model's outputs",
                                    hint="please report it; --format onnx builds the model without them")
        for r in records:
            r["checked"] = "identical outputs on the example input"
    return records


def _global_mean_keepdim(graph_module) -> list[str]:
    """mean.dim(x, [2, 3]) of a 4-D x without keepdim -> view(mean.dim(x, [2, 3], True), [-1, C])."""
    import torch

    aten = torch.ops.aten
    graph = graph_module.graph
    changed = []
    for node in _calls(graph_module, aten.mean.dim):
        x, dims = node.args[0], node.args[1]
        val = x.meta.get("val") if hasattr(x, "meta") else None
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if val is None or val.dim() != 4 or keepdim or node.kwargs.get("dtype") is not None:
            continue
        if sorted(d % 4 for d in dims) != [2, 3]:
            continue
        channels = int(val.shape[1])
        node.args, node.kwargs = (x, list(dims), True), {}
        node.meta["val"] = val.mean(list(dims), keepdim=True)
        with graph.inserting_after(node):
            view = graph.call_function(aten.view.default, (node, [-1, channels]))
        view.meta.update({k: v for k, v in node.meta.items() if k != "val"})  # same module scope
        view.meta["val"] = node.meta["val"].view(-1, channels)
        node.replace_all_uses_with(view, delete_user_cb=lambda user: user is not view)
        changed.append(node.name)
    return changed


REWRITES = [("global mean -> XNNPACK global average pooling (keepdim)", _global_mean_keepdim)]


# ---------------------------------------------------------------- after quantization: float ops

# Largest |after - before| of a lowering rewrite on the float graph, relative to the output's largest
# |value|: fp32 reassociation (a two-pass variance instead of ATen's Welford, the attention scale on
# the scores instead of sqrt of it on q and k) moves the last bits, about 1e-6; a wrong rewrite
# moves the outputs by orders of magnitude more.
LOWERING_TOLERANCE = 1e-4


def lowers_float_ops(graph_module) -> bool:
    """Has the graph an op a lowering rewrite may take (then lower_float_ops needs its float copy)?"""
    targets = {target for _, _, target in LOWERING_REWRITES}
    return any(n.op == "call_function" and str(n.target) in targets for n in graph_module.graph.nodes)


def lower_float_ops(quantized, float_graph, example_inputs: tuple) -> list[dict]:
    """The lowering rewrites of the module doc: applied to `float_graph` (torch.export's module
    before quantization, a copy the caller gives away) and checked there, then to `quantized` (in
    place). Their records."""
    import torch

    records = _apply(float_graph, LOWERING_REWRITES)
    if not records:
        return []
    with torch.no_grad():
        before = float_graph(*example_inputs)  # the code generated before the rewrites (keep_on_delegate)
    _recompile(float_graph)
    with torch.no_grad():
        after = float_graph(*example_inputs)
    worst = 0.0
    for a, b in zip(torch.utils._pytree.tree_leaves(before), torch.utils._pytree.tree_leaves(after)):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            worst = max(worst, float((a - b).abs().max() / a.abs().max().clamp_min(1e-12)))
    if not worst <= LOWERING_TOLERANCE:  # e.g. a boolean mask that drops every key of a query: not applied
        return [{**r, "applied": False, "checked": f"on the float graph: outputs moved by {worst:.2g} of their "
                 f"largest value (over {LOWERING_TOLERANCE:g}): the artifact keeps these ops as they were"}
                for r in records]
    applied = _apply(quantized, LOWERING_REWRITES)
    _recompile(quantized)
    for r in applied:
        r.update(applied=True,
                 checked=f"on the float graph: outputs within {worst:.1g} of their largest value on the example input")
    return applied


def pool_means(graph_module) -> list[dict]:
    """The mean rewrite alone (_mean), in place, on a graph whose sizes may be symbolic: a decoder's
    (formats/executorch.py export_decoder), whose RMSNorms take a mean over the last dim. Its record,
    if it changed the graph. Not checked against the graph before it here: the graph carries the KV
    cache's buffers, which a check run would fill; the build's quality gate judges the artifact
    against the float model, and tests/test_llm.py the export against eager."""
    records = _apply(graph_module, [entry for entry in LOWERING_REWRITES if entry[1] is _mean])
    if records:
        _recompile(graph_module)
    return records


def _apply(graph_module, rewrites) -> list[dict]:
    """Each rewrite on the graph (the module runs its old code until _recompile); the records of
    those that changed it."""
    records = []
    for name, rewrite, *_ in rewrites:
        changed = rewrite(graph_module)
        if changed:
            records.append({"rewrite": name, "nodes": changed})
    return records


def _recompile(graph_module) -> None:
    graph_module.graph.lint()
    graph_module.recompile()


def _calls(graph_module, target) -> list:
    """The graph's calls of `target`, listed first (the rewrites replace them as they go)."""
    return [n for n in graph_module.graph.nodes if n.op == "call_function" and n.target == target]


def _call(graph, target, args, like, val):
    """A new node computing target(*args) in `like`'s module scope, with its fake value `val`."""
    node = graph.call_function(target, tuple(args))
    node.meta.update({k: v for k, v in like.meta.items() if k not in ("val", "tensor_meta")})
    node.meta["val"] = val
    return node


def _constant(graph_module, like, value, name: str):
    """A float32 scalar (or tensor) held as a buffer of the module (XNNPACK multiplies and adds
    tensors: a Python scalar operand keeps the op off the delegate)."""
    import torch

    attr = f"_edgekit_{name}"
    i = 0
    while hasattr(graph_module, f"{attr}_{i}"):
        i += 1
    tensor = value.to(torch.float32) if isinstance(value, torch.Tensor) else torch.tensor([value], dtype=torch.float32)
    graph_module.register_buffer(f"{attr}_{i}", tensor)
    with graph_module.graph.inserting_before(like):
        node = graph_module.graph.get_attr(f"{attr}_{i}")
    node.meta["val"] = tensor.clone()
    return node


def _layer_norm(graph_module) -> list[str]:
    """layer_norm(x, [C], w, b, eps) of a float x with rank >= 2 -> the module doc's ops."""
    import math

    import torch

    aten = torch.ops.aten
    graph = graph_module.graph
    changed = []
    for node in _calls(graph_module, aten.layer_norm.default):
        args = list(node.args) + [None] * (5 - len(node.args))
        x, shape, weight, bias = args[0], args[1], args[2], args[3]
        eps = args[4] if args[4] is not None else node.kwargs.get("eps", 1e-5)
        val = node.meta.get("val")  # the input's shape (a dequantize convert_pt2e added carries none)
        if val is None or val.dim() < 2 or len(shape) != 1 or not val.is_floating_point():
            continue
        dims = [int(d) for d in val.shape]
        rows = math.prod(dims[:-2])
        view4 = [rows, dims[-2], dims[-1], 1]
        fake = val.reshape(view4)
        with graph.inserting_before(node):
            eps_node = _constant(graph_module, node, float(eps), "eps")
        with graph.inserting_before(node):
            x4 = _call(graph, aten.reshape.default, (x, view4), node, fake)
            mean = _call(graph, aten.mean.dim, (x4, [2, 3], True), node, fake.mean([2, 3], keepdim=True))
            centred = _call(graph, aten.sub.Tensor, (x4, mean), node, fake)
            square = _call(graph, aten.mul.Tensor, (centred, centred), node, fake)
            var = _call(graph, aten.mean.dim, (square, [2, 3], True), node, fake.mean([2, 3], keepdim=True))
            shifted = _call(graph, aten.add.Tensor, (var, eps_node), node, fake.mean([2, 3], keepdim=True))
            inv = _call(graph, aten.rsqrt.default, (shifted,), node, fake.mean([2, 3], keepdim=True))
            normed = _call(graph, aten.mul.Tensor, (centred, inv), node, fake)
            out = _call(graph, aten.reshape.default, (normed, dims), node, val)
            if weight is not None:
                out = _call(graph, aten.mul.Tensor, (out, weight), node, val)
            if bias is not None:
                out = _call(graph, aten.add.Tensor, (out, bias), node, val)
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        changed.append(node.name)
    return changed


def _attention(graph_module) -> list[str]:
    """scaled_dot_product_attention(q, k, v[, attn_mask][, is_causal]) with no dropout or GQA, and
    q, k, v of one batch shape -> bmm, scale, [+ mask,] softmax, bmm on 3-D views. A float mask is
    added to the scores as SDPA adds it; a boolean one (Hugging Face encoders' padding mask) first
    becomes 0 where it keeps and float32's lowest where it drops, on the mask's own small tensor
    (batch, 1, L, S). The causal flag becomes that mask for the static (L, S) shape, a constant:
    query i keeps keys j <= i, as SDPA's lower-triangular mask aligned at the top left. Where a query keeps no key at all, SDPA's safe softmax gives it zeros and this
    one an average of the dropped keys: the float check on the example input sees that row."""
    import math

    import torch

    aten = torch.ops.aten
    graph = graph_module.graph
    changed = []
    for node in _calls(graph_module, aten.scaled_dot_product_attention.default):
        names = ("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
        extra = dict(zip(names, node.args[3:]), **node.kwargs)
        if extra.get("dropout_p", 0.0) or extra.get("enable_gqa") or (extra.get("is_causal") and
                                                                       extra.get("attn_mask") is not None):
            continue
        q, k, v = node.args[:3]
        mask = extra.get("attn_mask")
        if extra.get("is_causal"):
            lq_c, s_c = int(_val(q).shape[-2]), int(_val(k).shape[-2])
            keep = torch.ones(lq_c, s_c, dtype=torch.bool).tril()
            causal = torch.where(keep, 0.0, float(torch.finfo(torch.float32).min))
            mask = _constant(graph_module, node, causal, "causal_mask")
        qv, kv, vv = (_val(t) for t in (q, k, v))
        mv = _val(mask) if mask is not None else None
        if qv is None or kv is None or vv is None or qv.dim() < 3 or not (
                qv.shape[:-2] == kv.shape[:-2] == vv.shape[:-2] and kv.shape[-2] == vv.shape[-2]):
            continue
        if mask is not None and (mv is None or mv.dim() > qv.dim() or
                                 not (mv.dtype == torch.bool or mv.dtype == qv.dtype)):
            continue
        batch = [int(d) for d in qv.shape[:-2]]
        n = math.prod(batch)
        (lq, e), (s_len, ev) = (int(d) for d in qv.shape[-2:]), (int(d) for d in vv.shape[-2:])
        scale = extra.get("scale") or 1.0 / math.sqrt(e)
        q3, k3, v3 = qv.reshape(n, lq, e), kv.reshape(n, s_len, e), vv.reshape(n, s_len, ev)
        scores = q3 @ k3.transpose(1, 2)
        with graph.inserting_before(node):
            scale_node = _constant(graph_module, node, float(scale), "attention_scale")
        with graph.inserting_before(node):
            qn = _call(graph, aten.reshape.default, (q, [n, lq, e]), node, q3)
            kn = _call(graph, aten.reshape.default, (k, [n, s_len, e]), node, k3)
            vn = _call(graph, aten.reshape.default, (v, [n, s_len, ev]), node, v3)
            kt = _call(graph, aten.permute.default, (kn, [0, 2, 1]), node, k3.transpose(1, 2))
            raw = _call(graph, aten.bmm.default, (qn, kt), node, scores)
            scaled = _call(graph, aten.mul.Tensor, (raw, scale_node), node, scores)
            if mask is not None:
                scaled = _masked(graph_module, node, scaled, mask, mv, batch, lq, s_len, scores)
            probs = _call(graph, aten._softmax.default, (scaled, -1, False), node, scores)
            out3 = _call(graph, aten.bmm.default, (probs, vn), node, scores @ v3)
            out = _call(graph, aten.reshape.default, (out3, [*batch, lq, ev]), node, node.meta["val"])
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        changed.append(node.name)
    return changed


def _masked(graph_module, node, scaled, mask, mask_val, batch: list[int], lq: int, s_len: int, scores):
    """The (n, L, S) scores plus SDPA's mask, broadcast over the batch dims in their 4-D shape."""
    import torch

    aten = torch.ops.aten
    graph = graph_module.graph
    full = scores.reshape(*batch, lq, s_len)
    if mask_val.dtype == torch.bool:
        with graph.inserting_before(node):
            keep = _constant(graph_module, node, 0.0, "mask_keep")
            drop = _constant(graph_module, node, float(torch.finfo(torch.float32).min), "mask_drop")
        with graph.inserting_before(node):
            mask = _call(graph, aten.where.self, (mask, keep, drop), node,
                         torch.zeros(mask_val.shape, dtype=torch.float32))
    with graph.inserting_before(node):
        wide = _call(graph, aten.reshape.default, (scaled, [*batch, lq, s_len]), node, full)
        added = _call(graph, aten.add.Tensor, (wide, mask), node, full)
        return _call(graph, aten.reshape.default, (added, list(scores.shape)), node, scores)


def _select(graph_module) -> list[str]:
    """select(x, dim, i) -> view(slice(x, dim, i, i + 1), shape without dim)."""
    import torch

    graph = graph_module.graph
    changed = []
    for node in _calls(graph_module, torch.ops.aten.select.int):
        x, dim, index = node.args
        val = x.meta.get("val") if hasattr(x, "meta") else None
        if val is None or not val.is_floating_point():
            continue
        _slice_for(graph, node, x, val, dim, index)
        changed.append(node.name)
    return changed


def _unbind(graph_module) -> list[str]:
    """unbind(x, dim)[i] (q, k, v out of one projection) -> view(slice(x, dim, i, i + 1)) each: its
    decomposition (split and squeeze copies) has no XNNPACK config."""
    import operator

    import torch

    graph = graph_module.graph
    changed = []
    for node in _calls(graph_module, torch.ops.aten.unbind.int):
        x, dim = node.args[0], (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0))
        parts = node.meta.get("val")  # the input's fake value from the outputs' (a dequantize carries none)
        val = torch.stack(list(parts), dim) if parts else None
        if val is None or not val.is_floating_point() or \
                not all(u.op == "call_function" and u.target is operator.getitem for u in node.users):
            continue
        for item in list(node.users):
            _slice_for(graph, item, x, val, dim, item.args[1])
        graph.erase_node(node)
        changed.append(node.name)
    return changed


def _slice_for(graph, node, x, val, dim: int, index: int) -> None:
    """Replace `node`, x's `index`-th entry along `dim`, by a slice of width 1 and a view."""
    import torch

    aten = torch.ops.aten
    dim = dim % val.dim()
    index = index % int(val.shape[dim])
    out_val = val.select(dim, index)
    with graph.inserting_before(node):
        part = _call(graph, aten.slice.Tensor, (x, dim, index, index + 1), node, val.narrow(dim, index, 1))
        out = _call(graph, aten.reshape.default, (part, [int(d) for d in out_val.shape]), node, out_val)
    node.replace_all_uses_with(out)
    graph.erase_node(node)


def _val(node):
    """A node's fake tensor; through the quantize/dequantize pairs convert_pt2e added (they carry none)."""
    while hasattr(node, "meta"):
        if "val" in node.meta:
            return node.meta["val"]
        if node.op != "call_function" or "quantize" not in str(node.target) or not node.args:
            return None
        node = node.args[0]
    return None


def _matmul(graph_module) -> list[str]:
    """matmul(a, b) of tensors of rank >= 3 with one batch shape (attention written out: q @ k^T, p @ v)
    -> bmm on 3-D reshapes: its decomposition broadcasts through expand copies the delegate refuses."""
    import math

    import torch

    aten = torch.ops.aten
    graph = graph_module.graph
    changed = []
    for node in _calls(graph_module, aten.matmul.default):
        a, b = node.args[:2]
        av, bv, out = _val(a), _val(b), node.meta.get("val")
        if av is None or bv is None or out is None or av.dim() < 3 or av.shape[:-2] != bv.shape[:-2] or \
                not av.is_floating_point():
            continue
        n = math.prod(int(d) for d in av.shape[:-2])
        (m, k), p = (int(d) for d in av.shape[-2:]), int(bv.shape[-1])
        with graph.inserting_before(node):
            a3 = _call(graph, aten.reshape.default, (a, [n, m, k]), node, av.reshape(n, m, k))
            b3 = _call(graph, aten.reshape.default, (b, [n, k, p]), node, bv.reshape(n, k, p))
            prod = _call(graph, aten.bmm.default, (a3, b3), node, out.reshape(n, m, p))
            result = _call(graph, aten.reshape.default, (prod, [int(d) for d in out.shape]), node, out)
        node.replace_all_uses_with(result)
        graph.erase_node(node)
        changed.append(node.name)
    return changed


def _mean(graph_module) -> list[str]:
    """mean.dim over any dims of a float tensor (tokens mean-pooled: x.mean(1); an RMSNorm's mean of
    squares over the last dim), other than the 4-D (2, 3) keepdim form the delegate takes -> that
    form: the kept dims permuted first, the reduced ones flattened into H, then a reshape to the mean's
    own shape. Symbolic sizes (a decoder's token count) may be among the kept dims, either all in the
    rows or in the channel: they become the reshapes' one inferred (-1) size, which XNNPACK's reshape
    takes (ViewCopyConfig); a mean that would need two is left as it is."""
    import math

    import torch

    aten = torch.ops.aten
    graph = graph_module.graph
    changed = []
    for node in _calls(graph_module, aten.mean.dim):
        x, dims = node.args[0], node.args[1]
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        val, out = _val(x), node.meta.get("val")
        if val is None or out is None or not val.is_floating_point() or node.kwargs.get("dtype") is not None:
            continue
        rank = val.dim()
        reduced = sorted({d % rank for d in (dims if dims else range(rank))})
        if rank == 4 and reduced == [2, 3] and keepdim:
            continue  # the delegate's own form
        kept = [d for d in range(rank) if d not in reduced]
        sizes = list(val.shape)
        symbolic = {d for d in range(rank) if not isinstance(sizes[d], int)}
        rows_dims, channel_dims = kept[:-1], kept[-1:]
        if (symbolic & set(reduced) or (symbolic & set(rows_dims) and symbolic & set(channel_dims))
                or sum(not isinstance(d, int) for d in out.shape) > 1):
            continue  # a reshape with more than one inferred size, or a symbolic pooled size: left as it is
        rows = -1 if symbolic & set(rows_dims) else math.prod(sizes[d] for d in rows_dims)
        channels = -1 if symbolic & set(channel_dims) else math.prod(sizes[d] for d in channel_dims)
        view4 = [rows, channels, math.prod(sizes[d] for d in reduced), 1]
        out_shape = [d if isinstance(d, int) else -1 for d in out.shape]
        permuted = val.permute(kept + reduced)
        with graph.inserting_before(node):
            xp = _call(graph, aten.permute.default, (x, kept + reduced), node, permuted) \
                if kept + reduced != list(range(rank)) else x
            x4 = _call(graph, aten.reshape.default, (xp, view4), node, permuted.reshape(view4))
            pooled = _call(graph, aten.mean.dim, (x4, [2, 3], True), node, permuted.reshape(view4).mean([2, 3], True))
            result = _call(graph, aten.reshape.default, (pooled, out_shape), node, out)
        node.replace_all_uses_with(result)
        graph.erase_node(node)
        changed.append(node.name)
    return changed


# (what it does, the rewrite, the ATen op it takes: lowers_float_ops looks for these)
LOWERING_REWRITES = [
    ("layer norm -> mean (XNNPACK global average pooling), sub, mul, rsqrt, add", _layer_norm,
     "aten.layer_norm.default"),
    ("scaled_dot_product_attention -> bmm, mul, [add mask,] softmax, bmm", _attention,
     "aten.scaled_dot_product_attention.default"),
    ("select -> slice + view", _select, "aten.select.int"),
    ("unbind -> slice + view per output", _unbind, "aten.unbind.int"),
    ("matmul (rank >= 3) -> bmm on 3-D reshapes", _matmul, "aten.matmul.default"),
    ("mean over other dims -> XNNPACK global average pooling on a 4-D reshape", _mean, "aten.mean.dim"),
]
