"""manifest.json: the one record of a build that everything downstream reads.

A build directory is something users receive from others (a CI artifact, a
colleague's laptop), so nothing in its manifest is trusted: `read_manifest` is
the one reader every command uses, and before anything else it checks

- the JSON is strict (no NaN or Infinity) and has the shape of a manifest
  (`check_schema`): a wrong shape is exit 2 naming the key, never a crash;
- every path it names (artifacts, device-run records) stays inside the build
  directory (`inside`): no absolute path, no `..`, no symlink that leads out.

The manifest lock (`manifest_lock`) serialises writers: deploys of a fleet
append their runs from several threads and processes, validate merges its results.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import threading
from importlib import metadata
from pathlib import Path

from edgekit import __version__
from edgekit.errors import UsageError

# The task of a decoder build (edgekit/llm) and of a decoder app's edgekit.toml: its manifest has other
# keys than a classifier build's, and the commands made for those refuse it (refuse_text_generation).
TEXT_GENERATION = "text-generation"
# What a text-generation build's device run reports instead of latency percentiles (runtime/runner.py
# bench_generation), kept in its manifest summary and shown by the report.
GENERATION_KEYS = ("time_to_first_token_ms", "prefill_tokens_per_s", "decode_tokens_per_s", "prompt_tokens",
                   "new_tokens", "peak_rss_kb", "memory_read_gbs")

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def versions() -> dict:
    """Versions of what made the artifact: needed to reproduce or explain a result."""

    found = {"edgekit": __version__, "python": platform.python_version()}
    for dist in ("torch", "executorch", "torchao", "onnx", "onnxruntime"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    return found


def dumps_strict(doc) -> str:
    """JSON as every reader can parse it: NaN and Infinity are refused (they are not JSON)."""
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def write_json_atomic(path: Path, doc) -> None:
    """Write to a temp name and rename: a reader never sees half a file, and a failed write
    (a full disk) leaves nothing behind."""
    write_text_atomic(path, dumps_strict(doc))


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def loads_strict(text: str):
    return json.loads(text, parse_constant=_refuse_constant)


# ---------------------------------------------------------------- reading


def read_manifest(build_dir: str | Path) -> dict:
    """A finished build's manifest, checked (strict JSON, its shape, every path inside the build
    dir) before any caller looks at it; anything wrong is the user's to know about (exit 2)."""
    build_dir = Path(build_dir)
    path = build_dir / MANIFEST
    if not path.is_file():
        raise UsageError(f"'{build_dir}' is not a build directory (no {MANIFEST})",
                         hint="pass the directory `edgekit build` wrote, e.g. build/digits-rpi4")
    try:
        manifest = loads_strict(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not an edgekit manifest (invalid JSON: {e})", hint="rebuild with `edgekit build`") from None
    check_schema(manifest, path)
    for entry, rel in named_paths(manifest):
        inside(build_dir, rel, f"{path}: {entry}")
    return manifest


def refuse_text_generation(manifest: dict, build_dir: Path) -> None:
    """The commands made for classifier-style builds refuse a text-generation build, saying what runs it."""
    if manifest.get("task") == TEXT_GENERATION:
        raise UsageError(f"'{build_dir}' is a text-generation build: this command does not take those yet",
                         hint=f"generate with it here: edgekit generate {build_dir} --prompt TEXT")


def check_shipped_files(build_dir: Path, manifest: dict) -> None:
    """A text-generation build's artifact and the files it reads beside it (`artifact_files`: an .onnx
    decoder's weights and genai_config.json), each against the sha256 the build recorded."""
    for entry in [manifest["artifact"], *manifest.get("artifact_files", [])]:
        path = inside(build_dir, entry["file"], f"{build_dir}: artifact file")
        if not path.is_file() or sha256_file(path) != entry["sha256"]:
            raise UsageError(f"{path} is missing or not the file this build wrote (sha256 differs)",
                             hint="copy the whole build directory again, or rebuild")


def format_records(manifest: dict) -> dict:
    """{format: record} for every artifact of the build (a one-format manifest is its own record)."""
    return manifest.get("formats") or {manifest["format"]: manifest}


def named_paths(manifest: dict) -> list[tuple[str, str]]:
    """(manifest entry, relative path) for every file a manifest names."""
    out = [("artifact.file", manifest["artifact"]["file"])]
    for fmt, record in (manifest.get("formats") or {}).items():
        out.append((f"formats.{fmt}.artifact.file", record["artifact"]["file"]))
    for key in ("device_runs", "previous_device_runs", "serve_loads"):
        for i, run in enumerate(manifest.get(key) or []):
            if run.get("file") is not None:
                out.append((f"{key}[{i}].file", run["file"]))
    return out


# The keys every reader relies on, and their types. Everything else is optional.
_ARTIFACT = {"file": str, "sha256": str, "bytes": int}
_TOP = {"name": str, "target": str, "format": str, "artifact": dict, "model": dict, "target_profile": dict}


def check_schema(manifest, path: Path) -> None:
    def wrong(key: str, expected: str, found) -> UsageError:
        return UsageError(f"{path}: not an edgekit manifest ('{key}' must be {expected}, found {_kind(found)})",
                          hint="pass a directory `edgekit build` wrote; rebuild it if the manifest was edited")

    if not isinstance(manifest, dict):
        raise wrong("the document", "an object", manifest)
    for key, typ in _TOP.items():
        if not isinstance(manifest.get(key), typ):
            raise wrong(key, _type_name(typ), manifest.get(key))
    _check_artifact(manifest["artifact"], "artifact", wrong)
    for key, typ in (("arch", str), ("threads", int)):
        if not isinstance(manifest["target_profile"].get(key), typ):
            raise wrong(f"target_profile.{key}", _type_name(typ), manifest["target_profile"].get(key))
    formats = manifest.get("formats")
    if formats is not None:
        if not isinstance(formats, dict) or not formats:
            raise wrong("formats", "a non-empty object", formats)
        for fmt, record in formats.items():
            if not isinstance(record, dict) or not isinstance(record.get("artifact"), dict):
                raise wrong(f"formats.{fmt}.artifact", "an object", (record or {}).get("artifact") if isinstance(record, dict) else record)
            _check_artifact(record["artifact"], f"formats.{fmt}.artifact", wrong)
        if manifest["format"] not in formats:
            raise wrong("format", f"one of formats ({', '.join(formats)})", manifest["format"])
    inputs = manifest["model"].get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(
            isinstance(i, dict) and isinstance(i.get("name"), str) and isinstance(i.get("shape"), list)
            and isinstance(i.get("dtype"), str) for i in inputs):
        raise wrong("model.inputs", "a list of {name, shape, dtype}", inputs)
    for key in ("device_runs", "previous_device_runs", "serve_loads"):
        runs = manifest.get(key)
        if runs is not None and (not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs)):
            raise wrong(key, "a list of objects", runs)


def _check_artifact(art: dict, where: str, wrong) -> None:
    for key, typ in _ARTIFACT.items():
        value = art.get(key)
        if not isinstance(value, typ) or isinstance(value, bool):
            raise wrong(f"{where}.{key}", _type_name(typ), value)


def _type_name(typ) -> str:
    return {str: "a string", int: "an integer", dict: "an object", list: "a list"}[typ]


def _kind(value) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {json.dumps(value)[:60]}"


def inside(build_dir: Path, rel: str, entry: str) -> Path:
    """The file `rel` names, provided it stays inside `build_dir` (exit 2 otherwise).

    Refused: an absolute path, a `..` part, and a path whose resolved location (following
    symlinks) is outside the build directory. The build directory's own location may be a
    symlink; what counts is where the file really is relative to it."""
    hint = ("a build directory only names files inside itself: rebuild it with `edgekit build`, and do not "
            "run commands on build directories you do not trust")
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise UsageError(f"{entry} is {rel!r}: a path that leaves the build directory", hint=hint)
    root = Path(build_dir).resolve()
    target = (root / rel).resolve()
    if not target.is_relative_to(root):
        raise UsageError(f"{entry} is {rel!r}, which resolves to {target}, outside the build directory {root} "
                         "(a symlink out of it)", hint=hint)
    return root / rel


# ---------------------------------------------------------------- the lock


_thread_lock = threading.Lock()  # devices of one fleet finish in parallel threads


@contextlib.contextmanager
def manifest_lock(build_dir: Path):
    """One writer of a build's manifest at a time, across threads and processes: a flock on the
    build directory itself (no lock file is left in the build)."""
    with _thread_lock:
        fd = os.open(build_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def update_manifest(build_dir: Path, change) -> dict:
    """Read the manifest on disk, apply `change(doc)` in place, write it back atomically, under the lock."""
    with manifest_lock(build_dir):
        path = Path(build_dir) / MANIFEST
        doc = loads_strict(path.read_text(encoding="utf-8"))
        change(doc)
        write_json_atomic(path, doc)
        return doc
