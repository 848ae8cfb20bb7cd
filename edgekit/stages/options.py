"""Which compression stages a build runs, and with what settings (part of the build recipe)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from edgekit.errors import UsageError
from edgekit.stages.depth import DepthConfig
from edgekit.stages.lowrank import LowRankConfig
from edgekit.stages.prune import PruneConfig
from edgekit.stages.sparsity import SparsityConfig
from edgekit.train.distill import DistillConfig

# The stages, in the order they run: depth (whole blocks dropped first: the module tree changes once,
# and pruning then ranks the channels of the blocks that stay), prune, low-rank, distill (teacher = the
# model as loaded, so it recovers what the first three took), sparsity (last, so training does not
# refill the zeros).
ORDER = ("depth", "prune", "lowrank", "distill", "sparsity")
CONFIGS = {"depth": DepthConfig, "prune": PruneConfig, "lowrank": LowRankConfig, "distill": DistillConfig,
           "sparsity": SparsityConfig}


@dataclass(frozen=True)
class StageOptions:
    depth: DepthConfig | None = None
    prune: PruneConfig | None = None
    lowrank: LowRankConfig | None = None
    distill: DistillConfig | None = None
    sparsity: SparsityConfig | None = None
    nproc: int = 1  # training processes (DDP through torchrun) when > 1: distillation, quantization-aware training

    @property
    def any(self) -> bool:
        return any(getattr(self, name) is not None for name in ORDER)

    def check(self) -> None:
        for name in ORDER:
            cfg = getattr(self, name)
            if cfg is not None:
                cfg.check()
        if self.nproc < 1:
            raise UsageError(f"--nproc must be at least 1, got {self.nproc}")
        if self.prune is not None and (self.prune.steps or 1) > 1 and self.distill is None:
            raise UsageError(f"--prune-steps {self.prune.steps} cuts in rounds with distillation between them",
                             hint="add --distill (and training data), or drop --prune-steps")


def stage_options_to_json(options: StageOptions) -> dict:
    doc = {name: dataclasses.asdict(getattr(options, name)) for name in ORDER if getattr(options, name) is not None}
    if "distill" in doc:
        doc["distill"]["features"] = list(doc["distill"]["features"])
    doc["nproc"] = options.nproc
    return doc


def stage_options_from_json(doc: dict, where: str) -> StageOptions:
    unknown = sorted(set(doc) - {*ORDER, "nproc"})
    if unknown:
        raise UsageError(f"{where}: unknown stage '{unknown[0]}'", hint=f"stages: {', '.join(ORDER)}")
    configs = {}
    for name in ORDER:
        if name not in doc:
            continue
        fields = {f.name for f in dataclasses.fields(CONFIGS[name])}
        bad = sorted(set(doc[name]) - fields)
        if bad:
            raise UsageError(f"{where}.{name}: unknown key '{bad[0]}'", hint=f"allowed: {', '.join(sorted(fields))}")
        values = dict(doc[name])
        if "features" in values:
            values["features"] = tuple(values["features"])
        configs[name] = CONFIGS[name](**values)
    return StageOptions(**configs, nproc=int(doc.get("nproc", 1)))
