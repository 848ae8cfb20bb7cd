"""`edgekit bench` and `edgekit report`: a real host run, then the report read back
(HTML parsed with html.parser, images decoded)."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """What a browser would fetch or run, and the page's images and text."""

    def __init__(self, text: str):
        super().__init__()
        self.images, self.external, self.scripts, self.text = [], [], 0, []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "img":
            self.images.append(attrs)
        for key in ("src", "href"):
            if key in attrs and not attrs[key].startswith("data:"):
                self.external.append(attrs[key])

    def handle_data(self, data):
        self.text.append(data)

    def png_images(self) -> list[dict]:
        prefix = "data:image/png;base64,"
        return [i for i in self.images if i.get("src", "").startswith(prefix)
                and base64.b64decode(i["src"][len(prefix):]).startswith(PNG_MAGIC)]


def read_page(build: Path) -> Page:
    return Page((build / "report.html").read_text(encoding="utf-8"))


def test_bench_on_the_host_then_report(build_copy, run_cli):
    proc = run_cli("bench", str(build_copy), "--runs", "15", "--warmup", "2", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert "host" in proc.stdout and "this computer, not the target" in proc.stdout
    [entry] = json.loads((build_copy / "manifest.json").read_text())["device_runs"]
    assert entry["device"] == "host" and entry["transport"] == "local" and entry["runs"] == 15 and entry["threads"] == 1

    proc = run_cli("report", str(build_copy))
    assert proc.returncode == 0, proc.stderr
    assert "latency (ms)" in proc.stdout and "99.17" in proc.stdout and "report.html" in proc.stdout
    page = read_page(build_copy)
    assert page.external == [] and page.scripts == 0  # self-contained: opens offline, fetches nothing
    # sizes, each sample's cosine, the confusion matrix, the host's latency plot, its distribution
    assert len(page.png_images()) == len(page.images) == 5
    alts = [i["alt"] for i in page.images]
    assert "latency distribution: host" in alts and "latency on this computer (not the target)" in alts
    assert "latency on the target" not in alts  # a host run is never drawn against the target's prediction
    text = " ".join(page.text)
    # the build's own prediction (no `edgekit validate` ran), with the host run set apart from it
    assert "Accuracy and size" in text and "Build stages" in text and "Predicted on rpi4" in text
    assert "not the target" in text and "No latency prediction" not in text
    assert "recommended: ship model.pte" in " ".join(proc.stdout.split()) and "Recommended: ship model.pte" in text

    proc = run_cli("report", str(build_copy), "--json", "--no-html")
    data = json.loads(proc.stdout)
    [run] = data["runs"]
    assert len(run["samples_ms"]) == 15 and run["p50"] == entry["p50"] and run["host"] is True
    assert data["quality"][0]["artifact_bytes"] == json.loads((build_copy / "manifest.json").read_text())["artifact"]["bytes"]


def test_report_renders_what_other_parts_add(build_copy):
    """Keys other issues will write (per-stage MACs/params, a latency prediction, an emulated
    run, per-op times) and a failed run, added here BY HAND to a real build's manifest:
    the report must show each when present (and work without them, checked first)."""
    import edgekit.api as ek

    data = ek.report(build_copy)
    page = read_page(build_copy)
    assert data["runs"] == [] and data["prediction"]["target"] == "rpi4"  # the build's own prediction
    assert data["recommendation"]["file"] == "model.pte"
    assert "No device runs yet" in " ".join(page.text) and len(page.png_images()) == 3  # sizes, cosines, confusion

    manifest_path = build_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["steps"][0].update(macs=1_234_567, params=94_000)
    manifest["prediction"] = {"low_ms": 0.05, "high_ms": 0.2, "latency_ms": 0.1, "source": "cost model"}
    runs_dir = build_copy / "device_runs"
    runs_dir.mkdir()
    for name, p50, emulated in (("pi4", 0.15, False), ("qemu-a72", 90.0, True)):
        samples = [p50 * f for f in (0.9, 1.0, 1.0, 1.1, 1.3)]
        bench = {"ok": True, "p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.3, "load_ms": 1.0, "first_ms": 2.0, "runs": 5,
                 "samples_ms": samples, "threads": 4, "runtime": {"name": "executorch", "version": "1.5.1"},
                 "device": {"cpu_model": "4x Cortex-A72"}, "ops": [{"name": "conv2d", "ms": 0.1}, {"name": "linear", "ms": 0.05}]}
        (runs_dir / f"{name}.json").write_text(json.dumps({"ok": True, "bench": bench}))
        manifest.setdefault("device_runs", []).append(
            {"device": name, "transport": "ssh", "time": "2026-01-01T00:00:00+00:00", "file": f"device_runs/{name}.json",
             "runner": "python", "benchmarked": True, "runtime": "executorch", "runtime_version": "1.5.1", "threads": 4,
             "arch_mismatch": False, "emulated": emulated, "p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.3, "runs": 5})
    (runs_dir / "dead-20260101.json").write_text(json.dumps(
        {"ok": False, "device": "dead", "stage": "connect", "error": "nothing accepts ssh connections", "hint": "power it"}))
    manifest_path.write_text(json.dumps(manifest))

    data = ek.report(build_copy)
    pred = {r["device"]: r for r in data["prediction"]["runs"]}
    assert pred["pi4"]["comparable"] and pred["pi4"]["within"] is True and pred["pi4"]["ratio"] == 1.5
    assert pred["qemu-a72"]["comparable"] is False  # emulated time is never compared with a latency prediction
    assert data["stages"][0]["macs"] == 1_234_567 and data["failed_runs"][0]["device"] == "dead"
    page = read_page(build_copy)
    text = " ".join(page.text)
    for expected in ("MACs", "1.23 M", "emulated: not latency", "Predicted vs measured", "Failed runs",
                     "nothing accepts ssh connections", "Slowest operators", "conv2d"):
        assert expected in text, expected
    # sizes, cosines, confusion, the target's latency plot (the emulated run is not latency), two distributions
    assert len(page.png_images()) == len(page.images) == 6
    assert "latency on the target" in [i["alt"] for i in page.images]


@pytest.mark.slow  # a rebuild (~35 s)
def test_a_rebuild_keeps_the_device_runs_of_the_artifact_it_replaces(build_copy, run_cli, digits_app):
    """Latencies measured on boards are the most expensive data a build holds: rebuilding into the
    same directory keeps every record, marked with the artifact it measured, and says so."""
    proc = run_cli("bench", str(build_copy), "--runs", "3", "--warmup", "0", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    before = json.loads((build_copy / "manifest.json").read_text())
    [run] = before["device_runs"]
    records = sorted(p.name for p in (build_copy / "device_runs").iterdir())

    proc = run_cli("build", str(digits_app), "--per-tensor", "--out", str(build_copy))  # another artifact
    assert proc.returncode == 0, proc.stderr
    assert "kept 1 device run record(s)" in proc.stderr and "previous_device_runs" in proc.stderr
    after = json.loads((build_copy / "manifest.json").read_text())
    assert after["artifact"]["sha256"] != before["artifact"]["sha256"]
    assert after.get("device_runs", []) == []  # none of them measured the new artifact
    [kept] = after["previous_device_runs"]
    assert kept["file"] == run["file"] and kept["artifact_sha256"] == before["artifact"]["sha256"]
    assert sorted(p.name for p in (build_copy / "device_runs").iterdir()) == records
    assert any("kept 1 device run record(s)" in w for w in after["warnings"])

    data = json.loads(run_cli("report", str(build_copy), "--json", "--no-html").stdout)
    assert data["runs"] == [] and data["previous_runs"][0]["artifact_sha256"] == before["artifact"]["sha256"]


def test_the_report_reads_the_prediction_a_build_made_before_any_validate():
    from edgekit.report.data import _prediction

    pred = {"target": "rpi5", "latency_ms": 5.35, "low_ms": 3.57, "high_ms": 8.03, "source": "edgekit cost model"}
    built = {"target": "rpi5", "format": "onnx", "validation": {"formats": {"onnx": {"prediction": pred},
                                                                          "executorch": {"prediction": None}}}}
    got = _prediction(built, [])
    assert (got["low_ms"], got["high_ms"], got["point_ms"]) == (3.57, 8.03, 5.35)
    validated = {**built, "prediction": {**pred, "latency_ms": 6.0}}  # validate's own, when it ran, comes first
    assert _prediction(validated, [])["point_ms"] == 6.0
    assert _prediction({"format": "onnx"}, []) is None


def test_the_recommendation_ships_a_passing_artifact_on_the_fast_kernels_and_says_why():
    from edgekit.choose import recommend

    def fmt(file, passed, cosine, share):
        return {"artifact": {"file": file}, "gate": {"passed": passed}, "metrics": {"cosine": cosine}}, \
            {"lint": {"macs_fast_share": share, "fast_path": "fast kernels"}}

    def manifest(**formats):
        return {"target": "rpi5", "target_profile": {"format": "executorch"},
                "formats": {k: v[0] for k, v in formats.items()},
                "validation": {"formats": {k: v[1] for k, v in formats.items()}}}

    both = manifest(executorch=fmt("model.pte", True, 0.991, 1.0), onnx=fmt("model.onnx", True, 0.999, 1.0))
    assert recommend(both)["file"] == "model.pte" and "the rpi5 profile's format" in recommend(both)["why"]
    off_delegate = manifest(executorch=fmt("model.pte", True, 0.999, 0.7), onnx=fmt("model.onnx", True, 0.99, 1.0))
    assert recommend(off_delegate)["file"] == "model.onnx"  # all its MACs on the fast kernels
    failed = manifest(executorch=fmt("model.pte", False, 0.9, 1.0), onnx=fmt("model.onnx", True, 0.99, 1.0))
    assert recommend(failed)["file"] == "model.onnx" and "model.pte did not pass" in recommend(failed)["why"]
    none = manifest(executorch=fmt("model.pte", False, 0.9, 1.0))
    assert recommend(none)["file"] is None and "no artifact passed" in recommend(none)["why"]


def test_the_recommendation_prefers_the_fastest_predicted_and_calls_near_equal_a_tie():
    from edgekit.choose import recommend

    def fmt(file, point):
        return {"artifact": {"file": file}, "gate": {"passed": True}, "metrics": {"cosine": 0.999}}, \
            {"lint": {"macs_fast_share": 1.0}, "prediction": {"latency_ms": point, "target": "rpi5"}}

    def manifest(profile, **formats):
        return {"target": "rpi5", "target_profile": {"format": profile},
                "formats": {k: v[0] for k, v in formats.items()},
                "validation": {"formats": {k: v[1] for k, v in formats.items()}}}

    slower_profile = manifest("torchscript-lite", executorch=fmt("model.pte", 4.0), **{"torchscript-lite": fmt("model.ptl", 12.0)})
    rec = recommend(slower_profile)
    assert rec["file"] == "model.pte" and "fastest predicted on rpi5 (model.ptl slower)" in rec["why"], rec
    tie = manifest("onnx", executorch=fmt("model.pte", 4.0), onnx=fmt("model.onnx", 4.2))
    rec = recommend(tie)  # 5 % apart: the model cannot tell them apart, the profile's format decides
    assert rec["file"] == "model.onnx" and "fastest" not in rec["why"] and "profile's format" in rec["why"], rec
