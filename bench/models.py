"""The benchmark models and their data.

Two trained sample apps (accuracy measured on their eval.npz) and two ImageNet-
size nets from edgekit.zoo with random weights (latency and build cost only:
their accuracy means nothing). Every path of one model sees the same
calibration samples and times the same input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class BenchModel:
    name: str
    app: Path | None = None  # a trained sample app (edgekit.toml, weights, calib/eval .npz)
    factory: str | None = None  # "module:factory" for edgekit's own-model path (`--model`)
    input_shape: tuple[int, ...] = ()  # for `factory` models

    @property
    def trained(self) -> bool:
        return self.app is not None

    def load(self):
        """The float model in eval mode, loaded exactly as edgekit loads it."""
        from edgekit.model.app import ModelSpec, build_module, load_app
        from edgekit.model.spec import InputSpec

        if self.app is not None:
            return build_module(load_app(self.app))
        return build_module(ModelSpec(self.name, self.factory, (InputSpec("x", self.input_shape),)))

    def data(self, calib_samples: int, seed: int = 0) -> "BenchData":
        """Sample apps: the first `calib_samples` of their calib.npz, and their eval.npz.
        Zoo models: `calib_samples` random images; the timed input is one more."""
        if self.app is not None:
            calib = np.load(self.app / "calib.npz")["x"][:calib_samples].astype(np.float32)
            with np.load(self.app / "eval.npz") as ev:
                x, y = ev["x"].astype(np.float32), ev["y"].astype(np.int64)
            return BenchData(calib, x[:1], x, y)
        rng = np.random.default_rng(seed)
        images = rng.standard_normal((calib_samples + 1, *self.input_shape[1:])).astype(np.float32)
        return BenchData(images[:-1], images[-1:], None, None)

    def build_args(self, calib_path: Path) -> tuple:
        """(the model source for edgekit.api.build: app dir, or --model + shape, with the calibration
        file every int8 path of the run shares; recipe options this model needs)."""
        from edgekit import api

        if self.app is not None:
            return api.source(self.app, calib=calib_path), {}
        return (api.source(model=self.factory, input_shape=",".join(map(str, self.input_shape)), calib=calib_path),
                dict(RANDOM_WEIGHTS_GATE))

    def cli_args(self, calib_path: Path) -> list[str]:
        """The same, as `edgekit build` arguments."""
        if self.app is not None:
            return [str(self.app), "--calib", str(calib_path)]
        return ["--model", self.factory, "--input-shape", ",".join(map(str, self.input_shape)), "--calib",
                str(calib_path), *(f"--{k.replace('_', '-')}={v:g}" for k, v in RANDOM_WEIGHTS_GATE.items())]


# Random weights: the outputs carry nothing to keep (near-constant logits), so the quality gate is
# opened for these timing-only models; the trained models keep the default gate.
RANDOM_WEIGHTS_GATE = {"min_cosine": -1.0, "min_agreement": 0.0}


@dataclass
class BenchData:
    calib: np.ndarray  # (N, *sample_shape) float32
    sample: np.ndarray  # the one timed input, batch 1
    eval_x: np.ndarray | None  # labelled eval set (trained models only)
    eval_y: np.ndarray | None

    def calib_batches(self):
        """Calibration one sample at a time, as the batch-1 artifacts see data."""
        return [self.calib[i : i + 1] for i in range(len(self.calib))]


MODELS = {
    "digits": BenchModel("digits", app=REPO / "sample_apps" / "digits"),
    "vit_digits": BenchModel("vit_digits", app=REPO / "sample_apps" / "vit_digits"),
    "mobilenet_v2": BenchModel("mobilenet_v2", factory="edgekit.zoo.mobilenet_v2:build_model", input_shape=(1, 3, 224, 224)),
    "resnet18": BenchModel("resnet18", factory="edgekit.zoo.resnet18:build_model", input_shape=(1, 3, 224, 224)),
}
