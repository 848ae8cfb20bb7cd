"""`edgekit search` (edgekit/search.py): candidates, their Pareto front, the choice and its final build."""

from __future__ import annotations

import json
import time

import pytest

from edgekit.search import SearchOptions, misses, pareto_front


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
    """Disagreement with the unpruned model bounds the accuracy lost: it is what --max-accuracy-drop checks."""
    options = SearchOptions(max_accuracy_drop=1.0, latency_budget_ms=0.5, size_budget_mb=0.1)
    assert misses(_r("ok", 99.2, 0.5, 100_000), 100.0, options) == []
    said = misses(_r("bad", 98.5, 0.6, 200_000), 100.0, options)
    assert len(said) == 3 and "disagrees with the unpruned model on 1.50 %" in said[0]
    assert "0.6 ms" in said[1] and "0.200 MB" in said[2]


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
        assert manifest["metrics"]["accuracy_artifact"] is None  # no labels there: nothing to be tempted by
    chosen = next(r for r in doc["results"] if r["id"] == doc["chosen"])
    assert doc["reference_agreement"] - chosen["agreement"] <= 1.0
    assert chosen["predicted_ms"] == min(r["predicted_ms"] for r in doc["results"] if not r["misses"])
    final = json.loads((out / "best" / "manifest.json").read_text())
    assert final["model"]["data"]["eval"].endswith("sample_apps/digits/eval.npz")  # reported on the user's own
    assert doc["final"]["accuracy"] == final["metrics"]["accuracy_artifact"]
    assert all(r["divergence"] >= 0 for r in doc["results"])
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["chosen"] == doc["chosen"] and pareto["front"]
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and doc["chosen"] in html


@pytest.mark.slow  # a second search over the same inputs, and its final build: 40 s
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


def test_impossible_budget_exits_3_with_the_closest(run_cli, digits_app, tmp_path):
    proc = run_cli("search", str(digits_app), "--target", "rpi4", "--fractions", "1", "--format", "executorch",
                   "--latency-budget", "0.0001", "--out", str(tmp_path / "s"), timeout=900)
    assert proc.returncode == 3, proc.stderr
    said = " ".join(proc.stderr.split())
    assert "no candidate meets the budget; closest: macs1-executorch" in said and "predicted" in said
    assert (tmp_path / "s" / "pareto.json").is_file()
