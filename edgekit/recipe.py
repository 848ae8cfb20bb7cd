"""A build recipe: how to build, apart from what (the model source) and where (the target).

    formats       () for the target's own, ("all",) for every format this installation has,
                  ("auto",) for the same and the one to ship kept as the primary (build/__init__.py)
    quant         scheme (static, dynamic, fp16), per-channel weights, calibration method
    calib_samples use only the first N calibration samples
    quality       auto: when int8 misses the gate, recover (build/quality.py); fast: one pass
    gate          the quality gate's thresholds, the accuracy fallback, what the output is
    stages        compression before quantization: prune, low-rank, distill, sparsity
    sensitivity   rank layers by how much quantizing each alone hurts

The same recipe lives in three places: an app's `edgekit.toml` ([recipe] table: the
app's own defaults), a `--recipe FILE` (the same table, or a build's manifest.json,
which records the recipe that made it), and the command line, whose options
override the file's one by one. `to_toml`/`from_toml` round-trip it.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.compare import TASKS
from edgekit.errors import UsageError
from edgekit.formats import FORMATS
from edgekit.formats.base import CALIBRATIONS, SCHEMES, WEIGHT_ROUNDINGS, QuantConfig
from edgekit.stages.depth import DepthConfig
from edgekit.stages.lowrank import LowRankConfig
from edgekit.stages.options import (
    StageOptions,
    stage_options_from_json,
    stage_options_to_json,
)
from edgekit.stages.prune import PruneConfig
from edgekit.stages.sparsity import SparsityConfig
from edgekit.train.distill import DistillConfig

RECIPE_TABLE = "recipe"
# auto: when int8 misses the gate, recover, choosing on the calibration inputs
# (build/quality.py); fast: one pass, exactly the recipe.
QUALITY_MODES = ("auto", "fast")


@dataclass(frozen=True)
class GateOptions:
    """The quality gate (edgekit/compare.py): None keeps the arithmetic's default."""

    min_cosine: float | None = None
    min_agreement: float | None = None  # percent
    max_accuracy_drop: float | None = None  # points; needs labelled evaluation data
    fallback: bool = True  # keep the most sensitive layers float to meet max_accuracy_drop
    latency_budget_ms: float | None = None  # predicted on the target (build/budget.py); pruning planned to meet it
    size_budget_mb: float | None = None  # the artifact file, in MB (10^6 bytes)
    task: str | None = None  # None: the model spec's (edgekit.toml model.task), else auto

    def check(self) -> None:
        if self.min_cosine is not None and not -1.0 <= self.min_cosine <= 1.0:
            raise UsageError(f"--min-cosine must be between -1 and 1, got {self.min_cosine:g}", hint="e.g. --min-cosine 0.99")
        if self.min_agreement is not None and not 0.0 <= self.min_agreement <= 100.0:
            raise UsageError(f"--min-agreement is a percentage between 0 and 100, got {self.min_agreement:g}",
                             hint="e.g. --min-agreement 95")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise UsageError(f"--max-accuracy-drop must be 0 or more points, got {self.max_accuracy_drop}")
        if self.latency_budget_ms is not None and not self.latency_budget_ms > 0:
            raise UsageError(f"--latency-budget must be a positive number of milliseconds, got {self.latency_budget_ms:g}",
                             hint="e.g. --latency-budget 5 (ms per inference, predicted on the target)")
        if self.size_budget_mb is not None and not self.size_budget_mb > 0:
            raise UsageError(f"--size-budget must be a positive number of MB, got {self.size_budget_mb:g}",
                             hint="e.g. --size-budget 2 (the artifact file, 10^6 bytes)")
        if self.task == "text-generation":
            raise UsageError("--task text-generation: only `edgekit build` makes decoders",
                             hint="edgekit build --task text-generation --model MODEL_DIR")
        if self.task is not None and self.task not in TASKS:
            raise UsageError(f"--task: unknown task {self.task!r}", hint=f"use one of: {', '.join(TASKS)}")


@dataclass(frozen=True)
class BuildRecipe:
    formats: tuple[str, ...] = ()
    quant: QuantConfig = field(default_factory=QuantConfig)
    calib_samples: int | None = None
    gate: GateOptions = field(default_factory=GateOptions)
    stages: StageOptions = field(default_factory=StageOptions)
    sensitivity: bool = False
    quality: str = "auto"  # build/quality.py: QUALITY_MODES

    def check(self) -> None:
        """Everything that can be refused before any work."""

        for fmt in self.formats:
            if fmt not in ("all", "auto") and fmt not in FORMATS:
                raise UsageError(f"--format {fmt}: unknown format",
                                 hint=f"choose from: {', '.join((*FORMATS, 'all', 'auto'))}")
        if self.quant.scheme not in SCHEMES:
            raise UsageError(f"--quant {self.quant.scheme}: unknown scheme", hint=f"choose one of: {', '.join(SCHEMES)}")
        if self.quant.calibration is not None and self.quant.calibration not in CALIBRATIONS:
            raise UsageError(f"--calibration: unknown method '{self.quant.calibration}'",
                             hint=f"choose one of: {', '.join(CALIBRATIONS)}")
        alpha = self.quant.smooth_quant
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1):
            raise UsageError(f"--smooth-quant {alpha}: SmoothQuant's alpha is a number between 0 and 1 (exclusive)",
                             hint="0.5 balances activations and weights (the paper's default); up to 0.85 for "
                             "stronger activation outliers")
        if alpha is not None and self.quant.scheme != "static":
            raise UsageError(f"--smooth-quant applies to --quant static only (got --quant {self.quant.scheme})",
                             hint="dynamic int8 quantizes each activation from its own range: nothing to smooth")
        if self.quality not in QUALITY_MODES:
            raise UsageError(f"--quality {self.quality}: unknown", hint=f"choose one of: {', '.join(QUALITY_MODES)}")
        if self.calib_samples is not None and self.calib_samples <= 0:
            raise UsageError(f"--calib-samples must be a positive number, got {self.calib_samples}")
        self.gate.check()
        self.stages.check()

    def with_overrides(self, **values) -> "BuildRecipe":
        """Another recipe with the given fields replaced (None leaves a field as it is)."""
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})

    # ------------------------------------------------------------ JSON and TOML

    def to_json(self) -> dict:
        quant = {"scheme": self.quant.scheme, "per_channel": self.quant.per_channel,
                 "calibration": self.quant.calibration, "equalize": self.quant.equalize,
                 "smooth_quant": self.quant.smooth_quant, "weight_rounding": self.quant.weight_rounding}
        doc = {"formats": list(self.formats), "quant": quant, "calib_samples": self.calib_samples,
               "gate": dataclasses.asdict(self.gate), "sensitivity": self.sensitivity,
               "stages": stage_options_to_json(self.stages), "quality": self.quality}
        return doc

    @classmethod
    def from_json(cls, doc: dict, where: str) -> "BuildRecipe":
        _keys(doc, {"formats", "quant", "calib_samples", "gate", "sensitivity", "stages", "quality"}, where)
        quant = doc.get("quant") or {}
        _keys(quant, {"scheme", "per_channel", "calibration", "equalize", "smooth_quant", "weight_rounding"},
              f"{where}: quant")
        gate = doc.get("gate") or {}
        _keys(gate, {f.name for f in dataclasses.fields(GateOptions)}, f"{where}: gate")
        try:
            recipe = cls(
                formats=tuple(doc.get("formats") or ()),
                quant=QuantConfig(scheme=quant.get("scheme", "static"), per_channel=quant.get("per_channel", True),
                                  calibration=quant.get("calibration"), equalize=bool(quant.get("equalize", False)),
                                  smooth_quant=quant.get("smooth_quant"),
                                  weight_rounding=_weight_rounding(quant.get("weight_rounding", "gptq"), where)),
                calib_samples=doc.get("calib_samples"),
                gate=GateOptions(**gate),
                stages=stage_options_from_json(doc.get("stages") or {}, f"{where}: stages"),
                sensitivity=bool(doc.get("sensitivity", False)),
                quality=doc.get("quality", "auto"),
            )
        except TypeError as e:
            raise UsageError(f"{where}: not a build recipe ({e})", hint="see the README's 'Build recipes'") from None
        recipe.check()
        return recipe

    def to_toml(self) -> str:
        """The recipe as a `[recipe]` table (what `from_toml` and an app's edgekit.toml read)."""
        return _toml({RECIPE_TABLE: _drop_none(self.to_json())})

    @classmethod
    def from_toml(cls, text: str, where: str) -> "BuildRecipe":
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise UsageError(f"{where}: not valid TOML: {e}") from None
        return cls.from_json(doc.get(RECIPE_TABLE, doc), where)

    @classmethod
    def from_file(cls, path: str | Path) -> "BuildRecipe":
        """A recipe file (TOML) or a build's manifest.json (the recipe that made it)."""
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"--recipe: '{path}' does not exist")
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            try:
                doc = json.loads(text)
            except ValueError as e:
                raise UsageError(f"--recipe: '{path}' is not valid JSON ({e})") from None
            if not isinstance(doc, dict) or "recipe" not in doc:
                raise UsageError(f"--recipe: '{path}' holds no recipe", hint="pass a manifest.json edgekit build wrote, "
                                 "or a TOML file with a [recipe] table")
            return cls.from_json(doc["recipe"], str(path))
        return cls.from_toml(text, str(path))


def app_recipe(spec) -> BuildRecipe | None:
    """The recipe an app's edgekit.toml declares ([recipe]), checked, or None."""
    return BuildRecipe.from_json(spec.recipe, f"{spec.source}: [recipe]") if spec.recipe is not None else None


def _keys(doc, allowed: set[str], where: str) -> None:
    if not isinstance(doc, dict):
        raise UsageError(f"{where} must be a table, got {type(doc).__name__}")
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise UsageError(f"{where}: unknown key '{unknown[0]}'", hint=f"allowed: {', '.join(sorted(allowed))}")


def _weight_rounding(value, where: str) -> str:
    if value not in WEIGHT_ROUNDINGS:
        raise UsageError(f"{where}: quant.weight_rounding = {value!r} is not one of {', '.join(WEIGHT_ROUNDINGS)}",
                         hint="nearest (every quantizer's own) or gptq (formats/rounding.py)")
    return value


def _drop_none(value):
    """TOML has no null: unset fields are left out (and read back as their defaults)."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def _toml(doc: dict, prefix: str = "") -> str:
    """A small TOML writer for the recipe's shapes: scalars, lists of scalars, nested tables."""
    scalars = {k: v for k, v in doc.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in doc.items() if isinstance(v, dict)}
    lines = [f"{k} = {_value(v)}" for k, v in scalars.items()]
    out = ([f"[{prefix}]"] if prefix and (scalars or not tables) else []) + lines
    for key, table in tables.items():
        block = _toml(table, f"{prefix}.{key}" if prefix else key)
        out += ([""] if out else []) + [block]
    return "\n".join(out) + ("\n" if not prefix else "")


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string is JSON's string syntax
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def recipe_from_options(base: BuildRecipe | None = None, *, recipe_file=None, formats=(), quant=None, calibration=None, calib_samples=None,
                        per_tensor=None, max_accuracy_drop=None, min_cosine=None, min_agreement=None, task=None,
                        no_fallback=None, sensitivity=None, prune=None, prune_macs=None, prune_steps=None, prune_importance=None,
                        prune_global=None, distill=None, distill_epochs=None, nproc=None, lowrank=None,
                        lowrank_energy=None, sparsity=None, quality=None, equalize=None, smooth_quant=None,
                        weight_rounding=None, latency_budget=None, size_budget=None, depth=None):
    """A recipe from flat options, named as the command line names them (what `edgekit build` maps
    its options onto, and the short way to write one in Python): `base` (`recipe_file`'s if given,
    else an app's), with every option given (not None) over it, one field at a time.

        recipe_from_options(formats=("all",), calibration="minmax", prune=0.5, distill=True)
    """

    recipe = BuildRecipe.from_file(recipe_file) if recipe_file else (base or BuildRecipe())
    quant = dataclasses.replace(recipe.quant, **{k: v for k, v in {
        "scheme": quant, "calibration": calibration, "per_channel": False if per_tensor else None,
        "equalize": equalize, "smooth_quant": smooth_quant, "weight_rounding": weight_rounding}.items()
        if v is not None})
    gate = dataclasses.replace(recipe.gate, **{k: v for k, v in {
        "min_cosine": min_cosine, "min_agreement": min_agreement, "max_accuracy_drop": max_accuracy_drop,
        "task": task, "fallback": False if no_fallback else None, "latency_budget_ms": latency_budget,
        "size_budget_mb": size_budget}.items() if v is not None})
    stages = recipe.stages
    if prune is not None or prune_macs is not None:
        stages = dataclasses.replace(stages, prune=PruneConfig(ratio=prune, macs_target=prune_macs))
    if stages.prune is not None and (prune_importance or prune_global or prune_steps is not None):
        stages = dataclasses.replace(stages, prune=dataclasses.replace(
            stages.prune, importance=prune_importance or stages.prune.importance,
            global_pruning=bool(prune_global) or stages.prune.global_pruning,
            steps=prune_steps if prune_steps is not None else stages.prune.steps))
    elif prune_importance or prune_global or prune_steps is not None:
        raise UsageError("--prune-importance/--prune-global/--prune-steps apply to pruning",
                         hint="add --prune RATIO or --prune-macs FRACTION")
    if distill or distill_epochs is not None:
        base_distill = stages.distill or DistillConfig()
        stages = dataclasses.replace(stages, distill=dataclasses.replace(
            base_distill, epochs=distill_epochs if distill_epochs is not None else base_distill.epochs))
    if lowrank is not None or lowrank_energy is not None:
        stages = dataclasses.replace(stages, lowrank=LowRankConfig(lowrank, lowrank_energy))
    if depth is not None:
        stages = dataclasses.replace(stages, depth=DepthConfig(depth))
    if sparsity is not None:
        stages = dataclasses.replace(stages, sparsity=SparsityConfig(sparsity))
    if nproc is not None:
        stages = dataclasses.replace(stages, nproc=nproc)
    return recipe.with_overrides(formats=tuple(formats) or None, quant=quant, calib_samples=calib_samples, gate=gate,
                                 stages=stages, sensitivity=sensitivity, quality=quality)
