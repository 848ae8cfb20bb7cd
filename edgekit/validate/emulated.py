"""The `--emulate` check of `edgekit validate`: glue between validate and edgekit/emulator.

Per artifact: run it on the target's emulated core the way its format does there
(`emulate` in the format's module: the native ExecuTorch runner, the guest's
onnxruntime ...), compare with the host runtime's outputs on the same samples,
and report the guest instruction count of one inference (and, where the format
offers a float baseline, the float model's, as a ratio). Never a time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.emulator import check as emu
from edgekit.formats import get_format
from edgekit.model.data import batches
from edgekit.validate.resources import memory_plan_line


def samples_of(ref, limit: int | None) -> list[list[np.ndarray]]:
    """The first batches of the reference data: the same ones, in the same order, as its artifact_outputs."""

    spec, _, _, data, _ = ref.get()
    out = []
    for b in batches(data, spec.inputs):
        if len(out) >= (limit or emu.DEFAULT_SAMPLES):
            break
        out.append([t.numpy() for t in b])
    return out


def emulate_artifact(core, artifact: Path, fmt_name: str, ref, limit: int | None) -> dict:
    """{ran, cpu, samples, outputs (comparison rows), instructions, float_instructions, failures}."""
    fmt = get_format(fmt_name)
    if not hasattr(fmt, "emulate"):
        return {"ran": False, "cpu": core.qemu_cpu, "failures": [], "why": fmt.EMULATION_UNSUPPORTED}
    spec, model, example, data, _ = ref.get()
    samples = samples_of(ref, limit)
    try:
        emulated, count, doc = fmt.emulate(core, artifact, samples, [s.name for s in spec.inputs])
    except emu.EmulationFailed as e:
        return {"ran": True, "cpu": core.qemu_cpu, "failures": [str(e)]}
    batch = spec.inputs[0].batch
    labels = data.labels[: len(samples) * batch] if data.labels is not None else None
    result = {"ran": True, "cpu": core.qemu_cpu, "samples": len(samples), "runtime": doc.get("runtime"),
              "instructions": count, **emu.compare(ref.artifact_outputs(fmt_name, artifact)[: len(samples)], emulated, labels)}
    if doc.get("planned_memory_bytes") is not None:
        result["planned_memory_bytes"] = doc["planned_memory_bytes"]  # ExecuTorch's planned arena
    if hasattr(fmt, "emulated_baseline"):
        result["float_instructions"] = fmt.emulated_baseline(core, model, example, samples[:1])
    return result


def describe(fmt: str, r: dict) -> list[str]:
    """The lines `validate` prints for one artifact."""
    if not r["ran"]:
        return [f"- {fmt}: not run under emulation ({r['why']})"]
    if r["failures"] and "outputs" not in r:
        return [f"✗ {fmt}: emulated {r['cpu']}: {r['failures'][0]}"]
    first = r["outputs"][0]
    agree = f", top-1 agreement {first['top1_agreement']:.2f} %" if first.get("top1_agreement") is not None else ""
    if first.get("accuracy_emulated") is not None:
        agree += f", accuracy {first['accuracy_emulated']:.2f} % (host {first['accuracy_host']:.2f} %)"
    lines = [f"{'✗' if r['failures'] else '✓'} {fmt}: emulated {r['cpu']} (qemu) vs host on {r['samples']} samples: "
             f"max abs diff {first['max_abs_error']:.3g}{agree}"]
    lines += [f"    {m}" for m in r["failures"]]
    if r.get("instructions"):
        line = f"    {r['instructions'] / 1e6:.3g} M guest instructions per inference at 1 thread"
        if r.get("float_instructions"):
            line += f", {r['instructions'] / r['float_instructions']:.2f}x the float model's"
        lines.append(line + " (relative cost; wall time under emulation is not latency)")
    if r.get("planned_memory_bytes") is not None:
        lines.append("    " + memory_plan_line(r["planned_memory_bytes"]))
    return lines
