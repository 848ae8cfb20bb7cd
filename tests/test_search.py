"""`edgekit search` (edgekit/search.py): candidates, their Pareto front, the choice and its final build."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from edgekit.search import Reference, SearchOptions, misses, pareto_front


def _r(id_, agreement, ms, size, fmt="executorch", fraction=1.0):
    return {"id": id_, "agreement": agreement, "predicted_ms": ms, "bytes": size, "format": fmt, "macs_kept": fraction}


def test_pareto_front_keeps_what_nothing_beats_on_all_three():
    results = [_r("a", 99.0, 1.0, 100), _r("b", 98.0, 0.5, 60), _r("c", 97.0, 0.6, 70),  # c: b beats it everywhere
               _r("d", 98.0, 0.5, 50), _r("e", 99.5, 2.0, 200), _r("f", None, 0.1, 10)]
    assert [r["id"] for r in pareto_front(results)] == ["d", "a", "e"]


def test_equal_agreement_is_told_apart_by_divergence():
    """On a few hundred calibration inputs many candidates tie at the same agreement: the one whose outputs
    stay closer to the unpruned model's is the better, so a faster one that drifts further is a trade-off."""
    close = {**_r("close", 100.0, 1.0, 100), "divergence": 0.01}
    drifted = {**_r("drift", 100.0, 0.5, 100), "divergence": 0.2}
    assert [r["id"] for r in pareto_front([close, drifted])] == ["drift", "close"]
    assert [r["id"] for r in pareto_front([close, {**drifted, "predicted_ms": 1.0}])] == ["close"]


def test_misses_measure_the_budget_from_the_unpruned_model():
    """Without labels in the calibration data, disagreement with the unpruned model bounds the accuracy lost:
    it is what --max-accuracy-drop checks. With them, the accuracy lost there is measured: a candidate that
    disagrees on 3 % but is right where the unpruned model was wrong loses less than that."""
    options = SearchOptions(max_accuracy_drop=1.0, latency_budget_ms=0.5, size_budget_mb=0.1)
    assert misses(_r("ok", 99.2, 0.5, 100_000), Reference(), options) == []
    said = misses(_r("bad", 98.5, 0.6, 200_000), Reference(), options)
    assert len(said) == 3 and "disagrees with the unpruned model on 1.50 %" in said[0]
    assert "predicted 0.6 ms" in said[1] and "0.200 MB" in said[2]
    labelled = Reference(accuracy=97.0)
    assert misses({**_r("differs", 97.0, 0.5, 100_000), "accuracy": 96.33}, labelled, options) == []
    said = misses({**_r("worse", 99.0, 0.5, 100_000), "accuracy": 95.67}, labelled, options)
    assert said == ["95.67 % on the labelled calibration data, 1.33 points below the unpruned model's 97.00 %"]


@pytest.mark.parametrize("options, flag", [(SearchOptions(fractions=(1.5,)), "--fractions"),
                                           (SearchOptions(trials=0), "--trials"),
                                           (SearchOptions(latency_budget_ms=-1), "--latency-budget")])
def test_bad_options_name_the_flag(options, flag):
    from edgekit.errors import UsageError

    with pytest.raises(UsageError, match=flag):
        options.check()


@pytest.fixture(scope="module")
def small_search(run_cli, digits_app, tmp_path_factory):
    out = tmp_path_factory.mktemp("search") / "digits"
    begin = time.monotonic()
    proc = run_cli("search", str(digits_app), "--target", "rpi4", "--fractions", "1,0.5", "--format", "executorch",
                   "--max-accuracy-drop", "1.0", "--out", str(out), "--json", timeout=900)
    return proc, out, time.monotonic() - begin


def test_search_chooses_on_the_calibration_inputs_and_builds_the_choice(small_search, digits_app):
    proc, out, _ = small_search
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert {r["id"] for r in doc["results"]} == {"macs1-executorch", "macs0.5-executorch"}
    # every candidate was judged on the calibration inputs (agreement with the unpruned model), not on eval.npz
    for r in doc["results"]:
        manifest = json.loads((out / "candidates" / r["id"] / "manifest.json").read_text())
        assert manifest["model"]["data"]["eval"] == str(digits_app / "calib.npz") and manifest["metrics"]["samples"] == 300
        # the sample's calibration data has labels: accuracy there, on data nothing trained on or reports
        assert abs(manifest["metrics"]["accuracy_artifact"] - r["accuracy"]) <= 100 / 300
    assert doc["judged_on"] == "accuracy on the labelled calibration data" and doc["reference_accuracy"] > 95
    chosen = next(r for r in doc["results"] if r["id"] == doc["chosen"])
    assert doc["reference_accuracy"] - chosen["accuracy"] <= 1.0
    assert chosen["predicted_ms"] == min(r["predicted_ms"] for r in doc["results"] if not r["misses"])
    final = json.loads((out / "best" / "manifest.json").read_text())
    assert final["model"]["data"]["eval"].endswith("sample_apps/digits/eval.npz")  # reported on the user's own
    assert doc["final"]["accuracy"] == final["metrics"]["accuracy_artifact"]
    assert all(r["divergence"] >= 0 for r in doc["results"])
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["chosen"] == doc["chosen"] and pareto["front"]
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and doc["chosen"] in html


@pytest.mark.heavy  # the search fixture and a second search over the same inputs: minutes
def test_search_resumes_from_its_own_record(run_cli, digits_app, small_search):
    """A second run over the same inputs builds nothing again: every candidate comes from search.json."""
    proc, out, first_seconds = small_search
    assert proc.returncode == 0, proc.stderr
    again = run_cli("search", str(digits_app), "--target", "rpi4", "--fractions", "1,0.5", "--format", "executorch",
                    "--max-accuracy-drop", "1.0", "--out", str(out), "--json", timeout=900)
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert all(r.get("resumed") for r in doc["results"])
    assert doc["chosen"] == json.loads(proc.stdout)["chosen"]


@pytest.mark.slow  # ~20 s; the search and its choice stay in the default run
def test_impossible_budget_exits_3_with_the_closest(run_cli, digits_app, tmp_path):
    """Also: calibration inputs without labels -- the loss is then bounded by disagreement, and the record says so."""
    import numpy as np

    with np.load(digits_app / "calib.npz") as calib:
        np.savez(tmp_path / "calib.npz", x=calib["x"])
    proc = run_cli("search", str(digits_app), "--calib", str(tmp_path / "calib.npz"), "--target", "rpi4",
                   "--fractions", "1", "--format", "executorch", "--latency-budget", "0.0001",
                   "--max-accuracy-drop", "1", "--out", str(tmp_path / "s"), timeout=900)
    assert proc.returncode == 3, proc.stderr
    said = " ".join(proc.stderr.split())
    assert "no candidate meets the budget; closest: macs1-executorch" in said and "predicted" in said
    assert (tmp_path / "s" / "pareto.json").is_file()
    doc = json.loads((tmp_path / "s" / "search.json").read_text())
    assert doc["reference_accuracy"] is None and doc["judged_on"].startswith("agreement")
    assert doc["results"][0]["accuracy"] is None and doc["results"][0]["agreement"] == 100.0


# --- what is searched: low rank, quantization schemes (the plan: pruned or factorised copies, nothing trained)


@pytest.fixture(scope="module")
def digits_loaded(digits_app):
    from edgekit import api
    from edgekit.model.loaded import LoadedModel

    return LoadedModel.load(api.source(str(digits_app)), warn=lambda *_: None)


def _plan(loaded, target, **options):
    from edgekit.formats import get_format
    from edgekit.search import plan
    from edgekit.target import load_target

    return plan(loaded, load_target(target), SearchOptions(**options), [get_format("executorch"), get_format("onnx")])


def test_plan_tries_low_rank_only_where_the_cost_model_says_it_saves_time(digits_loaded):
    """The digits CNN is 3x3 convolutions: factorising its one Linear saves nothing, so the default
    adds no low-rank candidate; asked for explicitly, it is planned, fewer MACs and all."""
    assert not [c for c in _plan(digits_loaded, "rpi4", fractions=(1.0,)) if c["lowrank"] is not None]
    asked = _plan(digits_loaded, "rpi4", fractions=(1.0,), lowrank=(0.25,))
    rank = next(c for c in asked if c["id"] == "rank0.25-onnx")
    unpruned = next(c for c in asked if c["id"] == "macs1-onnx")
    assert rank["lowrank"] == 0.25 and rank["macs_kept"] == 1.0
    assert 0 < unpruned["planned"]["macs"] - rank["planned"]["macs"] < 0.01 * unpruned["planned"]["macs"]


def test_plan_refuses_schemes_the_target_cannot_run(digits_loaded):
    """fp16 needs the ARMv8.2 half-precision arithmetic a Cortex-A72 lacks: refused on rpi4 (with the
    reason), planned on rpi5, and predicted slower than static int8 there."""
    rpi4 = {c["id"]: c for c in _plan(digits_loaded, "rpi4", fractions=(1.0,), lowrank=(), schemes=("static", "fp16"))}
    assert "no fp16 arithmetic" in rpi4["macs1-onnx-fp16"]["refused"] and "refused" not in rpi4["macs1-onnx"]
    rpi5 = {c["id"]: c for c in _plan(digits_loaded, "rpi5", fractions=(1.0,), lowrank=(), schemes=("static", "fp16"))}
    assert "refused" not in rpi5["macs1-executorch-fp16"]
    assert rpi5["macs1-executorch-fp16"]["planned"]["predicted_ms"] > rpi5["macs1-executorch"]["planned"]["predicted_ms"]


def test_only_fp16_on_a_target_without_it_is_a_usage_error(run_cli, digits_app, tmp_path):
    proc = run_cli("search", str(digits_app), "--target", "rpi4", "--quant", "fp16", "--fractions", "1",
                   "--out", str(tmp_path / "s"))
    assert proc.returncode == 2, proc.stderr
    assert "no candidate can be built" in proc.stderr and "no fp16 arithmetic" in proc.stderr


# --- latency measured on the user's device, or counted on the emulated core


def _resumed(small_search, tmp_path) -> Path:
    """A copy of the small search: its candidates are built; what a second run adds is the measuring."""
    import shutil

    proc, out, _ = small_search
    assert proc.returncode == 0, proc.stderr
    copy = tmp_path / "digits"
    shutil.copytree(out, copy)
    return copy


def _search_args(digits_app, out):
    return ["search", str(digits_app), "--target", "rpi4", "--fractions", "1,0.5", "--format", "executorch",
            "--max-accuracy-drop", "1.0", "--out", str(out), "--json"]


@pytest.mark.heavy  # three runtime starts over ssh and a final build (the local device below stays in the default run)
def test_search_times_every_candidate_on_the_device_and_chooses_by_that(run_cli, digits_app, small_search,
                                                                        ssh_device, tmp_path):
    """--device: each candidate pushed to the tests' real sshd and timed there (a run record in its build dir,
    as `edgekit deploy --bench` leaves); the front and the choice are on the measured latency, and the final
    build is timed there too."""
    from test_deploy_ssh import device_args

    out = _resumed(small_search, tmp_path)
    proc = run_cli(*_search_args(digits_app, out), "--device", ssh_device.address,
                   *device_args(ssh_device, tmp_path / "device"), "--allow-arch-mismatch", "--threads", "1",
                   "--runs", "20", timeout=900)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["axis"]["key"] == "measured_ms" and ssh_device.address in doc["axis"]["label"]
    for r in doc["results"]:
        assert r["resumed"] and r["measured_on"] == ssh_device.address and r["measured_ms"] > 0
        run = json.loads(Path(r["device_run"]).read_text())
        assert run["transport"] == "ssh" and run["ok"] and run["bench"]["p50"] == r["measured_ms"]
        assert Path(r["device_run"]).parent == out / "candidates" / r["id"] / "device_runs"
    chosen = next(r for r in doc["results"] if r["id"] == doc["chosen"])
    assert chosen["measured_ms"] == min(r["measured_ms"] for r in doc["results"] if not r["misses"])
    assert doc["final"]["measured_on"] == ssh_device.address and doc["final"]["measured_ms"] > 0
    assert "measured ms" in (out / "report.html").read_text()


def test_a_device_that_cannot_be_reached_stops_the_search_naming_it(run_cli, digits_app, small_search, tmp_path):
    """No device, no clock: exit 4 (a device failure), naming the device; nothing is chosen on predictions instead."""
    out = _resumed(small_search, tmp_path)
    proc = run_cli(*_search_args(digits_app, out), "--device", "nobody@127.0.0.1:1", "--allow-arch-mismatch",
                   timeout=300)
    assert proc.returncode == 4, proc.stderr
    assert "nobody@127.0.0.1:1" in proc.stderr and "timing macs1-executorch" in proc.stderr
    assert not (out / "best" / "device_runs").exists()


def test_a_latency_budget_with_a_device_is_checked_on_the_measurement(run_cli, digits_app, small_search, tmp_path):
    out = _resumed(small_search, tmp_path)
    proc = run_cli(*_search_args(digits_app, out), "--device", "local", "--allow-arch-mismatch", "--threads", "1",
                   "--runs", "20", "--latency-budget", "0.000001", timeout=600)
    assert proc.returncode == 3, proc.stderr
    said = " ".join(proc.stderr.split())
    assert "no candidate meets the budget" in said and " ms measured" in said
    doc = json.loads((out / "search.json").read_text())
    assert doc["budget"]["latency_on"] == "measured"
    assert all(r["measured_on"] == "local" and r["measured_threads"] == 1 for r in doc["results"])
    assert all(any(m.startswith("measured ") for m in r["misses"]) for r in doc["results"])


def test_device_options_without_a_device_are_refused(run_cli, digits_app, tmp_path):
    proc = run_cli("search", str(digits_app), "--threads", "1", "--out", str(tmp_path / "s"))
    assert proc.returncode == 2 and "--device" in proc.stderr


@pytest.mark.emulator
def test_search_counts_guest_instructions_on_the_emulated_core(run_cli, digits_app, small_search, tmp_path):
    """--emulate: one inference of each candidate on the emulated Cortex-A72 (the native runner under qemu),
    its guest instructions the axis; the pruned candidate runs fewer."""
    out = _resumed(small_search, tmp_path)
    proc = run_cli(*_search_args(digits_app, out), "--emulate", timeout=1800)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["axis"]["key"] == "instructions"
    counts = {r["id"]: r["instructions"] for r in doc["results"]}
    assert all(r["emulated_cpu"] == "cortex-a72" for r in doc["results"])
    assert 0 < counts["macs0.5-executorch"] < counts["macs1-executorch"]


def test_plan_drops_blocks_where_the_model_has_them(digits_loaded):
    """vit_digits (three encoder blocks): every fraction is tried again with two blocks kept, predicted faster
    (fewer ops); the digits CNN has no blocks, so none, and asking for them is an error naming --depth."""
    from edgekit import api
    from edgekit.errors import UsageError
    from edgekit.model.loaded import LoadedModel

    vit = LoadedModel.load(api.source(str(Path(__file__).resolve().parent.parent / "sample_apps" / "vit_digits")), warn=lambda *_: None)
    planned = {c["id"]: c for c in _plan(vit, "rpi4", fractions=(1.0, 0.5), lowrank=())}
    assert set(planned) == {f"{d}macs{f}-{fmt}" for d in ("", "depth0.5-") for f in ("1", "0.5")
                            for fmt in ("executorch", "onnx")}
    for f in ("1", "0.5"):
        deep, shallow = planned[f"macs{f}-executorch"], planned[f"depth0.5-macs{f}-executorch"]
        assert shallow["depth"] == 0.5 and shallow["planned"]["predicted_ms"] < 0.8 * deep["planned"]["predicted_ms"]
    assert not [c for c in _plan(digits_loaded, "rpi4", fractions=(1.0,)) if c["depth"] is not None]
    with pytest.raises(UsageError, match="--depth"):
        _plan(digits_loaded, "rpi4", fractions=(1.0,), depths=(0.5,))
