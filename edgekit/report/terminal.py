"""Every table edgekit prints on the terminal (rich): the build summary, the target profiles,
device runs, and the report.

They fit an 80-column terminal; names are never cut.
"""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgekit.report.format import (
    bytes_kb,
    cosine,
    judged_on,
    ms,
    run_flags,
    verdict,
)
from edgekit.choose import recommend
from edgekit.manifest import TEXT_GENERATION
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
            console.print(f"[red]✗[/] {record['artifact']['file']}: {escape(failure)}")
    for fmt, why in (manifest.get("skipped_formats") or {}).items():
        console.print(escape(f"– {fmt} skipped: {why['error']}" + (f"\n  fix: {why['hint']}" if why.get("hint") else "")))
    for record in manifest["formats"].values():
        quality = record.get("quality") or {}
        if len(quality.get("tries") or []) > 1:
            console.print(f"{record['artifact']['file']}: --quality auto kept [bold]{quality['chosen']}[/] of "
                          f"{len(quality['tries'])} tries: {quality['why']}")
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
    console.print(recommendation_line(recommend(manifest)))


def recommendation_line(rec: dict) -> str:
    if rec["file"] is None:
        return f"[red]recommended: none[/] ({escape(rec['why'])})"
    return f"[bold]recommended: ship {escape(rec['file'])}[/] ({escape(rec['why'])})"
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
        kernels = f"{p['kernels']} kernels, " if p.get("kernels") else ""
        parts.append(f"predicted on {target}: {p['low_ms']:.3g}–{p['high_ms']:.3g} ms at {p['threads']} threads "
                     f"({kernels}cost model, docs/cost_model.md)")
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
        row = [f"{mark} {art['file']}", r["backend"], q.get("calibration") or ("dynamic" if q["scheme"] == "dynamic" else "-")]
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
    """One row per profile. Names are never cut: under TARGETS_WIDE columns (80, or piped) the
    secondary columns go (`edgekit targets show NAME` and `--json` have every field)."""
    console = _console()
    columns = ["name", "cpu", "cores", "GHz", "RAM", "ISA", "format", "threads", "transport"]
    if console.width < TARGETS_WIDE:
        columns = [c for c in columns if c not in ("threads", "transport")]
    table = Table(title="target profiles", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    for col in columns:
        table.add_column(col, justify="right" if col in ("cores", "GHz", "RAM", "threads") else "left", no_wrap=True)
    for t in targets:
        cells = {"name": t.name, "cpu": t.cpu, "cores": str(t.cores), "GHz": f"{t.clock_ghz:g}",
                 "RAM": _ram(t.ram_mb), "ISA": _features(t, short=True), "format": t.format,
                 "threads": str(t.threads), "transport": t.transport}
        table.add_row(*(cells[c] for c in columns))
    console.print(table)


TARGETS_WIDE = 100  # columns the full targets table needs (96 with the longest names, 78 without the last two)


def _ram(mb: int) -> str:
    return f"{mb // 1024} GB" if mb >= 1024 and mb % 1024 == 0 else f"{mb} MB"


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


def _features(t: Target, short: bool = False) -> str:
    on = [name for name in ("neon", "dotprod", "fp16") if getattr(t.features, name)]
    return ("+" if short else ", ").join(on) or "-"


def _kb(n: int) -> str:
    if n >= 10 * 1024 * 1024:
        return f"{n / 1024 / 1024:.1f} MB"
    return f"{n / 1024:.0f} KB" if n >= 10 * 1024 else f"{n / 1024:.1f} KB"


def print_runs(records: list[dict], console: Console | None = None) -> None:
    """One row per device of a deploy/bench: its latency (a text-generation build: time to first token
    and tokens/s), or what failed and the fix."""
    console = console or Console()
    generating = any("generation" in r for r in records)
    # tokens/s and MB instead of latency percentiles; no load time, to stay within 80 columns
    figures = ("1st ms", "pre/s", "dec/s", "MB") if generating else ("load", "first", "p50", "p90", "p99")
    table = Table(title="device runs", **({"box": box.SIMPLE_HEAD, "pad_edge": False, "padding": (0, 1, 0, 0)}
                                          if generating else {}))
    for col in ("device", "status", "runtime", "threads", *figures, "runs", *(() if generating else ("notes",))):
        numeric = col in ("threads", *figures, "runs")
        table.add_column("thr" if generating and col == "threads" else col, justify="right" if numeric else "left",
                         no_wrap=generating)
    below = []  # a generation table is full: its notes go under it, one line per device
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
            if (result.get("device") or {}).get("emulated"):
                notes = "; ".join(filter(None, [notes, "emulated: not latency"]))
        else:
            status = f"[red]failed ({r['stage']})[/]"
            notes = r["error"] + (f"\nfix: {r['hint']}" if r.get("hint") else "")
        if generating:
            rss = result.get("peak_rss_kb")
            values = (ms(result.get("time_to_first_token_ms")), _rate(result.get("prefill_tokens_per_s")),
                      _rate(result.get("decode_tokens_per_s")), f"{rss / 1024:.0f}" if rss else "")
        else:
            values = (ms(result.get("load_ms")), ms(result.get("first_ms")), ms(result.get("p50")), ms(result.get("p90")),
                      ms(result.get("p99")))
        if generating and result.get("memory_read_gbs"):
            notes = "; ".join(filter(None, [notes, f"memory read {result['memory_read_gbs']:g} GB/s "
                                                   "(edgekit report sets decode against it)"]))
        if generating and notes:
            below.append(f"{r['device']}: {notes}")
        table.add_row(r["device"], status, f"{runtime.get('name') or ''} {runtime.get('version') or ''}".strip(),
                      str(result.get("threads") or ""), *values, str(result.get("runs") or ""),
                      *(() if generating else (notes,)))
    console.print(table)
    for line in below:
        console.print(escape(line), highlight=False)
    files = [r["record_file"] for r in records if r.get("record_file")]
    if files:
        what = ("1st: time to first token (ms), pre/dec: prefill and decode tokens/s (median run), MB: peak "
                "RSS" if generating else "times in ms")
        console.print(f"[dim]{what} · records: " + ", ".join(files) + "[/]")


def print_serve_load(record: dict, console: Console | None = None) -> None:
    """`edgekit bench --serve`: one row per concurrency level."""
    console = console or Console()
    table = Table(title=f"server load test: {record['url']}")
    for col in ("clients", "requests", "req/s", "p50", "p90", "p99", "503", "failed"):
        table.add_column(col, justify="right")
    for lv in record["levels"]:
        table.add_row(str(lv["concurrency"]), str(lv["requests"]),
                      f"{lv['throughput_rps']:g}" if lv.get("throughput_rps") is not None else "–",
                      ms(lv.get("p50_ms")), ms(lv.get("p90_ms")), ms(lv.get("p99_ms")),
                      str(lv["refused_503"]), str(lv["failed"]))
    console.print(table)
    rss = (record.get("server_after") or {}).get("rss_mb")
    console.print(f"[dim]times in ms (client side) · 503: refused, the server's queue was full"
                  f"{f' · server RSS after: {rss} MB' if rss else ''} · record: {record.get('record_file')}[/]")


def print_report(data: dict, console: Console | None = None) -> None:
    """The three answers first (is each artifact good, how fast on the target, which to ship),
    then stages and runs. Fits 80 columns: names never cut, secondary columns dropped."""
    console = console or Console()
    if data.get("task") == TEXT_GENERATION:
        print_decoder_report(data, console)
        return
    console.print(_report_table(data))
    if data["quality"]:
        first = data["quality"][0]
        console.print(f"[dim]judged on {judged_on(first['data'], first['samples'])}; float size "
                      f"{bytes_kb(first['float_bytes'])}; predicted: on {data['target']} by the cost model[/]")
    for q in data["quality"]:
        for failure in q["gate_failures"]:
            console.print(f"[red]✗[/] {q['file']}: {escape(failure)}")
    if data.get("recommendation"):
        console.print(recommendation_line(data["recommendation"]))
    stages = Table(title="build stages", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    has_cost = any(s["macs"] is not None or s["params"] is not None for s in data["stages"])
    for col in ("stage", "seconds", *(("MACs", "params") if has_cost else ())):
        stages.add_column(col, justify="left" if col == "stage" else "right", no_wrap=col != "stage")
    for s in data["stages"]:
        stages.add_row(str(s["stage"]), f"{s['seconds']:.2f}" if s["seconds"] is not None else "–",
                       *((str(s["macs"] or "–"), str(s["params"] or "–")) if has_cost else ()))
    console.print(stages)
    if data["sensitivity"]:
        console.print(sensitivity_table(data["sensitivity"]))
    for fb in data["fallbacks"]:
        layers = ", ".join(f"{f['layer']} ({f['why']})" for f in fb["float_layers"]) or "none"
        console.print(f"{fb['format']}: kept float for the {fb['budget_points']:g}-point budget "
                      f"({'met' if fb['met'] else 'NOT met'}): {layers}")
    _print_latency(data, console)


def _report_table(data: dict) -> Table:
    """One row per artifact: verdict, agreement/accuracy, cosine, size, predicted latency on the target."""
    rows = data["quality"]
    labelled = any(q["accuracy_artifact"] is not None for q in rows)
    scores = any(q["top1_agreement"] is not None for q in rows)
    predicted = any(q.get("prediction") for q in rows)
    table = Table(title=f"{data['name']} → {data['target']}", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    columns = (["artifact", "gate"] + (["acc %"] if labelled else []) + (["agree %"] if scores else []) +
               ["cosine", "size"] + (["predicted ms"] if predicted else []))
    for col in columns:
        table.add_column(col, justify="left" if col in ("artifact", "gate") else "right", no_wrap=True)
    for q in rows:
        p = q.get("prediction")
        cells = [q["file"] or q["format"], verdict(q["gate_passed"])]
        if labelled:
            cells.append(_num(q["accuracy_artifact"]))
        if scores:
            cells.append(_num(q["top1_agreement"]))
        cells += [cosine(q["cosine"]), bytes_kb(q["artifact_bytes"])]
        if predicted:
            cells.append(f"{ms(p['low_ms'])}–{ms(p['high_ms'])}" if p else "-")
        table.add_row(*cells)
    return table


LATENCY_WIDE = 110  # columns the full latency table needs; under it, runtime/load/first/runs go


def _print_latency(data: dict, console: Console) -> None:
    if not data["runs"]:
        console.print("no device runs yet: `edgekit bench BUILD` (this computer) or `edgekit deploy BUILD --device user@host --bench`")
    else:
        files = {q["format"]: q["file"] for q in data["quality"]}
        wide = console.width >= LATENCY_WIDE
        # narrow: the artifact's file names its runtime; `--json` and report.html have every field
        columns = ["device", "artifact"] + (["runtime"] if wide else []) + ["thr"] + \
            (["load", "first"] if wide else []) + ["p50", "p90", "p99"] + (["runs"] if wide else []) + \
            ["when (UTC)", "notes"]
        table = Table(title="latency (ms)", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
        for col in columns:
            table.add_column(col, justify="left" if col in ("device", "artifact", "runtime", "when (UTC)", "notes")
                             else "right", no_wrap=col != "notes", overflow="fold",
                             min_width=12 if col == "notes" else None)
        for r in data["runs"]:
            cells = {"device": r["device"], "artifact": files.get(r["format"]) or r["format"] or "?",
                     "runtime": f"{r['runtime'] or '?'} {r['runtime_version'] or ''}".strip(), "thr": str(r["threads"]),
                     "load": ms(r["load_ms"]), "first": ms(r["first_ms"]), "p50": ms(r["p50"]), "p90": ms(r["p90"]),
                     "p99": ms(r["p99"]), "runs": str(r["runs"] or "–"),
                     # month-day hour:minute: the year and seconds only widen the table
                     "when (UTC)": (r["time"] or "")[5:16].replace("T", " ") if not wide else (r["time"] or "")[:19],
                     "notes": ", ".join(run_flags(r))}
            table.add_row(*(cells[c] for c in columns))
        console.print(table)
    pred = data["prediction"]
    if pred:
        measured = ", ".join(f"{r['device']} p50 {ms(r['measured_p50'])} ({'within' if r['within'] else 'outside'})"
                             for r in pred["runs"] if r["comparable"])
        console.print(f"predicted on {pred['target']} ({data['format']}): {ms(pred['low_ms'])}–{ms(pred['high_ms'])} ms; "
                      + (measured or "no run on the target yet"))
    for f in data["failed_runs"]:
        earlier = " [dim](an earlier build's artifact)[/]" if f.get("previous_build") else ""
        console.print(f"[red]failed[/] {f['device']} ({f['stage']}, {(f['time'] or '')[:19]}): {f['error']}{earlier}")
    if data.get("previous_runs"):
        console.print(f"{len(data['previous_runs'])} earlier run(s) measured the artifact this build replaced: "
                      "`edgekit report --json` lists them under previous_runs")


def print_numeric_debug(doc: dict, all_layers: bool = False, console: Console | None = None) -> None:
    """`edgekit debug`: the offenders (or every layer) with their SQNR, then one line of diagnosis each."""
    console = console or _console()
    layers = {g["node"]: g for g in doc["layers"]}
    shown = list(layers.values()) if all_layers else [layers[n] for n in doc["top"]]
    baseline = doc.get("baseline")
    title = f"{doc['artifact']}: " + ("every layer" if all_layers else "where the error enters") + \
        " (dB: SQNR vs float; added: SQNR of the error the layer adds, lower is worse)"
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    table.add_column("layer", overflow="fold")
    table.add_column("op", no_wrap=True)
    table.add_column("SQNR", justify="right", no_wrap=True)
    table.add_column("added", justify="right", no_wrap=True)  # SQNR of the error this layer adds
    if baseline:
        table.add_column(f"{baseline} SQNR", justify="right", no_wrap=True)
    for g in shown:
        row = [escape(g["layer"] or g["node"]), g["op"], f"{g['sqnr_db']:.1f}", f"{g['added_db']:.1f}"]
        if baseline:
            row.append("-" if g.get("baseline_sqnr_db") is None else f"{g['baseline_sqnr_db']:.1f}")
        table.add_row(*row)
    console.print(table)
    for i, node in enumerate(doc["top"], 1):
        g = layers[node]
        console.print(f"{i}. {escape(g['layer'] or g['node'])} ({g['op']}): {escape(g['diagnosis'] or '')}",
                      highlight=False)
    if doc.get("baseline_top"):
        _print_baseline_offenders(doc, console)
    last = doc["layers"][-1] if doc["layers"] else None
    if last is not None:
        tail = ""
        if baseline and last.get("baseline_sqnr_db") is not None:
            tail = f"; {baseline}: {last['baseline_sqnr_db']:.1f} dB"
        console.print(f"output: SQNR {last['sqnr_db']:.1f} dB, cosine {last['cosine']:.4f}{tail} · "
                      f"{doc['samples']} samples of the {escape(doc['data'])} · {escape(doc['method'])}",
                      highlight=False)


def _print_baseline_offenders(doc: dict, console: Console) -> None:
    """Where the stock quantizer loses, and what edgekit's quantization gives at the same layers."""
    name = doc["baseline"]
    table = Table(title=f"where the {name} path loses, and edgekit at the same layers (dB)", box=box.SIMPLE_HEAD,
                  pad_edge=False, padding=(0, 1, 0, 0))
    table.add_column("layer", overflow="fold")
    table.add_column("op", no_wrap=True)
    for col in (f"{name} SQNR", "added", "edgekit SQNR", "added"):
        table.add_column(col, justify="right", no_wrap=True)
    for g in doc["baseline_top"]:
        ours = ["-", "-"] if g["ours_sqnr_db"] is None else [f"{g['ours_sqnr_db']:.1f}", f"{g['ours_added_db']:.1f}"]
        table.add_row(escape(g["layer"] or g["node"]), g["op"], f"{g['sqnr_db']:.1f}", f"{g['added_db']:.1f}", *ours)
    console.print(table)
    for i, g in enumerate(doc["baseline_top"], 1):
        console.print(f"{i}. {escape(g['layer'] or g['node'])} ({g['op']}), {name}: {escape(g['diagnosis'] or '')}",
                      highlight=False)


def print_decoder_summary(manifest: dict) -> None:
    """A text-generation build (edgekit/llm/build.py): quality against float, then speed."""
    console = _console()
    q, speed = manifest["quality"], manifest["speed"]
    host = speed["host"]["artifact"]
    size = sum(f["bytes"] for f in [manifest["artifact"], *manifest.get("artifact_files", [])])
    console.print(_decoder_table(manifest, speed["host"], manifest["model"]["parameters"], size))
    console.print(f"{q['tokens_scored']:,} held-out tokens · agree: greedy next-token agreement with float over "
                  f"{q['prompts']} prompts · gate: perplexity at most +{q['max_perplexity_increase_pct']:g} %, "
                  f"agreement at least {q['min_agreement_pct']:g} % · in {manifest['build_dir']}/")
    if not q["passed"]:
        console.print(f"[red]✗[/] {manifest['artifact']['file']}: {escape(q['why'])}")
    limit = speed["host"]["decode_limit"]
    console.print(f"this computer: first token {host['time_to_first_token_ms']:.1f} ms, prefill "
                  f"{_rate(host['prefill_tokens_per_s'])} tok/s, decode {_rate(host['decode_tokens_per_s'])} tok/s "
                  f"({_ratio(host, speed['host']['float_eager'])} float), peak RSS {host['peak_rss_mb']:.0f} MB; memory limit "
                  f"{_rate(limit['tokens_per_s'])} tok/s ({limit['bytes_per_token'] / 1024:.0f} KB per token at "
                  f"{limit['mem_bandwidth_gbs']:g} GB/s, the host profile's; `edgekit bench` measures this computer's)")
    target = speed["target"]["decode_limit"]
    console.print(f"on {manifest['target']}: decode at most {_rate(target['tokens_per_s'])} tok/s (memory bandwidth "
                  f"{target['mem_bandwidth_gbs']:g} GB/s over {target['bytes_per_token'] / 1024:.0f} KB per token)")


def _decoder_table(doc: dict, host_speed: dict, parameters: int, size: int) -> Table:
    """Float and artifact side by side: perplexity, agreement, decode tokens/s on this computer, size.
    `doc`: the manifest, or the report data (both carry name, target, task, quantization, quality, artifact)."""
    q, quant = doc["quality"], doc["quantization"]
    artifact, float_eager = host_speed["artifact"], host_speed["float_eager"]
    table = Table(title=f"{doc['name']} → {doc['target']} · text-generation · {quant['scheme']} ({quant['method']})",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    for col in ("artifact", "runtime", "perplexity", "agree %", "decode tok/s", "size"):
        table.add_column(col, justify="left" if col in ("artifact", "runtime") else "right", no_wrap=True)
    table.add_row("  float", "torch", f"{q['float_perplexity']:.3f}", "", _rate(float_eager["decode_tokens_per_s"]),
                  _kb(4 * parameters), style="dim")
    mark = "[green]✓[/]" if q["passed"] else "[red]✗[/]"
    table.add_row(f"{mark} {doc['artifact']['file']}", doc.get("runtime") or "executorch",
                  f"{q['perplexity']:.3f} ({q['perplexity_increase_pct']:+.1f} %)", f"{q['agreement_pct']:.1f}",
                  _rate(artifact["decode_tokens_per_s"]), _kb(size))
    return table


def print_decoder_report(data: dict, console: Console) -> None:
    """`edgekit report` of a text-generation build: quality, the decode limit per target profile, device runs."""
    q = data["quality"]
    console.print(_decoder_table(data, data["host_speed"], data["model"]["parameters"], data["artifact"]["bytes"]))
    console.print(f"[dim]{q['tokens_scored']:,} held-out tokens; agree: greedy next-token agreement with float over "
                  f"{q['prompts']} prompts; decode tok/s: this computer, at build time[/]")
    if not q["passed"]:
        console.print(f"[red]✗[/] {data['artifact']['file']}: {escape(q['why'])}")
    per_token = sum(data["bytes_per_token"].values())
    limits = Table(title="decode limit per target", box=box.SIMPLE_HEAD,
                   pad_edge=False, padding=(0, 1, 0, 0))
    for col in ("target", "GB/s", "tok/s at most"):
        limits.add_column(col, justify="left" if col == "target" else "right", no_wrap=True)
    for lim in data["decode_limits"]:
        name = f"{lim['target']} (built for)" if lim["built_for"] else lim["target"]
        limits.add_row(name, f"{lim['mem_bandwidth_gbs']:g}", _rate(lim["tokens_per_s"]),
                       style="bold" if lim["built_for"] else None)
    console.print(limits)
    console.print(f"[dim]memory bandwidth over {per_token / 1024:,.0f} KB per token (weights once, KV cache at "
                  f"{data['max_seq_len']} tokens); theoretical peak bandwidth, so a physical limit, not a promise[/]")
    if not data["runs"]:
        console.print("no device runs yet: `edgekit bench BUILD` (this computer) or "
                      "`edgekit deploy BUILD --device user@host --bench`")
    else:
        table = Table(title="generation on devices (median run)", box=box.SIMPLE_HEAD, pad_edge=False,
                      padding=(0, 1, 0, 0))
        for col in ("device", "thr", "1st ms", "pre/s", "dec/s", "of limit", "tokens", "when (UTC)"):
            table.add_column(col, justify="left" if col in ("device", "tokens", "when (UTC)") else "right", no_wrap=True)
        flagged = []
        for r in data["runs"]:
            share = r["share_of_limit"]
            match = {True: "= build", False: "differ", None: "–"}[r["tokens_match_build"]]
            table.add_row(r["device"], str(r["threads"] or ""), ms(r["time_to_first_token_ms"]),
                          _rate(r["prefill_tokens_per_s"]), _rate(r["decode_tokens_per_s"]),
                          f"{100 * share:.0f} %" if share is not None else "–", match, (r["time"] or "")[:16].replace("T", " "))
            flags = [f for f in run_flags(r) if f != "host"]  # the host's rate is against the host's limit
            if r["decode_limit"] is not None:
                flags.append(f"limit {_rate(r['decode_limit'])} tok/s at " + (
                    f"{r['memory_read_gbs']:g} GB/s read there" if r["decode_limit_source"] == "measured"
                    else "its profile's bandwidth"))
            if flags:
                flagged.append(f"{r['device']}: {', '.join(flags)}")
        console.print(table)
        console.print("[dim]1st: time to first token; pre/dec: prefill and decode tokens/s; of limit: decode against "
                      "the limit of the machine it ran on (the memory read bandwidth the runner measured there, else "
                      "the target's or this computer's profile); tokens: the greedy tokens against this computer's at "
                      "build time[/]")
        for line in flagged:
            console.print(escape(line), highlight=False)
    for f in data["failed_runs"][:5]:
        console.print(f"[red]✗[/] {escape(f['device'] or '?')} ({escape(f['stage'] or '?')}): {escape(f['error'] or '')}")


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _ratio(artifact: dict, reference: dict) -> str:
    a, b = artifact.get("decode_tokens_per_s"), reference.get("decode_tokens_per_s")
    return "-" if not a or not b else f"{a / b:.2f}x"
