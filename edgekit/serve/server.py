#!/usr/bin/env python3
"""edgekit model server: one artifact behind HTTP, on the workstation or on the board.

Copied to the device as `serve.py` beside `runner.py` (the device runner, whose
runtime classes load and run the artifact here too), so it imports nothing of
edgekit but that file: the standard library, numpy, the artifact's runtime and
the HTTP stack

    uvicorn + starlette   (pip: uvicorn starlette; both pure Python, in Debian and
                           Raspberry Pi OS as python3-uvicorn / python3-starlette)
    prometheus_client     (pip: prometheus-client; pure Python, no dependencies)

Why these: pure-Python wheels install on any board without a compiler;
uvicorn's h11 does the HTTP parsing and its shutdown is graceful on SIGTERM (stop
accepting, finish what is in flight); asyncio lets one event loop hold the
bounded queue and the micro-batcher while a single worker thread owns the
runtime (no runtime here promises thread safety, and each already uses its own
intra-op threads).

    python3 serve.py model.onnx --spec serve.json --port 8080
    python3 serve.py model.onnx --spec serve.json --supervise --pidfile serve.pid   # restart on failure

Endpoints: POST /v1/predict, GET /healthz, GET /v1/model, GET /metrics (see
`edgekit serve --help` and the README's "Serve on the board"). A text-generation
build (serve.json "task") answers POST /v1/generate instead of /v1/predict: greedy
tokens streamed as NDJSON, one request generating at a time; its tokenizer is
read with the `tokenizers` package (pip: tokenizers, a wheel for aarch64).
On SIGTERM/SIGINT it stops accepting, finishes what is in flight and exits 0.
Exit status 1 when the artifact cannot be loaded or served, 2 for bad arguments,
3 when a package is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import math
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

try:  # inside the edgekit package (edgekit serve on the workstation) ...
    from edgekit.runtime import runner
except ImportError:  # ... or as serve.py beside runner.py on the device
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import runner

EXIT_FAILED, EXIT_USAGE, EXIT_MISSING = 1, 2, 3

# Histogram buckets of request and inference durations, in seconds (Prometheus' unit): from a
# small CNN on a Pi 5 (~0.1 ms) to a transformer under emulation (seconds).
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SAMPLE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
ROUTES = ("/v1/predict", "/v1/generate", "/healthz", "/v1/model", "/metrics")
JSON_TYPES = ("application/json",)
NPY_TYPES = ("application/x-npy", "application/npy")
NPZ_TYPES = ("application/x-npz", "application/npz", "application/zip")
DEFAULT_TOP_K = 5


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    threads: int = 1
    max_batch: int = 32  # samples one runtime call sequence may carry for several requests
    max_wait_ms: float = 2.0  # how long a partly filled static batch waits for more requests
    queue_size: int = 32  # requests waiting for the worker; one more is answered 503 + Retry-After
    max_body_bytes: int = 4 * 1024 * 1024  # a 224x224x3 float image is ~1.5 MB as JSON, 0.6 MB as .npy
    max_samples: int = 64  # samples in one request
    allow_nonfinite: bool = False  # NaN/inf in float inputs are refused unless the model is known to take them
    drain_seconds: int = 30  # graceful shutdown: how long in-flight requests may take after SIGTERM

    def problem(self) -> str | None:
        """What is wrong with these settings (named by flag), or None."""
        if not 0 < self.port < 65536:
            return f"--port {self.port}: ports are 1-65535"
        for flag, value, least in (("--threads", self.threads, 1), ("--max-batch", self.max_batch, 1),
                                   ("--queue-size", self.queue_size, 1), ("--max-samples", self.max_samples, 1),
                                   ("--max-wait-ms", self.max_wait_ms, 0), ("--drain-seconds", self.drain_seconds, 0),
                                   ("--max-body-mb", self.max_body_bytes, 1)):
            if value < least:
                return f"{flag} must be at least {least}, got {value}"
        return None

    def argv(self) -> list[str]:
        """These settings as the server's command-line options."""
        argv = ["--host", self.host, "--port", str(self.port), "--threads", str(self.threads),
                "--max-batch", str(self.max_batch), "--max-wait-ms", f"{self.max_wait_ms:g}",
                "--queue-size", str(self.queue_size), "--max-body-mb", f"{self.max_body_bytes / 2**20:g}",
                "--max-samples", str(self.max_samples), "--drain-seconds", str(self.drain_seconds)]
        return argv + (["--allow-nonfinite"] if self.allow_nonfinite else [])

    @property
    def connection_limit(self) -> int:
        """Connections uvicorn serves at once (past them it answers 503 itself, without Retry-After):
        room for the queue twice over plus clients being read, so the memory request bodies take
        stays below connection_limit x max_body_bytes (128 x 4 MB with the defaults)."""
        return 2 * self.queue_size + 64


class BadRequest(Exception):
    """A request the server refuses: `status` (4xx/503) and a message naming what is wrong."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


# --- the model ---------------------------------------------------------------------------


def as_arrays(np, outputs) -> list:
    """A runtime's outputs (a tensor, a list or tuple of them, numpy arrays) as a list of numpy arrays."""
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    return [o.detach().cpu().numpy() if hasattr(o, "detach") else np.asarray(o) for o in outputs]


def _load(rt, artifact: str, threads: int) -> tuple[str, bool, float]:
    """The artifact's sha256, whether the thread count took, and its load time (ms) in `rt`."""
    with open(artifact, "rb") as f:
        sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    applied = rt.set_threads(threads)
    start = time.perf_counter()
    try:
        rt.load(artifact)
    except Exception as e:
        raise runner.RunnerError("load_failed", f"loading {artifact} failed: {type(e).__name__}: {e}") from None
    return sha256, applied, (time.perf_counter() - start) * 1e3


class ServedModel:
    """The artifact in its runtime, run by one worker thread, and the checks on what requests send."""

    def __init__(self, artifact: str, doc: dict, settings: Settings):
        import numpy as np

        self.np, self.settings = np, settings
        self.specs = doc["inputs"]
        self.batch = int(self.specs[0]["shape"][0])  # static: every input of an artifact has the same batch
        self.labels = (doc.get("model") or {}).get("labels")
        self.rt = runner.runtime_for(doc.get("runtime"))
        self.sha256, self.threads_applied, self.load_ms = _load(self.rt, artifact, settings.threads)
        # One warm inference: /healthz reports it, and it tells the outputs' names and whether each
        # carries the batch first (then samples of several requests may share one runtime call).
        start = time.perf_counter()
        warm = self._run(runner.NumpyInputs.make_inputs(self, self.specs, None))  # the runner's seeded inputs
        self.warm_ms = (time.perf_counter() - start) * 1e3
        self.output_names = ["output"] if len(warm) == 1 else [f"output_{i}" for i in range(len(warm))]
        self.output_shapes = [list(o.shape) for o in warm]
        self.per_sample = all(o.ndim >= 1 and o.shape[0] == self.batch for o in warm)

    def _run(self, arrays) -> list:
        """numpy arrays in (as the runtime takes them: torch tensors for ExecuTorch), numpy arrays out."""
        return as_arrays(self.np, self.rt.run(self.rt.make_inputs(self.specs, arrays)))

    # --- requests -> checked arrays ----------------------------------------------------

    def expected(self, spec: dict) -> str:
        sample = ", ".join(str(d) for d in spec["shape"][1:])
        return f"[N, {sample}] {spec['dtype']} (or [{sample}] for one sample)" if sample else f"[N] {spec['dtype']}"

    def check_inputs(self, named: dict) -> tuple[list, int]:
        """The request's arrays as [n, *sample] in the spec's dtypes, and n; BadRequest(422) otherwise."""
        np = self.np
        wanted = [s["name"] for s in self.specs]
        unknown = [k for k in named if k not in wanted]
        if unknown:
            raise BadRequest(422, f"unknown input '{unknown[0]}': the model takes {', '.join(wanted)}")
        arrays, counts = [], set()
        for spec in self.specs:
            name = spec["name"]
            if name not in named:
                raise BadRequest(422, f"missing input '{name}': expected {self.expected(spec)}")
            a = self._array(named[name], spec)
            sample = tuple(spec["shape"][1:])
            if a.shape == sample:
                a = a.reshape((1, *sample))
            elif a.ndim != len(sample) + 1 or a.shape[1:] != sample or a.shape[0] < 1:
                raise BadRequest(422, f"input '{name}' has shape {list(a.shape)}: expected {self.expected(spec)}")
            if a.shape[0] > self.settings.max_samples:
                raise BadRequest(413, f"input '{name}' has {a.shape[0]} samples: at most {self.settings.max_samples} "
                                      "per request (the server's --max-samples)")
            if a.dtype.kind == "f" and not self.settings.allow_nonfinite and not np.isfinite(a).all():
                where = [int(i) for i in np.argwhere(~np.isfinite(a))[0]]
                raise BadRequest(422, f"input '{name}' holds NaN or infinity (first at index {where}): the model "
                                      "takes finite values (start the server with --allow-nonfinite if it does not)")
            arrays.append(a)
            counts.add(a.shape[0])
        if len(counts) > 1:
            raise BadRequest(422, f"the inputs hold different numbers of samples ({', '.join(map(str, sorted(counts)))}): "
                                  "send the same N for every input")
        n = counts.pop()
        if not self.per_sample and n != self.batch:
            raise BadRequest(422, f"this model's outputs do not carry the batch first: send exactly {self.batch} "
                                  f"sample(s) per request, not {n}")
        return arrays, n

    def _array(self, value, spec: dict):
        np, name, dtype = self.np, spec["name"], spec["dtype"]
        try:
            a = np.asarray(value)
        except ValueError:  # ragged nested lists
            raise BadRequest(422, f"input '{name}' is not a rectangular array: expected {self.expected(spec)}") from None
        if a.dtype.kind not in "biuf":
            raise BadRequest(422, f"input '{name}' holds {a.dtype} values: expected numbers of {self.expected(spec)}")
        if dtype.startswith("float"):
            return a.astype(dtype, copy=False)
        if a.dtype.kind == "f":  # ids, masks: a float that is a whole number is accepted, 1.5 is not
            if not np.isfinite(a).all() or (a != np.round(a)).any():
                raise BadRequest(422, f"input '{name}' takes {dtype} values; it holds fractions")
        if dtype == "bool":
            if ((a != 0) & (a != 1)).any():
                raise BadRequest(422, f"input '{name}' takes bool values (true/false or 0/1)")
            return a.astype(bool)
        info = np.iinfo(dtype)
        if a.size and (a.min() < info.min or a.max() > info.max):
            raise BadRequest(422, f"input '{name}' has values outside {dtype}")
        return a.astype(dtype)

    # --- running a batch of requests (the worker thread) -------------------------------------

    def infer(self, jobs: list) -> float:
        """Run every job's samples through the static batch, in order; fill each job's outputs.

        With `per_sample`, samples of several jobs share a runtime call (a batch of B
        takes B samples from whichever jobs are next; the last is padded with copies of
        its first sample, whose outputs are dropped). Returns the runtime time in ms."""
        np, b = self.np, self.batch
        if not self.per_sample:
            spent = 0.0
            for job in jobs:
                start = time.perf_counter()
                job.outputs = self._run(job.arrays)  # n == batch: checked with the request
                spent += (time.perf_counter() - start) * 1e3
            return spent
        stacked = [np.concatenate([job.arrays[i] for job in jobs]) for i in range(len(self.specs))]
        total = stacked[0].shape[0]
        pieces, spent = [], 0.0
        for lo in range(0, total, b):
            chunk = [a[lo: lo + b] for a in stacked]
            short = b - chunk[0].shape[0]
            if short:
                chunk = [np.concatenate([c, np.repeat(c[:1], short, axis=0)]) for c in chunk]
            start = time.perf_counter()
            outs = self._run(chunk)
            spent += (time.perf_counter() - start) * 1e3
            pieces.append([o[: b - short] for o in outs])
        merged = [np.concatenate([p[i] for p in pieces]) for i in range(len(pieces[0]))]
        at = 0
        for job in jobs:
            job.outputs = [m[at: at + job.n] for m in merged]
            at += job.n
        return spent

    def top_k(self, outputs: list, k: int) -> list | None:
        """Per sample, the k best labels of the first output whose last axis has one score per label:
        probabilities (softmax of logits; outputs already summing to 1 are taken as they are)."""
        np = self.np
        if not self.labels or k <= 0:
            return None
        for o in outputs:
            if o.ndim == 2 and o.shape[1] == len(self.labels):
                scores = o.astype(np.float64)
                if not ((scores >= 0).all() and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3)):
                    scores = np.exp(scores - scores.max(axis=1, keepdims=True))
                    scores /= scores.sum(axis=1, keepdims=True)
                best = np.argsort(-scores, axis=1)[:, :k]
                return [[{"label": self.labels[j], "index": int(j), "score": round(float(row[j]), 6)} for j in idx]
                        for row, idx in zip(scores, best)]
        return None


# --- the queue and the micro-batcher ---------------------------------------------------------


@dataclass
class Job:
    arrays: list
    n: int
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    outputs: list | None = None
    inference_ms: float = 0.0


class Batcher:
    """A bounded queue in front of one worker thread.

    The worker takes the next request and every one already waiting (up to
    `max_batch` samples); when the artifact's static batch is larger than one and
    is not full yet, it waits up to `max_wait_ms` for more. A full queue refuses
    at once (QueueFull -> 503 with Retry-After): memory never grows with load."""

    def __init__(self, model: ServedModel, settings: Settings, metrics):
        self.model, self.settings, self.metrics = model, settings, metrics
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=settings.queue_size)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgekit-infer")
        self.job_ms = None  # moving average of a request's runtime time, for Retry-After
        self.alive = True
        self.task = None

    def start(self):
        self.task = asyncio.get_running_loop().create_task(self._loop())

    def submit(self, arrays: list, n: int) -> Job:
        job = Job(arrays, n, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise BadRequest(503, f"the server's queue is full ({self.settings.queue_size} requests waiting): retry later",
                             {"Retry-After": str(self.retry_after())}) from None
        self.metrics.queue.set(self.queue.qsize())
        return job

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained: its length times a request's mean runtime time."""
        per_job = (self.job_ms or 10.0) / 1e3
        return max(1, math.ceil(self.queue.qsize() * per_job))

    async def _loop(self):
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            samples = jobs[0].n
            deadline = loop.time() + self.settings.max_wait_ms / 1e3
            while samples < self.settings.max_batch:
                try:
                    jobs.append(self.queue.get_nowait())
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if self.model.batch == 1 or samples % self.model.batch == 0 or remaining <= 0:
                        break
                    try:
                        jobs.append(await asyncio.wait_for(self.queue.get(), remaining))
                    except asyncio.TimeoutError:
                        break
                samples += jobs[-1].n
            self.metrics.queue.set(self.queue.qsize())
            try:
                spent = await loop.run_in_executor(self.executor, self.model.infer, jobs)
            except Exception as e:  # a runtime failure fails these requests (500), not the server
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            self.metrics.inference.observe(spent / 1e3)
            self.metrics.samples.observe(samples)
            per_job = spent / len(jobs)
            self.job_ms = per_job if self.job_ms is None else 0.9 * self.job_ms + 0.1 * per_job
            for job in jobs:
                job.inference_ms = spent * job.n / samples
                if not job.future.done():  # the client may have gone away
                    job.future.set_result(job)

    async def stop(self):
        self.alive = False
        if self.task:
            self.task.cancel()
        self.executor.shutdown(wait=True)


class GeneratingModel:
    """A text-generation artifact (a decoder with its KV cache: runner.decoder_for) and its tokenizer."""

    def __init__(self, artifact: str, doc: dict, settings: Settings):
        try:
            from tokenizers import Tokenizer
        except ImportError as e:
            raise runner.RunnerError("runtime_missing", f"cannot import tokenizers ({e}): pip install tokenizers",
                                     EXIT_MISSING, module="tokenizers", package="tokenizers") from None
        self.doc, self.settings = doc, settings
        self.tokenizer = Tokenizer.from_file(os.path.join(os.path.dirname(os.path.abspath(artifact)), doc["tokenizer"]))
        self.eos_id = doc.get("eos_id")
        self.rt = runner.decoder_for(doc.get("runtime"))
        self.sha256, self.threads_applied, self.load_ms = _load(self.rt, artifact, settings.threads)
        self.max_seq_len = self.rt.max_seq_len
        start = time.perf_counter()
        self.rt.step([0], 0)  # one warm step: /healthz answering means the decoder ran once
        self.warm_ms = (time.perf_counter() - start) * 1e3

    def check_request(self, body: bytes) -> tuple[list, int]:
        """(prompt token ids, max_new_tokens) of a JSON body {"prompt": TEXT, "max_new_tokens": N}."""
        try:
            doc = json.loads(body)
        except ValueError as e:
            raise BadRequest(400, f"the body is not valid JSON: {e}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("prompt"), str):
            raise BadRequest(400, 'send a JSON object with the text to continue: {"prompt": "...", "max_new_tokens": 64}')
        new = doc.get("max_new_tokens", 64)
        if isinstance(new, bool) or not isinstance(new, int) or new < 1:
            raise BadRequest(400, f"max_new_tokens must be a whole number of at least 1, got {new!r}")
        ids = self.tokenizer.encode(doc["prompt"]).ids
        if not ids:
            raise BadRequest(400, "the prompt is empty: give at least one token of text")
        if len(ids) >= self.max_seq_len:
            raise BadRequest(400, f"the prompt is {len(ids)} tokens; the artifact's context holds {self.max_seq_len}: "
                                  "shorten it, or rebuild with a larger --max-seq-len")
        return ids, new

    def generate(self, ids: list, max_new_tokens: int, on_token) -> dict:
        """Greedy tokens through on_token(id); the final line's figures. Generation stops at the context's end."""
        tokens, timing = runner.generate_greedy(self.rt.step, ids, max_new_tokens, self.max_seq_len, self.eos_id,
                                                on_token)
        decoded = len(tokens) - 1
        return {"done": True, "stopped": timing["stopped"], "prompt_tokens": len(ids), "new_tokens": len(tokens),
                "text": self.tokenizer.decode(tokens, skip_special_tokens=True),
                "time_to_first_token_ms": round(timing["prefill_s"] * 1e3, 3),
                "decode_tokens_per_s": round(decoded / timing["decode_s"], 3) if decoded and timing["decode_s"] > 0
                else None}


class ClientGone(Exception):
    """The client of a streamed generation went away: its generation stops at the next token."""


class GenerationQueue:
    """One worker thread generates for one request at a time; up to queue_size more wait, one more is
    answered 503 with Retry-After. Tokens reach the request's stream as they are made."""

    def __init__(self, model: GeneratingModel, settings: Settings, metrics):
        self.model, self.settings, self.metrics = model, settings, metrics
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgekit-generate")
        self.waiting = 0
        self.job_ms = None
        self.alive = True

    def start(self):
        pass

    def stream(self, ids: list, max_new_tokens: int):
        """An async iterator of NDJSON lines: {"token", "text"} per token, then the figures."""
        if self.waiting >= self.settings.queue_size:
            per_job = (self.job_ms or 1000.0) / 1e3
            raise BadRequest(503, f"the server's queue is full ({self.settings.queue_size} requests waiting): "
                                  "retry later", {"Retry-After": str(max(1, math.ceil(self.waiting * per_job)))})
        self.waiting += 1
        self.metrics.queue.set(self.waiting)
        return self._lines(ids, max_new_tokens)

    async def _lines(self, ids: list, max_new_tokens: int):
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue = asyncio.Queue()
        gone = threading.Event()
        made: list = []
        shown = [0]

        def on_token(token: int):  # in the worker thread
            if gone.is_set():
                raise ClientGone()
            made.append(token)
            text = self.model.tokenizer.decode(made, skip_special_tokens=True)
            piece = ""
            if not text.endswith("\ufffd"):  # a character split over byte tokens waits for its last byte
                piece, shown[0] = text[shown[0]:], len(text)
            loop.call_soon_threadsafe(tokens.put_nowait, {"token": token, "text": piece})

        def work():
            start = time.perf_counter()
            try:
                return self.model.generate(ids, max_new_tokens, on_token)
            finally:
                spent = (time.perf_counter() - start) * 1e3
                self.job_ms = spent if self.job_ms is None else 0.9 * self.job_ms + 0.1 * spent
                self.metrics.inference.observe(spent / 1e3)

        future = loop.run_in_executor(self.executor, work)
        try:
            while not future.done() or not tokens.empty():
                getter = asyncio.ensure_future(tokens.get())
                await asyncio.wait({getter, future}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield json.dumps(getter.result()) + "\n"
                else:
                    getter.cancel()
            try:
                final = future.result()
            except Exception as e:  # the runtime failed mid-stream: the last line says so
                final = {"done": True, "error": f"the runtime failed: {type(e).__name__}: {e}"}
            yield json.dumps(final) + "\n"
        finally:
            gone.set()
            self.waiting -= 1
            self.metrics.queue.set(self.waiting)

    async def stop(self):
        self.alive = False
        self.executor.shutdown(wait=True)


# --- HTTP ---------------------------------------------------------------------------------


class Metrics:
    """Prometheus metrics in a registry of this server's own (plus the process' RSS, CPU, fds)."""

    def __init__(self):
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            ProcessCollector,
        )

        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter("edgekit_requests", "HTTP requests by endpoint and status code", ["endpoint", "status"],
                                registry=self.registry)
        self.latency = Histogram("edgekit_request_duration_seconds", "Time from a request's arrival to its answer",
                                 ["endpoint"], buckets=SECONDS_BUCKETS, registry=self.registry)
        self.inference = Histogram("edgekit_inference_duration_seconds", "Runtime time of one worker batch",
                                   buckets=SECONDS_BUCKETS, registry=self.registry)
        self.samples = Histogram("edgekit_batch_samples", "Samples in one worker batch", buckets=SAMPLE_BUCKETS,
                                 registry=self.registry)
        self.queue = Gauge("edgekit_queue_depth", "Requests waiting for the worker", registry=self.registry)
        self.in_flight = Gauge("edgekit_in_flight_requests", "Requests being handled", registry=self.registry)


def create_app(artifact: str, doc: dict, settings: Settings, state: dict | None = None):
    """The ASGI app. `state` (a dict) gets the model and the batcher once loaded, and `draining`."""
    import numpy as np
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    generating = doc.get("task") == "text-generation"
    state = {} if state is None else state
    state.setdefault("draining", False)
    metrics = Metrics()

    def error(status: int, message: str, headers: dict | None = None):
        return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)

    async def read_body(request) -> bytes:
        limit = settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BadRequest(413, f"the body is {int(declared)} bytes: at most {limit} (the server's --max-body-mb)")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadRequest(413, f"the body is more than {limit} bytes (the server's --max-body-mb)")
            chunks.append(chunk)
        return b"".join(chunks)

    def parse(body: bytes, content_type: str, model: ServedModel) -> dict:
        kind = content_type.split(";")[0].strip().lower()
        names = [s["name"] for s in model.specs]
        if kind in JSON_TYPES or (not kind and body[:1] in (b"{", b"[")):
            try:
                doc = json.loads(body)
            except ValueError as e:
                raise BadRequest(400, f"the body is not valid JSON: {e}") from None
            if not isinstance(doc, dict):
                raise BadRequest(400, 'the JSON body must be an object: {"inputs": {"' + names[0] + '": [...]}}')
            named = doc.get("inputs", doc) if isinstance(doc.get("inputs", doc), dict) else None
            if named is None:
                raise BadRequest(400, '"inputs" must be an object naming each input: {"inputs": {"' + names[0] + '": [...]}}')
            return named
        if kind in NPY_TYPES:
            if len(names) != 1:
                raise BadRequest(415, f"the model takes {len(names)} inputs ({', '.join(names)}): send them as "
                                      "application/x-npz, one array per input")
            try:
                return {names[0]: np.load(io.BytesIO(body), allow_pickle=False)}
            except (ValueError, OSError, EOFError) as e:
                raise BadRequest(400, f"the body is not a .npy array: {e}") from None
        if kind in NPZ_TYPES:
            return read_npz(body, names)
        raise BadRequest(415, f"unsupported Content-Type '{kind or 'none'}': send application/json, "
                              "application/x-npy or application/x-npz")

    def read_npz(body: bytes, names: list) -> dict:
        """Arrays of a .npz body, each one's size checked from its header before it is inflated
        (a small compressed body must not expand past the body limit)."""
        try:
            archive = zipfile.ZipFile(io.BytesIO(body))
            members = {}
            for info in archive.infolist():
                with archive.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(f)
                    nbytes = math.prod(shape) * dtype.itemsize
                    if nbytes > settings.max_body_bytes:
                        raise BadRequest(413, f"array '{info.filename[:-4]}' holds {nbytes} bytes: at most "
                                              f"{settings.max_body_bytes} (the server's --max-body-mb)")
                members[info.filename.removesuffix(".npy")] = info
            arrays = {k: np.load(io.BytesIO(archive.read(v)), allow_pickle=False) for k, v in members.items()}
        except BadRequest:
            raise
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise BadRequest(400, f"the body is not a .npz archive of arrays: {e}") from None
        if len(names) == 1 and names[0] not in arrays and list(arrays) == ["x"]:
            arrays = {names[0]: arrays["x"]}  # numpy.savez(f, x=...) for a one-input model, as --inputs takes
        return arrays

    async def predict(request):
        if generating:
            raise BadRequest(404, "this is a text-generation model: POST /v1/generate {\"prompt\": \"...\"}")
        model, batcher = state["model"], state["batcher"]
        start = time.perf_counter()
        if state["draining"]:
            raise BadRequest(503, "the server is shutting down", {"Retry-After": "5", "Connection": "close"})
        top_k = request.query_params.get("top_k", str(DEFAULT_TOP_K))
        if not top_k.isdigit():
            raise BadRequest(400, f"top_k must be a whole number, got '{top_k}'")
        body = await read_body(request)
        arrays, n = model.check_inputs(parse(body, request.headers.get("content-type", ""), model))
        job = batcher.submit(arrays, n)
        try:
            await job.future
        except Exception as e:  # the runtime failed on these inputs: this request fails, the server goes on
            return error(500, f"the runtime failed on this request: {type(e).__name__}: {e}")
        doc = {"outputs": {name: o.tolist() for name, o in zip(model.output_names, job.outputs)},
               "samples": n, "sha256": model.sha256,
               "latency_ms": round((time.perf_counter() - start) * 1e3, 3),
               "queue_ms": round((time.perf_counter() - job.enqueued) * 1e3 - job.inference_ms, 3),
               "inference_ms": round(job.inference_ms, 3)}
        ranked = model.top_k(job.outputs, int(top_k))
        if ranked is not None:
            doc["top_k"] = ranked
        return json_response(doc)

    async def generate(request):
        """POST {"prompt": TEXT, "max_new_tokens": N}: greedy tokens as NDJSON lines, then the figures."""
        if not generating:
            raise BadRequest(404, "this model is not a text-generation model: POST /v1/predict")
        if state["draining"]:
            raise BadRequest(503, "the server is shutting down", {"Retry-After": "5", "Connection": "close"})
        ids, new = state["model"].check_request(await read_body(request))
        return StreamingResponse(state["batcher"].stream(ids, new), media_type="application/x-ndjson")

    def json_response(doc: dict):
        try:
            text = json.dumps(doc, allow_nan=False)
        except ValueError:  # a model that outputs NaN/inf: JSON has no such numbers, null says it honestly
            text = json.dumps(_nulls(doc, np), allow_nan=False)
        return Response(text, media_type="application/json")

    async def healthz(request):
        model, batcher = state.get("model"), state.get("batcher")
        ok = model is not None and batcher is not None and batcher.alive and not state["draining"]
        doc = {"ok": ok, "pid": os.getpid(), "draining": state["draining"]}
        if model is not None:
            doc.update(sha256=model.sha256, load_ms=round(model.load_ms, 3), warm_ms=round(model.warm_ms, 3))
        return JSONResponse(doc, status_code=200 if ok else 503)

    async def describe(request):
        model = state["model"]
        if generating:
            return JSONResponse({**(doc.get("model") or {}), "sha256": model.sha256, "task": "text-generation",
                                 "max_seq_len": model.max_seq_len, "eos_id": model.eos_id,
                                 "runtime": {"name": model.rt.name, "version": model.rt.version()},
                                 "machine": platform.machine(), "threads": settings.threads,
                                 "threads_applied": model.threads_applied,
                                 "server": {"queue_size": settings.queue_size, "max_body_bytes": settings.max_body_bytes,
                                            "generating": "one request at a time, greedy"}})
        return JSONResponse({**(doc.get("model") or {}), "sha256": model.sha256, "inputs": model.specs,
                             "outputs": [{"name": n, "shape": s} for n, s in zip(model.output_names, model.output_shapes)],
                             "batch": model.batch, "runtime": {"name": model.rt.name, "version": model.rt.version()},
                             "machine": platform.machine(),
                             "threads": settings.threads, "threads_applied": model.threads_applied,
                             "server": {"max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms,
                                        "queue_size": settings.queue_size, "max_body_bytes": settings.max_body_bytes,
                                        "max_samples": settings.max_samples, "allow_nonfinite": settings.allow_nonfinite,
                                        "micro_batching": "shared static batches" if model.per_sample and model.batch > 1
                                        else "one runtime call per sample, queued requests taken together"}})

    async def prometheus(request):
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        # Loaded before uvicorn opens its socket: /healthz answering means the model ran once.
        try:
            model = (GeneratingModel if generating else ServedModel)(artifact, doc, settings)
        except runner.RunnerError as e:
            state["error"] = e  # uvicorn only logs a failed startup; serve() raises it
            raise
        except Exception as e:
            state["error"] = runner.RunnerError("serve_failed", f"{type(e).__name__}: {e}")
            raise
        batcher = (GenerationQueue if generating else Batcher)(model, settings, metrics)
        batcher.start()
        state.update(model=model, batcher=batcher)
        try:
            yield
        finally:
            await batcher.stop()

    app = Starlette(routes=[Route("/v1/predict", predict, methods=["POST"]),
                            Route("/v1/generate", generate, methods=["POST"]), Route("/healthz", healthz),
                            Route("/v1/model", describe), Route("/metrics", prometheus)], lifespan=lifespan)

    async def asgi(scope, receive, send):
        """Every answer counted by endpoint and status; a BadRequest anywhere becomes its 4xx/503."""
        if scope["type"] != "http":
            return await app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in ROUTES else "other"
        status = {"code": 500}
        start = time.perf_counter()

        async def counted(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        metrics.in_flight.inc()
        try:
            await app(scope, receive, counted)
        finally:
            metrics.in_flight.dec()
            metrics.requests.labels(endpoint, str(status["code"])).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

    async def refused(request, exc):
        return error(exc.status, str(exc), exc.headers)

    app.add_exception_handler(BadRequest, refused)  # a handler's BadRequest becomes its 4xx/503 answer
    return asgi


def _nulls(value, np):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_nulls(v, np) for v in value]
    if isinstance(value, dict):
        return {k: _nulls(v, np) for k, v in value.items()}
    return value


def serve(artifact: str, doc: dict, settings: Settings, on_ready=None) -> int:
    """Serve until SIGTERM/SIGINT; then stop accepting, let in-flight requests finish (up to
    drain_seconds), and return 0."""
    import uvicorn

    state: dict = {}
    app = create_app(artifact, doc, settings, state)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, http="h11", loop="asyncio", lifespan="on",
                            access_log=False, log_level="warning", limit_concurrency=settings.connection_limit,
                            timeout_graceful_shutdown=settings.drain_seconds)
    server = _server_class()(config)
    server.on_exit = lambda: state.__setitem__("draining", True)  # open connections now get 503
    if on_ready is not None:
        threading.Thread(target=_when_started, args=(server, state, on_ready), daemon=True).start()
    server.run()
    if not server.started:  # the model did not load, or the port was taken
        raise state.get("error") or runner.RunnerError(
            "serve_failed", f"the server did not start on {settings.host}:{settings.port} (see the message above: "
                            "is the port in use?)")
    return 0


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, except that after a graceful stop uvicorn re-raises the signal that stopped it
        (so the process dies by it); here serve() returns instead, and the process exits 0."""

        on_exit = None

        def handle_exit(self, sig, frame):
            if self.on_exit is not None:
                self.on_exit()
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server


def _when_started(server, state: dict, on_ready) -> None:
    while not server.started and not server.should_exit:
        time.sleep(0.05)
    if server.started:
        on_ready(state)


# --- supervision where there is no systemd -----------------------------------------------------


def supervise(argv: list[str], pidfile: str | None) -> int:
    """Run the server as a child and start it again whenever it fails (exit status != 0 or killed
    by a signal other than our own SIGTERM): systemd's Restart=on-failure, for boards without
    systemd. Backoff 1 s doubling to 30 s, back to 1 s after a minute of uptime. SIGTERM/SIGINT
    is passed on to the server (which drains) and ends the supervisor."""
    if pidfile:
        with open(pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")
    child = {"proc": None, "stop": False}

    def forward(sig, frame):
        child["stop"] = True
        if child["proc"] is not None and child["proc"].poll() is None:
            child["proc"].send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    backoff = 1.0
    try:
        while not child["stop"]:
            started = time.monotonic()
            child["proc"] = subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv])
            code = child["proc"].wait()
            # Like systemd's Restart=on-failure: a clean exit (the server drained after SIGTERM) is not a failure.
            if child["stop"] or code == 0:
                return 0
            print(f"edgekit serve: the server exited with status {code}; starting it again in {backoff:g} s",
                  file=sys.stderr, flush=True)
            backoff = 1.0 if time.monotonic() - started > 60 else backoff
            deadline = time.monotonic() + backoff
            while time.monotonic() < deadline and not child["stop"]:
                time.sleep(0.1)
            backoff = min(30.0, backoff * 2)
        return 0
    finally:
        if pidfile:
            try:
                os.unlink(pidfile)
            except OSError:
                pass


# --- command line ----------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description="Serve one model artifact over HTTP (edgekit).")
    p.add_argument("artifact")
    p.add_argument("--spec", help="serve.json written by edgekit (inputs, runtime, model) [default: beside the artifact]")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=Settings.max_batch)
    p.add_argument("--max-wait-ms", type=float, default=Settings.max_wait_ms)
    p.add_argument("--queue-size", type=int, default=Settings.queue_size)
    p.add_argument("--max-body-mb", type=float, default=Settings.max_body_bytes / 2**20)
    p.add_argument("--max-samples", type=int, default=Settings.max_samples)
    p.add_argument("--allow-nonfinite", action="store_true")
    p.add_argument("--drain-seconds", type=int, default=Settings.drain_seconds)
    p.add_argument("--supervise", action="store_true", help="restart the server when it fails (no systemd)")
    p.add_argument("--pidfile", help="with --supervise: where the supervisor writes its pid")
    return p.parse_args(argv)


def settings_from(args) -> Settings:
    settings = Settings(host=args.host, port=args.port, threads=args.threads, max_batch=args.max_batch,
                        max_wait_ms=args.max_wait_ms, queue_size=args.queue_size,
                        max_body_bytes=int(args.max_body_mb * 2**20), max_samples=args.max_samples,
                        allow_nonfinite=args.allow_nonfinite, drain_seconds=args.drain_seconds)
    problem = settings.problem()
    if problem:
        raise runner.RunnerError("usage", problem, EXIT_USAGE)
    return settings


# What this file imports beyond the standard library and the runtime (deploy probes the board for them).
STACK_MODULES = ("uvicorn", "starlette", "prometheus_client", "numpy")
GENERATION_MODULES = ("tokenizers",)  # a text-generation build's server reads its tokenizer with it


def missing_stack() -> str | None:
    """The first package of the HTTP stack this python cannot import, or None."""
    for module in STACK_MODULES:
        try:
            __import__(module)
        except ImportError:
            return module
    return None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
        settings = settings_from(args)
        if args.supervise:
            rest = [a for a in argv if a != "--supervise"]
            if args.pidfile:
                i = rest.index("--pidfile")
                rest = rest[:i] + rest[i + 2:]
            return supervise(rest, args.pidfile)
        missing = missing_stack()
        if missing:
            raise runner.RunnerError("runtime_missing", f"cannot import {missing}: install the server's packages with "
                                     f"{sys.executable} -m pip install uvicorn starlette prometheus-client",
                                     EXIT_MISSING, module=missing, package=missing.replace("_", "-"))
        spec = args.spec or os.path.join(os.path.dirname(os.path.abspath(args.artifact)), "serve.json")
        try:
            with open(spec) as f:
                doc = json.load(f)
        except (OSError, ValueError) as e:
            raise runner.RunnerError("usage", f"cannot read {spec}: {e}", EXIT_USAGE) from None

        def ready(state):
            model = state["model"]
            print(json.dumps({"ok": True, "serving": f"http://{settings.host}:{settings.port}", "pid": os.getpid(),
                              "sha256": model.sha256, "load_ms": round(model.load_ms, 3)}), flush=True)

        return serve(args.artifact, doc, settings, on_ready=ready)
    except runner.RunnerError as e:
        print(json.dumps({"ok": False, "error": str(e), "error_kind": e.kind, **e.extra}), file=sys.stderr, flush=True)
        return e.code


if __name__ == "__main__":
    sys.exit(main())
