"""The built wheel is what `pip install edgekit` users get: it must carry the target profiles."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _wheel(tmp_path: Path) -> Path:
    out = tmp_path / "dist"
    # No build isolation: the build backend (setuptools) is already in this environment and the
    # tests run without a network.
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(REPO)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = out.glob("edgekit-*.whl")
    return wheel


def test_wheel_carries_the_targets_and_works_from_any_directory(tmp_path):
    wheel = _wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    profiles = {Path(n).stem for n in names if n.startswith("edgekit/targets/") and n.endswith(".toml")}
    assert {"rpi4", "rpi5", "pi-zero2", "arm64-generic", "android-arm64", "host"} <= profiles

    # A fresh venv with the wheel installed; its dependencies (click, rich ...) come from this
    # environment's site-packages through a .pth line. A directory a .pth adds has its own .pth
    # files ignored, so this environment's editable edgekit cannot shadow the wheel's.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                           "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import edgekit; print(edgekit.__file__)"],
                           capture_output=True, text=True, cwd=elsewhere, check=True).stdout
    assert where.startswith(str(site)), where  # the wheel's copy, not the checkout
    proc = subprocess.run([str(venv / "bin" / "edgekit"), "targets", "show", "rpi4"], capture_output=True,
                          text=True, cwd=elsewhere, env={"PATH": "/usr/bin:/bin", "COLUMNS": "300"})
    assert proc.returncode == 0, proc.stderr
    assert "cortex-a72" in proc.stdout and str(site) in proc.stdout  # the profile read from the installed package
