"""Budgets for the whole build (build/budget.py), on a small CNN written as a user writes one
(conv-BN-ReLU x2, a depthwise conv, a 1x1 conv, mean-pool, linear; 17k params) trained here on the
digits sample's 1,137 labelled training images and judged on its 360 held-out ones."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

DIGITS = Path(__file__).resolve().parent.parent / "sample_apps" / "digits"
USER_CNN = textwrap.dedent('''
    import torch
    from torch import nn


    def block(cin, cout, k=3, stride=1, groups=1):
        return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU())


    class MyCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(block(1, 24), block(24, 48), block(48, 48, stride=2, groups=48),
                                          block(48, 96, k=1))
            self.fc = nn.Linear(96, 10)

        def forward(self, x):
            return self.fc(self.features(x).mean((2, 3)))


    def make():
        return MyCNN()
''')


@pytest.fixture(scope="module")
def user_cnn(tmp_path_factory):
    """(directory, its float accuracy on the digits eval split): trained as its user would, 80 epochs of AdamW."""
    import sys

    import numpy as np
    import torch

    root = tmp_path_factory.mktemp("user_cnn")
    (root / "mycnn.py").write_text(USER_CNN)
    sys.path.insert(0, str(root))
    try:
        import mycnn
    finally:
        sys.path.remove(str(root))
    train, evaluation = (np.load(f"{DIGITS}/{s}.npz") for s in ("train", "eval"))
    torch.manual_seed(0)
    model = mycnn.make()
    x, y = torch.from_numpy(train["x"]), torch.from_numpy(train["y"])
    opt = torch.optim.AdamW(model.parameters(), 3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 80)
    for _ in range(80):
        model.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x), 32):
            idx = order[i:i + 32]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        accuracy = 100 * float((model(torch.from_numpy(evaluation["x"])).argmax(1).numpy() == evaluation["y"]).mean())
    torch.save(model.state_dict(), root / "mycnn.pt")
    assert accuracy > 97.5, accuracy  # a model worth compressing
    return root, accuracy


def _build(run_cli, user_cnn, out, *extra):
    """`edgekit build` of the user's CNN from its own directory (mycnn importable there, as for a user)."""
    root, _ = user_cnn
    proc = run_cli("build", "--model", "mycnn:make", "--weights", "mycnn.pt", "--input-shape", "1,1,8,8",
                   "--train", str(DIGITS / "train.npz"), "--calib", str(DIGITS / "calib.npz"),
                   "--eval", str(DIGITS / "eval.npz"), "--target", "rpi4", "--out", str(out), "--json", *extra, cwd=root)
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").is_file() else None
    return proc, manifest


def test_a_quarter_of_the_macs_keeps_int8_within_a_point(run_cli, user_cnn, tmp_path):
    """--prune-macs 0.25 --distill: three quarters of the MACs gone (what --prune 0.5 did silently), and
    the int8 artifact within 1.0 point of the unpruned float model; the budget record says so."""
    proc, manifest = _build(run_cli, user_cnn, tmp_path / "quarter", "--prune-macs", "0.25", "--distill",
                            "--max-accuracy-drop", "1.0")
    assert proc.returncode == 0, proc.stderr
    measure = next(s for s in manifest["steps"] if s["stage"] == "measure")
    # in two cuts (half the MACs, then the quarter), each followed by distillation (stages/prune.py's HALVING)
    cuts = [s for s in manifest["steps"] if s["stage"] in ("prune", "distill")]
    assert [(s["stage"], s["config"].get("macs_target")) for s in cuts] == \
        [("prune", 0.5), ("distill", None), ("prune", 0.25), ("distill", None)]
    assert cuts[0]["macs"] <= 0.5 * measure["macs"] and cuts[1]["macs"] == cuts[0]["macs"]
    pruned = cuts[2]
    assert pruned["macs"] <= 0.25 * measure["macs"]
    assert pruned["macs_removed"] == pytest.approx(1 - pruned["macs"] / measure["macs"], abs=1e-4)
    assert measure["accuracy_float"] == pytest.approx(user_cnn[1], abs=0.01)
    verdict = manifest["budget"]["artifacts"]["executorch"]
    assert verdict["accuracy_drop"] == pytest.approx(user_cnn[1] - manifest["metrics"]["accuracy_artifact"], abs=0.01)
    assert verdict["accuracy_drop"] <= 1.0 and not verdict["misses"]
    distilled = cuts[-1]["result"]
    assert distilled["validation"]["samples"] > 100  # chosen on held-out training samples, not on eval


@pytest.mark.heavy  # the budget build of a quarter of the MACs stays in the default run
def test_latency_budget_plans_the_pruning_or_exits_3_with_the_closest(run_cli, user_cnn, tmp_path):
    """--latency-budget at 60 % of the unpruned model's predicted rpi4 latency, with --max-accuracy-drop 1.0:
    the build prunes as much as the cost model says it must, and either meets both or exits 3 naming
    what the artifact reached."""
    from edgekit.target import load_target
    from edgekit.validate import cost
    from edgekit.validate.graph import model_work

    import sys

    import torch

    root, accuracy = user_cnn
    sys.path.insert(0, str(root))
    try:
        import mycnn
    finally:
        sys.path.remove(str(root))
    rows = [r.to_json() for r in model_work(mycnn.make(), (torch.zeros(1, 1, 8, 8),))]
    unpruned = cost.predict(rows, "int8", load_target("rpi4"))["latency_ms"]
    budget = round(0.6 * unpruned, 4)
    proc, manifest = _build(run_cli, user_cnn, tmp_path / "fast", "--distill", "--max-accuracy-drop", "1.0",
                            "--latency-budget", str(budget))
    plan = manifest["budget"]["plan"]
    assert plan["unpruned"]["latency_ms"] == pytest.approx(unpruned, rel=0.01) and plan["candidates"]
    verdict = manifest["budget"]["artifacts"]["executorch"]
    if proc.returncode == 0:
        assert verdict["predicted_ms"] <= budget and verdict["accuracy_drop"] <= 1.0
    else:
        assert proc.returncode == 3, proc.stderr
        said = " ".join(proc.stderr.split())
        assert "budget not met: model.pte:" in said and verdict["misses"]
        assert all(m.split(", over ")[0] in said for m in verdict["misses"])  # what it reached is on the screen


def test_a_budget_that_needs_pruning_asks_for_distillation(run_cli, user_cnn, tmp_path):
    proc, manifest = _build(run_cli, user_cnn, tmp_path / "nodistill", "--latency-budget", "0.001", "--format", "onnx")
    assert proc.returncode == 2 and manifest is None
    assert "--distill" in proc.stderr and "the budget needs pruning" in " ".join(proc.stderr.split())


def test_points_lost_to_pruning_are_not_silent(run_cli, user_cnn, tmp_path):
    """No budget given, pruning without distillation loses points: the build warns, and exits 0."""
    proc, manifest = _build(run_cli, user_cnn, tmp_path / "lossy", "--prune", "0.5", "--format", "onnx")
    assert proc.returncode == 0, proc.stderr
    drop = manifest["budget"]["artifacts"]["onnx"]["accuracy_drop"]
    assert drop > 1.0
    assert f"{drop:.2f} points below the model as loaded" in " ".join(proc.stderr.split())
    assert any("points below the model as loaded" in w for w in manifest["warnings"])


@pytest.mark.parametrize("flag, value", [("--latency-budget", "0"), ("--size-budget", "-1")])
def test_bad_budgets_name_the_flag(run_cli, flag, value, tmp_path):
    proc = run_cli("build", str(DIGITS), flag, value, "--out", str(tmp_path / "bad"))
    assert proc.returncode == 2 and flag in proc.stderr and not (tmp_path / "bad").exists()


def test_a_latency_budget_on_a_device_is_judged_by_its_timing(run_cli, digits_app, tmp_path):
    """--device: the cost model still plans, the device's p50 is the verdict. On this computer (the device
    `local`), the digits .onnx takes tens of microseconds: a 1 s budget is met by the measurement, a 1 ns one
    is missed (exit 3, naming the device and the time), and the run is recorded in the build like a deploy's."""
    base = ["build", str(digits_app), "--format", "onnx", "--device", "local", "--allow-arch-mismatch", "--json"]
    met = run_cli(*base, "--latency-budget", "1000", "-o", str(tmp_path / "met"))
    assert met.returncode == 0, met.stderr
    manifest = json.loads(met.stdout)
    measured = manifest["budget"]["measured"]
    assert manifest["budget"]["latency_on"] == "device" and measured["device"] == "local" and measured["met"]
    assert 0 < measured["p50_ms"] < 1000 and Path(measured["run"]).parent == tmp_path / "met" / "device_runs"
    missed = run_cli(*base, "--prune", "0.1", "--latency-budget", "0.000001", "-o", str(tmp_path / "missed"))
    assert missed.returncode == 3, missed.stderr
    said = " ".join(missed.stderr.split())
    assert "budget not met: model.onnx measures" in said and "on local, over --latency-budget 1e-06" in said
    assert json.loads((tmp_path / "missed" / "manifest.json").read_text())["budget"]["measured"]["met"] is False


def test_a_device_without_a_latency_budget_is_refused(run_cli, digits_app, tmp_path):
    proc = run_cli("build", str(digits_app), "--device", "local", "-o", str(tmp_path / "b"))
    assert proc.returncode == 2 and "--latency-budget" in proc.stderr
