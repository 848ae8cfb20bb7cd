"""bench/compare.py's report: every path has a row, failures keep theirs, ratios match latencies.

Timings are never asserted here (they belong to bench/RESULTS.md); the
structure of what `make bench` writes is.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COMPARE = REPO / "bench" / "compare.py"


def _load_results_module():
    """bench/results.py by file path: the bench scripts are not a package."""
    spec = importlib.util.spec_from_file_location("bench_results", REPO / "bench" / "results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


results = _load_results_module()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> dict:
    """`make bench --quick` on the digits model (~70 s: the tests that read it are slow)."""
    out = tmp_path_factory.mktemp("bench")
    # One thread count keeps the run short (torch.compile compiles once per count).
    args = ["--quick", "--models", "digits", "--real-models", "--runs", "3", "--threads", "1", "--out", str(out)]
    proc = subprocess.run([sys.executable, str(COMPARE), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"doc": json.loads((out / "results.json").read_text()), "md": (out / "RESULTS.md").read_text()}


@pytest.mark.slow
def test_machine_facts_head_the_report(quick_run):
    machine = quick_run["doc"]["machine"]
    for key in ("cpu", "cores", "python", "torch", "executorch", "onnxruntime", "date"):
        assert machine[key], key
    assert machine["cores"] == os.cpu_count()
    head = quick_run["md"].split("## ", 1)[0]
    assert machine["cpu"] in head and f"torch {machine['torch']}" in head


@pytest.mark.slow
def test_every_path_has_a_row_at_each_thread_count(quick_run):
    doc = quick_run["doc"]
    threads = doc["settings"]["threads"]
    assert threads == [1]
    seen = sorted((r["path"], r["threads"]) for r in doc["rows"] if r["model"] == "digits")
    assert seen == sorted((key, n) for key in results.PATH_KEYS for n in threads)
    for row in doc["rows"]:
        assert quick_run["md"].count(f"| {row['label']} | {row['threads']} |") == 1, row["label"]


@pytest.mark.slow
def test_a_row_has_numbers_or_an_error(quick_run):
    for row in quick_run["doc"]["rows"]:
        if row["error"] is None:
            assert row["median_ms"] > 0 and row["p90_ms"] >= row["median_ms"] and row["runs"] == 3, row
            assert row["accuracy"] is not None and 0 <= row["accuracy"] <= 100, row  # digits is trained
        else:
            assert isinstance(row["error"], str) and row["error"].strip(), row
            assert row["median_ms"] is None and row["ratio_to_eager"] is None, row
            assert f"**failed:** {row['error']}" in quick_run["md"]


@pytest.mark.slow
def test_ratios_are_latency_over_eager(quick_run):
    rows = quick_run["doc"]["rows"]
    eager = {r["threads"]: r["median_ms"] for r in rows if r["path"] == "eager_fp32"}
    assert all(eager.values()), "eager fp32 is the baseline of every ratio"
    for row in rows:
        if row["median_ms"] is not None:
            assert row["ratio_to_eager"] == pytest.approx(row["median_ms"] / eager[row["threads"]], abs=6e-4), row
    for head in quick_run["doc"]["headlines"]:
        pte = head["edgekit_pte_ms"]
        assert head["speedup_vs_eager_fp32"] == pytest.approx(eager[head["threads"]] / pte, abs=6e-3)


@pytest.mark.slow
def test_build_cost_and_stages_are_recorded(quick_run):
    doc = quick_run["doc"]
    (cost,) = doc["build_cost"]
    assert cost["model"] == "digits" and cost["exit_code"] == 0 and cost["error"] is None
    assert cost["wall_s"] > 0 and cost["peak_rss_mb"] > 50  # torch alone is well over 50 MB resident
    assert {"load", "quantize", "export", "validate"} <= set(cost["stages"])
    edgekit_pte = [r for r in doc["rows"] if r["path"] == "edgekit_executorch"]
    assert all(r["build_stages"] == cost["stages"] for r in edgekit_pte if r["error"] is None)


def test_failed_path_is_reported_not_dropped(tmp_path):
    """A path with an error still gets its row, its error text and no ratio."""
    rows = [
        {"model": "m", "path": "eager_fp32", "label": "PyTorch eager fp32", "threads": 1, "median_ms": 2.0,
         "p90_ms": 2.5, "size_bytes": 10, "accuracy": None, "build_stages": {}, "error": None},
        {"model": "m", "path": "compile_fp32", "label": "torch.compile fp32 (inductor)", "threads": 1, "median_ms": None,
         "p90_ms": None, "size_bytes": None, "accuracy": None, "build_stages": {}, "error": "RuntimeError: no compiler | here"},
        {"model": "m", "path": "edgekit_executorch", "label": "edgekit int8 .pte", "threads": 1, "median_ms": 0.5,
         "p90_ms": 0.6, "size_bytes": 5, "accuracy": None, "build_stages": {"export": 1.0}, "error": None},
    ]
    doc = {"machine": {"date": "d", "cpu": "c", "arch": "a", "cores": 1, "load_average_at_start": None, "os": "o",
                       **{k: "1" for k in ("python", "torch", "executorch", "torchao", "onnx", "onnxruntime", "edgekit")}},
           "settings": {"runs": 50, "warmup": 5, "threads": [1], "calib_samples": 32, "quick": False, "command": "make bench"},
           "models": [{"name": "m", "trained": False, "params": 3, "float_bytes": 10, "input_shape": [1],
                       "calibration": "32 samples"}],
           "rows": rows, "build_cost": [], "total_seconds": 60.0}
    md_path, json_path = results.write(tmp_path, doc)
    written = json.loads(json_path.read_text())["rows"]
    assert [r["ratio_to_eager"] for r in written] == [1.0, None, 0.25]
    md = md_path.read_text()
    assert "| torch.compile fp32 (inductor) | 1 | — | — | — |" in md
    assert "**failed:** RuntimeError: no compiler \\| here" in md  # escaped: one cell, not two
    assert "n/a" in md.split("| edgekit int8 .pte | 1 |")[1].splitlines()[0]  # random weights: no accuracy


def test_the_real_model_table_shows_what_auto_kept_and_the_int8_share():
    rows = [{"model": "minilm", "path": "edgekit_onnx", "label": "edgekit .onnx", "gate": "✓", "build_s": 90.0,
             "size_bytes": 2 << 20, "top1_agreement": None, "cosine": 0.99371, "median_ms": 6.5, "error": None,
             "int8_macs_share": 0.9863, "quality": "dynamic int8 activations"},
            {"model": "minilm", "path": "tutorial", "label": "ExecuTorch tutorial", "gate": None, "build_s": 3.9,
             "size_bytes": None, "top1_agreement": None, "cosine": None, "median_ms": None,
             "error": "IndexError: tensors used as indices", "int8_macs_share": None, "quality": None}]
    lines = results._real_models_section(rows)
    assert "| minilm | edgekit .onnx | ✓ | dynamic int8 activations | — | 0.9937 | 99 % |" in "\n".join(lines)
    assert "| minilm | ExecuTorch tutorial |  |  | — | — | — |" in "\n".join(lines)
    table = [line for line in lines if line.startswith("|")]
    assert len({line.count("|") for line in table}) == 1  # every row has every column
