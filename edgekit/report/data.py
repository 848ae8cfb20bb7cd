"""The report's data: manifest.json plus the device run records, in one dict.

This dict is what `edgekit report --json` prints and what the table and the
HTML page render; nothing is re-derived from the model. Keys other issues add
to the manifest (per-stage MACs/params, a latency prediction, per-op profiles)
are shown when present and simply absent otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgekit.choose import recommend
from edgekit.manifest import GENERATION_KEYS, TEXT_GENERATION, format_records, inside, read_manifest
from edgekit.report.format import run_kind
from edgekit.target import decode_limit_at

RUNS_DIR = "device_runs"
RUN_KEYS = ("load_ms", "first_ms", "mean", "std", "min", "p50", "p90", "p99", "max", "runs", "peak_rss_kb")


def build_report(build_dir: str | Path) -> dict:
    build_dir = Path(build_dir)
    manifest = read_manifest(build_dir)
    if manifest.get("task") == TEXT_GENERATION:
        return decoder_report(build_dir, manifest)
    names = {fmt: rec.get("display_name") or fmt for fmt, rec in format_records(manifest).items()}
    runs = [_run(build_dir, entry, names, manifest.get("format")) for entry in manifest.get("device_runs", [])]
    # Runs an earlier build into the same directory measured: its artifact, not this one (builddir.py).
    previous = [{**_run(build_dir, entry, names, manifest.get("format")), "artifact_sha256": entry.get("artifact_sha256")}
                for entry in manifest.get("previous_device_runs") or []]
    return {
        "name": manifest.get("name"), "target": manifest.get("target"), "format": manifest.get("format"),
        "backend": manifest.get("backend"), "created": manifest.get("created"), "build_dir": str(build_dir),
        "target_profile": _profile(manifest.get("target_profile") or {}),
        "quality": _quality(manifest),
        "stages": _stages(manifest.get("steps") or []),
        "sensitivity": manifest.get("sensitivity") or [],
        "fallbacks": _fallbacks(manifest),
        "numeric_debug": manifest.get("numeric_debug") or {},  # edgekit debug, per format
        "runs": runs,
        "previous_runs": previous,
        "serve_loads": manifest.get("serve_loads") or [],  # edgekit bench --serve
        "failed_runs": _failed_runs(build_dir, {r["artifact"]["sha256"] for r in format_records(manifest).values()}),
        "prediction": _prediction(manifest, runs),
        "recommendation": recommend(manifest) if manifest.get("formats") else None,
        "warnings": manifest.get("warnings") or [],
        "gate": manifest.get("gate") or {},
        "versions": manifest.get("versions") or {},
    }


def _profile(p: dict) -> dict:
    return {k: p.get(k) for k in ("description", "arch", "cpu", "cores", "clock_ghz", "threads")}


def _quality(manifest: dict) -> list[dict]:
    """One row per format: float vs artifact accuracy and size, the first output's distribution
    (compare.py: cosine percentiles, confusion), and what the build's checks said of it (lint, the
    cost model's prediction on the target; RAM fit once `edgekit validate` measured it)."""
    formats = manifest.get("formats") or {manifest.get("format"): manifest}
    float_bytes = (manifest.get("float") or {}).get("bytes")
    checks = (manifest.get("validation") or {}).get("formats") or {}
    rows = []
    for fmt, rec in formats.items():
        m, art = rec.get("metrics") or {}, rec.get("artifact") or {}
        gate = rec.get("gate") or {}
        first = (m.get("outputs") or [{}])[0]
        check = checks.get(fmt) or {}
        lint = check.get("lint") or {}
        resources = check.get("resources") or {}
        rows.append({
            "format": fmt, "display_name": rec.get("display_name") or fmt,
            "backend": rec.get("backend"), "file": art.get("file"),
            "accuracy_float": m.get("accuracy_float"), "accuracy_artifact": m.get("accuracy_artifact"),
            "top1_agreement": m.get("top1_agreement"), "cosine": m.get("cosine"),
            "top1_agreement_decisive": first.get("top1_agreement_decisive"), "sqnr_db": m.get("sqnr_db"),
            "max_abs_error": m.get("max_abs_error"),
            "float_bytes": float_bytes, "artifact_bytes": art.get("bytes"), "samples": m.get("samples"),
            "data": m.get("data"),
            # None for builds made before the gate: not judged, which is not the same as passed
            "gate_passed": gate.get("passed"), "gate_failures": gate.get("failures") or [],
            "cosine_percentiles": first.get("cosine_percentiles"), "confusion": first.get("confusion"),
            "prediction": check.get("prediction"),
            "lint": {"findings": len(lint.get("findings") or []), "fast_share": lint.get("macs_fast_share"),
                     "fast_path": lint.get("fast_path")} if lint.get("checked") else None,
            "ram": {"fits": resources.get("fits"), "needed_mb": resources.get("needed_mb"),
                    "budget_mb": resources.get("budget_mb")} if resources else None,
            "quality": rec.get("quality"),
        })
    return rows


def _fallbacks(manifest: dict) -> list[dict]:
    """Per format, the layers the accuracy fallback kept float (only formats where it ran)."""
    rows = []
    for fmt, rec in (manifest.get("formats") or {}).items():
        fb = rec.get("fallback")
        if fb:
            rows.append({"format": fmt, "budget_points": fb["budget_points"], "met": fb["met"],
                         "float_layers": fb["float_layers"]})
    return rows


def _stages(steps: list[dict]) -> list[dict]:
    """Per-stage seconds, and MACs/params where the stage recorded them (pruning and friends do)."""
    rows = []
    for s in steps:
        cost = s.get("cost") or {}
        fmt = (s.get("config") or {}).get("format")  # a --format all build repeats stages per format
        rows.append({"stage": f"{s.get('stage')} ({fmt})" if fmt else s.get("stage"), "seconds": s.get("seconds"),
                     "macs": s.get("macs", cost.get("macs")), "params": s.get("params", cost.get("params"))})
    return rows


def _run(build_dir: Path, entry: dict, names: dict, primary: str | None) -> dict:
    """A manifest run summary joined with its record's numbers, samples and device facts;
    `names`: each format's display name (its format module's DISPLAY_NAME, as the build recorded it);
    a run recorded without its format measured the `primary` artifact."""
    fmt = entry.get("format") or primary
    record = _load(inside(build_dir, entry["file"], "a device_runs entry")) if entry.get("file") else {}
    result = record.get("bench") or record.get("check") or {}
    device = result.get("device") or {}
    run = {
        "device": entry.get("device"), "transport": entry.get("transport"), "time": entry.get("time"),
        "file": entry.get("file"), "format": fmt, "runner": entry.get("runner"),
        "display_name": names.get(fmt, fmt),
        "benchmarked": entry.get("benchmarked", bool(record.get("bench"))),
        "runtime": entry.get("runtime"), "runtime_version": entry.get("runtime_version"),
        "threads": entry.get("threads"), "threads_applied": entry.get("threads_applied"),
        "machine": entry.get("machine"), "cpu_model": device.get("cpu_model") or entry.get("cpu_model"),
        "board": device.get("board"), "cores": device.get("cores"), "governor": device.get("governor"),
        "clock_mhz": device.get("clock_mhz"), "temperature_c": device.get("temperature_c"),
        "arch_mismatch": entry.get("arch_mismatch", False), "emulated": entry.get("emulated", False),
        "host": entry.get("transport") == "local",
        "samples_ms": result.get("samples_ms") or [], "ops": result.get("ops") or [],
        "warnings": record.get("warnings") or [],
    }
    for key in RUN_KEYS:
        run[key] = result.get(key, entry.get(key))
    return run


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # a record deleted or damaged by hand: the manifest summary still shows


def _failed_runs(build_dir: Path, current: set[str]) -> list[dict]:
    rows = []
    for path in sorted((build_dir / RUNS_DIR).glob("*.json")):
        record = _load(inside(build_dir, f"{RUNS_DIR}/{path.name}", "a device run record"))
        if record and not record.get("ok", True):
            measured = (record.get("build") or {}).get("sha256")
            rows.append({"device": record.get("device"), "time": record.get("time"), "stage": record.get("stage"),
                         "error": record.get("error"), "hint": record.get("hint"), "file": f"{RUNS_DIR}/{path.name}",
                         "previous_build": measured is not None and measured not in current})
    return sorted(rows, key=lambda r: r["time"] or "", reverse=True)  # newest first


def _prediction(manifest: dict, runs: list[dict]) -> dict | None:
    """Predicted latency range on the target (from the emulation harness) against each measured p50.

    Accepts `prediction` at the top level (what `edgekit validate` writes) or under `metrics`,
    else the build's own for its primary format (`validation.formats.<format>.prediction`, what
    every build records), as a point (`latency_ms`) and/or a range (`low_ms`, `high_ms`).
    """
    built = (((manifest.get("validation") or {}).get("formats") or {}).get(manifest.get("format")) or {})
    pred = manifest.get("prediction") or (manifest.get("metrics") or {}).get("prediction") or built.get("prediction")
    if not isinstance(pred, dict):
        return None
    point = pred.get("latency_ms", pred.get("p50_ms"))
    low, high = pred.get("low_ms", point), pred.get("high_ms", point)
    if low is None or high is None:
        return None
    rows = []
    for r in runs:
        if r["p50"] is None:
            continue
        # Only a run on the target itself tests the prediction; the host or an emulator does not.
        comparable = run_kind(r) == "target"
        rows.append({"device": r["device"], "measured_p50": r["p50"], "comparable": comparable,
                     "within": low <= r["p50"] <= high if comparable else None,
                     "ratio": round(r["p50"] / point, 2) if point and comparable else None})
    return {"target": manifest.get("target"), "low_ms": low, "high_ms": high, "point_ms": point,
            "source": pred.get("source") or pred.get("model"), "runs": rows}


# --- text-generation builds (edgekit/llm) -----------------------------------------------------

def run_decode_limit(run: dict, bytes_per_token: int, profile_limits: dict) -> dict:
    """The decode limit of the machine a run ran on, and the run's decode rate as a share of it. From the
    read bandwidth the runner measured there after generating (runtime/runner.py memory_read_bandwidth)
    where it did; else the profile's (the target's on the target, targets/host.toml's on this computer:
    cost.py decode_limit). An emulator's speed says nothing against either, nor another machine's against
    a profile."""
    kind, measured = run_kind(run), run.get("memory_read_gbs")
    if measured and kind != "emulated":
        limit, source = decode_limit_at(measured, bytes_per_token), "measured"
    else:
        limit = profile_limits.get(kind)
        source = "profile" if limit else None
    rate = run.get("decode_tokens_per_s")
    return {"decode_limit": limit, "decode_limit_source": source,
            "share_of_limit": round(rate / limit, 3) if rate and limit else None}


def decoder_report(build_dir: Path, manifest: dict) -> dict:
    """A text-generation build's report: quality against the float model, speed on this computer at build
    time, the decode limit on every target profile as the build computed it (bytes per token over the
    profile's memory bandwidth: validate/cost.py decode_limit, the cost model's prediction for decode),
    and each device run's tokens/s against the limit of its kind of device."""
    speed = manifest["speed"]
    target_limit = speed["target"]["decode_limit"]["tokens_per_s"]
    host_limit = speed["host"]["decode_limit"]["tokens_per_s"]
    recorded = speed.get("decode_limits") or {"host": speed["host"]["decode_limit"],
                                              manifest["target"]: speed["target"]["decode_limit"]}
    limits = [{"target": name, "built_for": name == manifest["target"], **limit} for name, limit in recorded.items()]
    per_token = manifest["bytes_per_token"]
    runs = []
    for entry in manifest.get("device_runs") or []:
        run = _run(build_dir, entry, {}, manifest.get("format"))
        run.update({k: entry.get(k) for k in (*GENERATION_KEYS, "tokens_match_build")})  # deploy/records.py summarize_run
        run.update(run_decode_limit(run, sum(per_token.values()), {"target": target_limit, "host": host_limit}))
        runs.append(run)
    sizes = [manifest["artifact"], *manifest.get("artifact_files", [])]
    return {
        "task": TEXT_GENERATION, "name": manifest["name"], "target": manifest["target"],
        "format": manifest["format"], "runtime": manifest.get("runtime"), "build_dir": str(build_dir),
        "created": manifest.get("created"), "target_profile": _profile(manifest.get("target_profile") or {}),
        "model": {k: manifest["model"].get(k) for k in ("architecture", "parameters", "source")},
        "artifact": {"file": manifest["artifact"]["file"], "bytes": sum(f["bytes"] for f in sizes)},
        "quantization": manifest["quantization"], "max_seq_len": manifest["export"]["max_seq_len"],
        "quality": manifest["quality"], "host_speed": manifest["speed"]["host"],
        "bytes_per_token": per_token, "decode_limits": limits, "runs": runs,
        "failed_runs": _failed_runs(build_dir, {manifest["artifact"]["sha256"]}),
        "stages": _stages(manifest.get("steps") or []),
        "warnings": manifest.get("warnings") or [], "versions": manifest.get("versions") or {},
    }
