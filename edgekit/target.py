"""Target profiles: one TOML file per device in `targets/`, loaded and checked here.

A target says what the device is (cpu, cores, clock, RAM, memory bandwidth, ISA
features) and how edgekit should serve it (format + backend, threads, transport,
channel rounding for pruning, the QEMU core that emulates it). Adding a board is
adding a file; nothing in the code lists boards.

Validation is strict on purpose: a typo such as `treads = 4` silently falling
back to a default would give a build tuned for the wrong device, so unknown keys,
missing keys and wrong types are all errors that name the file, the key and the
fix. Stdlib only: this module is imported by `edgekit --help` paths and by tools
that must not pay for a torch import.
"""

from __future__ import annotations

import dataclasses

import difflib
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import UsageError

TARGETS_DIR_ENV = "EDGEKIT_TARGETS_DIR"

# Each export format is served by exactly one backend; a mismatched pair would
# produce an artifact the device runtime cannot execute.
FORMAT_BACKEND = {
    "executorch": "xnnpack",
    "torchscript-lite": "qnnpack",
    "onnx": "onnxruntime",
}

# Closed sets of values. qemu_cpu lists the QEMU -cpu models that match cores
# found on the boards we support (qemu's default `max` enables SVE/SME paths no
# Pi has, so the harness must pin a real core).
ALLOWED_VALUES: dict[str, tuple[str, ...]] = {
    "arch": ("aarch64", "x86_64"),
    "format": tuple(FORMAT_BACKEND),
    "backend": tuple(FORMAT_BACKEND.values()),
    "transport": ("ssh", "adb", "local"),
    "qemu_cpu": ("cortex-a53", "cortex-a57", "cortex-a72", "cortex-a76"),
}

# Top-level scalar keys and their TOML types (float accepts integers too).
SCALAR_KEYS: dict[str, type] = {
    "description": str,
    "arch": str,
    "cpu": str,
    "cores": int,
    "clock_ghz": float,
    "ram_mb": int,
    "mem_bandwidth_gbs": float,
    "format": str,
    "backend": str,
    "threads": int,
    "transport": str,
    "round_to": int,
    "qemu_cpu": str,
}
OPTIONAL_KEYS = frozenset({"qemu_cpu"})
FEATURE_KEYS = ("neon", "dotprod", "fp16")
ALLOWED_KEYS = (*SCALAR_KEYS, "features")

# Quantities that are physically meaningless at zero or below.
POSITIVE_KEYS = ("cores", "clock_ghz", "ram_mb", "mem_bandwidth_gbs", "round_to", "threads")

_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


@dataclass(frozen=True)
class Features:
    """ARM ISA extensions that decide which kernels the runtime can use."""

    neon: bool  # Advanced SIMD: baseline for every ARMv8-A core
    dotprod: bool  # SDOT/UDOT (ARMv8.2+ optional, v8.4 mandatory): fast int8 GEMM
    fp16: bool  # half-precision arithmetic (ARMv8.2 FEAT_FP16)


@dataclass(frozen=True)
class Target:
    """One device profile, validated; see `targets/*.toml` for the sources of each value."""

    name: str  # file stem: what `--target` accepts
    path: Path
    description: str
    arch: str
    cpu: str
    cores: int
    clock_ghz: float
    ram_mb: int
    mem_bandwidth_gbs: float
    format: str
    backend: str
    threads: int
    transport: str
    round_to: int  # pruning keeps channel counts a multiple of this
    qemu_cpu: str | None  # QEMU -cpu model for on-host emulation; None = run on the host
    features: Features

    def to_json(self) -> dict:
        """The profile as `edgekit targets --json` prints it (the path as a string)."""
        doc = dataclasses.asdict(self)
        doc["path"] = str(self.path)
        return doc


def decode_limit_at(bandwidth_gbs: float, bytes_per_token: int) -> float:
    """Decode tokens/s at most, at `bandwidth_gbs` (GB/s, 1e9 bytes) reading `bytes_per_token` per token: a
    profile's peak (validate/cost.py decode_limit) or the read bandwidth measured on the machine a run ran on
    (runtime/runner.py memory_read_bandwidth)."""
    return round(bandwidth_gbs * 1e9 / bytes_per_token, 1)


def targets_dir() -> Path:
    """The directory of target profiles: the package's own (`edgekit/targets`, linked as `targets/`
    at the repository top), or $EDGEKIT_TARGETS_DIR.

    The override lets users keep their own boards outside the tree and lets
    tests use a scratch directory.
    """
    override = os.environ.get(TARGETS_DIR_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parent / "targets"


def target_names() -> list[str]:
    """Names accepted by `--target`, sorted."""
    directory = targets_dir()
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob("*.toml"))


def list_targets() -> list[Target]:
    """Every profile in `targets_dir()`, loaded and validated, sorted by name."""
    return [load_target_file(targets_dir() / f"{name}.toml") for name in target_names()]


def load_target(name_or_path: str) -> Target:
    """Load a target by name ("rpi4") or by file path ("boards/mine.toml").

    Anything ending in `.toml` or containing a path separator is a path, so a
    user's own profile never needs to live in `targets/`.
    """
    if _looks_like_path(name_or_path):
        return load_target_file(Path(name_or_path))
    path = targets_dir() / f"{name_or_path}.toml"
    if not path.is_file():
        raise UsageError(f"unknown target {name_or_path!r}", hint=_known_targets_hint())
    return load_target_file(path)


def load_target_file(path: Path) -> Target:
    """Read, parse and validate one profile file; every problem is a UsageError naming the file."""
    path = Path(path)
    where = _display(path)
    data = _read_toml(path, where)
    _check_keys(data, ALLOWED_KEYS, "", where, required=set(ALLOWED_KEYS) - OPTIONAL_KEYS)
    values = {key: _check_scalar(data, key, where) for key in SCALAR_KEYS}
    features = _check_features(data["features"], where)
    _check_consistency(values, features, where)
    return Target(name=path.stem, path=path, features=features, **values)


# --- helpers -----------------------------------------------------------------


def _looks_like_path(text: str) -> bool:
    separators = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    return text.endswith(".toml") or any(sep in text for sep in separators)


def _known_targets_hint() -> str:
    names = target_names()
    if not names:
        return f"no target files found in {targets_dir()}; pass a path to a .toml profile"
    return "choose one of: " + ", ".join(names) + " (or pass a path to a .toml profile)"


def _display(path: Path) -> str:
    """Path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _read_toml(path: Path, where: str) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"{where}: target file not found", hint=_known_targets_hint()) from None
    except OSError as e:
        raise UsageError(f"{where}: cannot read target file: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{where}: not valid TOML: {e}", hint="fix the syntax at the position shown") from None
    except UnicodeDecodeError:
        raise UsageError(f"{where}: not valid TOML: the file is not UTF-8 text") from None


def _check_keys(table: dict, allowed: tuple[str, ...], prefix: str, where: str, required: set[str]) -> None:
    """Unknown keys first (a typo explains the 'missing' key that follows), then missing ones."""
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            guess = f"did you mean {prefix}{close[0]!r}? " if close else ""
            raise UsageError(
                f"{where}: unknown key {prefix + key!r}",
                hint=f"{guess}allowed keys: " + ", ".join(prefix + k for k in allowed),
            )
    for key in allowed:
        if key in required and key not in table:
            raise UsageError(f"{where}: missing key {prefix + key!r}", hint=f"add `{key} = ...` to the file")


def _check_scalar(data: dict, key: str, where: str) -> Any:
    if key not in data:  # only optional keys get here (required ones were checked)
        return None
    value = _check_type(data[key], SCALAR_KEYS[key], key, where)
    allowed = ALLOWED_VALUES.get(key)
    if allowed and value not in allowed:
        raise UsageError(
            f"{where}: {key!r} must be one of {', '.join(allowed)}, got {value!r}",
            hint=f"set {key} to one of: " + ", ".join(allowed),
        )
    if isinstance(value, str) and not value.strip():
        raise UsageError(f"{where}: {key!r} must not be empty")
    if key in POSITIVE_KEYS and value <= 0:
        raise UsageError(f"{where}: {key!r} must be greater than 0, got {value}")
    return value


def _check_type(value: Any, kind: type, key: str, where: str) -> Any:
    """Strict TOML typing; bool is rejected for numbers even though Python treats it as an int."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is float and is_number:
        return float(value)  # `clock_ghz = 2` is a fine way to write 2.0
    if kind is int and is_number and isinstance(value, int):
        return value
    if kind in (str, bool) and isinstance(value, kind):
        return value
    raise UsageError(f"{where}: {key!r} must be {_TYPE_WORDS[kind]}, got {_show(value)}")


def _show(value: Any) -> str:
    """A value as it looked in the TOML file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _check_features(table: Any, where: str) -> Features:
    if not isinstance(table, dict):
        raise UsageError(
            f"{where}: 'features' must be a table, got {_show(table)}",
            hint="write it as a [features] section with neon, dotprod and fp16",
        )
    _check_keys(table, FEATURE_KEYS, "features.", where, required=set(FEATURE_KEYS))
    return Features(**{k: _check_type(table[k], bool, f"features.{k}", where) for k in FEATURE_KEYS})


def _check_consistency(values: dict[str, Any], features: Features, where: str) -> None:
    """Rules that span keys: each one would otherwise fail much later, on the device."""
    expected = FORMAT_BACKEND[values["format"]]
    if values["backend"] != expected:
        raise UsageError(
            f"{where}: format {values['format']!r} needs backend {expected!r}, got {values['backend']!r}",
            hint="pairs: " + ", ".join(f"{f} -> {b}" for f, b in FORMAT_BACKEND.items()),
        )
    if values["threads"] > values["cores"]:
        raise UsageError(
            f"{where}: 'threads' ({values['threads']}) must not exceed 'cores' ({values['cores']})",
            hint="more threads than cores only adds contention; set threads between 1 and cores",
        )
    if values["arch"] == "x86_64":
        if values["qemu_cpu"] is not None:
            raise UsageError(
                f"{where}: 'qemu_cpu' names an ARM core but arch is 'x86_64'",
                hint="remove qemu_cpu for an x86_64 target (it runs on the host)",
            )
        if features.neon or features.dotprod or features.fp16:
            raise UsageError(
                f"{where}: 'features' are ARM ISA extensions and must all be false for arch 'x86_64'",
            )
