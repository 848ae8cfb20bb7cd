"""The adb transport and the native-runner path.

FAKES, because no Android phone or emulator can run here:
- `adb` is a small script put first on PATH: `push` copies a file, `shell` runs the
  command string with sh (as adbd does on the phone), `-s` must name its serial.
- `executor_runner` is a shell script that prints ExecuTorch's documented log lines
  (examples/portable/executor_runner/executor_runner.cpp); no model runs.
What is real: edgekit's adb transport, the verified push, chmod, the argv it
builds, the parsing into the runner JSON, and the records in the build dir.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

SERIAL = "FAKE0123"

FAKE_ADB = f"""#!{sys.executable}
import os, shutil, subprocess, sys
args = sys.argv[1:]
serial = None
if args[:1] == ["-s"]:
    serial, args = args[1], args[2:]
if serial not in (None, "{SERIAL}"):
    sys.exit(print(f"adb: device '{{serial}}' not found", file=sys.stderr) or 1)
if args[0] == "push":
    shutil.copyfile(args[1], args[2])
    print(f"{{args[1]}}: 1 file pushed.")
elif args[0] == "shell":
    sys.exit(subprocess.run(["sh", "-c", " ".join(args[1:])]).returncode)
else:
    sys.exit(print(f"adb: unknown command {{args[0]}}", file=sys.stderr) or 1)
"""

FAKE_EXECUTOR_RUNNER = r"""#!/bin/sh
n=1; m=""
for a in "$@"; do case "$a" in --num_executions=*) n=${a#*=};; --model_path=*) m=${a#*=};; esac; done
[ -f "$m" ] || { echo "E 00:00:00.000100 executorch:executor_runner.cpp:250] FileDataLoader::from() failed: 0x22" >&2; exit 1; }
echo "I 00:00:00.001000 executorch:executor_runner.cpp:331] Model loaded in 1.500000 ms." >&2
i=1
while [ "$i" -le "$n" ]; do
  echo "I 00:00:00.002000 executorch:executor_runner.cpp:412] Iteration $i of $n: 0.$((100 + i))000 ms" >&2
  i=$((i + 1))
done
echo "I 00:00:00.003000 executorch:executor_runner.cpp:421] Model executed successfully $n time(s) in 9.900000 ms." >&2
"""


@pytest.fixture
def fake_adb(tmp_path, monkeypatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("adb", FAKE_ADB), ("executor_runner", FAKE_EXECUTOR_RUNNER)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def test_native_runner_over_adb(fake_adb, build_copy, tmp_path, run_cli):
    phone = tmp_path / "phone"
    proc = run_cli("deploy", str(build_copy), "--device", f"adb:{SERIAL}", "--remote-dir", str(phone),
                   "--native-runner", str(fake_adb / "executor_runner"), "--allow-arch-mismatch",
                   "--bench", "--runs", "5", "--warmup", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    [record] = json.loads(proc.stdout)
    bench = record["bench"]
    assert record["transport"] == "adb" and record["runner"] == "executor_runner"
    assert bench["first_ms"] == 0.101 and bench["load_ms"] == 1.5  # iteration 1, then 2 warm-ups dropped
    assert bench["samples_ms"] == [0.104, 0.105, 0.106, 0.107, 0.108] and bench["runs"] == 5
    assert bench["p50"] == 0.106 and bench["threads"] == build_copy_threads(build_copy)
    assert bench["device"]["cores"] == os.cpu_count()  # read with a shell one-liner through adb shell
    on_phone = phone / Path(record["remote_dir"]).name
    assert os.access(on_phone / "executor_runner", os.X_OK) and (on_phone / "model.pte").is_file()
    [entry] = json.loads((build_copy / "manifest.json").read_text())["device_runs"]
    assert entry["transport"] == "adb" and entry["runner"] == "executor_runner" and entry["p50"] == 0.106


def build_copy_threads(build: Path) -> int:
    return json.loads((build / "manifest.json").read_text())["target_profile"]["threads"]


def test_an_unknown_serial_is_a_device_error_with_the_fix(fake_adb, build_copy, tmp_path, run_cli):
    proc = run_cli("deploy", str(build_copy), "--device", "adb:NOPE42", "--remote-dir", str(tmp_path / "phone"))
    assert proc.returncode == 4
    assert "adb cannot find adb:NOPE42" in proc.stderr and "adb devices" in proc.stderr
    [record] = [json.loads(p.read_text()) for p in (build_copy / "device_runs").glob("*.json")]
    assert record["ok"] is False and record["stage"] == "connect"
