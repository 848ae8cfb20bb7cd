"""report.html: one self-contained page (inline CSS, PNGs as data: URIs, no scripts,
nothing fetched), so it can be mailed, attached to CI, or opened offline."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from edgekit.manifest import TEXT_GENERATION, write_text_atomic
from edgekit.report import plots
from edgekit.report.format import (
    bytes_kb,
    cosine,
    judged_on,
    ms,
    pct,
    run_flags,
    run_kind,
    verdict,
)

MAX_DISTRIBUTIONS = 12  # newest runs get a histogram each; older ones stay in the table

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#1d2733;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.15em;margin-top:28px;border-bottom:1px solid #d8dee4;padding-bottom:4px}
.sub{color:#5b6775;margin-top:0}table{border-collapse:collapse;margin:8px 0;font-size:.9em}
th,td{border:1px solid #d8dee4;padding:4px 8px;text-align:right}th{background:#f3f5f7}
.text{text-align:left}.note{color:#5b6775;font-size:.9em}
.flag{display:inline-block;background:#fde8c8;color:#7a4b00;border-radius:3px;padding:0 5px;font-size:.8em;margin-left:4px}
details{margin:10px 0}summary{cursor:pointer;font-weight:600}h3{font-size:1em}
.bad{color:#b42318}.t{white-space:nowrap}figure{margin:12px 0}figcaption{color:#5b6775;font-size:.85em}img{max-width:100%}
"""


def render(data: dict) -> str:
    """The first screen answers: is each artifact still good, how fast on the target, which to
    ship (recommendation, at-a-glance table, latency per kind of device); the rest — accuracy in
    detail, one collapsed section per format, the build's stages — is there on demand."""
    title = f"{data['name']} → {data['target']} ({data['format']}, {data['backend']})"
    colors = plots.format_colors([q["format"] for q in data["quality"]])
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>edgekit report: {escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="sub">built {escape(str(data["created"]))} · {escape(_profile(data["target_profile"]))} · '
        f'{escape(_versions(data["versions"]))}</p>',
        _recommendation(data.get("recommendation")),
        _glance(data),
        _warnings(data["warnings"]),
        _latency(data, colors), _serving(data), _prediction(data),
        _quality(data, colors),
        *[_format_section(data, q) for q in data["quality"]],
        _details("Build stages", _stages(data["stages"])), _sensitivity(data), _failed(data["failed_runs"]),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


def _details(summary: str, body: str, open_: bool = False) -> str:
    """A section collapsed by default (HTML's own <details>: no script needed)."""
    if not body:
        return ""
    return f'<details{" open" if open_ else ""}><summary>{escape(summary)}</summary>{body}</details>'


def _glance(data: dict) -> str:
    """One row per artifact: the gate's verdict and by how much, predicted latency on the target
    (each format's own, by the cost model), the newest measured p50 on the target and on this
    computer, size, RAM fit (once `edgekit validate` measured it) and the lint."""
    rows = []
    for q in data["quality"]:
        target_run = _newest(data["runs"], q["format"], lambda r: run_kind(r) == "target")
        host_run = _newest(data["runs"], q["format"], lambda r: r["host"])
        p, lint, ram = q.get("prediction"), q.get("lint"), q.get("ram")
        rows.append([
            f"{escape(q['display_name'])}<br><code>{escape(q['file'] or '?')}</code>",
            _verdict(q["gate_passed"]) + f'<br><span class="note">{escape(_margin(q, data.get("gate") or {}))}</span>',
            escape(f"{ms(p['low_ms'])}–{ms(p['high_ms'])} ms at {p['threads']} thr" if p else "–"),
            escape(f"{ms(target_run['p50'])} ms on {target_run['device']}" if target_run else "not measured"),
            escape(f"{ms(host_run['p50'])} ms" if host_run else "–"),
            bytes_kb(q["artifact_bytes"]),
            escape("–" if not ram else f"fits ({ram['needed_mb']} of {ram['budget_mb']} MB)" if ram["fits"]
                   else f"does not fit ({ram['needed_mb']} of {ram['budget_mb']} MB)"),
            escape("–" if not lint else (f"{lint['findings']} finding(s)" if lint["findings"] else "clean") +
                   (f", {lint['fast_share'] * 100:.0f} % of MACs on {lint['fast_path']}"
                    if lint["fast_share"] is not None else "")),
        ])
    return ("<h2>At a glance</h2>" +
            _table(["artifact", "quality gate", f"predicted on {data['target']}", "measured on the target",
                    "this computer p50", "size", "RAM", "lint"], rows) +
            '<p class="note">Predicted: the cost model (docs/cost_model.md), from the model\'s work per op, '
            "each format's own ARM kernel library (XNNPACK, MLAS, QNNPACK) and the ops each artifact leaves "
            "off its fast kernels. This computer's times are not the target's.</p>")


def _margin(q: dict, gate: dict) -> str:
    """The gate's figures beside its thresholds: by how much an artifact passed or failed."""
    out = []
    if q.get("top1_agreement_decisive") is not None and gate.get("min_agreement") is not None:
        out.append(f"agreement {q['top1_agreement_decisive']:.1f} % (gate {gate['min_agreement']:g} %)")
    floor = gate.get("min_cosine_scores") if q.get("top1_agreement") is not None else gate.get("min_cosine")
    if q.get("cosine") is not None:
        out.append(f"cosine {q['cosine']:.4f}" + (f" (gate {floor:g})" if floor is not None else ""))
    return ", ".join(out)


def _newest(runs: list[dict], fmt: str, keep) -> dict | None:
    mine = [r for r in runs if r["format"] == fmt and r["p50"] is not None and keep(r)]
    return max(mine, key=lambda r: r["time"] or "") if mine else None


def _recommendation(rec: dict | None) -> str:
    """The first thing on the page: which artifact to ship, and why (edgekit/choose.py: recommend)."""
    if not rec:
        return ""
    if rec["file"] is None:
        return f'<p class="bad"><b>Recommended: none</b> — {escape(rec["why"])}</p>'
    return f'<p><b>Recommended: ship {escape(rec["file"])}</b> — {escape(rec["why"])}</p>'


def write_html(build_dir: str | Path, data: dict) -> Path:
    """BUILD/report.html, written to a temp name and renamed."""
    path = Path(build_dir) / "report.html"
    write_text_atomic(path, render_decoder(data) if data.get("task") == TEXT_GENERATION else render(data))
    return path


def render_decoder(data: dict) -> str:
    """A text-generation build (report/data.py decoder_report): is the artifact good (perplexity and
    greedy agreement against float), how fast can it be on each target (the decode limit), how fast it
    was on each device that ran it."""
    q, quant, host = data["quality"], data["quantization"], data["host_speed"]
    title = f"{data['name']} → {data['target']} (text-generation, {data['format']})"
    quality = _table(
        ["artifact", "quality gate", "perplexity", "vs float", "agreement", "decode tok/s here", "size"],
        [[escape(f"float ({data['model']['architecture']})"), "–", f"{q['float_perplexity']:.3f}", "–", "–",
          _tok(host["float_eager"]["decode_tokens_per_s"]), bytes_kb(4 * data["model"]["parameters"])],
         [escape(f"{quant['scheme']} ({data['artifact']['file']})"), _verdict(q["passed"]), f"{q['perplexity']:.3f}",
          f"{q['perplexity_increase_pct']:+.1f} %", pct(q["agreement_pct"]), _tok(host["artifact"]["decode_tokens_per_s"]),
          bytes_kb(data["artifact"]["bytes"])]])
    limits = _table(["target", "memory GB/s", "decode tok/s at most"],
                    [[escape(lim["target"] + (" (built for)" if lim["built_for"] else "")),
                      escape(f"{lim['mem_bandwidth_gbs']:g}"), _tok(lim["tokens_per_s"])] for lim in data["decode_limits"]])
    runs = _table(
        ["device", "runtime", "threads", "first token ms", "prefill tok/s", "decode tok/s", "read GB/s", "of limit",
         "peak RSS", "tokens", "cpu", "when (UTC)"],
        [[escape(r["device"]) + "".join(f'<span class="flag">{escape(f)}</span>' for f in run_flags(r)),
          escape(f"{r['runtime'] or '?'} {r['runtime_version'] or ''}"), escape(str(r["threads"])),
          ms(r["time_to_first_token_ms"]), _tok(r["prefill_tokens_per_s"]), _tok(r["decode_tokens_per_s"]),
          f"{r['memory_read_gbs']:g}" if r["memory_read_gbs"] else "–",
          f"{100 * r['share_of_limit']:.0f} %" if r["share_of_limit"] is not None else "–",
          bytes_kb(r["peak_rss_kb"] * 1024) if r["peak_rss_kb"] else "–",
          {True: "same as build", False: '<span class="bad">differ</span>', None: "–"}[r["tokens_match_build"]],
          escape(r["cpu_model"] or r["machine"] or "?"), _when(r["time"])] for r in data["runs"]])
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>edgekit report: {escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="sub">{escape(_profile(data["target_profile"]))} · context {data["max_seq_len"]} tokens · '
        f'{escape(_versions(data["versions"]))}</p>',
        _warnings(data["warnings"]),
        "<h2>Quality</h2>", quality,
        f'<p class="note">Perplexity on {q["tokens_scored"]:,} held-out tokens; agreement: greedy next-token '
        f'agreement with the float model over {q["prompts"]} prompts. Gate: perplexity at most '
        f'+{q["max_perplexity_increase_pct"]:g} %, agreement at least {q["min_agreement_pct"]:g} %.'
        + (f' <span class="bad">{escape(q["why"])}</span>' if not q["passed"] else "") + "</p>",
        "<h2>Decode limit per target</h2>", limits,
        f'<p class="note">Each generated token reads every weight once and the KV cache: '
        f'{sum(data["bytes_per_token"].values()) / 1024:,.0f} KB per token at a {data["max_seq_len"]}-token '
        "context, over the profile's theoretical peak memory bandwidth. A physical limit, not a promise.</p>",
        "<h2>Generation on devices</h2>",
        _img(plots.decode_rates(_decode_bars(data)), "decode tokens/s",
             "Decode tokens/s: the float model and the artifact on this computer at build time, then each device "
             "run (emulated runs left out: not speed); the red mark is the memory limit of the machine it ran on."),
        runs if data["runs"] else '<p class="note">No device runs yet: <code>edgekit bench BUILD</code> measures '
                                  "this computer, <code>edgekit deploy BUILD --device user@host --bench</code> a board.</p>",
        '<p class="note">Median of the timed generations. of limit: decode tokens/s against the limit of the machine '
        "it ran on: the memory read bandwidth the runner measured there after generating (read GB/s) over the bytes "
        "per token, else the profile's bandwidth (the target's; this computer's for the host). tokens: the device's "
        "greedy tokens against this computer's at build time. Emulated runs are not speed.</p>" if data["runs"] else "",
        _details("Build stages", _stages(data["stages"])), _failed(data["failed_runs"]),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


def _decode_bars(data: dict) -> list[dict]:
    host = data["host_speed"]
    bars = [{"label": "float eager, this computer", "rate": host["float_eager"]["decode_tokens_per_s"] or 0,
             "kind": "float"},
            {"label": f"{data['artifact']['file']}, this computer", "rate": host["artifact"]["decode_tokens_per_s"] or 0,
             "kind": "artifact"}]
    for r in data["runs"]:
        if r.get("emulated") or not r["decode_tokens_per_s"]:
            continue
        bars.append({"label": f"{r['device']} · {r['threads']} thr · {(r['time'] or '')[5:16].replace('T', ' ')}",
                     "rate": r["decode_tokens_per_s"], "kind": "artifact", "limit": r["decode_limit"]})
    return bars


def _tok(value) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _img(png: bytes, alt: str, caption: str) -> str:
    src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return f'<figure><img alt="{escape(alt)}" src="{src}"><figcaption>{escape(caption)}</figcaption></figure>'


TEXT_COLUMNS = {"artifact", "target", "tokens", "try", "judged as", "RAM", "lint", "on the calibration inputs", "format", "quality gate", "stage", "device", "runtime", "cpu", "when (UTC)", "error", "op", "within range",
                "layer", "diagnosis"}


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """Numbers right-aligned (digits line up), words left."""
    align = [' class="text"' if h in TEXT_COLUMNS else "" for h in headers]
    head = "".join(f"<th{a}>{escape(h)}</th>" for h, a in zip(headers, align))
    body = "".join("<tr>" + "".join(f"<td{a}>{cell}</td>" for cell, a in zip(row, align)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _profile(p: dict) -> str:
    return f"target: {p.get('description') or '?'} ({p.get('arch')}, {p.get('threads')} threads)"


def _versions(v: dict) -> str:
    return ", ".join(f"{k} {val}" for k, val in v.items() if val)


def _quality(data: dict, colors: dict) -> str:
    rows = [[escape(f"{q['display_name']} ({q['file']})"), _verdict(q["gate_passed"]), pct(q["accuracy_float"]),
             pct(q["accuracy_artifact"]), pct(q["top1_agreement"]), cosine(q["cosine"]),
             escape(f"{q['max_abs_error']:.4g}" if q["max_abs_error"] is not None else "–"),
             bytes_kb(q["float_bytes"]), bytes_kb(q["artifact_bytes"]) + _ratio(q)] for q in data["quality"]]
    first = data["quality"][0] if data["quality"] else {}
    failures = "".join(f'<p class="bad">✗ {escape(q["file"] or q["format"])}: {escape(f)}</p>'
                       for q in data["quality"] for f in q["gate_failures"])
    plotted = [q for q in data["quality"] if q.get("cosine_percentiles")]
    return ("<h2>Accuracy and size</h2>" +
            _table(["format", "quality gate", "float accuracy", "artifact accuracy", "top-1 agreement", "cosine",
                    "max abs error", "float size", "artifact size"], rows) + failures +
            (f'<p class="note">Judged against the float model on {escape(judged_on(first.get("data"), first["samples"]))}.</p>'
             if first.get("samples") else "") +
            (_img(plots.cosine_distribution(plotted, colors), "cosine distribution",
                  "per sample: the share of samples whose output is at least this close to float (cosine)")
             if plotted else "") +
            _img(plots.sizes(data["quality"]), "model sizes", "float state_dict vs artifact size"))


def _format_section(data: dict, q: dict) -> str:
    """One format's detail, collapsed: its gate failures, the --quality tries, the confusion of its
    top-1, where its int8 error enters (edgekit debug), and its latency runs one by one."""
    parts = [f'<p class="bad">✗ {escape(f)}</p>' for f in q["gate_failures"]]
    quality = q.get("quality") or {}
    if quality.get("tries"):
        rows = [[escape(t["method"]), escape(t.get("judged_as") or ""), cosine(t.get("cosine")),
                 pct(t.get("top1_agreement")), _verdict(t.get("passed")) if t.get("error") is None
                 else f'<span class="bad">{escape(t["error"])}</span>'] for t in quality["tries"]]
        parts.append(f"<p>--quality {escape(quality['mode'])} kept <b>{escape(quality['chosen'])}</b>: "
                     f"{escape(quality['why'])}</p>" +
                     _table(["try", "judged as", "cosine", "top-1 agreement", "on the calibration inputs"], rows))
    conf = q.get("confusion")
    if conf and conf.get("counts"):
        parts.append(_img(plots.confusion_matrix(conf, f"{q['file']}: {conf['rows']} vs the artifact's top-1"),
                          f"confusion matrix: {q['file']}", "counts of samples; the diagonal agrees"))
    elif conf and conf.get("flips"):
        rows = [[str(a), str(b), str(n)] for a, b, n in conf["flips"]]
        parts.append(f'<p class="note">The most frequent top-1 changes ({conf["classes"]} classes):</p>' +
                     _table([conf["rows"], "artifact's top-1", "samples"], rows))
    debug = (data.get("numeric_debug") or {}).get(q["format"])
    if debug:
        parts.append(_numeric_debug(q["format"], debug))
    for r in [r for r in reversed(data["runs"]) if r["samples_ms"] and r["format"] == q["format"]][:MAX_DISTRIBUTIONS]:
        parts.append(_img(plots.latency_distribution(r), f"latency distribution: {r['device']}",
                          f"{r['device']} at {r['time']}: per-inference latency ({r['file']})"))
        if r["ops"]:
            parts.append(_ops(r))
    verdict_ = {True: "passed", False: "failed", None: "not judged"}[q["gate_passed"]]
    return _details(f"{q['display_name']} — {q['file']} ({verdict_}): detail", "\n".join(parts) or
                    '<p class="note">Nothing more for this format.</p>')


def _verdict(passed) -> str:
    return f'<span class="bad">{verdict(passed)}</span>' if passed is False else verdict(passed)


def _ratio(q: dict) -> str:
    if q["float_bytes"] and q["artifact_bytes"]:
        return f" ({q['artifact_bytes'] / q['float_bytes']:.2f}x)"
    return ""


def _stages(stages: list[dict]) -> str:
    has_cost = any(s["macs"] is not None or s["params"] is not None for s in stages)
    headers = ["stage", "seconds"] + (["MACs", "params"] if has_cost else [])
    rows = [[escape(str(s["stage"])), f"{s['seconds']:.2f}" if s["seconds"] is not None else "–"] +
            ([_count(s["macs"]), _count(s["params"])] if has_cost else []) for s in stages]
    note = "" if has_cost else '<p class="note">No per-stage MACs/params in this manifest (stages that change the model record them).</p>'
    return "<h2>Build stages</h2>" + _table(headers, rows) + note


def _sensitivity(data: dict) -> str:
    """Layer ranking (edgekit quantize --sensitivity) and what the accuracy fallback kept float."""
    if not data["sensitivity"] and not data["fallbacks"]:
        return ""
    parts = ["<h2>Quantization sensitivity</h2>"]
    if data["sensitivity"]:
        rows = [[escape(r["layer"]), escape(r["type"]), f"{r['output_sqnr_db']:.1f}", pct(r["top1_agreement"]),
                 "–" if r["accuracy_drop"] is None else f"{r['accuracy_drop']:.2f}"] for r in data["sensitivity"]]
        parts.append(_table(["layer (most harmful first)", "type", "output SQNR dB", "agreement", "accuracy drop"], rows))
        parts.append('<p class="note">Each Conv/Linear layer quantized alone, the rest float.</p>')
    for fb in data["fallbacks"]:
        layers = ", ".join(f"{escape(f['layer'])} ({escape(f['why'])})" for f in fb["float_layers"]) or "none"
        verdict = "met" if fb["met"] else "NOT met"
        parts.append(f"<p>{escape(fb['format'])}: kept float for the {fb['budget_points']:g}-point accuracy budget "
                     f"({verdict}): {layers}</p>")
    return "\n".join(parts)


def _numeric_debug(fmt: str, doc: dict) -> str:
    """`edgekit debug` for one format: the layers where int8 error enters, with the diagnosis."""
    layers = {g["node"]: g for g in doc["layers"]}
    baseline = doc.get("baseline")
    headers = ["layer", "op", "SQNR dB", "added dB"] + ([f"{baseline} SQNR dB"] if baseline else []) + ["diagnosis"]
    rows = []
    for node in doc["top"]:
        g = layers[node]
        row = [escape(g["layer"] or node), escape(g["op"]), f"{g['sqnr_db']:.1f}", f"{g['added_db']:.1f}"]
        if baseline:
            row.append("–" if g.get("baseline_sqnr_db") is None else f"{g['baseline_sqnr_db']:.1f}")
        rows.append(row + [escape(g["diagnosis"] or "")])
    out = doc["layers"][-1] if doc["layers"] else None
    return (f"<h3>Where the int8 error enters (edgekit debug)</h3><p>{escape(doc['artifact'])} ({escape(fmt)}): "
            f"output SQNR {'–' if out is None else format(out['sqnr_db'], '.1f')} dB on {doc['samples']} samples</p>" +
            _table(headers, rows) +
            '<p class="note">SQNR: signal over error power against the float model at each layer\'s output; '
            "added: SQNR of the error the layer itself adds (lower is worse). How: "
            f"{escape(doc.get('method') or '')}.</p>")


def _count(n) -> str:
    if n is None:
        return "–"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


KINDS = {"target": "on the target", "other": "on other machines (not the target's CPU)",
         "host": "on this computer (not the target)"}


def _latency(data: dict, colors: dict) -> str:
    """The runs table, then one plot per kind of device with formats as colored series; the
    per-format predicted range is drawn only on the target's plot (a host run does not test it)."""
    runs = data["runs"]
    if not runs:
        return ('<h2>Latency</h2><p class="note">No device runs yet: <code>edgekit bench BUILD</code> measures this '
                "computer, <code>edgekit deploy BUILD --device user@host --bench</code> a board.</p>")
    rows = [[escape(r["device"]) + "".join(f'<span class="flag">{escape(f)}</span>' for f in run_flags(r)),
             escape(r["display_name"] or "?"), escape(f"{r['runtime'] or '?'} {r['runtime_version'] or ''}"),
             escape(str(r["threads"])), ms(r["load_ms"]), ms(r["first_ms"]), ms(r["p50"]), ms(r["p90"]), ms(r["p99"]),
             escape(str(r["runs"] or "–")), escape(r["cpu_model"] or r["machine"] or "?"), _when(r["time"])]
            for r in runs]
    parts = ["<h2>Latency</h2>"]
    predictions = {q["format"]: q["prediction"] for q in data["quality"] if q.get("prediction")}
    for kind, title in KINDS.items():
        mine = [r for r in runs if r["p50"] is not None and run_kind(r) == kind]
        if mine:
            parts.append(_img(plots.latency_overview(mine, predictions if kind == "target" else {}, colors),
                              f"latency {title}", f"p50 per run {title}; whisker: p90 to p99" +
                              ("; band: the format's predicted range" if kind == "target" and predictions else "")))
    parts += [_details(f"All {len(runs)} run(s)", _table(
        ["device", "format", "runtime", "threads", "load", "first", "p50", "p90", "p99", "runs", "cpu", "when (UTC)"], rows) +
        '<p class="note">Times in ms. load: artifact load; first: the first inference; p50/p90/p99 over the timed runs '
        "after warm-up. Runs flagged <i>not target arch</i> or <i>host</i> did not run on the target device; "
        "emulated runs are not latency and are left out of the plots.</p>", open_=True)]
    return "\n".join(parts)


def _serving(data: dict) -> str:
    """edgekit bench --serve: latency vs concurrency of the server, the newest load test of each URL plotted."""
    loads = data.get("serve_loads") or []
    if not loads:
        return ""
    newest = {}
    for load in loads:
        newest[(load["url"], load["format"])] = load
    parts = ["<h2>Serving</h2>"]
    parts += [_img(plots.serve_latency(load), f"server latency at {load['url']}",
                   "request latency (client side, answered requests) per number of concurrent clients; "
                   "dotted: throughput") for load in newest.values() if any(lv.get("p50_ms") for lv in load["levels"])]
    rows = [[escape(load["url"]), escape(load["format"]), escape(str(lv["concurrency"])), escape(str(lv["requests"])),
             escape(f"{lv['throughput_rps']:g}" if lv.get("throughput_rps") is not None else "–"),
             ms(lv.get("p50_ms")), ms(lv.get("p90_ms")), ms(lv.get("p99_ms")),
             escape(str(lv.get("refused_503", 0))), escape(str(lv.get("failed", 0))), _when(load["time"])]
            for load in loads for lv in load["levels"]]
    parts.append(_details(f"All {len(loads)} load test(s)", _table(
        ["server", "format", "clients", "requests", "req/s", "p50", "p90", "p99", "503", "failed", "when (UTC)"], rows) +
        '<p class="note">Times in ms, measured by the client (edgekit bench --serve) from sending a request to its '
        "last byte. 503: refused because the server's queue was full (its documented overload answer).</p>", open_=True))
    return "\n".join(parts)


def _ops(run: dict) -> str:
    top = sorted(run["ops"], key=lambda o: o.get("ms") or 0, reverse=True)[:10]
    total = sum(o.get("ms") or 0 for o in run["ops"]) or 1
    rows = [[escape(str(o.get("name"))), ms(o.get("ms")), f"{100 * (o.get('ms') or 0) / total:.1f} %"] for o in top]
    return f'<p class="note">Slowest operators on {escape(run["device"])}:</p>' + _table(["op", "ms", "share"], rows)


def _prediction(data: dict) -> str:
    pred = data["prediction"]
    if pred is None:
        return ('<h2>Predicted vs measured</h2><p class="note">No latency prediction in this manifest '
                "(the emulation harness's cost model adds one).</p>")
    rows = [[escape(r["device"]), ms(r["measured_p50"]),
             ("yes" if r["within"] else '<span class="bad">no</span>') if r["comparable"] else "not the target",
             escape(f"{r['ratio']}x" if r["ratio"] else "–")] for r in pred["runs"]]
    return (f"<h2>Predicted vs measured</h2><p>Predicted on {escape(str(pred['target']))} ({escape(data['format'])}): "
            f"{ms(pred['low_ms'])}–{ms(pred['high_ms'])} ms</p>" +
            (_table(["device", "measured p50", "within range", "measured / predicted"], rows) if rows else
             '<p class="note">No run measured yet to compare with.</p>'))


def _failed(failed: list[dict]) -> str:
    if not failed:
        return ""
    rows = [[escape(f["device"] or "?") + (" (earlier build)" if f.get("previous_build") else ""), _when(f["time"]),
             escape(f["stage"] or "?"),
             '<span class="bad">' + escape(f["error"] or "") + "</span>" + (f"<br>fix: {escape(f['hint'])}" if f["hint"] else "")]
            for f in failed]
    return "<h2>Failed runs</h2>" + _table(["device", "when (UTC)", "stage", "error"], rows)


def _when(iso: str | None) -> str:
    """'2026-11-22T03:25:47+00:00' -> '2026-11-22 03:25:47' that never wraps inside a table cell."""
    return f'<span class="t">{escape((iso or "")[:19]).replace("T", " ")}</span>'


def _warnings(warnings: list[str]) -> str:
    if not warnings:
        return ""
    return "<h2>Build warnings</h2><ul>" + "".join(f"<li>{escape(w)}</li>" for w in warnings) + "</ul>"


def render_search(doc: dict, results: list[dict], name: str, target: str) -> str:
    """report.html of the search: the front plotted (agreement vs latency on the search's axis: measured,
    emulated instructions or predicted; size as the marker's area), and every candidate in a table."""
    axis = doc.get("axis") or {"key": "predicted_ms", "label": "latency predicted on the target (ms)"}
    key = axis["key"]
    labelled = doc.get("reference_accuracy") is not None
    png = plots.pareto(results, doc.get("chosen"), doc["reference_accuracy"] if labelled else doc.get("reference_agreement"),
                       key, axis["label"], "accuracy" if labelled else "agreement")

    def cell(value, fmt):
        return "–" if value is None else fmt.format(value)

    measured = key != "predicted_ms"
    rows = [[escape(r["id"]), cell(r.get("accuracy"), "{:.2f}"), cell(r.get("agreement"), "{:.2f}"),
             cell(r.get("divergence"), "{:.4f}"),
             cell(r.get("predicted_ms"), "{:.3f}")]
            + ([cell(r.get(key), "{:,}" if key == "instructions" else "{:.4f}")] if measured else [])
            + [cell(r.get("bytes") and r["bytes"] / 1e3, "{:.1f}"),
               "yes" if r.get("pareto") else "", escape("; ".join(r.get("misses") or []) or "meets it")]
            for r in sorted(results, key=lambda r: (r.get(key) or 0))]
    chosen = doc.get("chosen")
    header = (["candidate", "accuracy %", "agreement %", "divergence", "predicted ms"]
              + ([{"measured_ms": "measured ms", "instructions": "guest instructions"}[key]] if measured else [])
              + ["size KB", "on the front", "budget"])
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>edgekit search: {escape(name)} → {escape(target)}</title><style>{CSS}</style></head><body>",
        f"<h1>edgekit search: {escape(name)} → {escape(target)}</h1>",
        f'<p class="sub">{len(results)} candidates built, {len(doc.get("skipped", []))} ruled out by the cost model '
        f'before training; ordered by {escape(axis["label"])}; chosen: <b>{escape(chosen or "none meets the budget")}</b></p>',
        _img(png, "Pareto front", f"{'accuracy on' if labelled else 'top-1 agreement with the unpruned model on'} the calibration data vs "
             f"{escape(axis['label'])}; marker area: artifact size; the front is joined"),
        _table(header, rows),
        f'<p class="note">judged on the calibration data: {escape(doc.get("judged_on") or "agreement")}; accuracy '
        '(where it has labels), agreement and divergence (from the unpruned model&#39;s outputs: KL of the softmaxes, '
        'lower is closer; it orders candidates of equal agreement)</p>',
        "</body></html>"])
