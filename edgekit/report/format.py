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
    return "–" if n is None else f"{n / 1024:.1f} KB"


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
