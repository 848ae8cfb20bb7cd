"""Target resources: the artifact in a child process held to the target's cores and RAM.

The child (limited_child.py) is pinned to min(target cores, host cores) CPUs and
runs the device runner (edgekit/runtime/runner.py, the same file deploy ships)
at the target's thread count under an address-space limit derived from the
target's RAM. Its runner JSON gives host latency (load, first inference,
p50/p90/p99) and peak RSS; what the artifact adds over the runtime's baseline is
the model's memory, and that plus the runtime's footprint on the device must fit
the RAM the OS leaves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from edgekit.formats import for_artifact
from edgekit.runtime import runner as runner_module

CHILD = Path(__file__).with_name("limited_child.py")
# RAM the device itself keeps (ESTIMATE): the firmware's GPU carve-out (gpu_mem: 64 MB by default on
# Raspberry Pi boards, config.txt docs) plus an idle 64-bit Raspberry Pi OS Lite (~60-70 MB resident),
# rounded up. A desktop image needs several hundred MB more: edit if the board runs one.
OS_RESERVE_MB = 128
# glibc reserves 64 MB of address space per malloc arena (up to 8 per core): cap it so the
# address-space limit measures memory, not reservations.
CHILD_ENV = {"MALLOC_ARENA_MAX": "2"}


def allowed_cores(target_cores: int) -> list[int]:
    host = sorted(os.sched_getaffinity(0))
    return host[: max(1, min(target_cores, len(host)))]


def measure(artifact: Path, inputs: list[dict], target, *, runs: int = 20, warmup: int = 3,
            timeout: float = 300.0) -> dict:
    """Run the artifact under the target's limits; returns the `resources` record."""
    cores = allowed_cores(target.cores)
    threads = min(target.threads, len(cores))
    budget_mb = target.ram_mb - OS_RESERVE_MB
    fmt = for_artifact(artifact)
    # The runtime's resident footprint on the device, where it differs from this host's (the format
    # says: ExecuTorch's native runner vs torch here); else the baseline measured here (-1).
    runtime_mb = fmt.DEVICE_RUNTIME_MB if fmt.DEVICE_RUNTIME_MB is not None else -1
    cmd = [sys.executable, "-P", str(CHILD),  # -P: the script's dir (edgekit/validate) must not shadow stdlib modules
           "--cores", ",".join(map(str, cores)), "--budget-mb", str(budget_mb),
           "--runtime-mb", str(runtime_mb), "--runner", runner_module.__file__, "--",
           str(artifact), "--runtime", fmt.DEVICE_RUNTIME, "--threads", str(threads), "--runs", str(runs),
           "--warmup", str(warmup), "--input-spec", json.dumps(inputs), "--timeout", str(timeout)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60,
                              env={**os.environ, **CHILD_ENV})
    except subprocess.TimeoutExpired:
        return _record(target, cores, threads, budget_mb, {}, {"ok": False, "error": f"no answer in {timeout + 60:.0f} s"}, None)
    limits, run = _parse(proc.stdout)
    if not run:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        run = {"ok": False, "error": limits.get("error") or f"the runner died (exit status {proc.returncode}): "
               + (" | ".join(tail) or "no output"), "error_kind": "crashed"}
    return _record(target, cores, threads, budget_mb, limits, run, proc.returncode)


def memory_plan_line(planned_bytes: int) -> str:
    return (f"ExecuTorch memory plan: {planned_bytes / 1024:.1f} KB fixed at export "
            "(the graph's own tensors; the XNNPACK delegate allocates its workspace beside it)")


def _parse(stdout: str) -> tuple[dict, dict]:
    limits, run, peak = {}, {}, {}
    for line in stdout.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and "limits" in doc and len(doc) == 1:
            limits = doc["limits"]
        elif isinstance(doc, dict) and "peak" in doc and len(doc) == 1:
            peak = doc["peak"]
        elif isinstance(doc, dict) and "ok" in doc:
            run = doc
    if run and peak.get("vm_hwm_kb"):
        # the runner's getrusage peak includes the parent's memory (kept across fork+exec): use VmHWM
        run["peak_rss_kb_getrusage"] = run.get("peak_rss_kb")
        run["peak_rss_kb"] = peak["vm_hwm_kb"]
    return limits, run


def _mb(kb) -> float | None:
    return round(kb / 1024, 1) if kb is not None else None


def _record(target, cores, threads, budget_mb, limits: dict, run: dict, status) -> dict:
    peak, base = run.get("peak_rss_kb"), limits.get("baseline_rss_kb")
    model_kb = peak - base if peak is not None and base is not None else None
    runtime_kb = limits.get("device_runtime_kb")
    need_kb = model_kb + runtime_kb if model_kb is not None and runtime_kb is not None else None
    fits = bool(run.get("ok")) and need_kb is not None and need_kb <= budget_mb * 1024
    doc = {
        "target": target.name, "ram_mb": target.ram_mb, "os_reserve_mb": OS_RESERVE_MB, "budget_mb": budget_mb,
        "cores": cores, "threads": threads, "fits": fits,
        "peak_rss_mb": _mb(peak), "runtime_baseline_rss_mb": _mb(base), "model_mb": _mb(model_kb),
        "device_runtime_mb": _mb(runtime_kb), "needed_mb": _mb(need_kb),
        "address_space_limit_mb": _mb(limits.get("address_space_limit_kb")),
        "ok": bool(run.get("ok")), "error": run.get("error"), "exit_status": status,
    }
    if run.get("ok"):
        doc["latency"] = {k: run.get(k) for k in ("load_ms", "first_ms", "mean", "p50", "p90", "p99", "runs",
                                                   "threads", "threads_applied")}
        doc["runner"] = run
    return doc


def verdict(doc: dict) -> str | None:
    """The gate message when the artifact does not fit, else None."""
    if doc["fits"]:
        return None
    if doc["ok"]:
        return (f"needs {doc['needed_mb']} MB ({doc['model_mb']} MB model + {doc['device_runtime_mb']} MB runtime), "
                f"over the {doc['budget_mb']} MB that {doc['target']} leaves ({doc['ram_mb']} MB RAM - "
                f"{doc['os_reserve_mb']} MB OS)")
    return (f"does not run within {doc['target']}'s {doc['budget_mb']} MB "
            f"({doc['ram_mb']} MB RAM - {doc['os_reserve_mb']} MB OS): {doc['error']}")
