"""Terminal tables (rich): device run results, and the report summary."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from edgekit.report.format import bytes_kb, cosine, judged_on, ms, pct, run_flags, verdict


def print_runs(records: list[dict], console: Console | None = None) -> None:
    """One row per device of a deploy/bench: its latency, or what failed and the fix."""
    console = console or Console()
    table = Table(title="device runs")
    for col in ("device", "status", "runtime", "threads", "load", "first", "p50", "p90", "p99", "runs", "notes"):
        table.add_column(col, justify="right" if col in ("threads", "load", "first", "p50", "p90", "p99", "runs") else "left")
    for r in records:
        result = r.get("bench") or r.get("check") or {}
        runtime = result.get("runtime") or {}
        if r["ok"]:
            status = "[green]ok[/]"
            notes = "; ".join(r.get("warnings") or [])
            if r["transport"] == "local":
                notes = notes or "this computer, not the target"
            elif (r.get("arch") or {}).get("mismatch"):
                notes = "; ".join(filter(None, [notes, f"not the target's arch ({r['arch']['device']})"]))
        else:
            status = f"[red]failed ({r['stage']})[/]"
            notes = r["error"] + (f"\nfix: {r['hint']}" if r.get("hint") else "")
        table.add_row(r["device"], status, f"{runtime.get('name') or ''} {runtime.get('version') or ''}".strip(),
                      str(result.get("threads") or ""), ms(result.get("load_ms")), ms(result.get("first_ms")),
                      ms(result.get("p50")), ms(result.get("p90")), ms(result.get("p99")), str(result.get("runs") or ""), notes)
    console.print(table)
    files = [r["record_file"] for r in records if r.get("record_file")]
    if files:
        console.print("[dim]times in ms · records: " + ", ".join(files) + "[/]")


def print_report(data: dict, console: Console | None = None) -> None:
    console = console or Console()
    quality = Table(title=f"{data['name']} → {data['target']} ({data['format']}, {data['backend']})")
    for col in ("format", "gate", "float acc", "artifact acc", "agreement", "cosine", "artifact size"):
        quality.add_column(col, justify="left" if col in ("format", "gate") else "right")
    for q in data["quality"]:
        quality.add_row(q["format"], verdict(q["gate_passed"]), pct(q["accuracy_float"]), pct(q["accuracy_artifact"]),
                        pct(q["top1_agreement"]), cosine(q["cosine"]), bytes_kb(q["artifact_bytes"]))
    console.print(quality)
    if data["quality"]:
        first = data["quality"][0]
        console.print(f"[dim]judged on {judged_on(first['data'], first['samples'])}; float size "
                      f"{bytes_kb(first['float_bytes'])}[/]")
    for q in data["quality"]:
        for failure in q["gate_failures"]:
            console.print(f"[red]✗[/] {q['file']}: {failure}")
    stages = Table(title="build stages")
    has_cost = any(s["macs"] is not None or s["params"] is not None for s in data["stages"])
    for col in ("stage", "seconds", *(("MACs", "params") if has_cost else ())):
        stages.add_column(col, justify="left" if col == "stage" else "right")
    for s in data["stages"]:
        stages.add_row(str(s["stage"]), f"{s['seconds']:.2f}" if s["seconds"] is not None else "–",
                       *((str(s["macs"] or "–"), str(s["params"] or "–")) if has_cost else ()))
    console.print(stages)
    if data["sensitivity"]:
        from edgekit.summary import sensitivity_table

        console.print(sensitivity_table(data["sensitivity"]))
    for fb in data["fallbacks"]:
        layers = ", ".join(f"{f['layer']} ({f['why']})" for f in fb["float_layers"]) or "none"
        console.print(f"{fb['format']}: kept float for the {fb['budget_points']:g}-point budget "
                      f"({'met' if fb['met'] else 'NOT met'}): {layers}")
    _print_latency(data, console)


def _print_latency(data: dict, console: Console) -> None:
    if not data["runs"]:
        console.print("no device runs yet: `edgekit bench BUILD` (this computer) or `edgekit deploy BUILD --device user@host --bench`")
    else:
        table = Table(title="latency (ms)")
        for col in ("device", "runtime", "threads", "load", "first", "p50", "p90", "p99", "runs", "when (UTC)", "notes"):
            table.add_column(col, justify="right" if col in ("threads", "load", "first", "p50", "p90", "p99", "runs") else "left")
        for r in data["runs"]:
            table.add_row(r["device"], f"{r['runtime'] or '?'} {r['runtime_version'] or ''}".strip(), str(r["threads"]),
                          ms(r["load_ms"]), ms(r["first_ms"]), ms(r["p50"]), ms(r["p90"]), ms(r["p99"]),
                          str(r["runs"] or "–"), (r["time"] or "")[:19], ", ".join(run_flags(r)))
        console.print(table)
    pred = data["prediction"]
    if pred:
        console.print(f"predicted on {pred['target']}: {ms(pred['low_ms'])}–{ms(pred['high_ms'])} ms; " + ", ".join(
            f"{r['device']} p50 {ms(r['measured_p50'])} ({'within' if r['within'] else 'outside'})"
            for r in pred["runs"] if r["comparable"]) or "no run on the target yet")
    for f in data["failed_runs"]:
        earlier = " [dim](an earlier build's artifact)[/]" if f.get("previous_build") else ""
        console.print(f"[red]failed[/] {f['device']} ({f['stage']}, {(f['time'] or '')[:19]}): {f['error']}{earlier}")
    if data.get("previous_runs"):
        console.print(f"{len(data['previous_runs'])} earlier run(s) measured the artifact this build replaced: "
                      "`edgekit report --json` lists them under previous_runs")
