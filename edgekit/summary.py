"""Terminal tables for the CLI (rich): the build summary and the target profiles."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from edgekit.target import Target


def _console() -> Console:
    return Console()


def print_build_summary(manifest: dict) -> None:
    m = manifest["metrics"]
    art, flt = manifest["artifact"], manifest["float"]
    table = Table(title=f"{manifest['name']} → {manifest['target']} ({manifest['format']}, {manifest['backend']})")
    table.add_column("", style="bold")
    table.add_column("float", justify="right")
    table.add_column("int8 artifact", justify="right")
    if m["accuracy_float"] is not None:
        table.add_row("accuracy (held out)", f"{m['accuracy_float']:.2f} %", f"{m['accuracy_artifact']:.2f} %")
    table.add_row("top-1 agreement", "", f"{m['top1_agreement']:.2f} %")
    table.add_row("max abs error", "", f"{m['max_abs_error']:.4g}")
    table.add_row("size", _kb(flt["bytes"]), f"{_kb(art['bytes'])} ({art['bytes'] / flt['bytes']:.2f}x)")
    table.caption = f"{m['samples']} samples · artifact: {manifest['build_dir']}/{art['file']}"
    _console().print(table)


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
    return f"{n / 1024:.1f} KB"
