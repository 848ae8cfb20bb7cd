"""The float reference: the model as loaded, its example inputs, its data, and its outputs, once.

`edgekit build` and `edgekit validate` build it the same way, and every check
compares an artifact with `float_outputs()`: the quality gate, the sensitivity
ranking, the emulated-board comparison. After compression stages the reference
is the transformed model (`with_model`), on the same data.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field, replace

import numpy as np

from edgekit.compare import all_outputs, is_class_scores
from edgekit.errors import UsageError
from edgekit.model.app import ModelSpec, build_module
from edgekit.model.data import (
    Dataset,
    batches,
    check_labels,
    example_inputs,
    load_npz,
    random_dataset,
)

# With no calibration file, this many random samples stand in (and the build warns).
RANDOM_CALIB_SAMPLES = 32


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: object  # the float nn.Module, in eval mode
    example: tuple  # one batch of inputs of the right shapes and dtypes (tracing, export)
    calib: Dataset
    evaluation: Dataset
    held_out: bool  # False: evaluation is the calibration data (no --eval given), and says so
    _outputs: list | None = field(default=None, repr=False)  # [batch][output] numpy arrays

    @classmethod
    def load(cls, spec: ModelSpec, calib_samples: int | None = None, warn=lambda message: None,
             model=None) -> "LoadedModel":
        """Build the model (or take `model`), check it accepts its inputs, load and check the data.
        `warn(message)` hears what the user must know (random calibration, no held-out data)."""
        model = build_module(spec) if model is None else model
        example = example_inputs(spec.inputs)
        check_accepts(model, example, spec)
        calib, evaluation, held_out = _data(spec, calib_samples, warn)
        loaded = cls(spec, model, example, calib, evaluation, held_out)
        loaded.check_outputs()
        return loaded

    def float_outputs(self) -> list[list[np.ndarray]]:
        """Every output of the float model, per batch of the evaluation data (computed once)."""
        if self._outputs is None:
            import torch

            # One intra-op thread: batches are single samples, and on a loaded 2-core host OpenMP's
            # spinning workers made each small conv ~100x slower (measured: 23 ms vs 0.2 ms).
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                with torch.no_grad():
                    self._outputs = [all_outputs(self.model(*b)) for b in batches(self.evaluation, self.spec.inputs)]
            finally:
                torch.set_num_threads(threads)
        return self._outputs

    def with_model(self, model) -> "LoadedModel":
        """The same data and inputs with another float model (after pruning, distillation ...)."""
        return replace(self, model=model, _outputs=None)

    def judged_on(self, evaluation: Dataset, held_out: bool) -> "LoadedModel":
        """The same model and calibration, judged on other data (--quality auto: the calibration inputs)."""
        return replace(self, evaluation=evaluation, held_out=held_out, _outputs=None)

    def check_outputs(self) -> None:
        """Finite float outputs, and labels that index the first output's class scores."""
        for b, batch in enumerate(self.float_outputs()):
            for i, out in enumerate(batch):
                if not np.isfinite(out).all():
                    raise UsageError(f"model '{self.spec.factory}' output {i} holds non-finite values on sample {b} "
                                     f"of '{self.evaluation.source}'", hint="check the weights and the inputs' scale; "
                                     "edgekit needs a float model that computes finite outputs on its data")
        first = self.float_outputs()[0][0]
        if self.evaluation.labels is not None and is_class_scores(first.shape, self.spec.task):
            check_labels(self.evaluation, first.shape[-1], self.evaluation.origin)


def check_accepts(model, example: tuple, spec: ModelSpec) -> None:
    """Run the float model once so a wrong input shape fails here, clearly."""
    import torch

    try:
        with torch.no_grad():
            model(*example)
    except Exception as e:
        shapes = ", ".join(f"{s.name}: {s.shape} {s.dtype}" for s in spec.inputs)
        raise UsageError(
            f"model '{spec.factory}' rejected inputs ({shapes}): {type(e).__name__}: {str(e).splitlines()[0]}",
            hint="pass the shape the model takes, batch first: --input-shape 1,3,32,32 "
            "(or --input NAME:SHAPE:DTYPE per input, or fix [[inputs]] in edgekit.toml)",
        ) from None


def _data(spec: ModelSpec, calib_samples: int | None, warn) -> tuple[Dataset, Dataset, bool]:
    """(calibration, evaluation, held_out): without --eval the artifact is compared with the
    float model on the calibration inputs, which are then not held out (and the build says so)."""
    if spec.calib:
        calib = load_npz(spec.calib, spec.inputs, spec.origin("calib"), need_labels=False).take(calib_samples)
    else:
        calib = random_dataset(spec.inputs, calib_samples or RANDOM_CALIB_SAMPLES)
        warn("no calibration data: calibrating on RANDOM inputs. int8 ranges will not match real data "
             "and accuracy may collapse; pass --calib calib.npz with real samples")
    if spec.eval:
        return calib, load_npz(spec.eval, spec.inputs, spec.origin("eval"), need_labels=False), True
    warn("no evaluation data: the artifact is compared with the float model on the calibration inputs "
         "(not held out); pass --eval eval.npz (real inputs, labels y optional) to judge it on unseen data")
    return calib, calib, False


def state_dict_bytes(model) -> bytes:
    """The float state_dict as torch.save writes it: the size users compare against."""
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def tensors_digest(model) -> str:
    """sha256 over the model's parameters and buffers (names, dtypes, shapes, bytes): equal weights,
    equal digest, whatever torch.save's container bytes."""
    import torch

    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes: any dtype, bfloat16 too
    return h.hexdigest()


def model_digest(model) -> str:
    """sha256 of what a model computes: its tensors and the source of every module class in it (a
    forward() edited with the weights unchanged is another model)."""
    import inspect

    h = hashlib.sha256(tensors_digest(model).encode())
    parts = []
    for cls in {type(m) for m in model.modules()}:
        # Not the module's name: an app's model module gets a per-process private name (model/app.py).
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            source = ""  # no source to read (a builtin or compiled class): its name and the versions pin it
        parts.append(f"{cls.__qualname__}\n{source}")
    for part in sorted(parts):
        h.update(part.encode())
    return h.hexdigest()


def data_digest(data: Dataset) -> str:
    h = hashlib.sha256()
    for name in sorted(data.arrays):
        a = np.ascontiguousarray(data.arrays[name])
        h.update(f"{name}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    if data.labels is not None:
        h.update(np.ascontiguousarray(data.labels).tobytes())
    return h.hexdigest()
