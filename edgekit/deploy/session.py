"""One deploy to one device, step by step, and a fleet of them in parallel.

    connect  reach the device, read its architecture (uname -m)
    arch     refuse a device whose architecture is not the target's
    push     artifact + runner + inputs spec into <base>/<name>-<target>-<sha8>/, verified
    check    the runtime imports there and the artifact loads and runs once
    bench    (optional) the latency run; its JSON comes back
    serve    (optional, --serve) the server started as a service there, answering /healthz (service.py)

Whatever happens, one record lands in BUILD/device_runs/; a successful one is
also summarised in manifest.json. Nothing else in the build dir changes.
"""

from __future__ import annotations

import datetime as dt
import json
import struct
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgekit.deploy.base import DeviceFailure, Transport
from edgekit.deploy.devices import Device
from edgekit.deploy.local import LocalTransport
from edgekit.deploy.records import (
    BuildInfo,
    add_to_manifest,
    summarize_run,
    timestamp,
    write_run,
)
from edgekit.deploy.runners import PROMPT_FILE, prefer_native, select_runner
from edgekit.deploy.service import (
    ServiceOptions,
    check_serve_device,
    check_stack,
    install,
    server_files,
)
from edgekit.deploy.service import stop as stop_service
from edgekit.errors import DeviceError, UsageError
from edgekit.runtime.runner import SPEC_FILE, RunnerError, load_arrays

MAX_PARALLEL = 8  # concurrent devices; sshd's default MaxStartups (10) would refuse more from one host
CHECK_KEYS = ("ok", "runtime", "threads", "threads_applied", "machine", "python", "load_ms", "first_ms")
ARCH_ALIASES = {"arm64": "aarch64", "aarch64": "aarch64", "amd64": "x86_64", "x86_64": "x86_64"}


@dataclass(frozen=True)
class BenchOptions:
    threads: int | None = None  # None: the target profile's thread count
    warmup: int = 10
    runs: int = 50
    min_seconds: float = 0.0
    timeout: float = 300.0  # seconds for the runner on the device (check and bench each)
    inputs: Path | None = None  # real inputs (.npz/.npy) instead of seeded random ones

    def __post_init__(self):
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {self.threads}")
        if self.runs < 1 or self.warmup < 0 or self.min_seconds < 0:
            raise UsageError("--runs must be at least 1, --warmup and --min-seconds at least 0")
        if self.timeout <= 0:
            raise UsageError(f"--timeout must be positive, got {self.timeout:g}")
        if self.inputs is not None and not Path(self.inputs).is_file():
            raise UsageError(f"--inputs {self.inputs}: file not found")
        if self.inputs is not None and Path(self.inputs).suffix not in (".npz", ".npy"):
            raise UsageError(f"--inputs {self.inputs}: expected a .npz or .npy file")

    @property
    def inputs_name(self) -> str:
        return f"inputs{Path(self.inputs).suffix}" if self.inputs else ""


@dataclass(frozen=True)
class DeployPlan:
    bench: BenchOptions | None = None  # None: deploy and check only
    serve: ServiceOptions | None = None  # --serve: keep the server running there as a service
    allow_arch_mismatch: bool = False
    check_timeout: float = 300.0


class DeployFailed(DeviceError):
    """One or more devices failed; `records` has every device's record (the good ones too)."""

    def __init__(self, message: str, hint: str | None, records: list[dict]):
        super().__init__(message, hint)
        self.records = records


def deploy_to(build: BuildInfo, device: Device, plan: DeployPlan, transport: Transport | None = None) -> dict:
    """Run the steps on one device; returns its record (also written to device_runs/)."""
    record = _new_record(build, device, plan)
    try:
        runner = select_runner(build, device.python, device.native_runner)
        record["runner"] = runner.label
        t = transport or device.open()
        record["transport"] = t.kind
        record["arch"] = _check_arch(t, build, plan.allow_arch_mismatch, record)
        if plan.serve is None:  # the server runs the artifact in the device's python
            runner = prefer_native(runner, build, t.kind, ARCH_ALIASES.get(record["arch"]["device"], ""))
        record["runner"] = runner.label
        record["stage"] = "push"
        remote = f"{_base_dir(t, device)}/{build.slug}"
        record["remote_dir"] = remote
        t.check(["mkdir", "-p", remote], f"creating {remote}", stage="push",
                hint="pass a writable --remote-dir (relative paths start in the login directory)")
        record["pushed"] = _push_all(t, remote, build, runner, plan.bench, plan.serve is not None)
        record["stage"] = "check"
        runner.prepare(t, remote)
        threads = plan.bench.threads if plan.bench and plan.bench.threads else build.threads
        if plan.bench:
            # The benchmark imports the runtime and loads the artifact first: it is the
            # check too (one python start instead of two; importing torch on a Pi takes seconds).
            record["stage"] = "bench"
            record["bench"] = runner.bench(t, remote, build, plan.bench, threads)
            record["check"] = {k: record["bench"].get(k) for k in CHECK_KEYS}
        else:
            record["check"] = runner.check(t, remote, build, threads, plan.check_timeout)
        if build.generating and record["bench"]:
            record["generation"] = _compare_tokens(build, record)
        record["warnings"] += _version_warnings(build, record["check"])
        if plan.serve:
            record["stage"] = "serve"
            check_stack(t, runner.python, build)
            record["service"] = install(t, remote, build, runner.python, plan.serve, _host_of(t))
            if record["service"].get("boot_hint"):
                record["warnings"].append(record["service"]["boot_hint"])
        facts = (record.get("bench") or record["check"]).get("device") or {}
        if facts.get("emulated"):  # edgekit's qemu board: the report must not show its times as latency
            record["emulated"] = facts["emulated"]
        record.update(ok=True, stage="done")
    except DeviceFailure as e:
        record.update(ok=False, stage=e.stage or record["stage"], error=e.message, hint=e.hint, detail=e.detail)
    except DeviceError as e:
        record.update(ok=False, error=e.message, hint=e.hint)
    path = write_run(build, device.file_name, record)
    record["record_file"] = str(path)
    if record["ok"]:
        add_to_manifest(build, summarize_run(record, path, build.dir))
    return record


def check_what_is_timed(build: BuildInfo, bench: BenchOptions | None) -> None:
    """What the runner will be given, checked here before anything is pushed: --inputs with the runner's
    own reader (a wrong file is the user's to fix, exit 2, naming their file, not a device failure naming
    the device-side copy); a text-generation build's timing prompt."""
    if build.generating:
        build.generation  # a build made before it was recorded says so
        if bench is not None and bench.inputs is not None:
            raise UsageError(f"--inputs {bench.inputs}: a text-generation build is timed on the prompt it was built with",
                             hint="leave out --inputs")
        if bench is not None and bench.min_seconds:
            raise UsageError(f"--min-seconds {bench.min_seconds:g}: a text-generation build's run is a whole "
                             "generation, counted by --runs", hint="leave out --min-seconds; raise --runs")
    if bench is None or bench.inputs is None:
        return

    try:
        load_arrays(str(bench.inputs), build.inputs)
    except RunnerError as e:
        shapes = ", ".join(f"{i['name']} {i['shape']} {i['dtype']}" for i in build.inputs)
        raise UsageError(str(e), hint=f"the build takes {shapes}: save one array per input "
                                      "(numpy.savez(path, NAME=array)), batch first") from None


def deploy_all(build: BuildInfo, devices: list[Device], plan: DeployPlan,
               on_done: Callable[[dict], None] | None = None) -> list[dict]:
    """Deploy to every device in parallel; raise DeployFailed after all finished if any failed."""
    _check_unique(devices)
    check_what_is_timed(build, plan.bench)
    for d in devices:  # usage errors (bad --native-runner, --ssh-option) stop everything before any device is touched
        select_runner(build, d.python, d.native_runner)
        d.open()
        if plan.serve:
            check_serve_device(d)
        if d.native_runner and plan.bench and plan.bench.inputs:
            raise UsageError(f"--inputs works with the Python runner only ({d.name} uses {d.native_runner})",
                             hint="leave out --inputs (the native tools make their own inputs) or --native-runner")
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(devices))) as pool:
        futures = [pool.submit(deploy_to, build, d, plan) for d in devices]
        for future in as_completed(futures):
            if on_done:
                on_done(future.result())
        records = [f.result() for f in futures]  # in the order the devices were given
    failed = [r for r in records if not r["ok"]]
    if failed:
        raise DeployFailed(*_failure_message(failed, len(records)), records=records)
    return records


def bench_host(build: BuildInfo, options: BenchOptions, python: str) -> dict:
    """`edgekit bench`: the same steps on this computer, in a scratch directory removed afterwards.
    The host is never the target's architecture, so the arch check only records that."""

    check_what_is_timed(build, options)
    device = Device("host", "local", None, python=python)
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as scratch:
        record = deploy_to(build, device, DeployPlan(bench=options, allow_arch_mismatch=True), LocalTransport("host", scratch))
    if not record["ok"]:
        raise DeployFailed(*_failure_message([record], 1), records=[record])
    return record


def timed_on(build: BuildInfo, device: Device, bench: BenchOptions, allow_arch_mismatch: bool, doing: str) -> dict:
    """One benchmark run whose median decides something (`build --device`'s latency verdict, a search
    candidate's place): deployed and timed as `deploy --bench` does, the run recorded in the build dir.
    Returns {device, p50_ms, p90_ms, threads, run}; a failed device raises DeployFailed naming `doing`."""
    record = deploy_to(build, device, DeployPlan(bench=bench, allow_arch_mismatch=allow_arch_mismatch))
    if not record["ok"]:
        raise DeployFailed(f"{doing} on {device.name}: {record['error']}", record.get("hint"), [record])
    run = record["bench"]
    return {"device": device.name, "p50_ms": run["p50"], "p90_ms": run.get("p90"), "threads": run.get("threads"),
            "run": record.get("record_file")}


# --- steps ---------------------------------------------------------------------------------


def stop_serving(build: BuildInfo, device: Device, port: int) -> dict:
    """`deploy --serve stop`: stop and remove the service on `port` of the device; the record lands in
    device_runs/ (not in the manifest: nothing was measured). Raises DeployFailed if the device fails."""
    record = _new_record(build, device, DeployPlan())
    record["kind"] = "serve-stop"
    try:
        t = device.open()
        record["transport"] = t.kind
        record["stage"] = "serve"
        record["service"] = stop_service(t, port, _base_dir(t, device))
        record.update(ok=True, stage="done")
    except DeviceFailure as e:
        record.update(ok=False, stage=e.stage or record["stage"], error=e.message, hint=e.hint, detail=e.detail)
    except DeviceError as e:
        record.update(ok=False, error=e.message, hint=e.hint)
    record["record_file"] = str(write_run(build, device.file_name, record))
    if not record["ok"]:
        raise DeployFailed(*_failure_message([record], 1), records=[record])
    return record


def _host_of(t: Transport) -> str:
    """How other computers reach the device: its ssh host name (this computer for `local`)."""
    host = getattr(t, "host", None) or "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _new_record(build: BuildInfo, device: Device, plan: DeployPlan) -> dict:
    return {
        "ok": False, "stage": "connect", "kind": "serve" if plan.serve else "bench" if plan.bench else "deploy",
        "device": device.name, "transport": device.transport, "address": device.address,
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "stamp": timestamp(),
        "build": {"name": build.manifest["name"], "target": build.manifest["target"], "format": build.format,
                  "artifact": build.artifact.name, "sha256": build.sha256},
        "runner": None, "arch": None, "remote_dir": None, "pushed": [], "check": None, "bench": None,
        **({"generation": None} if build.generating else {}),
        "settings": _settings(plan), "warnings": [], "error": None, "hint": None, "detail": None,
    }


def _settings(plan: DeployPlan) -> dict:
    b = plan.bench
    return {"allow_arch_mismatch": plan.allow_arch_mismatch,
            **({"serve": {"port": plan.serve.port, "listen": plan.serve.settings.host}} if plan.serve else {}),
            **({"warmup": b.warmup, "runs": b.runs, "min_seconds": b.min_seconds, "timeout": b.timeout,
                "threads": b.threads, "inputs": str(b.inputs) if b.inputs else None} if b else {})}


def _check_arch(t: Transport, build: BuildInfo, allow: bool, record: dict) -> dict:
    found = t.arch()
    record["stage"] = "arch"
    device_arch, target_arch = ARCH_ALIASES.get(found, found), build.target_arch
    info = {"device": found, "target": target_arch, "mismatch": device_arch != target_arch, "allowed": allow}
    if info["mismatch"] and not allow:
        record["arch"] = info
        hint = (f"build for a {device_arch} target (e.g. `edgekit build ... --target host` for x86_64), "
                f"or pass --allow-arch-mismatch to run it there anyway (its latency is then not {build.manifest['target']}'s)")
        if found.startswith("armv7") and target_arch == "aarch64":
            hint = "the board runs a 32-bit OS: install a 64-bit one (Raspberry Pi OS 64-bit), or pass --allow-arch-mismatch"
        raise DeviceFailure(f"{t.name} is {found} but this build targets {build.manifest['target']} ({target_arch})",
                            hint=hint, stage="arch")
    return info


def _base_dir(t: Transport, device: Device) -> str:
    base = device.remote_dir or t.default_base
    if t.kind == "ssh" and base.startswith("~/"):
        base = base[2:]  # ssh commands start in the login directory; a quoted ~ would not expand
    elif t.kind == "local":
        base = str(Path(base).expanduser())
    return base.rstrip("/") or "/"


def _push_all(t: Transport, remote: str, build: BuildInfo, runner, bench: BenchOptions | None, serve: bool) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="edgekit-push-") as tmp:
        spec = Path(tmp) / SPEC_FILE
        spec.write_text(json.dumps({"inputs": build.inputs, "runtime": build.runtime}, indent=1) + "\n")
        files = [(build.artifact, build.artifact.name), *[(f, f.name) for f in build.artifact_files],
                 *runner.files(), (spec, SPEC_FILE)]
        if bench and bench.inputs:
            files.append((Path(bench.inputs), bench.inputs_name))
        if build.generating:  # the prompt the build was timed with, as the runners read it
            prompt = Path(tmp) / PROMPT_FILE
            prompt.write_bytes(struct.pack(f"<{len(build.generation['prompt_ids'])}q", *build.generation["prompt_ids"]))
            files.append((prompt, PROMPT_FILE))
        if serve:
            files += server_files(build, Path(tmp))
        return t.push(files, remote)


def _compare_tokens(build: BuildInfo, record: dict) -> dict:
    """The device's greedy tokens against those this computer's run of the same artifact made at build
    time. A difference is a warning, not a failure: another CPU's kernels may round a near-tie the other
    way, and one flipped token changes every later one."""
    mine, theirs = build.generation["tokens"], record["bench"].get("tokens") or []
    differ = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), None)
    if differ is None and len(mine) != len(theirs):
        differ = min(len(mine), len(theirs))
    if differ is not None:
        record["warnings"].append(f"the device's greedy tokens differ from this computer's from token {differ + 1} "
                                  f"of {len(mine)} (another CPU's kernels may round a near-tie the other way)")
    return {"tokens_match_build": differ is None, "first_difference": differ, "compared": len(mine)}


def _version_warnings(build: BuildInfo, check: dict) -> list[str]:
    runtime = check.get("runtime") or {}
    on_device, built = runtime.get("version"), build.built_with(runtime.get("name", ""))
    if on_device and built and on_device.split("+")[0] != built.split("+")[0]:
        return [f"the device runs {runtime['name']} {on_device}, the artifact was made with {built}"]
    return []


def _check_unique(devices: list[Device]) -> None:
    names = [d.name for d in devices]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"device given twice: {', '.join(dupes)}", hint="each device once (names must be unique)")


def _failure_message(failed: list[dict], total: int) -> tuple[str, str | None]:
    if total == 1:
        return failed[0]["error"], failed[0]["hint"]
    lines = "; ".join(f"{r['device']} ({r['stage']}): {r['error']}" for r in failed)
    return f"{len(failed)} of {total} devices failed: {lines}", "each device's fix is in the table above and in its device_runs/ record"
