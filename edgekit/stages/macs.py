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


def layer_macs(model, example: tuple) -> dict[str, int]:
    """MACs of each leaf Conv / Linear module on one pass at the example's batch, by module name,
    counted with forward hooks (matmuls outside modules are not counted, as above).
    transformers' GPT-2-style `Conv1D` is a Linear."""
    import torch

    macs: dict[str, int] = {}

    def hook_for(name):
        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                return
            if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
                per_out = module.weight.shape[0 if type(module).__name__ == "Conv1D" else 1]
            else:
                per_out = (module.in_channels // module.groups) * int(torch.tensor(module.kernel_size).prod())
            macs[name] = macs.get(name, 0) + output.numel() * per_out
        return hook

    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    handles = [m.register_forward_hook(hook_for(name)) for name, m in model.named_modules()
               if isinstance(m, kinds) or type(m).__name__ == "Conv1D"]
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for h in handles:
            h.remove()
    return macs


def linear_share(model, example: tuple) -> float:
    """The share (0..1) of the model's Conv + Linear MACs that its Linear layers do (layer_macs).
    A transformer is mostly Linear; a CNN mostly Conv."""
    import torch

    modules = dict(model.named_modules())
    macs = layer_macs(model, example)
    linear = sum(n for name, n in macs.items()
                 if isinstance(modules[name], torch.nn.Linear) or type(modules[name]).__name__ == "Conv1D")
    total = sum(macs.values())
    return linear / total if total else 0.0
