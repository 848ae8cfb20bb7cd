"""Timing and thread control shared by every path in the comparison.

Each path is one `Contender`: how it was built (seconds per stage, artifact
size) and a `runner(threads)` factory that returns `run(x) -> logits`. A path
that fails at any point keeps its row and carries the error instead of numbers.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

Run = Callable[[np.ndarray], np.ndarray]


@dataclass
class Contender:
    key: str  # stable id used in results.json and tests, e.g. "ort_int8_default"
    label: str  # what the row says in RESULTS.md
    group: str  # "float", "int8 by hand" or "edgekit int8"
    runner: Callable[[int], Run] | None = None  # threads -> run(x) -> logits
    size_bytes: int | None = None
    stages: dict[str, float] = field(default_factory=dict)  # build seconds per stage
    error: str | None = None
    note: str | None = None  # e.g. how accuracy was validated


def short_error(e: BaseException) -> str:
    """One line a reader can act on: the type and the first line of the message."""
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0][:240] if lines else ''}".rstrip(": ")


def prepare(key: str, label: str, group: str, build: Callable[[Contender], None]) -> Contender:
    """Run a path's build; an exception becomes the row's error, never a missing row."""
    contender = Contender(key, label, group)
    try:
        build(contender)
    except Exception as e:  # noqa: BLE001 - every failure is a result to report
        contender.error = short_error(e)
        contender.runner = None
    return contender


@contextlib.contextmanager
def stage(contender: Contender, name: str):
    """Record the wall seconds of one build stage on the contender."""
    start = time.perf_counter()
    yield
    contender.stages[name] = round(time.perf_counter() - start, 3)


def interleaved_medians(runners, feed: list, warmup: int, rounds: int, runs: int) -> list[float]:
    """Median ms per call of each runner (`.run(feed)`), timed in interleaved rounds of `runs`
    calls each, so machine noise hits every runner alike."""
    for runner in runners:
        for _ in range(warmup):
            runner.run(feed)
    samples: list[list[float]] = [[] for _ in runners]
    for _ in range(rounds):
        for i, runner in enumerate(runners):
            start = time.perf_counter()
            for _ in range(runs):
                runner.run(feed)
            samples[i].append((time.perf_counter() - start) * 1e3 / runs)
    return [statistics.median(s) for s in samples]


def latency_ms(run: Run, x: np.ndarray, warmup: int, runs: int) -> dict:
    """Median and p90 of `runs` timed calls after `warmup` untimed ones (milliseconds)."""
    for _ in range(warmup):
        run(x)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        run(x)
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    # Nearest-rank p90: with 50 runs, the 45th fastest.
    p90 = samples[max(0, int(np.ceil(0.9 * len(samples))) - 1)]
    return {"median_ms": round(statistics.median(samples), 4), "p90_ms": round(p90, 4), "runs": runs}


def top1_accuracy(run: Run, x: np.ndarray, y: np.ndarray) -> float:
    """Percent of eval samples classified right, one sample per call (the artifacts' static batch)."""
    hits = sum(int(np.argmax(run(x[i : i + 1]))) == int(y[i]) for i in range(len(y)))
    return round(100.0 * hits / len(y), 2)


def set_torch_threads(threads: int) -> None:
    """Eager, torch.compile and the lite interpreter all run on torch's intra-op pool."""
    import torch

    torch.set_num_threads(threads)
