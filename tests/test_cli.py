"""The command line itself: fast start, entry points, the targets commands."""

from __future__ import annotations

import subprocess
import sys


def test_help_does_not_import_torch():
    """`edgekit --help` must start fast: no heavy runtime imported just to print help."""
    code = (
        "import sys\n"
        "from edgekit.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "heavy = [m for m in ('torch', 'executorch', 'onnxruntime') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "build" in proc.stdout and "targets" in proc.stdout


def test_python_dash_m_and_version(run_cli):
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert "edgekit" in proc.stdout


def test_console_script_is_installed():
    from pathlib import Path

    script = Path(sys.executable).parent / "edgekit"
    proc = subprocess.run([str(script), "targets", "show", "rpi4"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "cortex-a72" in proc.stdout


def test_targets_lists_every_profile(run_cli):
    proc = run_cli("targets")
    assert proc.returncode == 0, proc.stderr
    for name in ("rpi4", "rpi5", "pi-zero2", "arm64-generic", "android-arm64", "host"):
        assert name in proc.stdout
    assert "cortex-a72" in proc.stdout


def test_targets_show_one(run_cli):
    proc = run_cli("targets", "show", "pi-zero2")
    assert proc.returncode == 0, proc.stderr
    assert "cortex-a53" in proc.stdout and "512 MB" in proc.stdout


def test_targets_show_unknown_is_a_usage_error(run_cli):
    proc = run_cli("targets", "show", "pdp11")
    assert proc.returncode == 2
    assert "unknown target 'pdp11'" in proc.stderr and "rpi4" in proc.stderr


def test_unknown_command_is_a_usage_error(run_cli):
    proc = run_cli("frobnicate")
    assert proc.returncode == 2
    assert "No such command" in proc.stderr


def _piped(*args: str, columns: int = 80, **env) -> subprocess.CompletedProcess:
    """`python -m edgekit ARGS` piped, as a CI log sees it, at `columns` columns."""
    import os

    return subprocess.run([sys.executable, "-m", "edgekit", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": str(columns), **env}, timeout=300)


def test_targets_at_80_columns_cuts_no_name():
    from edgekit.target import list_targets

    proc = _piped("targets")
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout and max(len(line) for line in proc.stdout.splitlines()) <= 80, proc.stdout
    for t in list_targets():
        assert t.name in proc.stdout and t.cpu in proc.stdout and t.format in proc.stdout
    wide = _piped("targets", columns=120).stdout
    assert "transport" in wide and "transport" not in proc.stdout  # the secondary columns come back when they fit


def test_targets_json_has_every_profile_and_field(run_cli):
    import json

    from edgekit.target import list_targets

    proc = run_cli("targets", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [d["name"] for d in doc] == [t.name for t in list_targets()]
    rpi5 = next(d for d in doc if d["name"] == "rpi5")
    assert rpi5["features"]["dotprod"] is True and rpi5["cores"] == 4 and rpi5["path"].endswith("rpi5.toml")
    one = json.loads(run_cli("targets", "show", "rpi5", "--json").stdout)
    assert one == rpi5


def test_global_flags_may_follow_the_command(run_cli):
    from edgekit.cli import hoist_global_flags

    assert hoist_global_flags(["build", "app", "--debug", "-q", "--", "-v"]) == ["--debug", "-q", "build", "app", "--", "-v"]
    proc = run_cli("targets", "show", "pdp11", "--debug")
    assert proc.returncode == 2 and "Traceback" in proc.stderr  # --debug after the command took effect
    assert "Traceback" not in run_cli("targets", "show", "pdp11").stderr


def test_no_color_plain_error_line(monkeypatch):
    import click

    from edgekit import cli

    seen = []
    monkeypatch.setattr(click, "secho", lambda *a, **k: seen.append(k))
    monkeypatch.setenv("NO_COLOR", "1")
    cli._error_line("error: x")
    monkeypatch.delenv("NO_COLOR")
    cli._error_line("error: x")
    assert seen[0]["color"] is False and seen[1]["color"] is None  # None: click colours only a terminal


# What the libraries print on their own when edgekit loads, quantizes, runs and profiles artifacts:
# torchao's optional CUDA kernels, torch's pytree, c10 deprecations, cpuinfo, Kineto's USDT probes.
LIBRARY_NOISE = ("Failed to load", "W1201", "pytree", "Quantizer.cpp", "cpuinfo", "USDT", "profiler_start",
                 "Warning:", "DeprecationWarning", "FutureWarning")


def test_piped_build_and_validate_say_when_each_step_starts_quiet_says_nothing_no_library_noise(digits_app, tmp_path):
    args = ("build", str(digits_app), "--format", "torchscript-lite", "--quality", "fast")
    proc = _piped(*args, "--out", str(tmp_path / "a"))
    assert proc.returncode == 0, proc.stderr
    assert "… quantize static int8" in proc.stderr and "✓ quantize static int8" in proc.stderr
    assert "recommended: ship model.ptl (passes the quality gate; 100 % of MACs on" in " ".join(proc.stdout.split())
    quiet = _piped(*args, "--out", str(tmp_path / "b"), "-q")
    assert quiet.returncode == 0, quiet.stderr
    assert "quantize" not in quiet.stderr and "✓" in quiet.stdout  # the summary table is the result
    validate = _piped("validate", str(tmp_path / "a"))  # loads, runs and profiles the .ptl (Kineto)
    assert validate.returncode == 0, validate.stderr
    for text in (proc, quiet, validate):
        noise = [n for n in LIBRARY_NOISE if n in text.stderr + text.stdout]
        assert not noise, (noise, text.stderr)
