"""The report's figures as PNG bytes (matplotlib, no display needed).

Figures are built with matplotlib.figure.Figure directly rather than pyplot:
no global state, no GUI backend, safe to call from any thread.
"""

from __future__ import annotations

import io

DPI = 100
COLORS = {"p50": "#1f77b4", "p90": "#ff7f0e", "p99": "#d62728", "bar": "#4c72b0", "float": "#9aa5b1", "artifact": "#2a9d8f"}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    return fig, fig.add_subplot(1, 1, 1)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def latency_distribution(run: dict) -> bytes:
    """Histogram of one run's per-inference times, with p50/p90/p99 marked."""
    fig, ax = _figure(7.5, 2.8)
    samples = run["samples_ms"]
    ax.hist(samples, bins=min(40, max(5, len(samples) // 3)), color=COLORS["bar"], alpha=0.85)
    for key in ("p50", "p90", "p99"):
        if run.get(key) is not None:
            ax.axvline(run[key], color=COLORS[key], linestyle="--", linewidth=1.4, label=f"{key} {run[key]:.3g} ms")
    ax.set_xlabel("latency per inference (ms)")
    ax.set_ylabel("runs")
    title = f"{run['device']}: {run.get('runtime') or '?'}, {run.get('threads')} threads, {len(samples)} runs"
    if run.get("emulated"):
        title += "  (EMULATED: not latency)"
    elif run.get("host"):
        title += "  (this computer, not the target)"
    elif run.get("arch_mismatch"):
        title += f"  (on {run.get('machine')}, not the target)"
    ax.set_title(title, fontsize=10)
    _legend_outside(ax)
    return _png(fig)


def latency_overview(runs: list[dict], prediction: dict | None) -> bytes:
    """p50 per run as bars with a p90-p99 whisker; the predicted range as a band.

    Emulated runs are left out: their times are hundreds of times slower and not
    latency; they would also flatten every real bar to nothing."""
    measured = [r for r in runs if r.get("p50") is not None and not r.get("emulated")]
    fig, ax = _figure(7.5, 0.9 + 0.45 * max(1, len(measured)))
    values = [r["p50"] for r in measured] + ([prediction["low_ms"], prediction["high_ms"]] if prediction else [])
    top = max([r["p99"] or r["p50"] for r in measured] + values) * 1.08
    log = min(values) > 0 and max(values) / min(values) > 20  # a board and a workstation differ by 10-100x
    base = min(values) / 2 if log else 0.0  # bars on a log axis cannot start at 0
    y = list(range(len(measured)))
    ax.barh(y, [r["p50"] - base for r in measured], left=base, color=COLORS["bar"], label="p50")
    for yi, r in zip(y, measured):
        if r.get("p90") is not None and r.get("p99") is not None:
            ax.plot([r["p90"], r["p99"]], [yi, yi], color=COLORS["p99"], linewidth=2.5,
                    label="p90-p99" if yi == 0 else None)
    if prediction:
        ax.axvspan(prediction["low_ms"], prediction["high_ms"], color="#f4a261", alpha=0.3,
                   label=f"predicted on {prediction['target']}")
    if log:
        ax.set_xscale("log")
    ax.set_xlim(base, top * (1.5 if log else 1.0))
    ax.set_yticks(y, [_label(r) for r in measured], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("latency (ms)" + (", log scale" if log else ""))
    _legend_outside(ax)
    return _png(fig)


def sizes(quality: list[dict]) -> bytes:
    """Float state_dict size vs each artifact's size."""
    fig, ax = _figure(7.5, 0.9 + 0.5 * (len(quality) + 1))
    rows = [("float (state_dict)", quality[0]["float_bytes"] or 0, COLORS["float"])]
    rows += [(f"{q['format']} ({q['file']})", q["artifact_bytes"] or 0, COLORS["artifact"]) for q in quality]
    y = list(range(len(rows)))
    ax.barh(y, [b / 1024 for _, b, _ in rows], color=[c for _, _, c in rows])
    for yi, (_, b, _) in zip(y, rows):
        ax.text(b / 1024, yi, f" {b / 1024:.1f} KB", va="center", fontsize=8)
    ax.set_yticks(y, [n for n, _, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("size (KB)")
    ax.set_xlim(0, max(b for _, b, _ in rows) / 1024 * 1.25 or 1)
    return _png(fig)


def _legend_outside(ax) -> None:
    """Right of the plot: inside it, the legend hides exactly the tail (p90-p99) readers look for."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _label(run: dict) -> str:
    tag = " [emulated]" if run.get("emulated") else " [host]" if run.get("host") else " [not target arch]" if run.get("arch_mismatch") else ""
    return f"{run['device']}{tag}\n{(run.get('time') or '')[:16]}"
