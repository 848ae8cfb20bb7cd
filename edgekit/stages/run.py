"""Run the model -> model stages between load and quantize, recording each as a step.

Order: prune, low-rank, distill (teacher = the model as loaded), sparsity
(last, so training does not refill the zeros).
Every step records MACs, params and held-out float accuracy after it, so the
manifest shows what each stage bought and cost. The transformed float model
is saved in the build dir (see saved.py) so it reloads without the code that
made it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import UsageError
from edgekit.stages.distill import DistillConfig
from edgekit.stages.lowrank import LowRankConfig
from edgekit.stages.prune import PruneConfig
from edgekit.stages.sparsity import SparsityConfig

FLOAT_MODEL = "float_model.pt"  # splits, layer sizes + state_dict (weights_only-safe; rebuilt with the factory)
FLOAT_PROGRAM = "float_model.pt2"  # torch.export program, for the user: reloads with no Python code (unpickles)


@dataclass(frozen=True)
class StageOptions:
    prune: PruneConfig | None = None
    distill: DistillConfig | None = None
    nproc: int = 1  # distillation processes (DDP through torchrun) when > 1
    lowrank: LowRankConfig | None = None
    sparsity: SparsityConfig | None = None

    @property
    def any(self) -> bool:
        return any(c is not None for c in (self.prune, self.lowrank, self.distill, self.sparsity))

    def check(self) -> None:
        for cfg in (self.prune, self.lowrank, self.distill, self.sparsity):
            if cfg is not None:
                cfg.check()
        if self.nproc < 1:
            raise UsageError(f"--nproc must be at least 1, got {self.nproc}")
        if self.lowrank is not None and self.distill is not None and self.nproc > 1:
            # DDP workers rebuild the student from the factory by layer sizes (saved.py),
            # which cannot express a Linear split in two.
            raise UsageError("--lowrank with --distill --nproc > 1 is not supported", hint="use --nproc 1 with --lowrank")


def apply_stages(model, spec, example: tuple, evaluation, steps, options: StageOptions, out_dir: Path):
    """Returns the transformed model (the input model is left as it was: it is the teacher)."""
    from edgekit.stages.macs import count
    from edgekit.stages.saved import save_exported, save_transformed

    labelled = evaluation.labels is not None
    with steps.step("measure", {}, "count MACs/params") as rec:
        rec.update(count(model, example), accuracy_float=_accuracy(model, evaluation, spec) if labelled else None)
    teacher, student = model, copy.deepcopy(model)
    if options.prune:
        cfg = options.prune
        label = f"prune channels {cfg.ratio:g}" if cfg.ratio is not None else f"prune to {cfg.macs_target:g} of MACs"
        with steps.step("prune", cfg.to_json(), label) as rec:
            from edgekit.stages.prune import prune

            train = _train_data(spec, "--prune-importance taylor") if cfg.importance == "taylor" else None
            prune(student, example, cfg, _taylor_batches(train, spec) if train else None)
            _record(steps, rec, student, example, evaluation, spec, count(teacher, example))
    if options.lowrank:
        with steps.step("lowrank", options.lowrank.to_json(), "low-rank factorise") as rec:
            from edgekit.stages.lowrank import factorise

            reference = _outputs(student, evaluation, spec)
            rec["layers"] = factorise(student, options.lowrank)
            rec["max_abs_diff"] = _max_diff(reference, _outputs(student, evaluation, spec))
            _record(steps, rec, student, example, evaluation, spec, count(teacher, example))
    if options.distill:
        with steps.step("distill", {**options.distill.to_json(), "processes": options.nproc}, "distill from the loaded model") as rec:
            train = _train_data(spec, "--distill")
            if options.nproc > 1:
                from edgekit.train.launch import distill_ddp

                student, result = distill_ddp(spec, options.distill, options.nproc, student=student)
            else:
                from edgekit.stages.distill import distill

                result = distill(student, teacher, train, evaluation, spec.inputs, options.distill, steps, example)
            rec["result"] = {k: v for k, v in result.items() if k != "config"}
            _record(steps, rec, student, example, evaluation, spec, count(teacher, example))
    if options.sparsity:
        with steps.step("sparsity", options.sparsity.to_json(), f"zero {options.sparsity.sparsity:.0%} of weights") as rec:
            from edgekit.stages.sparsity import sparsify

            zipped_before = _zipped_state(student)
            rec.update(sparsify(student, options.sparsity))
            rec["float_deflate_bytes"] = {"before": zipped_before, "after": _zipped_state(student)}
            rec["note"] = "dense kernels: MACs and latency unchanged; the gain is the compressed size"
            _record(steps, rec, student, example, evaluation, spec, count(teacher, example))
    save_transformed(student, out_dir / FLOAT_MODEL)
    save_exported(student, example, out_dir / FLOAT_PROGRAM)
    return student


def _record(steps, rec: dict, model, example, evaluation, spec, before: dict) -> None:
    from edgekit.stages.macs import change, count

    after = count(model, example)
    rec.update(after, **change(before, after))
    rec["accuracy_float"] = _accuracy(model, evaluation, spec) if evaluation.labels is not None else None
    acc = f", float accuracy {rec['accuracy_float']:.2f} %" if rec["accuracy_float"] is not None else ""
    steps.console.print(f"  MACs {before['macs']:,} -> {after['macs']:,} ({after['macs'] / before['macs']:.0%}), "
                          f"params {before['params']:,} -> {after['params']:,}{acc}")


def _outputs(model, data, spec):
    import torch

    from edgekit.data import batches

    model.eval()
    with torch.no_grad():
        return [model(*b) for b in batches(data.take(64), spec.inputs)]


def _max_diff(a: list, b: list) -> float:
    return round(max(float((x - y).abs().max()) for x, y in zip(a, b)), 6)


def _zipped_state(model) -> int:
    import io
    import zlib

    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return len(zlib.compress(buf.getvalue(), 9))


def _accuracy(model, data, spec):
    from edgekit.stages.distill import accuracy

    return accuracy(model, data, spec.inputs)


def load_training_data(spec):
    """(train, eval) for distillation: labels in train are optional (pure distillation)."""
    from edgekit.data import load_npz

    if spec.eval is None:
        raise UsageError("distillation needs labelled evaluation data (held-out accuracy, early stop)",
                         hint="pass --eval eval.npz (x and y)")
    return _train_data(spec, "--distill"), load_npz(spec.eval, spec.inputs, spec.origin("eval"), need_labels=True)


def _train_data(spec, flag: str):
    from edgekit.data import load_npz

    if spec.train is None:
        raise UsageError(f"{flag} needs training data", hint="pass --train train.npz (x and labels y), or set data.train in edgekit.toml")
    return load_npz(spec.train, spec.inputs, spec.origin("train"), need_labels=flag != "--distill")


def _taylor_batches(train, spec, n: int = 4, size: int = 64):
    """A few labelled batches: enough gradient signal to rank channels by Taylor importance."""
    import torch

    if train.labels is None:
        raise UsageError("--prune-importance taylor needs labels y in --train")
    return [(tuple(torch.from_numpy(train.arrays[s.name][i:i + size]) for s in spec.inputs),
             torch.from_numpy(train.labels[i:i + size])) for i in range(0, n * size, size)]
