"""Target profiles: the six shipped files load with sane values, and every kind of
mistake in a user's profile is a UsageError naming the file and the key."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from edgekit.errors import EXIT_USAGE, UsageError
from edgekit.target import (
    FORMAT_BACKEND,
    TARGETS_DIR_ENV,
    Features,
    Target,
    list_targets,
    load_target,
    load_target_file,
    target_names,
    targets_dir,
)

SHIPPED = {"rpi4", "rpi5", "pi-zero2", "arm64-generic", "android-arm64", "host"}

# A valid profile; tests change one thing at a time.
BASE = {
    "description": "test board",
    "arch": "aarch64",
    "cpu": "cortex-a72",
    "cores": 4,
    "clock_ghz": 1.5,
    "ram_mb": 1024,
    "mem_bandwidth_gbs": 6.4,
    "format": "executorch",
    "backend": "xnnpack",
    "threads": 4,
    "transport": "ssh",
    "round_to": 8,
    "qemu_cpu": "cortex-a72",
}
BASE_FEATURES = {"neon": True, "dotprod": False, "fp16": False}


@pytest.fixture(autouse=True)
def _shipped_targets_dir(monkeypatch):
    """Tests start from the repository's targets/, whatever the caller's environment says."""
    monkeypatch.delenv(TARGETS_DIR_ENV, raising=False)


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    return str(value)


def write_profile(directory: Path, name: str = "board", drop=(), features=None, **changes) -> Path:
    """Write BASE with `changes` applied and the keys in `drop` left out; return its path."""
    scalars = {k: v for k, v in {**BASE, **changes}.items() if k not in drop}
    lines = [f"{k} = {_toml(v)}" for k, v in scalars.items()]
    if "features" not in drop:
        lines.append("[features]")
        table = {k: v for k, v in (features or BASE_FEATURES).items() if k not in drop}
        lines += [f"{k} = {_toml(v)}" for k, v in table.items()]
    path = directory / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def load_error(path: Path) -> UsageError:
    with pytest.raises(UsageError) as info:
        load_target_file(path)
    assert info.value.exit_code == EXIT_USAGE
    assert f"{path.name}: " in info.value.message  # every file error names the file
    return info.value


# --- the shipped profiles -------------------------------------------------------


def test_shipped_target_names_are_the_six_profiles():
    assert set(target_names()) == SHIPPED
    # the package's own profiles, which `targets/` at the repository top links to
    repo = Path(__file__).resolve().parent.parent
    assert targets_dir() == repo / "edgekit" / "targets" and (repo / "targets").resolve() == targets_dir()


@pytest.mark.parametrize("name", target_names())
def test_each_shipped_target_loads_with_sane_values(name):
    t = load_target(name)
    assert isinstance(t, Target) and t.name == name
    assert t.path == targets_dir() / f"{name}.toml"
    assert t.description.strip()
    assert 1 <= t.threads <= t.cores <= 16
    assert 0.5 <= t.clock_ghz <= 4.0
    assert 256 <= t.ram_mb <= 65536
    assert 1.0 <= t.mem_bandwidth_gbs <= 100.0
    assert t.round_to in (4, 8, 16, 32)
    assert FORMAT_BACKEND[t.format] == t.backend
    if t.arch == "aarch64":
        assert t.features.neon  # mandatory in ARMv8-A
        assert t.qemu_cpu == t.cpu  # every shipped ARM profile emulates its own core
        assert t.transport in ("ssh", "adb")
    else:
        assert t.qemu_cpu is None and t.transport == "local"


def test_list_targets_is_sorted_by_name():
    names = [t.name for t in list_targets()]
    assert names == sorted(SHIPPED)


def test_rpi4_facts():
    t = load_target("rpi4")
    assert (t.cpu, t.cores, t.clock_ghz, t.ram_mb) == ("cortex-a72", 4, 1.8, 4096)
    assert t.features == Features(neon=True, dotprod=False, fp16=False)
    assert t.qemu_cpu == "cortex-a72"


def test_rpi5_has_armv82_features():
    t = load_target("rpi5")
    assert (t.cpu, t.clock_ghz) == ("cortex-a76", 2.4)
    assert t.features.dotprod and t.features.fp16


def test_pi_zero2_is_a53_with_512mb():
    t = load_target("pi-zero2")
    assert (t.cpu, t.ram_mb, t.qemu_cpu) == ("cortex-a53", 512, "cortex-a53")
    assert not t.features.dotprod


def test_android_uses_adb_and_host_is_local_x86():
    assert load_target("android-arm64").transport == "adb"
    host = load_target("host")
    assert (host.arch, host.transport, host.qemu_cpu) == ("x86_64", "local", None)
    assert host.features == Features(neon=False, dotprod=False, fp16=False)


def test_unknown_name_lists_known_targets():
    with pytest.raises(UsageError) as info:
        load_target("xyz")
    assert info.value.message == "unknown target 'xyz'"
    assert info.value.exit_code == EXIT_USAGE
    for name in SHIPPED:
        assert name in info.value.hint


# --- a user's profile, checked ---------------------------------------------------


def test_valid_profile_loads_and_int_is_accepted_for_float(tmp_path):
    t = load_target_file(write_profile(tmp_path, clock_ghz=2))
    assert t.clock_ghz == 2.0 and isinstance(t.clock_ghz, float)
    assert t.name == "board" and t.cores == 4


def test_unknown_key_names_file_and_key_and_lists_allowed(tmp_path):
    err = load_error(write_profile(tmp_path, treads=4))
    assert "unknown key 'treads'" in err.message
    assert "allowed keys:" in err.hint and "threads" in err.hint and "mem_bandwidth_gbs" in err.hint


def test_unknown_feature_key_is_rejected(tmp_path):
    err = load_error(write_profile(tmp_path, features={**BASE_FEATURES, "sve": True}))
    assert "unknown key 'features.sve'" in err.message
    assert "features.dotprod" in err.hint


def test_missing_key_is_named(tmp_path):
    err = load_error(write_profile(tmp_path, drop=("cores",)))
    assert "missing key 'cores'" in err.message


def test_missing_features_table_is_named(tmp_path):
    err = load_error(write_profile(tmp_path, drop=("features",)))
    assert "missing key 'features'" in err.message


def test_missing_feature_flag_is_named(tmp_path):
    err = load_error(write_profile(tmp_path, drop=("fp16",)))
    assert "missing key 'features.fp16'" in err.message


def test_qemu_cpu_is_optional(tmp_path):
    assert load_target_file(write_profile(tmp_path, drop=("qemu_cpu",))).qemu_cpu is None


def test_wrong_type_says_what_was_expected_and_found(tmp_path):
    path = write_profile(tmp_path, cores="four")
    assert load_error(path).message.endswith(f"{path.name}: 'cores' must be an integer, got 'four'")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("cores", True, "'cores' must be an integer, got true"),  # bool is not an int here
        ("ram_mb", 512.5, "'ram_mb' must be an integer, got 512.5"),
        ("clock_ghz", "fast", "'clock_ghz' must be a number, got 'fast'"),
        ("clock_ghz", False, "'clock_ghz' must be a number, got false"),
        ("cpu", 72, "'cpu' must be a string, got 72"),
    ],
)
def test_wrong_types_are_rejected(tmp_path, key, value, expected):
    assert expected in load_error(write_profile(tmp_path, **{key: value})).message


def test_feature_flag_must_be_bool(tmp_path):
    err = load_error(write_profile(tmp_path, features={**BASE_FEATURES, "neon": 1}))
    assert "'features.neon' must be true or false, got 1" in err.message


def test_bad_enum_value_lists_allowed_values(tmp_path):
    err = load_error(write_profile(tmp_path, transport="telnet"))
    assert "'transport' must be one of" in err.message and "'telnet'" in err.message
    for allowed in ("ssh", "adb", "local"):
        assert allowed in err.hint


def test_format_and_backend_must_pair(tmp_path):
    err = load_error(write_profile(tmp_path, format="onnx", backend="xnnpack"))
    assert "format 'onnx' needs backend 'onnxruntime'" in err.message


def test_threads_above_cores_is_rejected(tmp_path):
    err = load_error(write_profile(tmp_path, cores=2, threads=4))
    assert "'threads' (4) must not exceed 'cores' (2)" in err.message


def test_non_positive_quantity_is_rejected(tmp_path):
    err = load_error(write_profile(tmp_path, threads=0))
    assert "'threads' must be greater than 0, got 0" in err.message


def test_x86_target_cannot_name_an_arm_qemu_cpu(tmp_path):
    path = write_profile(tmp_path, arch="x86_64", features={"neon": False, "dotprod": False, "fp16": False})
    assert "'qemu_cpu'" in load_error(path).message


def test_toml_syntax_error_includes_file_and_parser_message(tmp_path):
    path = tmp_path / "broken.toml"
    text = 'description = "unterminated\ncores = 4\n'
    path.write_text(text)
    with pytest.raises(tomllib.TOMLDecodeError) as parser:
        tomllib.loads(text)
    err = load_error(path)
    assert "not valid TOML" in err.message
    assert str(parser.value) in err.message


# --- finding profiles ------------------------------------------------------------


def test_load_by_explicit_path(tmp_path, monkeypatch):
    path = write_profile(tmp_path, name="my-board")
    assert load_target(str(path)).name == "my-board"
    monkeypatch.chdir(tmp_path)  # a bare "x.toml" is a path too, relative to the working directory
    assert load_target("my-board.toml").path == Path("my-board.toml")


def test_missing_explicit_path_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError) as info:
        load_target(str(tmp_path / "nowhere.toml"))
    assert "nowhere.toml: target file not found" in info.value.message


def test_targets_dir_env_override(tmp_path, monkeypatch):
    write_profile(tmp_path, name="lab-board")
    monkeypatch.setenv(TARGETS_DIR_ENV, str(tmp_path))
    assert targets_dir() == tmp_path
    assert target_names() == ["lab-board"]
    assert load_target("lab-board").path == tmp_path / "lab-board.toml"
    with pytest.raises(UsageError) as info:
        load_target("rpi4")  # the shipped profiles are no longer searched
    assert "lab-board" in info.value.hint
