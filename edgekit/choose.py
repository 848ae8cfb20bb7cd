"""Which artifact of a build to ship, and why: what `edgekit report` recommends and what
`edgekit build --format auto` keeps as the build's primary artifact. Reads a manifest only."""

from __future__ import annotations


SAME_SPEED = 1.1  # predicted latencies within this ratio of the fastest count as as fast


def recommend(manifest: dict) -> dict:
    """Which artifact to ship, and why: {"file", "format", "why"} ("file" None when none passed).

    Of the artifacts that passed the quality gate: those with every MAC on their runtime's fast
    kernels (the build's lint) first, then the fastest predicted on the target (each format by its
    own kernel library's cost, validate/cost.py; within SAME_SPEED of the fastest counts as as
    fast: the model does not resolve finer), then the target profile's own format (what its board
    is set up to run), then the closest to float (cosine)."""
    formats = manifest.get("formats") or {}
    checks = ((manifest.get("validation") or {}).get("formats") or {})
    passed = {f: r for f, r in formats.items() if (r.get("gate") or {}).get("passed")}
    profile_format = (manifest.get("target_profile") or {}).get("format")
    if not passed:
        return {"file": None, "format": None,
                "why": "no artifact passed the quality gate: nothing here keeps the float model's outputs"}

    def fast_share(fmt):
        return ((checks.get(fmt) or {}).get("lint") or {}).get("macs_fast_share")

    def predicted(fmt):
        return ((checks.get(fmt) or {}).get("prediction") or {}).get("latency_ms")

    points = [p for p in map(predicted, passed) if p]
    fastest = min(points) if points else None

    def rank(fmt):
        share, point = fast_share(fmt), predicted(fmt)
        return (share is not None and share >= 1.0, point is not None and point <= fastest * SAME_SPEED,
                fmt == profile_format, (passed[fmt].get("metrics") or {}).get("cosine") or -1.0)

    best = max(passed, key=rank)
    rec, reasons = passed[best], ["passes the quality gate"]
    share = fast_share(best)
    if share is not None:
        reasons.append(f"{share * 100:.0f} % of MACs on {checks[best]['lint'].get('fast_path', 'its fast kernels')}")
    slower = [formats[f]["artifact"]["file"] for f in passed
              if predicted(f) and fastest and predicted(f) > fastest * SAME_SPEED]
    if rank(best)[1] and slower:
        target = checks[best]["prediction"].get("target") or manifest.get("target")
        reasons.append(f"fastest predicted on {target} ({', '.join(slower)} slower)")
    if best == profile_format:
        reasons.append(f"the {manifest.get('target')} profile's format")
    elif len(passed) > 1:
        reasons.append("the closest to float of those that pass")
    others = [formats[f]["artifact"]["file"] for f in formats if f not in passed]
    if others:
        reasons.append(f"{', '.join(others)} did not pass")
    return {"file": rec["artifact"]["file"], "format": best, "why": "; ".join(reasons)}
