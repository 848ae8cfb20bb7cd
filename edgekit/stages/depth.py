"""Depth pruning: drop whole repeated blocks (transformer layers, a ResNet stage's residual blocks).

Channel pruning narrows every op but keeps them all, and on small models much of the time is
per-op dispatch that does not shrink with the MACs (bench/prune_latency.md: 53-67 % of the host
time is fixed); only fewer ops remove it. A block can go where

- its container (nn.Sequential or nn.ModuleList) holds at least two blocks of its class, a class
  of the model's own (not a torch.nn layer: two Linear(64, 64) in a row are not residual blocks),
- it ran once on the example inputs and returned a tensor of the shape it was given (so what
  follows sees what it saw before), and no block around it qualifies (the outermost is dropped).

Which ones go: those that change their input least on the training inputs, by Block Influence,
1 - cos(input, output) per sample, averaged (Men et al. 2024, "ShortGPT: Layers in Large Language
Models are More Redundant Than You Expect", arXiv:2403.03853; there per token, here over the
flattened sample so convolution blocks are measured the same way). Distillation from the model as
loaded then recovers what they did: the DistilBERT recipe of a student made of the teacher's own
layers (Sanh et al. 2019, arXiv:1910.01108).

The dropped blocks are recorded on the model (model/layers.py DROPPED_ATTR: {container: positions in the model as
its factory builds it}) so a saved model (model/saved.py) is rebuilt from the user's factory with the
same blocks removed. Blocks are dropped once, before any other stage changes the module tree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgekit.errors import UsageError
from edgekit.model.layers import remove_blocks

SCORE_SAMPLES = 256  # training inputs Block Influence is averaged over


@dataclass(frozen=True)
class DepthConfig:
    keep: float  # share of the droppable blocks kept

    def check(self) -> None:
        if not 0 < self.keep < 1:
            raise UsageError(f"--depth must be between 0 and 1 (the share of repeated blocks kept), got {self.keep}")

    def to_json(self) -> dict:
        return {"keep": self.keep}


def kept_count(n: int, keep: float) -> int:
    """Blocks kept of n: keep * n rounded half up, at least one."""
    return max(1, math.floor(keep * n + 0.5))


def droppable_blocks(model, example: tuple) -> list[str]:
    """The names of the blocks that may be dropped (see the module's docstring), in the model's order."""
    import torch
    from torch import nn

    candidates = {}
    for name, container in model.named_modules():
        if not isinstance(container, (nn.Sequential, nn.ModuleList)):
            continue
        children = list(container.named_children())
        for child_name, child in children:
            cls = type(child)
            if cls.__module__.startswith("torch.nn") or not any(True for _ in child.parameters()):
                continue
            if sum(type(c) is cls for _, c in children) >= 2:
                candidates[f"{name}.{child_name}" if name else child_name] = child
    seen: dict[str, list] = {n: [] for n in candidates}

    def hook(block_name):
        def record(module, args, kwargs, output):
            given = args[0] if args else kwargs.get("hidden_states")
            out = output if isinstance(output, torch.Tensor) else output[0] if isinstance(output, (tuple, list)) and output else None
            seen[block_name].append(isinstance(given, torch.Tensor) and isinstance(out, torch.Tensor)
                                    and given.shape == out.shape)
        return record

    handles = [m.register_forward_hook(hook(n), with_kwargs=True) for n, m in candidates.items()]
    try:
        with torch.no_grad():
            model.eval()(*example)
    finally:
        for h in handles:
            h.remove()
    ok = [n for n in candidates if seen[n] == [True]]
    return [n for n in ok if not any(n.startswith(o + ".") for o in ok)]


def influence(model, blocks: list[str], batches) -> dict[str, float]:
    """Block Influence of each named block on `batches` (tuples of input tensors): 1 - mean cos(in, out)."""
    import torch

    modules = dict(model.named_modules())
    totals = {n: [0.0, 0] for n in blocks}

    def hook(block_name):
        def record(module, args, kwargs, output):
            given = args[0] if args else kwargs["hidden_states"]
            out = output if isinstance(output, torch.Tensor) else output[0]
            cos = torch.nn.functional.cosine_similarity(given.flatten(1).double(), out.flatten(1).double(), dim=1)
            totals[block_name][0] += float(cos.sum())
            totals[block_name][1] += cos.numel()
        return record

    handles = [modules[n].register_forward_hook(hook(n), with_kwargs=True) for n in blocks]
    try:
        with torch.no_grad():
            model.eval()
            for batch in batches:
                model(*batch)
    finally:
        for h in handles:
            h.remove()
    return {n: round(1.0 - s / max(k, 1), 6) for n, (s, k) in totals.items()}


def drop_blocks(model, example: tuple, cfg: DepthConfig, batches=None) -> dict:
    """Drop blocks in place, keeping `cfg.keep` of them: the least influential on `batches`, else (no
    data: the cost model's planning, where which ones does not matter) the last ones. Returns the facts."""
    cfg.check()
    blocks = droppable_blocks(model, example)
    if len(blocks) < 2:
        raise UsageError(f"--depth {cfg.keep:g}: the model has {'one block' if blocks else 'no blocks'} that can be "
                         "dropped (repeated blocks of one class, in an nn.Sequential or nn.ModuleList, that return "
                         "what they are given in shape)", hint="use --prune-macs to narrow it instead")
    scores = influence(model, blocks, batches) if batches is not None else None
    order = sorted(blocks, key=lambda n: scores[n]) if scores else list(reversed(blocks))
    gone = order[: len(blocks) - kept_count(len(blocks), cfg.keep)]
    remove_blocks(model, _by_container(model, gone))
    try:
        import torch

        with torch.no_grad():
            model(*example)
    except Exception as e:  # its forward counts or indexes its blocks: not ours to rewrite
        raise UsageError(f"--depth {cfg.keep:g}: the model does not run with blocks {', '.join(gone)} dropped "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})",
                         hint="its forward must iterate its blocks; use --prune-macs to narrow it instead") from None
    return {"blocks": len(blocks), "kept": len(blocks) - len(gone), "dropped": gone,
            "influence": scores or {}}


def _by_container(model, names: list[str]) -> dict[str, list[int]]:
    """{container: positions of the named blocks in it} (a Sequential's children may have names, not numbers)."""
    out: dict[str, list[int]] = {}
    for name in names:
        container, _, child = name.rpartition(".")
        holder = model.get_submodule(container) if container else model
        out.setdefault(container, []).append(list(holder._modules).index(child))
    return out
