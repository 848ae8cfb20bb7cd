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
