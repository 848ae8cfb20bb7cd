"""The build directory as deploy sees it: what to push, and where results go.

Results of every device run land in `BUILD/device_runs/<device>-<time>.json`
(failed runs too, with "ok": false and the error). Successful runs are also
summarised in manifest.json's `device_runs` list, so everything downstream
(report, CI) reads the manifest. A failed run changes nothing but its record.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import UsageError
from edgekit.formats import get_format
from edgekit.manifest import (
    GENERATION_KEYS,
    TEXT_GENERATION,
    check_shipped_files,
    inside,
    read_manifest,
    sha256_file,
    update_manifest,
    write_json_atomic,
)

RUNS_DIR = "device_runs"
# runtime name the runner reports -> the distribution recorded in manifest["versions"]
RUNTIME_DISTS = {"executorch": "executorch", "onnxruntime": "onnxruntime", "torch-lite-interpreter": "torch",
                 "litert": "ai-edge-litert"}


@dataclass(frozen=True)
class BuildInfo:
    dir: Path
    manifest: dict
    format: str  # which of the build's artifacts goes to the device

    @property
    def artifact_record(self) -> dict:
        """The manifest's {file, sha256, bytes} of the chosen format (the primary one at the top level)."""
        if self.format == self.manifest.get("format") or "formats" not in self.manifest:
            return self.manifest["artifact"]
        return self.manifest["formats"][self.format]["artifact"]

    @property
    def artifact(self) -> Path:
        return inside(self.dir, self.artifact_record["file"], f"the {self.format} artifact")

    @property
    def sha256(self) -> str:
        return self.artifact_record["sha256"]

    @property
    def target_arch(self) -> str:
        return self.manifest["target_profile"]["arch"]

    @property
    def threads(self) -> int:
        return self.manifest["target_profile"]["threads"]

    @property
    def slug(self) -> str:
        """The per-build directory on a device: name, target and artifact digest, so
        builds never overwrite each other and a re-deploy of the same one is a no-op."""
        return f"{self.manifest['name']}-{self.manifest['target']}-{self.format}-{self.sha256[:8]}"

    @property
    def inputs(self) -> list[dict]:
        return self.manifest["model"]["inputs"]

    @property
    def format_module(self):
        return get_format(self.format)

    @property
    def runtime(self) -> str:
        """The device runner's runtime for this artifact (runtime/runner.py)."""
        if self.generating:
            return self.manifest["runtime"]
        return self.format_module.DEVICE_RUNTIME

    @property
    def generating(self) -> bool:
        """A text-generation build (edgekit/llm): the device generates tokens from a prompt instead of
        timing one inference, and reports time to first token and tokens/s."""
        return self.manifest.get("task") == TEXT_GENERATION

    @property
    def artifact_files(self) -> list[Path]:
        """Files the artifact reads beside it on the device (an .onnx decoder's weights and genai_config.json)."""
        return [inside(self.dir, f["file"], "an artifact file") for f in self.manifest.get("artifact_files") or []]

    @property
    def generation(self) -> dict:
        """What a text-generation build is timed with on a device: the prompt the build timed on this
        computer (`prompt_ids`), `new_tokens` per run, the context length, and the tokens this computer
        generated (`tokens`), which the device's are compared with."""
        speed = self.manifest.get("speed") or {}
        if "prompt_ids" not in speed:
            raise UsageError(f"{self.dir} was built before text-generation builds recorded their timing prompt",
                             hint="rebuild it with `edgekit build --task text-generation` to time it on a device")
        return {"prompt_ids": speed["prompt_ids"], "new_tokens": speed["new_tokens"], "tokens": speed["tokens"],
                "max_seq_len": self.manifest["export"]["max_seq_len"]}

    def built_with(self, runtime: str) -> str | None:
        """The runtime version the artifact was made with (manifest versions)."""
        return self.manifest.get("versions", {}).get(RUNTIME_DISTS.get(runtime, runtime))


def open_build(build_dir: str | Path, fmt: str | None = None) -> BuildInfo:
    """Read a finished build; a missing or altered artifact is the user's to fix, before any device is touched.
    `fmt` picks one of the build's formats (default: the primary one)."""
    path = Path(build_dir)
    manifest = read_manifest(path)  # checked: its shape, and every path it names stays inside the build dir
    if manifest.get("task") == TEXT_GENERATION:
        check_shipped_files(path, manifest)
    available = list(manifest.get("formats") or [manifest["format"]])
    if fmt is not None and fmt not in available:
        raise UsageError(f"--format {fmt}: this build has no {fmt} artifact", hint="choose one of: " + ", ".join(available))
    build = BuildInfo(path, manifest, fmt or manifest["format"])
    artifact = build.artifact
    if not artifact.is_file():
        raise UsageError(f"{artifact} is missing", hint="rebuild with `edgekit build`")
    if sha256_file(artifact) != build.sha256:
        raise UsageError(f"{artifact} does not match the sha256 in {path / 'manifest.json'} (changed after the build)",
                         hint="rebuild with `edgekit build` rather than editing the artifact")
    return build


def timestamp() -> str:
    """UTC, sortable and file-name safe, to the millisecond: 20261122T031151.123Z."""
    now = dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%S.") + f"{now.microsecond // 1000:03d}Z"


def write_run(build: BuildInfo, device_file_name: str, record: dict) -> Path:
    """BUILD/device_runs/<device>-<time>.json, written atomically; never overwrites an earlier run."""
    runs = build.dir / RUNS_DIR
    runs.mkdir(exist_ok=True)
    path = runs / f"{device_file_name}-{record['stamp']}.json"
    n = 1
    while path.exists():  # two runs of one device in the same millisecond
        n += 1
        path = runs / f"{device_file_name}-{record['stamp']}-{n}.json"
    write_json_atomic(path, record)
    return path


def add_to_manifest(build: BuildInfo, summary: dict) -> None:
    """Append one run summary to manifest.json's device_runs, atomically and under the manifest lock,
    so parallel deploys (threads, or several edgekit processes) never lose an entry."""
    update_manifest(build.dir, lambda doc: doc.setdefault("device_runs", []).append(summary))


def summarize_run(record: dict, file: Path, build_dir: Path) -> dict:
    """The manifest's line for one successful run: enough for tables; the record has the rest."""
    check, bench = record.get("check") or {}, record.get("bench") or {}
    result = bench or check
    device = result.get("device") or {}
    summary = {
        "device": record["device"], "transport": record["transport"], "time": record["time"],
        "file": str(file.relative_to(build_dir)), "format": record["build"]["format"], "runner": record["runner"],
        "benchmarked": bool(bench),
        "runtime": (result.get("runtime") or {}).get("name"), "runtime_version": (result.get("runtime") or {}).get("version"),
        "machine": result.get("machine"), "cpu_model": device.get("cpu_model"),
        "arch_mismatch": record["arch"]["mismatch"], "emulated": record.get("emulated", False),
        "threads": result.get("threads"), "threads_applied": result.get("threads_applied"),
        "load_ms": result.get("load_ms"), "first_ms": result.get("first_ms"),
    }
    for key in ("mean", "p50", "p90", "p99", "runs"):
        summary[key] = bench.get(key)
    if bench.get("mode") == "generate":
        summary.update({k: bench.get(k) for k in GENERATION_KEYS}, mode="generate",
                       tokens_match_build=(record.get("generation") or {}).get("tokens_match_build"))
    if record.get("service"):  # deploy --serve: where it answers (edgekit bench --serve may load-test it)
        summary["service"] = {k: record["service"].get(k) for k in ("url", "local_url", "port", "manager", "starts_at_boot")}
    return summary
