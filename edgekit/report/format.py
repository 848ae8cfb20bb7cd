"""Number formatting and run flags shared by the terminal table and the HTML page."""

from __future__ import annotations


def ms(value) -> str:
    """Milliseconds with precision that suits the size: 0.080, 4.21, 17.3, 250."""
    if value is None:
        return "–"
    for limit, fmt in ((100, ".0f"), (10, ".1f"), (1, ".2f")):
        if value >= limit:
            return format(value, fmt)
    return format(value, ".3f")


def pct(value) -> str:
    return "–" if value is None else f"{value:.2f} %"


def bytes_kb(n) -> str:
    """KB below 10 MB, MB above: a 90 MB encoder reads as 86.6 MB, not 88662.3 KB."""
    if n is None:
        return "–"
    return f"{n / 1024:.1f} KB" if n < 10 * 1024 * 1024 else f"{n / 1024 / 1024:.1f} MB"


def cosine(value) -> str:
    return "–" if value is None else f"{value:.4f}"


def verdict(passed) -> str:
    """The quality gate's verdict on an artifact; None: built before edgekit had the gate."""
    return {True: "✓ passed", False: "✗ failed", None: "not judged"}[passed]


def judged_on(data: dict | None, samples) -> str:
    """What the artifacts were compared with float on, said plainly."""
    data = data or {}
    if not data.get("held_out", True):
        return f"{samples} calibration samples (not held out: no --eval data)"
    return f"{samples} held-out samples" + ("" if data.get("labels", True) else " (no labels)")


def run_kind(run: dict) -> str:
    """"target", "host" (this computer), "other" (a machine of another architecture) or "emulated":
    only a run on the target's own kind of CPU tests a latency prediction."""
    if run.get("emulated"):
        return "emulated"
    return "host" if run.get("host") else "other" if run.get("arch_mismatch") else "target"


def run_flags(run: dict) -> list[str]:
    """What a reader must know before trusting a run's numbers as the target's latency."""
    flags = []
    if run.get("emulated"):
        flags.append("emulated: not latency")
    if run.get("host"):
        flags.append("host")
    elif run.get("arch_mismatch"):
        flags.append(f"not target arch ({run.get('machine')})")
    if run.get("threads_applied") is False:
        flags.append("thread count not applied")
    if not run.get("benchmarked", True):
        flags.append("deploy check only")
    return flags
