"""MACs and parameters of a float model, counted the same way before and after every stage.

torch-pruning's counter hooks the leaf modules (Conv, Linear, BN, pooling,
attention modules it knows); a bare torch.matmul in a hand-written attention is
not counted, so a ViT's numbers cover its Linear layers, which hold nearly all
of its MACs at these sizes. MACs are per forward pass at the example's batch.
"""

from __future__ import annotations


def count(model, example: tuple) -> dict:
    """{"macs": int, "params": int} of `model` on `example` (the model is not changed)."""
    import torch
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, tuple(example))
    model.train(was_training)
    return {"macs": int(macs), "params": int(params)}


def change(before: dict, after: dict) -> dict:
    """Ratios after/before, for the step record and the summary line."""
    return {f"{k}_ratio": round(after[k] / before[k], 4) if before[k] else None for k in ("macs", "params")}


def linear_share(model, example: tuple) -> float:
    """The share (0..1) of the model's Conv + Linear MACs that its Linear layers do, counted with
    forward hooks on one pass (matmuls outside modules are not counted, as above). A transformer
    is mostly Linear; a CNN mostly Conv. transformers' GPT-2-style `Conv1D` is a Linear."""
    import torch

    totals = {"linear": 0, "conv": 0}

    def hook(module, inputs, output):
        if not isinstance(output, torch.Tensor):
            return
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            totals["linear"] += output.numel() * module.weight.shape[0 if type(module).__name__ == "Conv1D" else 1]
        else:
            totals["conv"] += output.numel() * (module.in_channels // module.groups) * int(torch.tensor(module.kernel_size).prod())

    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, kinds) or type(m).__name__ == "Conv1D"]
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for h in handles:
            h.remove()
    total = totals["linear"] + totals["conv"]
    return totals["linear"] / total if total else 0.0
