"""The `--emulate` check of `edgekit validate`: glue between validate and edgekit/emulator.

Per artifact: run it on the target's emulated core (edgekit/emulator/check.py),
compare with the host runtime's outputs on the same samples, and report the
guest instruction count of one inference (and, for .pte, the float model's,
as a ratio). Never a time.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgekit.emulator import check as emu


def samples_of(ref, limit: int | None) -> list[list[np.ndarray]]:
    """The first batches of the reference data: the same ones, in the same order, as its artifact_outputs."""
    from edgekit.data import batches

    spec, _, _, data, _ = ref.get()
    out = []
    for b in batches(data, spec.inputs):
        if len(out) >= (limit or emu.DEFAULT_SAMPLES):
            break
        out.append([t.numpy() for t in b])
    return out


def emulate_artifact(core, artifact: Path, fmt: str, ref, limit: int | None) -> dict:
    """{ran, cpu, samples, outputs (comparison rows), instructions, float_instructions, failures}."""
    if artifact.suffix not in (".pte", ".onnx"):
        return {"ran": False, "cpu": core.qemu_cpu, "failures": [],
                "why": "the lite interpreter needs torch on the device; no CPU build of torch for aarch64 is available"}
    spec = ref.get()[0]
    samples = samples_of(ref, limit)
    try:
        if artifact.suffix == ".pte":
            emulated, count, doc = emu.run_pte(core, artifact, samples, "artifact")
        else:
            emulated, count, doc = emu.run_onnx(core, artifact, samples, [s.name for s in spec.inputs], "artifact")
    except emu.EmulationFailed as e:
        return {"ran": True, "cpu": core.qemu_cpu, "failures": [str(e)]}
    data = ref.get()[3]
    batch = spec.inputs[0].batch
    labels = data.labels[: len(samples) * batch] if data.labels is not None else None
    result = {"ran": True, "cpu": core.qemu_cpu, "samples": len(samples), "runtime": doc.get("runtime"),
              "instructions": count, **emu.compare(ref.artifact_outputs(fmt, artifact)[: len(samples)], emulated, labels)}
    if artifact.suffix == ".pte":
        result["planned_memory_bytes"] = doc.get("planned_memory_bytes")  # ExecuTorch's planned arena
        result["float_instructions"] = _float_pte_count(core, ref, samples[:1])
    return result


def _float_pte_count(core, ref, one_sample) -> int | None:
    """Instructions of the float model lowered to XNNPACK the same way: the baseline int8 is judged by."""
    from edgekit.backends import executorch_xnnpack

    _, model, example, _, _ = ref.get()
    with tempfile.TemporaryDirectory(prefix="edgekit-float-pte-") as tmp:
        path = Path(tmp) / "float.pte"
        executorch_xnnpack.export(model, example, path)
        try:
            _, count, _ = emu.run_pte(core, path, one_sample, "float")
        except emu.EmulationFailed:
            return None
    return count


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
        from edgekit.emulate.resources import memory_plan_line

        lines.append("    " + memory_plan_line(r["planned_memory_bytes"]))
    return lines
