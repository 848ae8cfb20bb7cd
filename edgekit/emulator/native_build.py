"""Cross-compile the native ExecuTorch runner and build the instruction-count plugin.

The executorch aarch64 wheel (same version as the host's) carries the runtime's
headers and shared libraries, none of which need torch: the runner is compiled
against them with Debian's g++-aarch64-linux-gnu and shipped with those
libraries beside it (rpath $ORIGIN), about 12 MB in all. The compile
definitions are the ones the wheel's own executorch-config.cmake asks for.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from edgekit.emulator.paths import RUNNER_NAME, EmulatorPaths

SOURCES = Path(__file__).resolve().parent / "native"
# The libraries the runner links: the runtime (with Module and the data
# loaders), the CPU kernels for ops outside the delegate, the quantized kernels
# for quantize/dequantize ops left outside it, the XNNPACK delegate (registered
# by a static initializer, hence --no-as-needed) and its thread pool.
LIBS = ("executorch", "executorch_kernels_optimized", "executorch_kernels_quantized", "executorch_backend_xnnpack",
        "executorch_threadpool")


def sources_digest() -> str:
    """sha256 over the C/C++ sources: a changed source rebuilds the runner and the plugin."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted(SOURCES.glob("*.c*")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def unpack_sdk(wheel: Path, dest: Path) -> Path:
    """Headers and shared libraries out of the executorch aarch64 wheel."""
    shutil.rmtree(dest, ignore_errors=True)
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith("executorch/include/") or (name.startswith("executorch/lib/") and name.endswith(".so")):
                z.extract(name, dest)
    return dest / "executorch"


def build_runner(paths: EmulatorPaths, executorch_version: str, run) -> Path:
    wheels = sorted(paths.wheels.glob(f"executorch-{executorch_version}-*aarch64*.whl"))
    if not wheels:
        raise FileNotFoundError(f"no executorch {executorch_version} aarch64 wheel in {paths.wheels}")
    sdk = unpack_sdk(wheels[0], paths.root / "sdk")
    partial = paths.native.with_name("native.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    run(["aarch64-linux-gnu-g++", "-std=c++17", "-O2", "-DC10_USING_CUSTOM_GENERATED_MACROS", "-DET_EVENT_TRACER_ENABLED",
         f"-DEDGEKIT_ET_VERSION=\"{executorch_version}\"",
         f"-I{sdk / 'include'}", f"-I{sdk / 'include/executorch/runtime/core/portable_type/c10'}",
         str(SOURCES / "et_runner.cpp"), "-o", str(partial / RUNNER_NAME), f"-L{sdk / 'lib'}",
         "-Wl,--no-as-needed", *[f"-l{lib}" for lib in LIBS], "-Wl,--as-needed", "-Wl,-rpath,$ORIGIN"],
        "cross-compile edgekit-et-runner")
    for lib in LIBS:
        shutil.copy2(sdk / "lib" / f"lib{lib}.so", partial / f"lib{lib}.so")
    run(["gcc", "-shared", "-fPIC", "-O2", "-fvisibility=hidden", "-o", str(partial / "insn_count.so"),
         str(SOURCES / "insn_count.c")], "build the qemu instruction-count plugin")
    # The dynamic qemu-aarch64 (the build that loads plugins) runs inside the rootfs
    # next to the plugin, so the counted program sees the guest's own file system.
    shutil.copy2(shutil.which("qemu-aarch64") or "/usr/bin/qemu-aarch64", partial / "qemu-aarch64")
    shutil.rmtree(paths.native, ignore_errors=True)
    partial.rename(paths.native)
    shutil.rmtree(sdk.parent, ignore_errors=True)
    return paths.runner


def runner_files(paths: EmulatorPaths) -> list[Path]:
    """What `deploy` pushes for the native runner: the binary and the libraries beside it."""
    return [paths.runner] + sorted(paths.native.glob("lib*.so"))
