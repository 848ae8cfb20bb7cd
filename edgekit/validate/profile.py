"""Per-op profile on the host: which ops take the time, as each runtime measures itself.

Each format profiles with its runtime's own tool (`profile` in its module: ExecuTorch
ETDump + Inspector, onnxruntime's profiler, torch.profiler around the lite
interpreter). Host times rank ops; they are not the target's times (see the cost
model for that). Result: {"ops": [{"name", "ms" (mean per inference), "calls"}],
slowest first, "total_ms", "runs", "threads"}, the shape the report's per-op table reads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.formats import for_artifact

TOP = 15


def profile(artifact: Path, batch: list[np.ndarray], runs: int = 10, threads: int = 1) -> dict:
    fmt = for_artifact(artifact)
    try:
        ops = fmt.profile(Path(artifact), batch, runs, threads)
    except NotImplementedError as e:
        return {"ops": [], "why": str(e)}
    except Exception as e:  # a profiler failing must not hide the other checks' results
        return {"ops": [], "why": f"profiling failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    ops.sort(key=lambda o: o["ms"], reverse=True)
    return {"ops": ops[:TOP], "total_ms": round(sum(o["ms"] for o in ops), 4), "runs": runs, "threads": threads}
