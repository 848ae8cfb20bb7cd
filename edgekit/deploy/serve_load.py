"""`edgekit bench BUILD --serve URL`: a bounded load test of a running edgekit server, recorded in
the build like a device run (device_runs/<host>-serve-<time>.json and manifest.json's serve_loads).

Only servers this build may speak for are loaded: one on this computer (a loopback address), or
one `edgekit deploy --serve` of this build started (its URL is in the manifest). And only the
artifact of this build: the server's /v1/model must report its sha256. A load test is never
pointed at someone else's service.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import types
from pathlib import Path

from edgekit.deploy.records import BuildInfo, timestamp, write_run
from edgekit.errors import DeviceError, UsageError
from edgekit.manifest import update_manifest
from edgekit.runtime.runner import NumpyInputs, RunnerError, load_arrays
from edgekit.serve.load import (
    MAX_CONCURRENCY,
    MAX_REQUESTS,
    Payload,
    Unreachable,
    get_json,
    parse_url,
    run_level,
    server_rss_mb,
)

MANIFEST_KEY = "serve_loads"


def deployed_urls(build: BuildInfo) -> set[str]:
    """URLs `deploy --serve` of this build printed (recorded in its manifest's device_runs)."""
    urls = set()
    for run in build.manifest.get("device_runs") or []:
        service = run.get("service") or {}
        for key in ("url", "local_url"):
            if service.get(key):
                urls.add(service[key].rstrip("/"))
    return urls


def check_url(build: BuildInfo, url: str) -> str:
    try:
        host, port, path = parse_url(url)
    except ValueError as e:
        raise UsageError(f"--serve {e}", hint="e.g. --serve http://127.0.0.1:8080") from None
    if path:
        raise UsageError(f"--serve {url}: give the server's root (http://HOST:PORT), not a path")
    base = f"http://{host if ':' not in host else '[' + host + ']'}:{port}"
    if not _loopback(host) and base not in deployed_urls(build):
        known = ", ".join(sorted(deployed_urls(build))) or "none yet"
        raise UsageError(f"--serve {url}: not this computer and not a server `edgekit deploy --serve` started for "
                         f"this build (those: {known})",
                         hint="load-test only your own server: deploy this build with --serve first, or serve it here "
                              "(edgekit serve BUILD) and use http://127.0.0.1:PORT")
    return base


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def request_payload(build: BuildInfo, inputs: Path | None) -> Payload:
    """One request's JSON body: the first sample of --inputs, else the runner's seeded random inputs."""
    import numpy as np

    specs = build.inputs
    if inputs is not None:
        try:
            arrays = load_arrays(str(inputs), specs)
        except RunnerError as e:
            raise UsageError(str(e)) from None
    else:
        arrays = NumpyInputs.make_inputs(types.SimpleNamespace(np=np), specs, None)
    body = json.dumps({"inputs": {s["name"]: a.tolist() for s, a in zip(specs, arrays)}}).encode()
    return Payload(body, "application/json")


def load_test(build: BuildInfo, url: str, concurrency: list[int], requests: int, inputs: Path | None = None,
              say=None) -> dict:
    """Run each concurrency level in turn; the record is written to device_runs/ and summarised in the manifest."""
    if build.generating:
        raise UsageError(f"--serve: {build.dir} is a text-generation build; the load test sends /v1/predict requests",
                         hint="time its generation instead: `edgekit bench BUILD` (this computer) or "
                              "`edgekit deploy BUILD --device DEVICE --bench`")
    if not concurrency or any(not 1 <= c <= MAX_CONCURRENCY for c in concurrency):
        raise UsageError(f"--concurrency: each level must be 1-{MAX_CONCURRENCY}, got {concurrency}")
    if not 1 <= requests <= MAX_REQUESTS:
        raise UsageError(f"--requests must be 1-{MAX_REQUESTS}, got {requests}")
    base = check_url(build, url)
    payload = request_payload(build, inputs)
    try:
        status, model = get_json(base, "/v1/model")
    except Unreachable as e:
        raise DeviceError(f"nothing answers at {base}: {e}",
                          hint="start the server first: edgekit serve BUILD, or edgekit deploy BUILD --device D --serve") from None
    if status != 200 or model.get("sha256") != build.sha256:
        raise UsageError(f"{base} serves another artifact (sha256 {str(model.get('sha256'))[:12]}; this build's "
                         f"{build.format} artifact is {build.sha256[:12]})",
                         hint="load-test the server of this build (pick the artifact with --format)")
    record = {"ok": True, "kind": "serve-load", "url": base, "device": parse_url(base)[0],
              "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "stamp": timestamp(),
              "build": {"name": build.manifest["name"], "target": build.manifest["target"], "format": build.format,
                        "artifact": build.artifact.name, "sha256": build.sha256},
              "server": {k: model.get(k) for k in ("runtime", "threads", "batch", "server")},
              "request": {"content_type": payload.content_type, "bytes": len(payload.body),
                          "inputs": str(inputs) if inputs else "seeded random (the runner's)"},
              "levels": []}
    for c in concurrency:
        if say:
            say(f"concurrency {c}: {requests} requests")
        record["levels"].append(run_level(base, payload, c, requests))
    try:
        rss = server_rss_mb(base)
    except Unreachable:  # the server went away after the load: the levels above still stand
        rss = None
    record["server_after"] = {"rss_mb": round(rss, 1)} if rss is not None else {}
    name = "serve-" + record["device"].replace(":", "_").strip("[]")
    path = write_run(build, name, record)
    record["record_file"] = str(path)
    summary = {"url": base, "time": record["time"], "format": build.format, "file": str(path.relative_to(build.dir)),
               "levels": [{k: level.get(k) for k in ("concurrency", "requests", "throughput_rps", "p50_ms", "p90_ms",
                                                      "p99_ms", "refused_503", "failed")} for level in record["levels"]]}
    update_manifest(build.dir, lambda doc: doc.setdefault(MANIFEST_KEY, []).append(summary))
    return record

