"""Quantization-aware training: the last try of `--quality auto`, when the build has training inputs.

torchao's PT2E QAT, through the format (its `prepare_qat` / `convert_qat`: the same quantizer,
rewrites and float layers as its post-training path): `prepare_qat_pt2e` puts fake quantization
where the artifact will compute in int8, the graph is fine-tuned so its outputs match the float
model's, and `convert_pt2e` makes the int8 graph the format lowers as any other. The recipe is the
library's own (torchao's PT2E QAT tutorial): ranges observed (moving-average min/max) while the
first OBSERVER_EPOCHS train, then frozen so the last epochs fit the weights to fixed grids; batch
norm keeps its running statistics (`move_exported_model_to_eval`: a short fine-tune on a small
set would only make them noisier).

Labels are not needed: the loss is each output's squared error to the float model's, relative to
the float output's power, summed over outputs. For class scores that is logit matching, which
distils as well as the KL divergence of softened probabilities (Kim et al., 2021, "Comparing
Kullback-Leibler Divergence and Mean Squared Error Loss in Knowledge Distillation"); for any
output it is the noise-to-signal power the label-free gate's cosine measures.

Fine-tuning runs on a batch of QatConfig.batch_size: the graph is exported at that batch for
training and again at the model's own batch for the artifact. The two graphs have the same names,
so the trained state (weights, fake-quant scales and observer ranges) loads into the artifact's
graph with `load_state_dict(strict=True)`; a model that cannot run at another batch trains at its
own. Nothing here looks at the evaluation data: the epochs are fixed, and `--quality auto` judges
the try on the calibration inputs like every other.

The same loop runs in one process or under DDP (train/qat_ddp.py, through torchrun): each rank
builds the same prepared graph from the same float model and calibration inputs, takes its share
of every epoch (DistributedSampler's scheme, as distillation does), and rank 0's state is kept.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from edgekit.errors import UsageError
from edgekit.train.distill import train_batches

OBSERVER_EPOCHS = 1  # epochs the activation ranges follow the data before they are frozen (torchao's recipe)


@dataclasses.dataclass(frozen=True)
class QatConfig:
    epochs: int = 3
    batch_size: int = 16  # global, over all processes
    # Adam's step size: a fine-tune of weights already trained, far below a training run's 1e-3.
    # Measured on tests/test_qat.py's model (SQNR to float on held-out digits, 15.7 dB post-training):
    # 21.1 dB after 3 epochs at 1e-5, 20.5 dB after 5 at 1e-4.
    lr: float = 1e-5
    seed: int = 0

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise UsageError(f"QAT needs epochs >= 1, batch size >= 1 and a positive learning rate (got {self})")


def train_data(spec):
    """The build's training inputs (labels not needed), or None when it has none."""
    from edgekit.model.data import load_npz

    if spec.train is None:
        return None
    return load_npz(spec.train, spec.inputs, spec.origin("train"), need_labels=False)


def finetune(fmt, model, calib, train, specs, cfg, qat: QatConfig, steps, rank: int = 0, world: int = 1):
    """The trained prepared graph at the training batch (calibrated on the `calib` Dataset,
    fine-tuned on the `train` one), and the record of the run. `model` is not changed."""
    import torch
    from torchao.quantization.pt2e.fake_quantize import disable_observer

    qat.check()
    torch.manual_seed(qat.seed)
    batch = _rank_batch(model, train, specs, qat, world)  # what each process runs at once
    prepared = _prepared(fmt, model, _rows(train, specs, np.arange(batch)), cfg)
    with torch.no_grad():  # the ranges start from the calibration inputs, as post-training's do
        for start in range(0, len(calib) - batch + 1, batch):
            prepared(*_rows(calib, specs, np.arange(start, start + batch)))
    teacher = model.eval()
    module = torch.nn.parallel.DistributedDataParallel(prepared) if world > 1 else prepared
    optimizer = torch.optim.Adam(prepared.parameters(), lr=qat.lr)
    history, start = [], time.perf_counter()
    for epoch in steps.track(range(1, qat.epochs + 1), qat.epochs, "quantization-aware training"):
        if epoch > OBSERVER_EPOCHS:
            prepared.apply(disable_observer)
        total, n = 0.0, 0
        # this rank's share of the epoch, whole batches only (the graph was exported at one batch)
        for xs, _ in train_batches(train, specs, batch * world, epoch, rank, world, qat.seed):
            with torch.no_grad():
                target = _outputs(teacher(*xs))
            loss = relative_error(_outputs(module(*xs)), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, n = total + loss.item(), n + 1
        history.append({"epoch": epoch, "loss": round(total / max(n, 1), 6)})
        steps.console.print(f"  QAT epoch {epoch}/{qat.epochs}  relative error to float {total / max(n, 1):.2e}")
    record = {"config": dataclasses.asdict(qat), "observer_epochs": OBSERVER_EPOCHS, "batch": batch * world,
              "train": {"source": train.source, "samples": len(train)}, "history": history,
              "processes": world, "seconds": round(time.perf_counter() - start, 1),
              "loss": "squared error to the float outputs over their power (labels unused)"}
    return prepared, record


def converted(fmt, model, example: tuple, cfg, trained):
    """The int8 graph at the model's own batch, with the trained state: what the format exports."""
    prepared = _prepared(fmt, model, example, cfg)
    prepared.load_state_dict(trained.state_dict() if hasattr(trained, "state_dict") else trained, strict=True)
    return fmt.convert_qat(prepared)


def _prepared(fmt, model, example: tuple, cfg):
    """The format's QAT graph with batch norm in eval mode: running statistics, in training and in
    the graph converted for the artifact alike (a batch norm after a float layer stays a batch norm
    there, and in training mode it would normalise each batch of one by itself)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval

    prepared = fmt.prepare_qat(model, example, cfg)
    move_exported_model_to_eval(prepared)
    return prepared


def relative_error(outputs: list, targets: list):
    """Sum over outputs of ||out - target||^2 / ||target||^2 (the module doc's loss)."""
    loss = 0.0
    for out, target in zip(outputs, targets):
        if not target.is_floating_point():
            continue
        loss = loss + ((out - target) ** 2).sum() / (target ** 2).sum().clamp_min(1e-12)
    return loss


def _outputs(out) -> list:
    if isinstance(out, dict):
        return list(out.values())
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _rows(data, specs, idx) -> tuple:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(data.arrays[s.name][idx])) for s in specs)


def _rank_batch(model, train, specs, qat: QatConfig, world: int) -> int:
    """Each process's batch: its share of QatConfig's, if the model runs at it (and the data holds
    two global batches), else the model's own batch."""
    import torch

    own = specs[0].batch
    batch = max(1, qat.batch_size // world)
    if batch == own or len(train) < 2 * batch * world:
        return own
    try:
        with torch.no_grad():
            model(*_rows(train, specs, np.arange(batch)))
    except Exception:  # noqa: BLE001 - a forward fixed to its batch (a reshape to (1, -1)): train at it
        return own
    return batch


def finetune_ddp(fmt, model, calib, train, spec, cfg, qat: QatConfig, nproc: int):
    """`finetune` on `nproc` processes through torchrun (train/qat_ddp.py): (rank 0's trained
    state_dict, its record). The float model travels as a saved transformed model (saved.py), the
    calibration inputs as an .npz beside it; the training inputs are the spec's own file."""
    import tempfile
    from pathlib import Path

    import torch

    from edgekit.model.saved import save_transformed
    from edgekit.train.job import spec_to_job
    from edgekit.train.launch import run_ddp

    if spec.train is None:
        raise UsageError("quantization-aware training needs training inputs", hint="pass --train train.npz")
    with tempfile.TemporaryDirectory(prefix="edgekit-qat-") as tmp:
        work = Path(tmp)
        save_transformed(model, work / "float_model.pt")
        np.savez(work / "calib.npz", **calib.arrays)
        job = {"spec": spec_to_job(spec), "format": fmt.NAME, "quant": quant_config_to_json(cfg),
               "qat": dataclasses.asdict(qat), "model": str(work / "float_model.pt"),
               "calib": str(work / "calib.npz"), "out": str(work / "qat_state.pt")}
        record = run_ddp(job, nproc, work, entry="edgekit.train.qat_ddp", what="quantization-aware training")
        state = torch.load(work / "qat_state.pt", weights_only=True)
    return state, record


def quant_config_to_json(cfg) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def quant_config_from_json(doc: dict):
    from edgekit.formats.base import QuantConfig

    tuples = {"skip_layers", "input_names"}
    return QuantConfig(**{k: tuple(v) if k in tuples or (k == "only_layers" and v is not None) else v
                          for k, v in doc.items()})
