"""Model -> model stages as a checked chain (the ExecuTorch `export/stages.py` way).

Each stage says what it is (`name`, `config`), what it needs before it can run
(`needs`: training data, labels) and how it transforms the model (`apply`).
`plan` turns the recipe's StageOptions into the chain, `check` refuses before
any work a chain whose needs the data cannot meet, and `run` runs it, for
`edgekit build` and `edgekit distill` alike. Every step leaves one record:

    stage, config, input (digest of the model it read), output (digest of what it
    made), seconds, metrics (MACs, params, their change, float accuracy), cached

The (stage, config, input digest, training data digest) key also finds the step
in the cache (edgekit/cache.py): a rebuild whose stage would see the same
inputs reuses its output, and the record says how many seconds that saved.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import io
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgekit.cache import StepCache, step_key
from edgekit.errors import UsageError
from edgekit.model.app import build_module
from edgekit.model.data import Dataset, batches, load_npz
from edgekit.model.loaded import LoadedModel, data_digest, model_digest
from edgekit.model.saved import load_transformed, save_exported, save_transformed
from edgekit.stages.depth import SCORE_SAMPLES, drop_blocks
from edgekit.stages.lowrank import factorise
from edgekit.stages.macs import change, count
from edgekit.stages.options import StageOptions
from edgekit.stages.prune import prune, schedule
from edgekit.stages.sparsity import sparsify
from edgekit.train.distill import accuracy, distill
from edgekit.train.launch import distill_ddp, several_nodes

FLOAT_MODEL = "float_model.pt"  # splits, layer sizes + state_dict (weights_only-safe; rebuilt with the factory)
FLOAT_PROGRAM = "float_model.pt2"  # torch.export program, for the user: reloads with no Python code (unpickles)


@dataclass
class StageContext:
    """What stages read: the model as loaded (the teacher), its data, and where to report."""

    loaded: LoadedModel
    steps: object  # edgekit.progress.Steps
    nproc: int = 1
    student_spec: object = None  # a student from another factory (edgekit distill --student); None: the teacher's
    cut_from: int | None = None  # MACs of the model the first prune cut received (run sets it)
    _train: Dataset | None = None

    @property
    def spec(self):
        return self.loaded.spec

    def train(self, labels: bool, who: str = "this stage") -> Dataset:
        if self._train is None:
            self._train = load_npz(self.spec.train, self.spec.inputs, self.spec.origin("train"), need_labels=False)
        if labels and self._train.labels is None:
            raise UsageError(f"{who} needs labels y in {self.spec.origin('train')} ('{self._train.source}')")
        return self._train


@dataclass(frozen=True)
class Stage:
    name: str
    config: object  # the stage's config dataclass (to_json for the record)
    label: str  # what the progress line says
    needs: tuple[str, ...]  # "train", "labelled train", "eval" (its figures read it), "labelled eval"
    apply: Callable  # (model, config, StageContext) -> (model, facts for the record)
    cache: bool = True  # deterministic given its key: its output may be reused


def plan(options: StageOptions, target) -> list[Stage]:
    """The chain for these options, in the fixed order; channel rounding from the target."""
    chain = []
    if options.depth:
        chain.append(Stage("depth", options.depth, f"drop blocks, keep {options.depth.keep:g} of them", ("train",), _depth))
    # More than one process: the result depends on the reduction order across ranks (cached all the same).
    distill = Stage("distill", options.distill, f"distill from the loaded model ({options.nproc} process"
                    f"{'es' if options.nproc > 1 else ''})", ("train", "eval"), _distill) if options.distill else None
    if options.prune:
        cfg = options.prune if options.prune.round_to is not None else dataclasses.replace(options.prune, round_to=target.round_to)
        cuts = schedule(cfg, distilling=distill is not None)
        for k, cut in enumerate(cuts, 1):
            label = f"prune channels {cut.ratio:g}" if cut.ratio is not None else f"prune to {cut.macs_target:g} of MACs"
            step = f" (cut {k} of {len(cuts)})" if len(cuts) > 1 else ""
            chain.append(Stage("prune", cut, label + step, ("labelled train",) if cut.importance == "taylor" else (),
                               functools.partial(_prune, total=cfg if len(cuts) == 1 else None)))
            if k < len(cuts) and distill:  # recover before the next cut (the last one's comes after low-rank)
                chain.append(dataclasses.replace(distill, label=f"distill after cut {k} of {len(cuts)}"))
    if options.lowrank:
        chain.append(Stage("lowrank", options.lowrank, "low-rank factorise", (), _lowrank))
    if distill:
        chain.append(distill)
    if options.sparsity:
        chain.append(Stage("sparsity", options.sparsity, f"zero {options.sparsity.sparsity:.0%} of weights", (), _sparsity))
    return chain


def check(chain: list[Stage], spec, evaluation_labels: bool) -> None:
    """Every stage's needs are met by the data the build has: refused before anything runs."""
    rounds = sum(stage.name == "distill" for stage in chain)
    if rounds > 1 and several_nodes():  # the other nodes leave after their first share (train/launch.py)
        raise UsageError(f"--nnodes spreads one distillation over machines, and this pruning cuts in {rounds} rounds "
                         "with a distillation after each", hint="add --prune-steps 1 (one cut), or train on one machine")
    for stage in chain:
        for need in stage.needs:
            if need in ("train", "labelled train") and spec.train is None:
                what = {"distill": "--distill", "depth": "--depth"}.get(stage.name) or \
                    f"--prune-importance {stage.config.importance}"
                raise UsageError(f"{what} needs training data",
                                 hint="pass --train train.npz (x and labels y), or set data.train in edgekit.toml")
            if need == "labelled train":  # the whole file checked now (shapes, values, labels), not mid-build
                load_npz(spec.train, spec.inputs, spec.origin("train"), need_labels=True)
            if need == "labelled eval" and not evaluation_labels:
                raise UsageError(f"--{stage.name} needs labelled evaluation data (held-out accuracy, early stop)",
                                 hint="pass --eval eval.npz with the inputs and labels y")


def run(chain: list[Stage], ctx: StageContext, out_dir: Path | None, cache: StepCache | None = None, start=None):
    """Run the chain on a copy of the loaded model (or on `start`, another student); returns the
    transformed model. The loaded model is left as it was: it is the teacher."""
    steps, loaded = ctx.steps, ctx.loaded
    teacher = loaded.model
    before = count(teacher, loaded.example)
    with steps.step("measure", {}, "count MACs/params") as rec:
        rec.update(before, accuracy_float=_accuracy(teacher, loaded) if loaded.evaluation.labels is not None else None)
        rec["output"] = model_digest(teacher)
    model = copy.deepcopy(teacher) if start is None else start
    digest = rec["output"] if start is None else model_digest(start)
    ctx.cut_from = None
    macs = before["macs"] if start is None else None  # of the model the next stage receives (the records count it)
    for stage in chain:
        if stage.name == "prune" and ctx.cut_from is None:  # the MACs every cut's --prune-macs share is of
            ctx.cut_from = macs if macs is not None else count(model, loaded.example)["macs"]
        model, digest, macs = _run_stage(stage, model, digest, ctx, before, cache)
    if out_dir is not None:
        save_transformed(model, out_dir / FLOAT_MODEL)

        save_exported(model, loaded.example, out_dir / FLOAT_PROGRAM)
    return model


def _run_stage(stage: Stage, model, digest: str, ctx: StageContext, before: dict, cache: StepCache | None):
    config = dataclasses.asdict(stage.config)
    inputs = {"model": digest, "processes": ctx.nproc}
    if stage.name == "prune":
        inputs["cut_from_macs"] = ctx.cut_from
    if stage.needs and ctx.spec.train is not None:
        inputs["train"] = data_digest(ctx.train(labels=False))
    if {"eval", "labelled eval"} & set(stage.needs):  # a cached record's figures are the evaluation data's
        inputs["eval"] = data_digest(ctx.loaded.evaluation)
    key = step_key(stage.name, config, inputs)
    hit = cache.get(key) if cache is not None and stage.cache else None
    with ctx.steps.step(stage.name, stage.config.to_json(), stage.label + (" (cached)" if hit else "")) as rec:
        rec["input"] = digest
        if hit:
            entry, stored = hit

            model = load_transformed(build_module(ctx.student_spec or ctx.spec), entry / FLOAT_MODEL)
            facts = stored["facts"]
            rec.update(cached=True, saved_seconds=stored["seconds"])
        else:
            start = time.perf_counter()
            model, facts = stage.apply(model, stage.config, ctx)
            seconds = round(time.perf_counter() - start, 3)
        rec.update(facts)
        after = count(model, ctx.loaded.example)
        rec.update(after, **change(before, after))
        rec["accuracy_float"] = _accuracy(model, ctx.loaded) if ctx.loaded.evaluation.labels is not None else None
        rec["output"] = model_digest(model)
        _say(ctx.steps, before, after, rec["accuracy_float"])
    if not hit and cache is not None and stage.cache:
        with _tempdir() as tmp:
            save_transformed(model, Path(tmp) / FLOAT_MODEL)
            cache.put(key, {FLOAT_MODEL: Path(tmp) / FLOAT_MODEL}, {"stage": stage.name, "seconds": seconds, "facts": facts})
    return model, rec["output"], after["macs"]


def _say(steps, before: dict, after: dict, acc) -> None:
    tail = f", float accuracy {acc:.2f} %" if acc is not None else ""
    steps.console.print(f"  MACs {before['macs']:,} -> {after['macs']:,} ({after['macs'] / before['macs']:.0%}), "
                        f"params {before['params']:,} -> {after['params']:,}{tail}")


def _tempdir():
    import tempfile

    return tempfile.TemporaryDirectory(prefix="edgekit-step-")


def _accuracy(model, loaded: LoadedModel):
    return accuracy(model, loaded.evaluation, loaded.spec.inputs)


# ---------------------------------------------------------------- the stages
# Each: (model, its config, the context) -> (the transformed model, facts for the step record).


def _prune(model, cfg, ctx: StageContext, total=None):
    """One cut. `cfg.macs_target` is a share of the MACs the first cut received (ctx.cut_from): a later
    cut of a schedule turns it into a share of what it receives. `total`: the user's --prune config when
    this is its only cut (then the channels-vs-MACs line below speaks of it)."""
    taylor = _taylor_batches(ctx.train(labels=True, who="--prune-importance taylor"), ctx.spec) \
        if cfg.importance == "taylor" else None
    macs_before = count(model, ctx.loaded.example)["macs"]
    if cfg.macs_target is not None:
        share = cfg.macs_target * ctx.cut_from / macs_before
        if share >= 1:  # an earlier cut's channel rounding already went below this one's target
            ctx.steps.console.print(f"  already at {macs_before / ctx.cut_from:.0%} of the MACs: nothing to cut")
            return model, {"macs_removed": round(1 - macs_before / ctx.cut_from, 4), "cut": "none needed"}
        cfg = dataclasses.replace(cfg, macs_target=share)
    prune(model, ctx.loaded.example, cfg, taylor)
    removed = 1 - count(model, ctx.loaded.example)["macs"] / ctx.cut_from
    if total is not None and total.ratio is not None:  # a share of channels is not a share of MACs: say which it was
        ctx.steps.console.print(
            f"  --prune {total.ratio:g}: {total.ratio * 100:.0f} % of channels -> {removed * 100:.0f} % of MACs removed"
            + (f" (a layer's MACs fall with the widths of its input and its output; --prune-macs "
               f"{1 - total.ratio:g} would keep {(1 - total.ratio) * 100:.0f} % of them)"
               if removed > total.ratio + 0.05 else ""))
    return model, {"macs_removed": round(removed, 4)}


def _depth(model, cfg, ctx: StageContext):
    """Blocks chosen on the training inputs (never the evaluation data): the least influential go."""
    import torch

    train = ctx.train(labels=False).take(SCORE_SAMPLES)
    scoring = [tuple(torch.from_numpy(train.arrays[s.name][i:i + 64]) for s in ctx.spec.inputs)
               for i in range(0, len(train), 64)]
    facts = drop_blocks(model, ctx.loaded.example, cfg, scoring)
    ctx.steps.console.print(f"  dropped {len(facts['dropped'])} of {facts['blocks']} blocks: {', '.join(facts['dropped'])} "
                            "(the least influential on the training inputs)")
    return model, facts


def _lowrank(model, cfg, ctx: StageContext):
    reference = _outputs(model, ctx.loaded)
    layers = factorise(model, cfg)
    return model, {"layers": layers, "max_abs_diff": _max_diff(reference, _outputs(model, ctx.loaded))}


def _distill(model, cfg, ctx: StageContext):
    train = ctx.train(labels=False)
    if ctx.nproc > 1 or several_nodes():
        model, result = distill_ddp(ctx.spec, cfg, ctx.nproc, student=None if ctx.student_spec else model,
                                    student_spec=ctx.student_spec)
    else:
        result = distill(model, ctx.loaded.model, train, ctx.loaded.evaluation, ctx.spec.inputs, cfg, ctx.steps,
                         ctx.loaded.example)
    return model, {"result": {k: v for k, v in result.items() if k != "config"}}


def _sparsity(model, cfg, ctx: StageContext):
    zipped_before = _zipped_state(model)
    facts = sparsify(model, cfg)
    facts["float_deflate_bytes"] = {"before": zipped_before, "after": _zipped_state(model)}
    facts["note"] = "dense kernels: MACs and latency unchanged; the gain is the compressed size"
    return model, facts


def _outputs(model, loaded: LoadedModel):
    import torch

    model.eval()
    with torch.no_grad():
        return [model(*b) for b in batches(loaded.evaluation.take(64), loaded.spec.inputs)]


def _max_diff(a: list, b: list) -> float:
    return round(max(float((x - y).abs().max()) for x, y in zip(a, b)), 6)


def _zipped_state(model) -> int:
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return len(zlib.compress(buf.getvalue(), 9))


def _taylor_batches(train: Dataset, spec, n: int = 4, size: int = 64):
    """A few labelled batches: enough gradient signal to rank channels by Taylor importance."""
    import torch

    return [(tuple(torch.from_numpy(train.arrays[s.name][i:i + size]) for s in spec.inputs),
             torch.from_numpy(train.labels[i:i + size])) for i in range(0, n * size, size)]
