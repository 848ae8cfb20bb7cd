"""edgekit's int8 artifacts, one row per format.

Each format is built once per run: the `.pte` comes from the `edgekit build
--format executorch` child process whose wall time and memory the cost table
reports (see build_cost.py); the other formats from `edgekit.api.build` in
this process. Both read the same calibration file the hand paths use.
"""

from __future__ import annotations

import json
from pathlib import Path

from measure import Contender, short_error

LABELS = {
    "executorch": "edgekit int8 .pte (ExecuTorch + XNNPACK)",
    "torchscript-lite": "edgekit int8 .ptl (TorchScript Lite + QNNPACK)",
    "onnx": "edgekit int8 .onnx (ONNX Runtime, QDQ)",
}
OTHER_FORMATS = ("torchscript-lite", "onnx")


def executorch(build_dir: Path, cost: dict) -> Contender:
    """The .pte the measured `edgekit build --format executorch` child wrote."""
    return _from_build(build_dir, "executorch", cost.get("error"))


def other_formats(model, calib_path: Path, out: Path) -> list[Contender]:
    """The remaining formats from one `edgekit.api.build` call in this process."""
    try:
        from edgekit import api

        source, options = model.build_args(calib_path)
        api.build(source, "rpi4", api.recipe(formats=OTHER_FORMATS, **options), out=out)
        build_error = None
    except Exception as e:  # noqa: BLE001 - a failed build is a result
        build_error = short_error(e)
    return [_from_build(out, fmt, build_error) for fmt in OTHER_FORMATS]


def _from_build(build_dir: Path, fmt: str, error: str | None) -> Contender:
    contender = Contender(f"edgekit_{fmt}", LABELS[fmt], "edgekit int8")
    if error:
        contender.error = error
        return contender
    manifest = json.loads((build_dir / "manifest.json").read_text())
    record = manifest["formats"][fmt]
    contender.size_bytes = record["artifact"]["bytes"]
    # The shared load step, then this format's own quantize/export/validate steps.
    for step in manifest["steps"]:
        if step["config"].get("format", fmt) == fmt:
            contender.stages[step["stage"]] = step["seconds"]
    validated, accuracy = record["metrics"].get("validated_as"), record["metrics"].get("accuracy_artifact")
    if validated and accuracy is not None:
        # The table's accuracy comes from the timed session; say what edgekit's own check measured.
        contender.note = f"manifest accuracy {accuracy:.2f} % with {validated.split(':')[0]}"
    path = build_dir / record["artifact"]["file"]

    def runner(threads: int):
        from edgekit.formats import get_format

        loaded = get_format(fmt).load(path, threads=threads)
        return lambda x: loaded.run([x])[0]

    contender.runner = runner
    return contender
