"""Knowledge distillation: train a student from a teacher's logits and features.

Loss = alpha * T^2 * KL(student/T || teacher/T) + (1 - alpha) * CE(student, y)
       + feature_weight * MSE(adapter(student feature), teacher feature)

T^2 keeps the soft-target gradients the same size as the hard-label ones as T
changes (Hinton et al. 2015, section 2). Features default to the input of the
output layer (the penultimate features), which every classifier has; when
pruning made the student narrower, a learned 1x1 conv / linear adapter maps it
to the teacher's width and is thrown away after training.

The same loop runs in one process or under DDP (edgekit/train/ddp.py): the
global batch is the same either way (each of N ranks takes batch/N), so the
two runs follow the same recipe and land within noise of each other.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np

from edgekit.errors import UsageError
from edgekit.model.layers import output_layers


@dataclass(frozen=True)
class DistillConfig:
    epochs: int = 20
    batch_size: int = 64  # global, over all processes
    lr: float = 2e-3
    temperature: float = 4.0
    alpha: float = 0.7  # share of the soft (teacher) loss; the rest is the hard-label loss
    feature_weight: float = 1.0  # 0: logit distillation only
    features: tuple[str, ...] = ()  # module names whose outputs are matched; (): the output layer's input
    patience: int = 5  # early stop: epochs without a better held-out accuracy
    seed: int = 0

    def check(self) -> None:
        if self.epochs < 1:
            raise UsageError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.temperature <= 0:
            raise UsageError(f"--temperature must be positive, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise UsageError(f"--alpha must be between 0 and 1, got {self.alpha}")
        if self.feature_weight < 0:
            raise UsageError(f"--feature-weight must be 0 or more, got {self.feature_weight}")

    def to_json(self) -> dict:
        doc = asdict(self)
        doc["features"] = list(self.features) or ["<input of the output layer>"]
        return doc


# ---------------------------------------------------------------- features


def _feature_modules(model, names: tuple[str, ...]) -> list:
    """The modules whose features are matched: named ones, or the output layer (its input is taken)."""

    if not names:
        return output_layers(model)
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise UsageError(f"--feature {missing[0]!r} is not a module of the model",
                         hint=f"use names from model.named_modules(), e.g. {', '.join(list(modules)[1:6])}")
    return [modules[n] for n in names]


class _Taps:
    """Forward hooks that keep the latest feature of each chosen module."""

    def __init__(self, modules: list, take_input: bool):
        self.values: list = [None] * len(modules)
        self.handles = [m.register_forward_hook(self._hook(i, take_input)) for i, m in enumerate(modules)]

    def _hook(self, i: int, take_input: bool):
        def hook(module, args, output):
            self.values[i] = args[0] if take_input else output
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _adapter(student_feat, teacher_feat):
    """A 1x1 conv (4-D features) or linear map from the student's width to the teacher's."""
    from torch import nn

    s, t = student_feat.shape[1] if student_feat.dim() == 4 else student_feat.shape[-1], \
        teacher_feat.shape[1] if teacher_feat.dim() == 4 else teacher_feat.shape[-1]
    if student_feat.dim() == 4:
        return nn.Conv2d(s, t, kernel_size=1, bias=False)
    return nn.Identity() if s == t else nn.Linear(s, t, bias=False)


def make_trainable(student, teacher, cfg: DistillConfig, example: tuple):
    """(module to optimise, student taps, teacher taps): the student plus its feature
    adapters in one nn.Module, so DDP synchronises both with one wrapper."""
    import torch
    from torch import nn

    class Trainable(nn.Module):
        def __init__(self):
            super().__init__()
            self.student = student
            self.adapters = nn.ModuleList()

        def forward(self, *x):
            return self.student(*x)

    take_input = not cfg.features
    s_taps = _Taps(_feature_modules(student, cfg.features), take_input) if cfg.feature_weight else None
    t_taps = _Taps(_feature_modules(teacher, cfg.features), take_input) if cfg.feature_weight else None
    trainable = Trainable()
    if s_taps:
        with torch.no_grad():
            student.eval(), teacher.eval()
            student(*example), teacher(*example)
        trainable.adapters.extend(_adapter(s, t) for s, t in zip(s_taps.values, t_taps.values))
    return trainable, s_taps, t_taps


# ---------------------------------------------------------------- training


def _loss(logits, teacher_logits, labels, s_taps, t_taps, adapters, cfg: DistillConfig):
    import torch.nn.functional as F

    T = cfg.temperature
    soft = F.kl_div(F.log_softmax(logits / T, -1), F.log_softmax(teacher_logits / T, -1),
                    reduction="batchmean", log_target=True) * T * T
    hard = F.cross_entropy(logits, labels) if labels is not None else 0.0
    alpha = cfg.alpha if labels is not None else 1.0  # no labels: pure distillation
    loss = alpha * soft + (1 - alpha) * hard
    if s_taps:
        for adapter, s, t in zip(adapters, s_taps.values, t_taps.values):
            loss = loss + cfg.feature_weight * F.mse_loss(adapter(s), t.detach())
    return loss


def train_batches(train, specs, batch: int, epoch: int, rank: int, world: int, seed: int):
    """This rank's share of one epoch: the same global shuffle on every rank
    (DistributedSampler's scheme), each rank taking every world-th sample."""
    import torch
    from torch.utils.data.distributed import DistributedSampler

    sampler = DistributedSampler(range(len(train)), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    order = np.fromiter(iter(sampler), dtype=np.int64)
    per_rank = max(1, batch // world)
    for start in range(0, len(order) - per_rank + 1, per_rank):
        idx = order[start:start + per_rank]
        xs = tuple(torch.from_numpy(np.ascontiguousarray(train.arrays[s.name][idx])) for s in specs)
        ys = torch.from_numpy(train.labels[idx]) if train.labels is not None else None
        yield xs, ys


def accuracy(model, data, specs, batch: int = 256) -> float:
    """Top-1 accuracy (percent) of the float model on a labelled dataset."""
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(data), batch):
            xs = tuple(torch.from_numpy(np.ascontiguousarray(data.arrays[s.name][start:start + batch])) for s in specs)
            out = model(*xs)
            out = out[0] if isinstance(out, (tuple, list)) else out
            correct += int((out.argmax(-1).numpy() == data.labels[start:start + batch]).sum())
    return round(100.0 * correct / len(data), 2)


def distill(student, teacher, train, evaluation, specs, cfg: DistillConfig, steps, example: tuple,
            rank: int = 0, world: int = 1) -> dict:
    """Train `student` (in place) from `teacher`; keeps the weights of the best held-out epoch.

    Returns the record: per-epoch loss and accuracy, the best epoch, why it stopped.
    Under DDP (world > 1) the process group must be initialised; rank 0's
    accuracy decides early stopping for every rank so all stop together.
    """
    import torch

    cfg.check()
    if evaluation.labels is None:
        raise UsageError("distillation needs labelled evaluation data for early stopping", hint="pass --eval eval.npz with x and y")
    torch.manual_seed(cfg.seed)
    teacher.eval()
    trainable, s_taps, t_taps = make_trainable(student, teacher, cfg, example)
    module = trainable
    if world > 1:
        module = torch.nn.parallel.DistributedDataParallel(trainable)
    optimizer = torch.optim.AdamW(trainable.parameters(), lr=cfg.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    best = {"accuracy": accuracy(student, evaluation, specs), "epoch": 0, "state": copy.deepcopy(student.state_dict())}
    start, history, stopped = best["accuracy"], [], "epochs"
    for epoch in steps.track(range(1, cfg.epochs + 1), cfg.epochs, "distilling"):
        student.train()
        total, n = 0.0, 0
        for xs, ys in train_batches(train, specs, cfg.batch_size, epoch, rank, world, cfg.seed):
            with torch.no_grad():
                teacher_logits = teacher(*xs)
            loss = _loss(module(*xs), teacher_logits, ys, s_taps, t_taps, trainable.adapters, cfg)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, n = total + loss.item(), n + 1
        schedule.step()
        acc = _agreed(accuracy(student, evaluation, specs), world)
        history.append({"epoch": epoch, "loss": round(total / max(n, 1), 4), "accuracy": acc})
        steps.console.print(f"  epoch {epoch}/{cfg.epochs}  loss {total / max(n, 1):.4f}  held-out {acc:.2f} %")
        if acc > best["accuracy"]:
            best = {"accuracy": acc, "epoch": epoch, "state": copy.deepcopy(student.state_dict())}
        elif epoch - best["epoch"] >= cfg.patience:
            stopped = f"early stop: no better held-out accuracy for {cfg.patience} epochs"
            break
    for taps in (s_taps, t_taps):
        if taps:
            taps.remove()
    student.load_state_dict(best["state"])
    student.eval()
    return {"config": cfg.to_json(), "history": history, "best_epoch": best["epoch"],
            "accuracy_before": start, "accuracy": best["accuracy"],
            "stopped": stopped, "processes": world}


def _agreed(acc: float, world: int) -> float:
    """Rank 0's accuracy, on every rank (BN statistics differ slightly per rank)."""
    if world == 1:
        return acc
    import torch
    import torch.distributed as dist

    t = torch.tensor([acc], dtype=torch.float64)
    dist.broadcast(t, src=0)
    return round(float(t), 2)
