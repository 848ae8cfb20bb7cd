"""Terminal tables for the CLI (rich): the build summary and the target profiles."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table

from edgekit.report.format import judged_on
from edgekit.target import Target


def _console() -> Console:
    return Console()


def print_build_summary(manifest: dict) -> None:
    console = _console()
    if manifest.get("sensitivity"):
        console.print(sensitivity_table(manifest["sensitivity"]))
    console.print(_formats_table(manifest))
    console.print(f"{_judged_on(manifest)} · agree: top-1 agreement with float · cosine: of the outputs, mean "
                  f"over samples · in {manifest['build_dir']}/")
    for record in manifest["formats"].values():
        for failure in record.get("gate", {}).get("failures", []):
            console.print(f"[red]✗[/] {record['artifact']['file']}: {failure}")
    for fmt, why in (manifest.get("skipped_formats") or {}).items():
        console.print(f"– {fmt} skipped: {why['error']}" + (f"\n  fix: {why['hint']}" if why.get("hint") else ""))
    for record in manifest["formats"].values():
        fallback = record.get("fallback")
        if fallback:
            layers = ", ".join(f["layer"] for f in fallback["float_layers"]) or "none"
            verdict = "met" if fallback["met"] else "NOT met"
            console.print(f"{record['format']}: kept float to meet the {fallback['budget_points']:g}-point budget "
                          f"({verdict}): [bold]{layers}[/]")
    for fmt, checks in ((manifest.get("validation") or {}).get("formats") or {}).items():
        console.print(_validation_line(fmt, checks, manifest["target"]))
    if manifest.get("cross_agreement"):
        pairs = ", ".join(f"{k.replace('~', ' vs ')} {v:.2f} %" for k, v in manifest["cross_agreement"].items())
        console.print(f"top-1 agreement between formats: {pairs}")
def _validation_line(fmt: str, checks: dict, target: str) -> str:
    """What the build's lint and cost model say about one artifact."""
    parts = []
    lint = checks.get("lint") or {}
    if lint.get("checked"):
        findings = lint.get("findings") or []
        share = lint.get("macs_fast_share")
        fast = f"{share * 100:.0f} % of MACs on {lint.get('fast_path')}" if share is not None else lint.get("fast_path", "")
        parts.append(f"lint: {len(findings)} finding(s), {fast}" if findings else f"lint: clean, {fast}")
    p = checks.get("prediction")
    if p:
        parts.append(f"predicted on {target}: {p['low_ms']:.3g}–{p['high_ms']:.3g} ms at {p['threads']} threads "
                     f"(cost model, docs/cost_model.md)")
    return f"{fmt}: " + " · ".join(parts) if parts else f"{fmt}: no lint or prediction"


def _judged_on(manifest: dict) -> str:
    m = next(iter(manifest["formats"].values()))["metrics"]
    return judged_on(m.get("data"), m["samples"])


def _formats_table(manifest: dict) -> Table:
    """One row per artifact with the gate's verdict; fits an 80-column terminal."""
    flt = manifest["float"]
    first = next(iter(manifest["formats"].values()))["metrics"]
    labelled = first["accuracy_float"] is not None
    scores = first.get("top1_agreement") is not None
    table = Table(title=f"{manifest['name']} → {manifest['target']} · {manifest['quantization']['scheme']} quantization",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    columns = (["artifact", "runtime", "calib"] + (["acc %"] if labelled else []) + (["agree %"] if scores else [])
               + ["cosine", "size", "×float"])
    for col in columns:
        table.add_column(col, justify="left" if col in ("artifact", "runtime", "calib") else "right",
                         no_wrap=True, min_width=len(col))
    if labelled:
        table.add_row("  float", "torch", "", f"{first['accuracy_float']:.2f}", *([""] if scores else []), "",
                      _kb(flt["bytes"]), "", style="dim")
    for r in manifest["formats"].values():
        m, art, q = r["metrics"], r["artifact"], r["quantization"]
        # ✓: the artifact passed the quality gate; ✗: it did not (the reasons follow the table)
        mark = "[green]✓[/]" if r.get("gate", {}).get("passed", True) else "[red]✗[/]"
        row = [f"{mark} {art['file']}", r["backend"], q.get("calibration") or "-"]
        if labelled:
            row.append(_num(m["accuracy_artifact"]))
        if scores:
            row.append(_num(m["top1_agreement"]))
        row += [_cosine(m.get("cosine")), _kb(art["bytes"]), f"{art['bytes'] / flt['bytes']:.2f}"]
        table.add_row(*row)
    return table


def _cosine(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def sensitivity_table(rows: list[dict]) -> Table:
    table = Table(title="layer sensitivity (each layer quantized alone; most harmful first)")
    for col in ("layer", "type", "output SQNR dB", "agreement", "accuracy drop"):
        table.add_column(col, justify="left" if col in ("layer", "type") else "right")
    for r in rows:
        drop = "" if r["accuracy_drop"] is None else f"{r['accuracy_drop']:.2f}"
        agree = "" if r["top1_agreement"] is None else f"{r['top1_agreement']:.2f} %"
        table.add_row(r["layer"], r["type"], f"{r['output_sqnr_db']:.1f}", agree, drop)
    return table


def print_targets(targets: list[Target]) -> None:
    table = Table(title="target profiles")
    for col in ("name", "cpu", "cores", "GHz", "RAM", "features", "format", "threads", "transport"):
        table.add_column(col, justify="right" if col in ("cores", "GHz", "RAM", "threads") else "left")
    for t in targets:
        table.add_row(t.name, t.cpu, str(t.cores), f"{t.clock_ghz:g}", f"{t.ram_mb} MB", _features(t),
                      t.format, str(t.threads), t.transport)
    _console().print(table)


def print_target(t: Target) -> None:
    table = Table(title=f"{t.name}: {t.description}", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    rows = [
        ("file", str(t.path)), ("arch", t.arch), ("cpu", t.cpu), ("cores", str(t.cores)),
        ("clock", f"{t.clock_ghz:g} GHz"), ("RAM", f"{t.ram_mb} MB"), ("memory bandwidth", f"{t.mem_bandwidth_gbs:g} GB/s"),
        ("ISA features", _features(t)), ("format / backend", f"{t.format} / {t.backend}"), ("threads", str(t.threads)),
        ("transport", t.transport), ("channel rounding", str(t.round_to)), ("emulated as", t.qemu_cpu or "host (no emulation)"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    _console().print(table)


def _features(t: Target) -> str:
    on = [name for name in ("neon", "dotprod", "fp16") if getattr(t.features, name)]
    return ", ".join(on) or "-"


def _kb(n: int) -> str:
    if n >= 10 * 1024 * 1024:
        return f"{n / 1024 / 1024:.1f} MB"
    return f"{n / 1024:.0f} KB" if n >= 10 * 1024 else f"{n / 1024:.1f} KB"
