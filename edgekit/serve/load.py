"""A bounded load test of an edgekit server (`edgekit bench BUILD --serve URL`).

For each concurrency level C, C client threads share N requests (the same real
input each time), each thread on its own keep-alive connection, as C users of
the service would. Per level: throughput (answered requests per second of wall
time), latency percentiles of the 200 answers (client side: send to last byte),
and how many were refused (503, the server's documented overload answer) or
failed otherwise. Only the standard library: the client is not the thing measured.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from edgekit.runtime.runner import percentile

WARMUP_REQUESTS = 20  # per level, untimed: connections opened, the server's caches warm
MAX_REQUESTS = 100_000  # per level: a load test is bounded
MAX_CONCURRENCY = 256


@dataclass(frozen=True)
class Payload:
    body: bytes
    content_type: str


class Unreachable(Exception):
    pass


def parse_url(url: str) -> tuple[str, int, str]:
    """http://host[:port][/] -> (host, port, base path); ValueError names what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"'{url}' is not an http://HOST:PORT URL")
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError(f"'{url}': the port is not a number in 1-65535") from None
    return parts.hostname, port, parts.path.rstrip("/")


def _get(url: str, path: str, timeout: float) -> tuple[int, bytes]:
    host, port, base = parse_url(url)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", base + path)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as e:
        raise Unreachable(f"{url}{path}: {e}") from None
    finally:
        conn.close()


def get_json(url: str, path: str, timeout: float = 10.0) -> tuple[int, dict]:
    status, body = _get(url, path, timeout)
    try:
        return status, json.loads(body or b"{}")
    except ValueError as e:
        raise Unreachable(f"{url}{path}: not JSON: {e}") from None


def server_rss_mb(url: str, timeout: float = 10.0) -> float | None:
    """The server's resident memory in MB, from its /metrics (process_resident_memory_bytes); None if absent."""
    for line in _get(url, "/metrics", timeout)[1].decode().splitlines():
        if line.startswith("process_resident_memory_bytes "):
            return float(line.split()[1]) / 2**20
    return None


def run_level(url: str, payload: Payload, concurrency: int, requests: int, timeout: float = 30.0) -> dict:
    """One concurrency level: `requests` POSTs to /v1/predict by `concurrency` threads."""
    host, port, base = parse_url(url)
    _hammer(host, port, base, payload, min(concurrency, WARMUP_REQUESTS), min(WARMUP_REQUESTS, requests), timeout)
    start = time.perf_counter()
    results = _hammer(host, port, base, payload, concurrency, requests, timeout)
    wall = time.perf_counter() - start
    ok = sorted(ms for status, ms in results if status == 200)
    statuses: dict[str, int] = {}
    for status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    level = {"concurrency": concurrency, "requests": requests, "seconds": round(wall, 3),
             "answered": len(ok), "throughput_rps": round(len(ok) / wall, 1) if wall > 0 else None,
             "refused_503": statuses.get("503", 0),
             "failed": sum(n for s, n in statuses.items() if s not in ("200", "503")), "statuses": statuses}
    if ok:
        level.update(p50_ms=round(percentile(ok, 50), 3), p90_ms=round(percentile(ok, 90), 3),
                     p99_ms=round(percentile(ok, 99), 3), mean_ms=round(sum(ok) / len(ok), 3), max_ms=round(ok[-1], 3))
    return level


def _hammer(host, port, base, payload: Payload, concurrency: int, requests: int, timeout: float) -> list[tuple]:
    """(status, ms) per request; status "error" for a connection that failed (the thread reconnects)."""
    counter = iter(range(requests))
    lock = threading.Lock()
    results: list[tuple] = []
    headers = {"Content-Type": payload.content_type}

    def worker():
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        mine = []
        while True:
            with lock:
                if next(counter, None) is None:
                    break
            start = time.perf_counter()
            try:
                conn.request("POST", base + "/v1/predict", body=payload.body, headers=headers)
                response = conn.getresponse()
                response.read()
                mine.append((response.status, (time.perf_counter() - start) * 1e3))
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException):
                mine.append(("error", (time.perf_counter() - start) * 1e3))
                conn.close()
        conn.close()
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results
