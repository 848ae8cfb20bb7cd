"""A distillation job as a JSON file: what every DDP worker needs to rebuild the same run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from edgekit.model.app import ModelSpec
from edgekit.model.spec import InputSpec


def spec_to_job(spec) -> dict:
    doc = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    doc["inputs"] = [s.to_json() for s in spec.inputs]
    doc["from_app"] = sorted(spec.from_app)
    doc["recipe"] = None  # the workers train; how the build goes on is not theirs to know
    return {k: str(v) if isinstance(v, Path) else v for k, v in doc.items()}


def spec_from_job(doc: dict):
    paths = {k: Path(doc[k]) if doc.get(k) else None for k in ("root", "weights", "calib", "eval", "train")}
    inputs = tuple(InputSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in doc["inputs"])
    return ModelSpec(name=doc["name"], factory=doc["factory"], inputs=inputs, source=doc["source"],
                     task=doc.get("task", "auto"), from_app=frozenset(doc.get("from_app") or ()), **paths)


def write_job(path: Path, **job) -> None:
    path.write_text(json.dumps(job, indent=2))


def read_job(path: Path) -> dict:
    return json.loads(Path(path).read_text())
