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
