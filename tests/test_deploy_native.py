"""Parsers for the native benchmark tools' output.

None of these tools runs here (no phone, no Android NDK), so the inputs are
SAMPLE TEXT WRITTEN BY US from the tools' documented/source-defined formats:
ExecuTorch examples/portable/executor_runner/executor_runner.cpp (ET_LOG lines),
TFLite tools/benchmark/benchmark_model.cc + Stat::OutputToStream, and
onnxruntime test/perftest/performance_runner.cc. They are not captured logs.
"""

from __future__ import annotations

import pytest

from edgekit.formats import get_format
from edgekit.deploy.native import (
    TOOLS,
    parse_benchmark_model,
    parse_executor_runner,
    parse_perf_test,
    resolve_native_runner,
    split_native_runner,
)
from edgekit.errors import UsageError

EXECUTOR_RUNNER = """\
I 00:00:00.000418 executorch:executor_runner.cpp:208] Model file /data/local/tmp/edgekit/m/model.pte is loaded.
I 00:00:00.000437 executorch:executor_runner.cpp:217] Using method forward
I 00:00:00.000442 executorch:executor_runner.cpp:268] Setting up CPU planned buffer 0, size 3392.
I 00:00:00.001690 executorch:executor_runner.cpp:331] Model loaded in 1.243000 ms.
I 00:00:00.002101 executorch:executor_runner.cpp:412] Iteration 1 of 5: 0.401000 ms
I 00:00:00.002302 executorch:executor_runner.cpp:412] Iteration 2 of 5: 0.190000 ms
I 00:00:00.002498 executorch:executor_runner.cpp:412] Iteration 3 of 5: 0.180000 ms
I 00:00:00.002690 executorch:executor_runner.cpp:412] Iteration 4 of 5: 0.170000 ms
I 00:00:00.002880 executorch:executor_runner.cpp:412] Iteration 5 of 5: 0.160000 ms
I 00:00:00.002890 executorch:executor_runner.cpp:421] Model executed successfully 5 time(s) in 1.101000 ms.
I 00:00:00.002900 executorch:executor_runner.cpp:430] 1 outputs:
OutputX 0: tensor(sizes=[1, 10], [-3.1, 2.2, ...])
"""

EXECUTOR_RUNNER_OLD = """\
I 00:00:00.000418 executorch:executor_runner.cpp:208] Model file model.pte is loaded.
I 00:00:00.002890 executorch:executor_runner.cpp:170] Model executed successfully 20 time(s) in 4.000000 ms.
"""

BENCHMARK_MODEL = """\
INFO: Log parameter values verbosely: [0]
INFO: Num threads: [4]
INFO: Graph: [/data/local/tmp/edgekit/m/model.tflite]
INFO: The input model file size (MB): 0.104
INFO: Initialized session in 3.412ms.
INFO: Running benchmark for at least 2 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=403 first=2011 curr=1180 min=1093 max=2011 avg=1210.4 std=88

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=812 first=1190 curr=1150 min=1101 max=1402 avg=1150.2 std=48

INFO: Inference timings in us: Init: 3412, First inference: 2011, Warmup (avg): 1210.4, Inference (avg): 1150.2
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
INFO: Memory footprint delta from the start of the tool (MB): init=2.4 overall=5.1
INFO: Overall peak memory footprint (MB) via periodic monitoring: 14.5
"""

PERF_TEST = """\
Setting intra_op_num_threads to 4
Session creation time cost: 0.0508382 s
First inference time cost: 5 ms
Total inference time cost: 1.9918 s
Total inference requests: 100
Average inference time cost: 19.918 ms
Total inference run time: 1.99202 s
Number of inferences per second: 50.2002
Avg CPU usage: 12 %
Peak working set size: 109531136 bytes
Avg CPU usage:12
Peak working set size:109531136
Runs:100
Min Latency: 0.0197812 s
Max Latency: 0.0202704 s
P50 Latency: 0.0199047 s
P90 Latency: 0.0200251 s
P95 Latency: 0.0201534 s
P99 Latency: 0.0202704 s
P999 Latency: 0.0202704 s
"""


def test_executor_runner_per_iteration_lines():
    out = parse_executor_runner(EXECUTOR_RUNNER, warmup=1)
    assert out["load_ms"] == 1.243 and out["first_ms"] == 0.401
    assert out["samples_ms"] == [0.18, 0.17, 0.16]  # iteration 1 is first_ms, iteration 2 the warm-up
    assert out["runs"] == 3 and out["p50"] == 0.17 and out["min"] == 0.16 and out["max"] == 0.18


def test_executor_runner_total_only():
    out = parse_executor_runner(EXECUTOR_RUNNER_OLD)
    assert out["runs"] == 20 and out["mean"] == 0.2
    assert out["p50"] is None and out["load_ms"] is None  # not printed by that build: not invented


def test_benchmark_model_takes_the_timed_phase():
    out = parse_benchmark_model(BENCHMARK_MODEL)
    assert out["load_ms"] == 3.412 and out["first_ms"] == 2.011 and out["mean"] == 1.1502
    assert out["runs"] == 812 and out["min"] == 1.101 and out["max"] == 1.402 and out["std"] == 0.048
    assert out["p50"] is None and out["p99"] is None  # benchmark_model prints no percentiles
    assert out["peak_rss_kb"] == round(14.5 * 1024)


def test_benchmark_model_all_same_line():
    text = BENCHMARK_MODEL.replace("count=812 first=1190 curr=1150 min=1101 max=1402 avg=1150.2 std=48", "count=3 curr=1000(all same)")
    out = parse_benchmark_model(text)
    assert out["runs"] == 3 and out["min"] == out["max"] == 1.0 and out["std"] == 0.0


def test_perf_test_seconds_become_milliseconds():
    out = parse_perf_test(PERF_TEST)
    assert out["load_ms"] == pytest.approx(50.8382) and out["first_ms"] == 5.0 and out["mean"] == 19.918
    assert out["p50"] == pytest.approx(19.9047) and out["p99"] == pytest.approx(20.2704) and out["runs"] == 100
    assert out["peak_rss_kb"] == round(109531136 / 1024)


@pytest.mark.parametrize("parse", [parse_executor_runner, parse_benchmark_model, parse_perf_test])
def test_unrecognised_output_is_an_error_not_zeros(parse):
    with pytest.raises(ValueError):
        parse("Segmentation fault\n")


def test_native_runner_kind_and_artifact_type(tmp_path):
    binary = tmp_path / "benchmark_model_android_arm64"
    binary.write_text("")
    tool, path = resolve_native_runner(str(binary), get_format("litert"))
    assert tool is TOOLS["benchmark_model"] and path == binary
    assert split_native_runner("onnxruntime_perf_test=/opt/a=b") == ("onnxruntime_perf_test", "/opt/a=b")
    with pytest.raises(UsageError, match="runs litert artifacts, this build's is executorch"):
        resolve_native_runner(str(binary), get_format("executorch"))
    with pytest.raises(UsageError, match="cannot tell which tool"):
        resolve_native_runner(str(tmp_path / "mybench"), get_format("executorch"))


# --- edgekit-et-runner (the one native tool we build: its real output is tested under
# emulation in tests/test_emulate.py and tests/test_emulated_board.py; here, the parsing)


def test_edgekit_runner_json_is_read_past_the_runtimes_log_lines():
    from edgekit.deploy.native import parse_edgekit_runner

    text = ('I 00:00:00.04 executorch:threadpool.cpp:66] Resetting threadpool to 4 threads.\n'
            '{"ok": true, "runner": "edgekit-et-runner", "load_ms": 71.5, "first_ms": 34.2, "mean": 7.5, "std": 0.04, '
            '"min": 7.4, "p50": 7.5, "p90": 7.6, "p99": 7.7, "max": 7.7, "runs": 3, "peak_rss_kb": 25556, '
            '"runtime": {"name": "executorch-native", "version": "1.5.1"}, "samples_ms": [7.4, 7.5, 7.7]}\n')
    out = parse_edgekit_runner(text)
    assert out["p50"] == 7.5 and out["runs"] == 3 and out["samples_ms"] == [7.4, 7.5, 7.7] and out["version"] == "1.5.1"
    with pytest.raises(ValueError, match="cannot read x.pte"):
        parse_edgekit_runner('{"ok": false, "error": "cannot read x.pte", "error_kind": "usage"}\n')
    with pytest.raises(ValueError):
        parse_edgekit_runner("Segmentation fault\n")


def test_edgekit_runner_by_name_needs_make_emulator(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path))
    with pytest.raises(UsageError, match="make emulator"):
        resolve_native_runner("edgekit-et-runner", get_format("executorch"))
    runner = tmp_path / "emulator" / "bookworm-arm64" / "native" / "edgekit-et-runner"
    runner.parent.mkdir(parents=True)
    runner.write_text("")
    (runner.parent / "libexecutorch.so").write_text("")
    tool, path = resolve_native_runner("edgekit-et-runner", get_format("executorch"))
    assert path == runner and [p.name for p in tool.companions(path)] == ["libexecutorch.so"]


def test_device_facts_say_when_the_board_is_the_emulator():
    from edgekit.deploy.base import Completed
    from edgekit.deploy.runners import device_facts_over_shell

    class Shell:
        def __init__(self, tail):
            self.tail = tail

        def run(self, argv, timeout=None):
            cpuinfo = "processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n"
            out = f"{cpuinfo}@@\nRaspberry Pi 4\n\n\n\n\n@@\n4\naarch64\n@@\n{self.tail}"
            return Completed(argv, 0, out, "")

    marker = '{\n "emulated": true,\n "by": "qemu-user"\n}\n\n@@cpu\ncortex-a72\n'
    facts = device_facts_over_shell(Shell(marker))
    assert facts["emulated"] == {"by": "qemu-user", "cpu": "cortex-a72"} and facts["cpu_model"].endswith("Cortex-A72")
    assert "emulated" not in device_facts_over_shell(Shell("\n@@cpu\n\n"))  # a real board: no marker file
