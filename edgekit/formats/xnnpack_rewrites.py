"""Graph rewrites that keep an exported model on the XNNPACK delegate (the `.pte` format).

Each rewrite replaces ops the partitioner refuses by the same arithmetic in ops it takes. They
run on torch.export's graph before quantization, so the quantizer annotates what the lowering
will see; each is checked on the build's example input against the graph before it (the outputs
must be identical: the rewrites change no arithmetic) and recorded in the manifest
(`lowering.rewrites`).

- global mean with keepdim=False: `x.mean((2, 3))`, the usual way to write global average
  pooling, stays on ExecuTorch's portable kernels (scalar, one thread): executorch 1.5.1's
  partitioner (MeanDimConfig) lowers mean.dim over H and W of a 4-D tensor to XNNPACK's global
  average pooling only with keepdim=True. Rewritten as mean(keepdim=True) and a view to (N, C).
"""

from __future__ import annotations

from edgekit.errors import FormatUnsupported


def keep_on_delegate(graph_module, example_inputs: tuple) -> list[dict]:
    """Apply every rewrite to torch.export's module (in place); the records of those that changed it."""
    import torch

    records = []
    for name, rewrite in REWRITES:
        changed = rewrite(graph_module)
        if changed:
            records.append({"rewrite": name, "nodes": changed})
    if records:
        # The rewrites changed the graph only: until recompile() the module still runs the code
        # generated from the graph before them, so the reference costs a forward only when needed.
        with torch.no_grad():
            before = graph_module(*example_inputs)
        graph_module.graph.lint()
        graph_module.recompile()
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
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != aten.mean.dim:
            continue
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
