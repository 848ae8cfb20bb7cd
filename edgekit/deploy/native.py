"""Native benchmark binaries a user can point to, and parsers for what they print.

    ExecuTorch  executor_runner        examples/portable/executor_runner
    LiteRT      benchmark_model        tensorflow/lite/tools/benchmark
    ONNX Rt     onnxruntime_perf_test  onnxruntime/test/perftest

Which tool runs which format is the format's to say (NATIVE_TOOLS in its module).

Each tool prints text, not JSON; `parse` turns it into the keys the Python
runner prints (load_ms, first_ms, mean, std, min, p50, p90, p99, max, runs,
peak_rss_kb, samples_ms). What a tool does not measure stays None: we never
invent a percentile a tool did not report.

Adding a tool is adding a NativeTool to TOOLS. edgekit's own native
ExecuTorch runner (`make emulator` cross-compiles it for aarch64) prints the
Python runner's JSON itself and ships with its shared libraries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgekit.emulator.paths import EmulatorPaths
from edgekit.errors import UsageError
from edgekit.formats import all_formats
from edgekit.runtime import last_json
from edgekit.runtime.runner import summarize

_NUM = r"([0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)"
STAT_KEYS = ("load_ms", "first_ms", "mean", "std", "min", "p50", "p90", "p99", "max", "runs", "peak_rss_kb")


@dataclass(frozen=True)
class NativeTool:
    name: str
    runtime: str
    argv: Callable[..., list[str]]  # (binary, artifact, threads, warmup, runs, min_seconds) -> argv
    parse: Callable[[str], dict]
    # Files the binary needs beside it on the device (shared libraries found via rpath $ORIGIN).
    companions: Callable[[Path], list[Path]] = lambda binary: []
    # A cheap run that proves the artifact loads, for deploys without --bench: (binary, artifact, threads) -> argv.
    # None: the tool has no such mode, and being executable is all `check` can verify.
    check_argv: Callable[..., list[str]] | None = None
    # Greedy generation with a text-generation build's decoder, for tools that can:
    # (binary, artifact, threads, max_seq_len) -> argv, to which the prompt and runs are added.
    generate_argv: Callable[..., list[str]] | None = None


def _empty() -> dict:
    return dict.fromkeys(STAT_KEYS)


def _find(pattern: str, text: str, scale: float = 1.0):
    m = re.search(pattern, text)
    return float(m.group(1)) * scale if m else None


# --- ExecuTorch executor_runner ----------------------------------------------------
# Logs (stderr) lines such as
#   I 00:00:00.001 executorch:executor_runner.cpp:331] Model loaded in 1.234000 ms.
#   I 00:00:00.004 executorch:executor_runner.cpp:412] Iteration 1 of 61: 0.412000 ms
#   I 00:00:00.030 executorch:executor_runner.cpp:421] Model executed successfully 61 time(s) in 25.1 ms.
# It has no warm-up flag: we ask for 1 + warmup + runs executions, take the
# first as first_ms and drop the warm-ups. Older builds print only the total.


def executor_runner_argv(binary, artifact, threads, warmup, runs, min_seconds):
    return [binary, f"--model_path={artifact}", f"--num_executions={1 + warmup + runs}", f"--cpu_threads={threads}"]


def parse_executor_runner(text: str, warmup: int = 0) -> dict:
    out = _empty()
    out["load_ms"] = _find(rf"Model loaded in {_NUM} ms", text)
    iterations = [float(x) for x in re.findall(rf"Iteration \d+ of \d+: {_NUM} ms", text)]
    if iterations:
        out["first_ms"] = iterations[0]
        timed = iterations[1 + warmup:] or iterations[1:] or iterations
        out.update(summarize(timed), runs=len(timed), samples_ms=timed)
        return out
    total = re.search(rf"Model executed successfully (\d+) time\(s\) in {_NUM} ms", text)
    if not total:
        raise ValueError("no 'Model executed successfully' or 'Iteration' lines in executor_runner output")
    runs, ms = int(total.group(1)), float(total.group(2))
    out.update(runs=runs, mean=round(ms / runs, 4))
    return out


# --- LiteRT / TFLite benchmark_model ------------------------------------------------
# Logs (INFO: prefix) among others:
#   Initialized session in 12.3ms.
#   count=50 first=1203 curr=1120 min=1101 max=1402 avg=1150.2 std=48     (one line per phase, us)
#   Inference timings in us: Init: 12345, First inference: 2345, Warmup (avg): 1300, Inference (avg): 1150.2
#   Overall peak memory footprint (MB) via periodic monitoring: 14.2      (with --report_peak_memory_footprint)
# It prints no percentiles: p50/p90/p99 stay None.


def benchmark_model_argv(binary, artifact, threads, warmup, runs, min_seconds):
    return [binary, f"--graph={artifact}", f"--num_threads={threads}", f"--warmup_runs={warmup}",
            f"--num_runs={runs}", f"--min_secs={min_seconds}", "--report_peak_memory_footprint=true"]


def parse_benchmark_model(text: str, warmup: int = 0) -> dict:
    out = _empty()
    out["load_ms"] = _find(rf"Initialized session in {_NUM}\s*ms", text)
    timings = re.search(rf"Inference timings in us: Init: {_NUM}, First inference: {_NUM}, "
                        rf"Warmup \(avg\): {_NUM}, Inference \(avg\): {_NUM}", text)
    if not timings:
        raise ValueError("no 'Inference timings in us' line in benchmark_model output")
    out["first_ms"] = float(timings.group(2)) / 1000
    out["mean"] = round(float(timings.group(4)) / 1000, 4)
    stats = re.findall(r"count=(\d+)((?: \w+=[0-9.eE+-]+)*)(\(all same\))?", text)
    if stats:  # the last Stat line is the timed phase (the first is warm-up)
        count, fields, _same = stats[-1]
        values = {k: float(v) / 1000 for k, v in re.findall(r"(\w+)=([0-9.eE+-]+)", fields)}
        out["runs"] = int(count)
        out["min"] = values.get("min", values.get("curr"))
        out["max"] = values.get("max", values.get("curr"))
        out["std"] = values.get("std", 0.0)
    peak = _find(rf"Overall peak memory footprint \(MB\) via periodic monitoring: {_NUM}", text)
    out["peak_rss_kb"] = round(peak * 1024) if peak is not None else None
    return out


# --- ONNX Runtime onnxruntime_perf_test --------------------------------------------
# Prints (stdout), times in seconds unless marked:
#   Session creation time cost: 0.0508 s
#   First inference time cost: 5 ms                   (newer builds)
#   Average inference time cost: 19.918 ms            ("... cost total:" in newer builds)
#   Peak working set size: 109531136 bytes
#   Runs:100
#   Min Latency: 0.0197 s / Max Latency / P50 / P90 / P95 / P99 / P999 Latency: ... s
# It runs one warm-up inference itself and has no warm-up count flag.


def perf_test_argv(binary, artifact, threads, warmup, runs, min_seconds):
    return [binary, "-e", "cpu", "-m", "times", "-r", str(runs), "-x", str(threads), "-I", artifact]


def parse_perf_test(text: str, warmup: int = 0) -> dict:
    out = _empty()
    out["mean"] = _find(rf"Average inference time cost(?: total)?: {_NUM} ms", text)
    if out["mean"] is None:
        raise ValueError("no 'Average inference time cost' line in onnxruntime_perf_test output")
    out["load_ms"] = _find(rf"Session creation time cost: {_NUM} s", text, 1000)
    out["first_ms"] = _find(rf"First inference time cost: {_NUM} ms", text)
    for key, label in (("min", "Min"), ("max", "Max"), ("p50", "P50"), ("p90", "P90"), ("p99", "P99")):
        value = _find(rf"{label} Latency: {_NUM} s", text, 1000)
        out[key] = round(value, 4) if value is not None else None
    runs = re.search(r"Runs:\s*(\d+)", text) or re.search(r"Total inference requests: (\d+)", text)
    out["runs"] = int(runs.group(1)) if runs else None
    peak = _find(rf"Peak working set size: {_NUM} bytes", text)
    out["peak_rss_kb"] = round(peak / 1024) if peak is not None else None
    return out


# --- edgekit-et-runner (make emulator) ------------------------------------------------
# edgekit's own native ExecuTorch runner (edgekit/emulator/native/et_runner.cpp):
# no torch on the board; it prints the Python runner's JSON itself, on one line.


def edgekit_runner_argv(binary, artifact, threads, warmup, runs, min_seconds):
    return [binary, artifact, "--threads", str(threads), "--warmup", str(warmup), "--runs", str(runs),
            "--min-seconds", str(min_seconds)]


def parse_edgekit_runner(text: str, warmup: int = 0) -> dict:
    doc = parse_generation(text)
    out = _empty()
    out.update({k: doc.get(k) for k in STAT_KEYS}, samples_ms=doc.get("samples_ms"),
               version=(doc.get("runtime") or {}).get("version"))
    return out


def edgekit_runner_generate_argv(binary, artifact, threads, max_seq_len):
    return [binary, artifact, "--threads", str(threads), "--max-seq-len", str(max_seq_len)]


def parse_generation(text: str, warmup: int = 0) -> dict:
    """edgekit-et-runner's JSON line as it is (it prints runtime/runner.py's keys itself): a --generate
    run's whole answer, and what parse_edgekit_runner picks the latency figures from."""
    doc = last_json(text)
    if doc is None or "ok" not in doc:
        raise ValueError("no JSON result line in edgekit-et-runner output")
    if not doc["ok"]:
        raise ValueError(doc.get("error", "the runner failed"))
    return doc


def _shared_libraries(binary: Path) -> list[Path]:
    return sorted(binary.parent.glob("lib*.so"))


TOOLS = {
    "edgekit-et-runner": NativeTool("edgekit-et-runner", "executorch-native", edgekit_runner_argv,
                                    parse_edgekit_runner, _shared_libraries,
                                    lambda binary, artifact, threads: edgekit_runner_argv(binary, artifact, threads, 0, 1, 0),
                                    edgekit_runner_generate_argv),
    "executor_runner": NativeTool("executor_runner", "executorch", executor_runner_argv, parse_executor_runner),
    "benchmark_model": NativeTool("benchmark_model", "litert", benchmark_model_argv, parse_benchmark_model),
    "onnxruntime_perf_test": NativeTool("onnxruntime_perf_test", "onnxruntime", perf_test_argv, parse_perf_test),
}


def split_native_runner(text: str) -> tuple[str | None, str]:
    """'benchmark_model=/opt/bm' -> ('benchmark_model', '/opt/bm'); a bare path keeps kind None."""
    kind, sep, path = text.partition("=")
    return (kind, path) if sep and kind in TOOLS else (None, text)


def resolve_native_runner(text: str, fmt) -> tuple[NativeTool, Path]:
    """The tool and the local binary for `--native-runner [KIND=]PATH`; the kind defaults to the file name.
    `fmt`: the build's format module, which names the tools that run it."""
    kind, path = split_native_runner(text)
    if path == "edgekit-et-runner" and not Path(path).exists():
        kind, path = "edgekit-et-runner", str(built_edgekit_runner(required=True))
    binary = Path(path).expanduser()
    kind = kind or next((name for name in TOOLS if binary.name.startswith(name)), None)
    if kind is None:
        raise UsageError(f"--native-runner {text}: cannot tell which tool '{binary.name}' is",
                         hint="write KIND=PATH with KIND one of: " + ", ".join(TOOLS))
    if not binary.is_file():
        raise UsageError(f"--native-runner {text}: no such file", hint="point it at the tool built for the device")
    if kind not in fmt.NATIVE_TOOLS:
        runs = [f.NAME for f in all_formats() if kind in f.NATIVE_TOOLS]
        raise UsageError(f"--native-runner {kind} runs {' or '.join(runs) or 'no'} artifacts, this build's is {fmt.NAME}",
                         hint=(f"use {' or '.join(fmt.NATIVE_TOOLS)}, or " if fmt.NATIVE_TOOLS else "use ")
                         + "the Python runner (leave out --native-runner)")
    return TOOLS[kind], binary


def built_edgekit_runner(required: bool = False) -> Path | None:
    """The edgekit-et-runner `make emulator` cross-compiled for aarch64, if it exists."""

    runner = EmulatorPaths.default().runner
    if runner.is_file():
        return runner
    if required:
        raise UsageError("--native-runner edgekit-et-runner: it is not built",
                         hint="run `make emulator` (it cross-compiles the runner for aarch64), or give a path")
    return None
