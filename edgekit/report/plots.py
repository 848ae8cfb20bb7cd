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


# One color per format, the same in every plot of the page (tab10's first colors, in format order).
SERIES = ("#1f77b4", "#2a9d8f", "#e76f51", "#8e6bbf", "#b8860b", "#5b6775")


def format_colors(formats: list[str]) -> dict:
    return {f: SERIES[i % len(SERIES)] for i, f in enumerate(dict.fromkeys(formats))}


def latency_overview(runs: list[dict], predictions: dict, colors: dict) -> bytes:
    """The p50 of each run on one kind of device (report/html.py splits them: the target, this
    computer, other machines) as bars colored by format, with a p90-p99 whisker; `predictions`:
    format -> the cost model's range on the target, drawn on each of that format's rows (only
    the target's plot is given them: a host run does not test a prediction for a board)."""
    fig, ax = _figure(7.5, 1.0 + 0.5 * max(1, len(runs)))
    values = [r["p50"] for r in runs] + [v for p in predictions.values() for v in (p["low_ms"], p["high_ms"])]
    top = max([r["p99"] or r["p50"] for r in runs] + values) * 1.08
    log = min(values) > 0 and max(values) / min(values) > 20  # a board and a workstation differ by 10-100x
    base = min(values) / 2 if log else 0.0  # bars on a log axis cannot start at 0
    y = list(range(len(runs)))
    shown = set()
    for yi, r in zip(y, runs):
        fmt = r.get("format")
        label = None if fmt in shown else r.get("display_name") or fmt
        shown.add(fmt)
        ax.barh([yi], [r["p50"] - base], left=base, color=colors.get(fmt, COLORS["bar"]), height=0.6, label=label)
        if r.get("p90") is not None and r.get("p99") is not None:
            ax.plot([r["p90"], r["p99"]], [yi, yi], color="#1d2733", linewidth=2.0,
                    label="p90-p99" if yi == 0 else None)
        p = predictions.get(fmt)
        if p:
            ax.fill_betweenx([yi - 0.42, yi + 0.42], p["low_ms"], p["high_ms"], color=colors.get(fmt, COLORS["bar"]),
                             alpha=0.18, linewidth=0, label="predicted range" if "predicted" not in shown else None)
            shown.add("predicted")
    if log:
        ax.set_xscale("log")
    ax.set_xlim(base, top * (1.5 if log else 1.0))
    ax.set_yticks(y, [_label(r) for r in runs], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("latency (ms)" + (", log scale" if log else ""))
    _legend_outside(ax)
    return _png(fig)


def cosine_distribution(quality: list[dict], colors: dict) -> bytes:
    """Per format, the share of samples whose output cosine to float is at least x (from the
    percentiles compare.py keeps): the curve that stays at 100 % longest is closest to float."""
    fig, ax = _figure(7.5, 2.8)
    lowest = 1.0
    for q in quality:
        pts = q.get("cosine_percentiles")
        if not pts:
            continue
        share = [100 - 100 * i / (len(pts) - 1) for i in range(len(pts))]  # pts[i]: the (100 i / (n-1))th percentile
        ax.plot(pts, share, marker=".", color=colors.get(q["format"]), label=q.get("display_name") or q["format"])
        lowest = min(lowest, pts[0])
    ax.set_xlim(max(-1.0, lowest - (1 - lowest) * 0.1 - 1e-4), 1.0 + 1e-4)
    ax.set_ylim(-2, 102)
    ax.set_xlabel("cosine of the artifact's output to float, per sample")
    ax.set_ylabel("samples at or above (%)")
    _legend_outside(ax)
    return _png(fig)


def confusion_matrix(confusion: dict, title: str) -> bytes:
    """compare.py's confusion counts as a heat map, each cell's count written in it."""
    import numpy as np

    counts = np.asarray(confusion["counts"])
    n = len(counts)
    fig, ax = _figure(min(7.5, 1.6 + 0.42 * n), min(7.0, 1.2 + 0.4 * n))
    ax.imshow(counts, cmap="Blues")
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if counts[i, j] > counts.max() / 2 else "#1d2733")
    ax.set_xticks(range(n), range(n), fontsize=7)
    ax.set_yticks(range(n), range(n), fontsize=7)
    ax.set_xlabel("artifact's top-1")
    ax.set_ylabel(confusion["rows"])
    ax.set_title(title, fontsize=9)
    return _png(fig)


def sizes(quality: list[dict]) -> bytes:
    """Float state_dict size vs each artifact's size."""
    fig, ax = _figure(7.5, 0.9 + 0.5 * (len(quality) + 1))
    rows = [("float (state_dict)", quality[0]["float_bytes"] or 0, COLORS["float"])]
    rows += [(q.get("display_name") or q["format"], q["artifact_bytes"] or 0, COLORS["artifact"]) for q in quality]
    y = list(range(len(rows)))
    ax.barh(y, [b / 1024 for _, b, _ in rows], color=[c for _, _, c in rows])
    for yi, (_, b, _) in zip(y, rows):
        ax.text(b / 1024, yi, f" {b / 1024:.1f} KB", va="center", fontsize=8)
    ax.set_yticks(y, [n for n, _, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("size (KB)")
    ax.set_xlim(0, max(b for _, b, _ in rows) / 1024 * 1.25 or 1)
    return _png(fig)


def pareto(results: list[dict], chosen: str | None, reference: float | None, key: str = "predicted_ms",
           label: str = "predicted latency on the target (ms)", quality: str = "agreement") -> bytes:
    """edgekit search's candidates: their `quality` ("agreement" with the unpruned model, or "accuracy" on
    labelled calibration data) vs latency (`key` of each result: measured, emulated instructions or
    predicted; `label` names it), one color per format, marker area by artifact size, the Pareto front
    joined, the chosen one circled; `reference`: the unpruned model's own (a dashed line)."""
    fig, ax = _figure(7.5, 4.0)
    scored = [r for r in results if r.get(quality) is not None and r.get(key) is not None]
    colors = format_colors([r["format"] for r in scored])
    biggest = max((r["bytes"] for r in scored), default=1)
    for fmt, color in colors.items():
        mine = [r for r in scored if r["format"] == fmt]
        ax.scatter([r[key] for r in mine], [r[quality] for r in mine], color=color, alpha=0.8,
                   s=[30 + 170 * r["bytes"] / biggest for r in mine], label=fmt)
        for r in mine:
            ax.annotate(r["id"].replace(f"-{fmt}", "", 1), (r[key], r[quality]),  # the color says the format
                        fontsize=7, textcoords="offset points", xytext=(5, 3))
    front = sorted((r for r in scored if r.get("pareto")), key=lambda r: r[key])
    if front:
        ax.plot([r[key] for r in front], [r[quality] for r in front], color="#1d2733", linewidth=1,
                label="Pareto front")
    best = next((r for r in scored if r["id"] == chosen), None)
    if best:
        ax.scatter([best[key]], [best[quality]], s=320, facecolors="none", edgecolors="#d62728",
                   linewidths=1.6, label="chosen")
    if reference is not None:
        ax.axhline(reference, color=COLORS["float"], linestyle="--", linewidth=1, label="the unpruned model")
    ax.set_xlabel(label)
    ax.set_ylabel("top-1 agreement with the unpruned model (%)" if quality == "agreement"
                  else "accuracy on the labelled calibration data (%)")
    _legend_outside(ax)
    return _png(fig)


def serve_latency(load: dict) -> bytes:
    """One load test of the server: p50/p90/p99 latency per concurrency level, throughput on a second axis."""
    fig, ax = _figure(7.5, 3.2)
    levels = [lv for lv in load["levels"] if lv.get("p50_ms") is not None]
    xs = [lv["concurrency"] for lv in levels]
    for key in ("p50", "p90", "p99"):
        ax.plot(xs, [lv[f"{key}_ms"] for lv in levels], marker="o", color=COLORS[key], label=key)
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("request latency (ms)")
    ax.set_ylim(bottom=0)
    throughput = ax.twinx()
    throughput.plot(xs, [lv["throughput_rps"] for lv in levels], marker="s", linestyle=":", color=COLORS["float"],
                    label="throughput")
    throughput.set_ylabel("answered requests / s")
    throughput.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()
    more = throughput.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize=8)
    ax.set_title(f"{load['url']} ({load['format']}), {load['time']}", fontsize=9)
    return _png(fig)


def decode_rates(bars: list[dict]) -> bytes:
    """A text-generation build's decode tokens/s, one bar per runner (`label`, `rate`, `kind`: "float" or
    "artifact"), each with the memory limit of the machine it ran on marked where known (`limit`). A log
    scale where the limit is far above the rates (a model small enough to live in the caches)."""
    import matplotlib.lines as mlines

    fig, ax = _figure(7.5, 0.9 + 0.42 * len(bars))
    ys = list(range(len(bars)))
    ax.barh(ys, [b["rate"] for b in bars], height=0.6,
            color=[COLORS["float"] if b["kind"] == "float" else COLORS["artifact"] for b in bars])
    for y, b in zip(ys, bars):
        ax.annotate(f"{b['rate']:,.0f}", (b["rate"], y), xytext=(3, 0), textcoords="offset points", va="center",
                    fontsize=8)
        if b.get("limit"):
            ax.plot([b["limit"]] * 2, [y - 0.4, y + 0.4], color=COLORS["p99"], linewidth=2)
    limits = [b["limit"] for b in bars if b.get("limit")]
    rates = [b["rate"] for b in bars if b["rate"] > 0]
    if limits and rates and max(limits) > 20 * min(rates):
        ax.set_xscale("log")
    ax.set_yticks(ys, [b["label"] for b in bars], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("decode tokens/s")
    if limits:
        ax.legend(handles=[mlines.Line2D([], [], color=COLORS["p99"], linewidth=2,
                                         label="memory limit of the machine it ran on")],
                  fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False)  # above: off the marks
    return _png(fig)


def _legend_outside(ax) -> None:
    """Right of the plot: inside it, the legend hides exactly the tail (p90-p99) readers look for."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _label(run: dict) -> str:
    """Which device, which artifact in which runtime at how many threads, when: every bar different."""
    runtime = run.get("runtime") or "?"
    return (f"{run['device']} · {run.get('display_name') or run.get('format') or '?'}\n"
            f"{runtime}, {run.get('threads') or '?'} thr · {(run.get('time') or '')[5:16].replace('T', ' ')}")
