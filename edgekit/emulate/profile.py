"""Per-op profile on the host: which ops take the time, as each runtime measures itself.

    .pte   ExecuTorch ETDump (`_load_for_executorch(enable_etdump=True)`) read by
           `executorch.devtools.Inspector`: XNNPACK's per-operator events inside the delegate
    .onnx  onnxruntime's own profiler (SessionOptions.enable_profiling): per-node kernel time
    .ptl   torch.profiler around the lite interpreter: per aten/quantized op

Host times rank ops; they are not the target's times (see the cost model for that).
Result: a list of {"name", "ms" (mean per inference), "calls"}, slowest first, the
shape the report's per-op table reads.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

TOP = 15
# ExecuTorch events that are containers, not operators.
ET_SKIP = {"DELEGATE_CALL", "Method::execute", "OPERATOR_CALL"}


def profile(artifact: Path, batch: list[np.ndarray], runs: int = 10, threads: int = 1) -> dict:
    suffix = Path(artifact).suffix
    try:
        if suffix == ".pte":
            ops = _pte(Path(artifact), batch, runs, threads)
        elif suffix == ".onnx":
            ops = _onnx(Path(artifact), batch, runs, threads)
        elif suffix == ".ptl":
            ops = _ptl(Path(artifact), batch, runs)
        else:
            return {"ops": [], "why": f"no profiler for {suffix}"}
    except Exception as e:  # a profiler failing must not hide the other checks' results
        return {"ops": [], "why": f"profiling failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    ops.sort(key=lambda o: o["ms"], reverse=True)
    return {"ops": ops[:TOP], "total_ms": round(sum(o["ms"] for o in ops), 4), "runs": runs, "threads": threads}


def _row(name: str, total_ms: float, calls: int, runs: int) -> dict:
    return {"name": name, "ms": round(total_ms / runs, 4), "calls": calls // runs if runs else calls}


def _pte(path: Path, batch, runs: int, threads: int) -> list[dict]:
    import torch
    from executorch.devtools import Inspector
    from executorch.extension.pybindings import portable_lib as pl

    from edgekit.quiet import native_stderr_captured

    inputs = [torch.as_tensor(np.ascontiguousarray(a)) for a in batch]
    with tempfile.TemporaryDirectory(prefix="edgekit-etdump-") as tmp, native_stderr_captured():
        pl._unsafe_reset_threadpool(threads)
        module = pl._load_for_executorch(str(path), enable_etdump=True, debug_buffer_size=0)
        for _ in range(runs):
            module.forward(inputs)
        etdump = Path(tmp) / "run.etdp"
        module.write_etdump_result_to_file(str(etdump))
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Output Buffer not found": we asked for times only
            inspector = Inspector(etdump_path=str(etdump))
    rows = []
    for block in inspector.event_blocks:
        if block.name != "Execute":
            continue
        for event in block.events:
            if event.name in ET_SKIP or event.perf_data is None:
                continue
            raw = list(event.perf_data.raw)
            rows.append({"name": event.name, "ms": round(float(np.mean(raw)), 4), "calls": 1,
                         "delegated": bool(event.is_delegated_op)})
    return rows


def _onnx(path: Path, batch, runs: int, threads: int) -> list[dict]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory(prefix="edgekit-ortprof-") as tmp:
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {i.name: a for i, a in zip(session.get_inputs(), batch)}
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, list] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            node = e["name"][: -len("_kernel_time")]
            name = f"{e.get('args', {}).get('op_name', '?')} {node}"
            t = totals.setdefault(name, [0.0, 0])
            t[0] += e.get("dur", 0) / 1000.0  # us -> ms
            t[1] += 1
    return [_row(name, ms, calls, runs) for name, (ms, calls) in totals.items()]


def _ptl(path: Path, batch, runs: int) -> list[dict]:
    import torch
    from torch.jit.mobile import _load_for_lite_interpreter

    module = _load_for_lite_interpreter(str(path))
    inputs = [torch.as_tensor(np.ascontiguousarray(a)) for a in batch]
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            module(*inputs)
    rows = []
    for avg in prof.key_averages():
        if avg.key.startswith(("aten::", "quantized::")):
            rows.append(_row(avg.key, avg.self_cpu_time_total / 1000.0, avg.count, runs))
    return rows
