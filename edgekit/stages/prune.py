"""Channel pruning: dependency-aware structured pruning with torch-pruning's DepGraph.

Removing an output channel of one conv means removing the matching input
channel of every layer that reads it (BN, the next conv, a residual add's other
branch, a depthwise conv's group): DepGraph finds those groups, so the pruned
model is an ordinary smaller nn.Module that exports like the original.

Channel counts are kept a multiple of `round_to` (the target profile's): the
ARM int8 GEMM kernels tile output channels by 8, so 60 channels cost as much
as 64 and pruning to 60 would save MACs on paper but not time.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.errors import UsageError

IMPORTANCE = ("l1", "l2", "taylor", "bn-scale")
# --prune-macs prunes in this many equal steps of ratio up to MAX_RATIO and stops
# at the first step that meets the MAC target (finer steps: closer to the target).
MACS_STEPS = 20
MAX_RATIO = 0.95


@dataclass(frozen=True)
class PruneConfig:
    ratio: float | None = None  # fraction of channels removed per prunable layer (uniform) or overall (global)
    macs_target: float | None = None  # keep at most this fraction of the MACs instead of a fixed ratio
    importance: str = "l2"
    global_pruning: bool = False
    round_to: int = 8

    def check(self) -> None:
        if (self.ratio is None) == (self.macs_target is None):
            raise UsageError("give one of --prune RATIO or --prune-macs FRACTION", hint="e.g. --prune 0.5")
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise UsageError(f"--prune must be between 0 and 1 (the fraction of channels removed), got {self.ratio}")
        if self.macs_target is not None and not 0 < self.macs_target < 1:
            raise UsageError(f"--prune-macs must be between 0 and 1 (the fraction of MACs kept), got {self.macs_target}")
        if self.importance not in IMPORTANCE:
            raise UsageError(f"--prune-importance '{self.importance}' is not one of {', '.join(IMPORTANCE)}")
        if self.round_to < 1:
            raise UsageError(f"round_to must be a positive number of channels, got {self.round_to}")

    def to_json(self) -> dict:
        return {"ratio": self.ratio, "macs_target": self.macs_target, "importance": self.importance,
                "global": self.global_pruning, "round_to": self.round_to}


def output_layers(model) -> list:
    """The layer that produces the model's output (the classifier): never pruned,
    or the number of classes would change. Taken as the last Conv/Linear
    registered, which is where every classifier we know of defines its head."""
    from torch import nn

    leaves = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv1d))]
    return leaves[-1:] if leaves else []


def fixed_width_layers(model) -> list:
    """Layers whose widths the model's own code hard-codes, so pruning them breaks its forward.

    Transformers written like the ViT sample reshape by `self.dim` / `head_dim`
    (x.reshape(-1, tokens, heads, head_dim)): the residual stream's width and
    the attention projections must stay. What is left to prune there is each
    block's MLP hidden width (Linear -> GELU -> Linear), which holds 2/3 of a
    block's weights at mlp_ratio 4. A model with attention modules (found by
    their `num_heads` attribute) keeps its first layer (the patch embedding, which
    sets the residual width) and its attention Linears whole.
    """
    from torch import nn

    attention = [m for m in model.modules() if isinstance(getattr(m, "num_heads", None), int)]
    if not attention:
        return []
    fixed = [m for a in attention for m in a.modules() if isinstance(m, nn.Linear)]
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    return fixed + ([first] if first is not None else [])


def _importance(name: str):
    import torch_pruning as tp

    return {
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
        "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "taylor": lambda: tp.importance.GroupTaylorImportance(),
        "bn-scale": lambda: tp.importance.BNScaleImportance(),
    }[name]()


def prune(model, example: tuple, cfg: PruneConfig, calib_batches=None):
    """Prune `model` in place; returns it. `calib_batches` ((inputs, labels) pairs)
    feed the Taylor importance, which needs gradients of the loss."""
    import torch
    import torch_pruning as tp

    from edgekit.stages.macs import count

    cfg.check()
    if cfg.importance == "taylor" and not calib_batches:
        raise UsageError("--prune-importance taylor needs labelled training data", hint="pass --train train.npz (x and y) or use l2")
    ratio = cfg.ratio if cfg.ratio is not None else MAX_RATIO
    steps = 1 if cfg.ratio is not None else MACS_STEPS
    pruner = tp.pruner.MetaPruner(
        model, tuple(example), importance=_importance(cfg.importance), global_pruning=cfg.global_pruning,
        pruning_ratio=ratio, iterative_steps=steps, ignored_layers=output_layers(model) + fixed_width_layers(model), round_to=cfg.round_to,
    )
    base = count(model, example)["macs"]
    for _ in range(steps):
        if cfg.importance == "taylor":
            _taylor_gradients(model, calib_batches)
        pruner.step()
        if cfg.macs_target is not None and count(model, example)["macs"] <= cfg.macs_target * base:
            break
    model.zero_grad(set_to_none=True)
    return model.eval()


def _taylor_gradients(model, batches) -> None:
    import torch.nn.functional as F

    model.zero_grad()
    for x, y in batches:
        F.cross_entropy(model(*x), y).backward()
