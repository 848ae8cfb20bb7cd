"""Distillation: the loss pieces, and the same run on 1 process and on 2 real DDP processes (gloo)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from edgekit.errors import UsageError
from edgekit.stages.options import StageOptions
from edgekit.stages.prune import PruneConfig
from edgekit.train.distill import DistillConfig, make_trainable


class _Net(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU())
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        return self.head(self.body(x))


def test_feature_adapter_maps_student_width_to_teacher_width():
    x = (torch.zeros(2, 1, 8, 8),)
    trainable, s_taps, t_taps = make_trainable(_Net(16), _Net(48), DistillConfig(), x)
    assert isinstance(trainable.adapters[0], nn.Linear)
    assert (trainable.adapters[0].in_features, trainable.adapters[0].out_features) == (16, 48)
    trainable(*x)
    assert s_taps.values[0].shape == (2, 16)  # the head's input was tapped


def test_logit_only_distillation_has_no_adapters():
    trainable, s_taps, _ = make_trainable(_Net(16), _Net(48), DistillConfig(feature_weight=0), (torch.zeros(1, 1, 8, 8),))
    assert s_taps is None and len(trainable.adapters) == 0


def test_unknown_feature_name_is_a_usage_error():
    with pytest.raises(UsageError, match="--feature 'body.9'"):
        make_trainable(_Net(16), _Net(48), DistillConfig(features=("body.9",)), (torch.zeros(1, 1, 8, 8),))


@pytest.mark.parametrize("field, value, flag", [("temperature", 0, "--temperature"), ("alpha", 1.5, "--alpha"),
                                                ("epochs", 0, "--epochs")])
def test_bad_settings_name_the_flag(field, value, flag):
    with pytest.raises(UsageError, match=flag):
        DistillConfig(**{field: value}).check()


def test_two_ddp_processes_match_one_process(digits_app, tmp_path):
    """`edgekit distill --nproc 2`: two real worker processes under torchrun, gloo on this CPU box."""
    from edgekit import api

    cfg = DistillConfig(epochs=5, patience=5)
    one = api.distill(digits_app, "rpi4", StageOptions(prune=PruneConfig(ratio=0.5), distill=cfg, nproc=1), out=tmp_path / "one")
    two = api.distill(digits_app, "rpi4", StageOptions(prune=PruneConfig(ratio=0.5), distill=cfg, nproc=2), out=tmp_path / "two")
    assert two["processes"] == 2 and two["backend"] == "gloo"
    assert one["processes"] == 1
    assert len(two["history"]) == len(one["history"]) == 5
    assert two["accuracy_before"] == one["accuracy_before"] < 50  # the same pruned start
    assert abs(two["accuracy"] - one["accuracy"]) <= 1.0
    assert two["accuracy"] >= 98.0
    assert two["student"]["macs"] == one["student"]["macs"] < 0.55 * two["teacher"]["macs"]
    saved = json.loads((tmp_path / "two" / "distill.json").read_text())
    assert saved["accuracy"] == two["accuracy"]
    assert (tmp_path / "two" / "float_model.pt2").is_file()


def _blobs(n: int, seed: int, labelled: bool = True):
    """Ten separable clusters of 8x8 'images' (a class's mean plus noise)."""
    import numpy as np

    from edgekit.model.data import Dataset

    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(10, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, n)
    x = (centres[y] + 0.8 * rng.normal(size=(n, 1, 8, 8))).astype(np.float32)
    return Dataset({"x": x}, y.astype(np.int64) if labelled else None, "blobs")


def test_validation_is_held_out_of_the_training_data():
    from edgekit.train.distill import MAX_VALIDATION, split_validation

    data = _blobs(1000, 0)
    rest, held = split_validation(data, 0.15, seed=3)
    assert (len(rest), len(held)) == (850, 150)
    rows = {tuple(r) for r in data.arrays["x"].reshape(1000, -1)[:, :4].round(5)}
    assert {tuple(r) for r in rest.arrays["x"].reshape(850, -1)[:, :4].round(5)}.isdisjoint(
        {tuple(r) for r in held.arrays["x"].reshape(150, -1)[:, :4].round(5)}) and len(rows) == 1000
    again, _ = split_validation(data, 0.15, seed=3)
    assert (again.arrays["x"] == rest.arrays["x"]).all()  # the same split on every rank
    _, capped = split_validation(_blobs(20000, 1), 0.5, seed=0)
    assert len(capped) == MAX_VALIDATION
    with pytest.raises(UsageError, match="too few"):
        split_validation(_blobs(8, 2), 0.15, seed=0)


def _distill_blobs(evaluation, train):
    from edgekit.model.spec import InputSpec
    from edgekit.progress import Steps
    from edgekit.train.distill import distill

    torch.manual_seed(0)
    teacher = _Net(64)
    opt = torch.optim.Adam(teacher.parameters(), 1e-2)
    for _ in range(150):  # a teacher that knows the clusters
        opt.zero_grad()
        nn.functional.cross_entropy(teacher(torch.from_numpy(train.arrays["x"])),
                                    torch.from_numpy(_blobs(600, 0).labels)).backward()
        opt.step()
    torch.manual_seed(1)
    student = _Net(8)
    cfg = DistillConfig(epochs=6, patience=2, batch_size=32)
    return distill(student, teacher.eval(), train, evaluation, (InputSpec("x", (1, 1, 8, 8)),), cfg,
                   Steps(show=False), (torch.zeros(1, 1, 8, 8),))


def test_evaluation_data_chooses_nothing():
    """The epoch kept and the early stop come from the validation part of the training data: the same run
    judged against correct or against scrambled evaluation labels keeps the same epoch and history, and
    only the reported evaluation figure differs."""
    import dataclasses

    import numpy as np

    train, evaluation = _blobs(600, 0), _blobs(300, 5)
    scrambled = dataclasses.replace(evaluation, labels=np.random.default_rng(0).permutation(evaluation.labels))
    honest, fooled = _distill_blobs(evaluation, train), _distill_blobs(scrambled, train)
    assert honest["history"] == fooled["history"] and honest["best_epoch"] == fooled["best_epoch"]
    assert honest["validation"]["samples"] == 90 and "validation" in honest["history"][0]
    assert honest["accuracy"] > 50 and fooled["accuracy"] < 25  # scored on evaluation (chance: 10 %), after the choice


def test_distillation_without_labels_uses_the_teacher():
    """No labels anywhere: the soft-label loss alone, validation and evaluation by agreement with the teacher."""
    unlabelled = _distill_blobs(_blobs(300, 5, labelled=False), _blobs(600, 0, labelled=False))
    assert unlabelled["validation"]["metric"] == unlabelled["evaluation_metric"] == "agreement with the teacher"
    assert unlabelled["accuracy"] > unlabelled["accuracy_before"] + 30


def test_two_nodes_meet_at_one_rendezvous(run_cli, digits_app, tmp_path):
    """`--nnodes 2`: two launches on 127.0.0.1 (as two machines would run them) meet at one rendezvous
    and train one student together (world size 2, gloo); the first node writes it, the second says
    its share is done and exits 0 with nothing written."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = ["distill", str(digits_app), "--prune", "0.5", "--epochs", "2", "--nnodes", "2",
              "--rdzv-endpoint", f"127.0.0.1:{port}", "--json"]
    second = subprocess.Popen([sys.executable, "-m", "edgekit", *common, "--node-rank", "1", "--out", str(tmp_path / "n1")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = run_cli(*common, "--node-rank", "0", "--out", str(tmp_path / "n0"), timeout=600)
    out, err = second.communicate(timeout=120)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, err
    record = json.loads(first.stdout)
    assert record["processes"] == 2 and record["backend"] == "gloo" and len(record["history"]) == 2
    assert (tmp_path / "n0" / "float_model.pt").is_file() and not (tmp_path / "n1").exists()
    assert "node 1: trained its share" in err and out == ""


@pytest.mark.parametrize("args, message", [
    (["--nnodes", "2"], "every node needs --node-rank"),
    (["--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "127.0.0.1:29500"], "--node-rank 2 is not one of 0..1"),
    (["--nnodes", "2", "--node-rank", "0", "--rdzv-endpoint", "head"], "is not HOST:PORT"),
    (["--node-rank", "1"], "apply to several machines"),
    (["--nnodes", "2", "--node-rank", "0", "--rdzv-endpoint", "127.0.0.1:29500", "--prune-steps", "2"],
     "cuts in 2 rounds"),  # the other nodes would leave after the first round's share
])
def test_bad_node_options_name_the_flag(run_cli, digits_app, tmp_path, args, message):
    proc = run_cli("distill", str(digits_app), "--prune", "0.5", *args, "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and message in proc.stderr and not (tmp_path / "x").exists()


def test_distill_prunes_in_rounds(run_cli, digits_app, tmp_path):
    """`edgekit distill --prune 0.5 --prune-steps 2`: two cuts of 1 - sqrt(0.5) of the channels, each
    followed by a distillation; the record is the last one's, and the student has the channels both left."""
    proc = run_cli("distill", str(digits_app), "--prune", "0.5", "--prune-steps", "2", "--epochs", "2", "--json",
                   "--out", str(tmp_path / "s"))
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    rounds = [(s["stage"], s["config"].get("ratio")) for s in record["steps"] if s["stage"] in ("prune", "distill")]
    assert rounds == [("prune", 0.292893), ("distill", None), ("prune", 0.292893), ("distill", None)]
    last = [s for s in record["steps"] if s["stage"] == "distill"][-1]
    assert record["best_epoch"] == last["result"]["best_epoch"] and record["student"]["macs"] == last["macs"]
    assert "cut 2 of 2" in proc.stderr
