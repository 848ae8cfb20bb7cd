"""`edgekit validate BUILD --emulate`: the artifact on the target's emulated ARM core.

For each artifact the build has:

- `.pte` runs in edgekit-et-runner (the native ExecuTorch runner a Linux board
  gets); `.onnx` and `.tflite` under the guest's python with the device runner's
  own runtime classes (onnxruntime, ai-edge-litert); all with QEMU_CPU
  and a /proc/cpuinfo matching the target (cortex-a72 for rpi4, ...), so that
  XNNPACK and MLAS take the code paths that core takes;
- its outputs on the evaluation samples are compared with the same artifact run
  by the host's runtime: the ARM kernels must compute what the host computed;
- one more inference runs between two marker syscalls under the dynamic
  qemu-aarch64 with the insn_count plugin: the guest instructions it executed,
  at one thread. For a `.pte`, a float `.pte` of the same model is counted too,
  so the result can say what int8 saves on that core. Wall time under
  emulation is 250-550x slower than a board and noisy: it is never reported.

`.ptl` cannot run there: the lite interpreter needs torch, and the only aarch64
torch build is the multi-GB CUDA one. Such an artifact is reported as not run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from edgekit.compare import GATES, compare_runs
from edgekit.emulator.chroot import Guest
from edgekit.emulator.cpus import cpuinfo_text
from edgekit.emulator.paths import VENV, EmulatorPaths
from edgekit.emulator.setup import require_ready
from edgekit.errors import UsageError
from edgekit.runtime import RUNNER_PATH, last_json

GUEST_PREDICT = Path(__file__).resolve().parent / "guest_predict.py"
GUEST_GENERATE = Path(__file__).resolve().parent / "guest_generate.py"
DEFAULT_SAMPLES = 32  # emulated inference is slow: enough to catch a wrong kernel, not a full accuracy run
TIMEOUT = 900.0  # seconds for one guest command (a MobileNetV2 under qemu takes ~1 s per inference)
# qemu-aarch64 (dynamic, the build that loads plugins) is an x86 program: inside the
# rootfs it needs the host's x86 libraries and loader, which do not clash with arm64 paths.
X86_LIBS = ((Path("/usr/lib/x86_64-linux-gnu"), "/usr/lib/x86_64-linux-gnu"), (Path("/usr/lib64"), "/lib64"))
NATIVE, WORK = "/mnt/edgekit/native", "/mnt/edgekit/work"


def qemu_cpu_of(target) -> str:
    if not target.qemu_cpu:
        raise UsageError(f"--emulate: target {target.name} is {target.arch}, not an ARM core qemu can emulate",
                         hint="judge against an ARM target, e.g. --target rpi4")
    return target.qemu_cpu


class EmulatedCore:
    """One emulated core of the target: a Guest with the native tools and a work dir mounted."""

    def __init__(self, paths: EmulatorPaths, qemu_cpu: str, work: Path):
        self.paths, self.qemu_cpu, self.work = paths, qemu_cpu, work
        cpuinfo = work / "cpuinfo"
        # As many processors as the host has online: the guest's threads run on those.
        cpuinfo.write_text(cpuinfo_text(qemu_cpu, os.cpu_count() or 1))
        self.guest = Guest(paths.rootfs, qemu_cpu, cpuinfo, scratch=True,
                           binds=((paths.native, NATIVE), (work, WORK), *X86_LIBS))

    def counted(self, command: list[str], name: str) -> tuple[dict | str, int | None]:
        """Run `command` (guest paths) under the plugin-loading qemu; its stdout and the count."""
        out = f"{WORK}/{name}.count"
        qemu = [f"{NATIVE}/qemu-aarch64", "-cpu", self.qemu_cpu, "-plugin", f"{NATIVE}/insn_count.so,out={out}"]
        try:
            done = self.guest.run(qemu + command, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            raise EmulationFailed(f"{Path(command[0]).name} did not finish within {TIMEOUT:g} s under qemu "
                                  f"({self.qemu_cpu})") from None
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-6:])
            raise EmulationFailed(f"{Path(command[0]).name} failed under qemu ({self.qemu_cpu}), exit status "
                                  f"{done.returncode}: {tail}")
        count_file = self.work / f"{name}.count"
        count = int(count_file.read_text()) if count_file.is_file() else None
        return done.stdout, count


class EmulationFailed(Exception):
    pass


@contextmanager
def emulated_core(target):
    cpu = qemu_cpu_of(target)  # a target qemu cannot emulate is refused first, built emulator or not
    paths = EmulatorPaths.default()
    require_ready(paths)
    with tempfile.TemporaryDirectory(prefix="edgekit-emulate-") as tmp:
        yield EmulatedCore(paths, cpu, Path(tmp))


def run_native_pte(core: EmulatedCore, artifact: Path, samples: list[list[np.ndarray]], name: str) -> tuple[list[list[np.ndarray]], int | None, dict]:
    """An ExecuTorch program in edgekit-et-runner (native, no torch): (outputs per sample, guest instructions, JSON)."""
    shutil.copy2(artifact, core.work / f"{name}.pte")
    with open(core.work / f"{name}.in", "wb") as f:
        for sample in samples:
            for array in sample:
                f.write(np.ascontiguousarray(array).tobytes())
    stdout, count = core.counted([f"{NATIVE}/edgekit-et-runner", f"{WORK}/{name}.pte", "--inputs", f"{WORK}/{name}.in",
                                  "--outputs", f"{WORK}/{name}.out", "--runs", "1", "--warmup", "0", "--count"], name)
    doc = last_json(stdout)
    if doc is None:
        raise EmulationFailed("the emulated runner printed no JSON result")
    raw = (core.work / f"{name}.out").read_bytes()
    specs = [(tuple(o["shape"]), np.dtype(o["dtype"])) for o in doc["outputs"]]
    per_sample = sum(int(np.prod(s)) * d.itemsize for s, d in specs)
    if per_sample * len(samples) != len(raw):
        raise EmulationFailed(f"the emulated runner wrote {len(raw)} output bytes for {len(samples)} samples, "
                              f"expected {per_sample * len(samples)}")
    outputs, offset = [], 0
    for _ in samples:
        row = []
        for shape, dtype in specs:
            n = int(np.prod(shape)) * dtype.itemsize
            row.append(np.frombuffer(raw[offset:offset + n], dtype=dtype).reshape(shape))
            offset += n
        outputs.append(row)
    return outputs, count, doc


def generate_native_pte(core: EmulatedCore, artifact: Path, prompt_ids, new_tokens: int, max_seq_len: int,
                        eos_id: int | None = None) -> tuple[dict, int | None]:
    """A text-generation `.pte` generating greedily in edgekit-et-runner (`--generate`): (its JSON, the guest
    instructions of the decode calls, every token after the first)."""
    shutil.copy2(artifact, core.work / "decoder.pte")
    command = [f"{NATIVE}/edgekit-et-runner", f"{WORK}/decoder.pte", "--generate", str(new_tokens),
               "--prompt-ids", f"{WORK}/prompt.ids", "--max-seq-len", str(max_seq_len), "--count"]
    return _generate_in_guest(core, command, prompt_ids, eos_id, "the emulated runner")


def generate_in_guest_python(core: EmulatedCore, files: list[Path], prompt_ids, new_tokens: int, max_seq_len: int,
                             eos_id: int | None = None) -> tuple[dict, int | None]:
    """A text-generation `.onnx` (files[0], with the files it reads beside it) generating greedily in the
    guest venv's onnxruntime (guest_generate.py): (its JSON, the guest instructions of the decode calls)."""
    for f in files:
        shutil.copy2(f, core.work / f.name)
    shutil.copy2(GUEST_GENERATE, core.work / "guest_generate.py")
    shutil.copy2(RUNNER_PATH, core.work / "runner.py")
    command = [f"{VENV}/bin/python", f"{WORK}/guest_generate.py", f"{WORK}/{files[0].name}", f"{WORK}/prompt.ids",
               str(new_tokens), "--count"]
    return _generate_in_guest(core, command, prompt_ids, eos_id, "the guest's onnxruntime")


def _generate_in_guest(core: EmulatedCore, command: list[str], prompt_ids, eos_id: int | None,
                       what: str) -> tuple[dict, int | None]:
    """Both generation commands read the prompt from WORK/prompt.ids, take --eos, and print one JSON object."""
    np.asarray(prompt_ids, dtype="<i8").tofile(core.work / "prompt.ids")
    if eos_id is not None:
        command = [*command, "--eos", str(eos_id)]
    stdout, count = core.counted(command, "decoder")
    doc = last_json(stdout)
    if doc is None or not doc.get("ok"):
        raise EmulationFailed(f"{what} did not generate: {(doc or {}).get('error', 'no JSON result')}")
    return doc, count


def run_in_guest_python(core: EmulatedCore, artifact: Path, samples: list[list[np.ndarray]], names: list[str],
                        name: str, runtime: str):
    """An artifact in the guest venv's python with the device runner's `runtime` (onnxruntime, litert):
    (outputs per sample, guest instructions, JSON)."""
    guest_file = f"{name}{artifact.suffix}"
    shutil.copy2(artifact, core.work / guest_file)
    shutil.copy2(GUEST_PREDICT, core.work / "guest_predict.py")
    shutil.copy2(RUNNER_PATH, core.work / "runner.py")
    # np.savez keeps the order given: the inputs reach the runtime in the model's order
    np.savez(core.work / f"{name}-in.npz", **{n: np.stack([s[i] for s in samples]) for i, n in enumerate(names)})
    _, count = core.counted([f"{VENV}/bin/python", f"{WORK}/guest_predict.py", runtime, f"{WORK}/{guest_file}",
                             f"{WORK}/{name}-in.npz", f"{WORK}/{name}-out.npz", "--count"], name)
    with np.load(core.work / f"{name}-out.npz") as z:
        stacked = [z[f"out{j}"] for j in range(len(z.files))]
    return [[o[k] for o in stacked] for k in range(len(samples))], count, {"runtime": {"name": f"{runtime} (guest)"}}


def compare(host: list[list[np.ndarray]], emulated: list[list[np.ndarray]], labels=None) -> dict:
    """Emulated ARM run vs host run of the same artifact, per output over all samples (compare.GATES["emulated"]).

    With `labels`, each row also has the accuracy of both runs."""

    result = compare_runs(host, emulated, GATES["emulated"], "emulated", labels)
    for row in result["outputs"]:
        row["accuracy_host"], row["accuracy_emulated"] = row.pop("accuracy_float"), row.pop("accuracy_artifact")
    return {"outputs": result["outputs"], "failures": result["failures"]}
