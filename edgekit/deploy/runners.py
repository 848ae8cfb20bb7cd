"""What runs the artifact on the device, and how its answer is read.

Two kinds, one interface (files to push, prepare, check, bench -> the runner JSON):

- PythonRunner: edgekit/runtime/runner.py with the device's python (hosts,
  Raspberry Pi OS with pip, Termux). Prints the JSON itself.
- NativeRunner: a benchmark binary the user points to (executor_runner,
  benchmark_model, onnxruntime_perf_test, edgekit-et-runner); its output is
  parsed into the same JSON (native.py), and device facts are read with a
  shell one-liner.

`select_runner` chooses from what the user said; `prefer_native` then swaps in
the format's preferred native tool (edgekit-et-runner for ExecuTorch) on a
Linux aarch64 board when `make emulator` has built it and the user named no
runner: the board then needs no torch.
"""

from __future__ import annotations

import signal
from pathlib import Path

from edgekit.deploy.base import (
    EXIT_ALARM,
    Completed,
    DeviceFailure,
    DeviceTimeout,
    Transport,
    reporting_signals,
)
from edgekit.deploy.native import (
    TOOLS,
    NativeTool,
    built_edgekit_runner,
    parse_generation,
    resolve_native_runner,
)
from edgekit.errors import UsageError
from edgekit.runtime import RUNNER_PATH, last_json
from edgekit.runtime.runner import cpu_from_cpuinfo, emulated_facts

TIMEOUT_GRACE = 5.0  # seconds the host waits past the device-side deadline before cutting the link
PROMPT_FILE = "prompt.ids"  # a text-generation build's timing prompt on the device: raw little-endian int64


def select_runner(build, python: str, native_runner: str | None):
    if native_runner:
        tool, binary = resolve_native_runner(native_runner, build.format_module)
        if build.generating and tool.generate_argv is None:
            raise UsageError(f"--native-runner {native_runner}: {tool.name} does not generate text",
                             hint="use edgekit-et-runner (`make emulator` builds it) or the Python runner "
                                  "(leave out --native-runner)")
        return NativeRunner(tool, binary)
    return PythonRunner(python)


def generation_args(remote: str, build, new_tokens: int) -> list[str]:
    """The runners' text-generation arguments (runtime/runner.py and edgekit-et-runner take the same):
    `new_tokens` greedy tokens from the prompt deploy pushed."""
    return ["--generate", str(new_tokens), "--prompt-ids", f"{remote}/{PROMPT_FILE}"]


DEFAULT_PYTHON = "python3"


def prefer_native(runner, build, transport_kind: str, arch: str):
    """The format's preferred native tool (edgekit-et-runner for a .pte) instead of the default
    Python runner on a Linux aarch64 board.

    Only when the user chose neither a runner nor a python (--python says "use my
    runtime") and the runner has been built; Android (adb) boards keep their own tools.
    """
    if (isinstance(runner, PythonRunner) and runner.python == DEFAULT_PYTHON
            and build.format_module.PREFERRED_NATIVE_TOOL == "edgekit-et-runner"
            and transport_kind == "ssh" and arch == "aarch64"):
        built = built_edgekit_runner()
        if built is not None:
            return NativeRunner(TOOLS["edgekit-et-runner"], built)
    return runner


class PythonRunner:
    label = "python"

    def __init__(self, python: str):
        self.python = python

    def files(self) -> list[tuple[Path, str]]:
        return [(RUNNER_PATH, "runner.py")]

    def prepare(self, t: Transport, remote: str) -> None:
        pass

    def check(self, t: Transport, remote: str, build, threads: int, timeout: float) -> dict:
        """The runtime imports with the device's python and the artifact loads and runs once
        (a text-generation build: prefills its prompt once)."""
        return self._call(t, self._argv(remote, build, 1) + ["--check", "--threads", str(threads)], timeout, "check", build)

    def bench(self, t: Transport, remote: str, build, opts, threads: int) -> dict:
        new_tokens = build.generation["new_tokens"] if build.generating else 0
        argv = self._argv(remote, build, new_tokens) + ["--threads", str(threads), "--warmup", str(opts.warmup),
                                                        "--runs", str(opts.runs), "--min-seconds", str(opts.min_seconds)]
        if opts.inputs:
            argv += ["--inputs", f"{remote}/{opts.inputs_name}"]
        return self._call(t, argv, opts.timeout, "bench", build)

    def _argv(self, remote: str, build, new_tokens: int) -> list[str]:
        argv = [self.python, f"{remote}/runner.py", f"{remote}/{build.artifact.name}"]
        return argv + generation_args(remote, build, new_tokens) if build.generating else argv

    def _call(self, t: Transport, argv: list[str], timeout: float, stage: str, build) -> dict:
        argv = argv + ["--timeout", f"{timeout:g}"]  # the device kills its own runner at the deadline
        try:
            done = t.run(reporting_signals(argv), timeout + TIMEOUT_GRACE)
        except DeviceTimeout as e:
            raise DeviceFailure(f"the runner on {t.name} did not answer within {timeout:g} s ({stage})",
                                hint="the device or its python hangs; check it by hand, or raise --timeout for slow boards",
                                stage=stage, detail=e.detail) from None
        doc = last_json(done.stdout)
        if doc is not None and doc.get("ok"):
            return doc
        raise self._failure(t, done, doc, stage, build, timeout)

    def _failure(self, t: Transport, done: Completed, doc: dict | None, stage: str, build, timeout: float) -> DeviceFailure:
        code, detail = done.returncode, done.tail()
        if doc is not None and doc.get("error_kind") == "runtime_missing":
            package = doc.get("package", "?")
            pin = build.manifest.get("versions", {}).get(package)
            return DeviceFailure(
                f"{package} is not importable by '{self.python}' on {t.name}: {doc['error'].split(';')[0]}",
                hint=f"install it on the device: {self.python} -m pip install {package}{'==' + pin if pin else ''} "
                     f"(or pass --python with the python that has it)", stage="check", detail=detail)
        if doc is not None:
            hint = "see the runner's message; run it by hand on the device to investigate"
            if doc.get("error_kind") == "load_failed":
                hint = (f"the device's runtime may not read this artifact (built with {build.built_with(build.runtime)}); "
                        "install the same runtime version on the device")
            return DeviceFailure(f"the runner failed on {t.name} ({stage}): {doc['error']}", hint=hint, stage=stage, detail=detail)
        if code in (127, 126):
            return DeviceFailure(f"cannot run '{self.python}' on {t.name} (exit status {code}: "
                                 f"{'not found' if code == 127 else 'not executable'})",
                                 hint="pass --python with the path of a python that has the runtime installed", stage=stage, detail=detail)
        if code in (EXIT_ALARM, -signal.SIGALRM):
            return DeviceFailure(f"the runner on {t.name} ran past --timeout {timeout:g} s and was stopped ({stage})",
                                 hint="raise --timeout, or lower --runs/--min-seconds", stage=stage, detail=detail)
        died = _signal_name(code)
        if died:
            return DeviceFailure(f"the runner crashed on {t.name} ({stage}): killed by {died}", stage=stage, detail=detail,
                                 hint="the runtime crashed on this device; its last output is in the run record (device_runs/)")
        last = detail.splitlines()[-1] if detail else "no output"
        return DeviceFailure(f"the runner failed on {t.name} ({stage}) with exit status {code}: {last}", stage=stage, detail=detail,
                             hint="run it by hand on the device to investigate")


def _signal_name(code: int) -> str | None:
    """Exit status of a process killed by a signal: -N locally, 128+N through a shell."""
    number = -code if code < 0 else code - 128 if 128 < code < 160 else None
    try:
        return signal.Signals(number).name if number else None
    except ValueError:
        return None


# --- native binaries ----------------------------------------------------------------------

# One shell call gathers what the Python runner reads from /proc and /sys itself.
_FACTS_SH = r"""
cat /proc/cpuinfo 2>/dev/null; echo '@@'
f=/sys/devices/system/cpu/cpu0/cpufreq
for p in /proc/device-tree/model $f/scaling_governor $f/scaling_cur_freq $f/cpuinfo_max_freq /sys/class/thermal/thermal_zone0/temp; do
  tr -d '\000' < "$p" 2>/dev/null || true; echo
done
echo '@@'; getconf _NPROCESSORS_ONLN 2>/dev/null; uname -m
echo '@@'; cat /etc/edgekit-emulator.json 2>/dev/null; echo; echo '@@cpu'; echo "$QEMU_CPU"
"""


def device_facts_over_shell(t: Transport) -> dict:
    done = t.run(["sh", "-c", _FACTS_SH])
    cpuinfo, _, rest = done.stdout.partition("@@\n")
    values, _, tail = rest.partition("@@\n")
    tail, _, emulator = tail.partition("@@\n")
    board, governor, cur, top, temp = (values.split("\n") + [""] * 5)[:5]
    cores = tail.split()[0] if tail.split() else None
    facts = cpu_from_cpuinfo(cpuinfo)
    facts.update({
        "board": board.strip() or facts["board"], "cores": int(cores) if cores and cores.isdigit() else None,
        "governor": governor.strip() or None, "clock_mhz": _scaled(cur, 1000), "max_clock_mhz": _scaled(top, 1000),
        "temperature_c": _scaled(temp, 1000), "kernel": None,
    })
    marker, _, qemu_cpu = emulator.partition("@@cpu\n")
    if marker.strip():
        facts["emulated"] = emulated_facts(marker, qemu_cpu.strip())
    return facts


def _scaled(text: str, scale: float):
    try:
        return round(float(text.strip()) / scale, 1)
    except ValueError:
        return None


class NativeRunner:
    def __init__(self, tool: NativeTool, binary: Path):
        self.tool, self.binary = tool, binary
        self.label = tool.name

    def files(self) -> list[tuple[Path, str]]:
        return [(self.binary, self.binary.name)] + [(p, p.name) for p in self.tool.companions(self.binary)]

    def prepare(self, t: Transport, remote: str) -> None:
        t.check(["chmod", "+x", f"{remote}/{self.binary.name}"], f"chmod +x {self.binary.name}", stage="check")

    def check(self, t: Transport, remote: str, build, threads: int, timeout: float) -> dict:
        # A native tool carries its runtime inside: being executable there is the check, plus one
        # inference where the tool has a cheap mode for it (the artifact loads and runs).
        t.check(["test", "-x", f"{remote}/{self.binary.name}"], f"{self.binary.name} is not executable", stage="check",
                hint="mount the directory without noexec, or use another --remote-dir")
        if build.generating:  # one token: the artifact loads and prefills the prompt
            doc = self._generate(t, remote, build, threads, 1, ["--runs", "1", "--warmup", "0"], timeout, "check")
            return {k: doc.get(k) for k in ("ok", "runner", "threads", "load_ms", "first_ms", "runtime", "machine", "device")}
        if self.tool.check_argv is None:
            return {"ok": True, "runner": self.tool.name, "runtime": {"name": self.tool.runtime, "version": None},
                    "machine": None, "load_ms": None, "first_ms": None, "threads": threads}
        argv = self.tool.check_argv(f"{remote}/{self.binary.name}", f"{remote}/{build.artifact.name}", threads)
        stats = self._run(t, argv, timeout, "check", remote)
        return {"ok": True, "runner": self.tool.name, "threads": threads, "load_ms": stats["load_ms"],
                "first_ms": stats["first_ms"], "runtime": {"name": self.tool.runtime, "version": stats.get("version")},
                "machine": t.arch(), "device": device_facts_over_shell(t)}

    def bench(self, t: Transport, remote: str, build, opts, threads: int) -> dict:
        if build.generating:
            return self._generate(t, remote, build, threads, build.generation["new_tokens"],
                                  ["--runs", str(opts.runs), "--warmup", str(opts.warmup)], opts.timeout, "bench")
        argv = self.tool.argv(f"{remote}/{self.binary.name}", f"{remote}/{build.artifact.name}", threads,
                              opts.warmup, opts.runs, opts.min_seconds)
        stats = self._run(t, argv, opts.timeout, "bench", remote, opts.warmup)
        facts = device_facts_over_shell(t)
        return {"ok": True, **stats, "threads": threads, "threads_applied": True, "runner": self.tool.name,
                "runtime": {"name": self.tool.runtime, "version": stats.pop("version", None)}, "python": None,
                "machine": t.arch(), "device": facts, "warmup": opts.warmup}

    def _generate(self, t: Transport, remote: str, build, threads: int, new_tokens: int, runs: list[str],
                  timeout: float, stage: str) -> dict:
        """A text-generation build's greedy generation in the tool: its JSON as runtime/runner.py
        --generate prints it, and the device's facts."""
        argv = [*self.tool.generate_argv(f"{remote}/{self.binary.name}", f"{remote}/{build.artifact.name}", threads,
                                         build.generation["max_seq_len"]),
                *generation_args(remote, build, new_tokens), *runs]
        doc = self._run(t, argv, timeout, stage, remote, parse=parse_generation)
        return {**doc, "threads": threads, "threads_applied": True, "python": None, "device": device_facts_over_shell(t)}

    def _run(self, t: Transport, argv: list[str], timeout: float, stage: str, remote: str, warmup: int = 0,
             parse=None) -> dict:
        """Run the tool on the device and parse what it printed; every failure is a DeviceFailure."""
        try:
            done = t.run(reporting_signals(argv), timeout)
        except DeviceTimeout as e:
            raise DeviceFailure(f"{self.tool.name} on {t.name} did not finish within {timeout:g} s", stage=stage,
                                hint="raise --timeout, or lower --runs", detail=e.detail) from None
        if done.returncode != 0:
            died = _signal_name(done.returncode)
            raise t.failure(f"{self.tool.name} {'crashed (' + died + ')' if died else 'failed'} on {t.name}", done, stage=stage,
                            hint=f"run {remote}/{self.binary.name} by hand on the device to investigate")
        try:
            return (parse or self.tool.parse)(done.stdout + "\n" + done.stderr, warmup)
        except ValueError as e:
            raise DeviceFailure(f"cannot read {self.tool.name}'s output from {t.name}: {e}", stage=stage,
                                hint="this build of the tool prints another format; use the Python runner", detail=done.tail()) from None
