"""edgekit serve: the real server (uvicorn + starlette, the CLI in a subprocess) around the real digits
artifact, on 127.0.0.1. Predictions against the artifact's own runtime, every kind of bad input
followed by a good request, bounded load at 1/8/32 clients with the server's RSS watched, overload
(503 + Retry-After), Prometheus metrics, a graceful SIGTERM, the load test recorded in the report."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from sshd import free_port

from edgekit.runtime.runner import runtime_for
from edgekit.serve import STACK, STACK_WITH_DEPENDENCIES
from edgekit.serve.load import server_rss_mb

DIGITS_EVAL = Path(__file__).resolve().parents[1] / "sample_apps" / "digits" / "eval.npz"
# The server's RSS may grow this much over 6,000 requests after its warm-up (allocator pools, the
# metrics' label sets): more would be a leak (a request's arrays are ~2 KB; 6,000 kept = 12+ MB of
# arrays plus their Python objects).
RSS_GROWTH_BOUND_MB = 24


class Server:
    def __init__(self, build: Path, *args: str):
        self.port = free_port()
        self.log = build.parent / f"serve-{self.port}.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "edgekit", "serve", str(build), "--port", str(self.port), *args],
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}: {self.log.read_text()}")
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("the server did not answer /healthz within 120 s: " + self.log.read_text())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
                headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers={**({"Content-Type": content_type} if content_type else {}),
                                                           **(headers or {})})
            r = conn.getresponse()
            data = r.read()
            return r.status, data, r.headers  # case-insensitive
        finally:
            conn.close()

    def get(self, path: str):
        status, data, _ = self.request("GET", path)
        return status, data

    def predict(self, x: np.ndarray, **kw):
        status, data, headers = self.request("POST", "/v1/predict" + kw.get("query", ""),
                                             json.dumps({"inputs": {"x": x.tolist()}}).encode(), "application/json")
        return status, json.loads(data), headers

    def rss_mb(self) -> float:
        return server_rss_mb(self.url)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def served(digits_build, tmp_path_factory):
    copy = tmp_path_factory.mktemp("serve") / "digits-rpi4"
    import shutil

    shutil.copytree(digits_build["dir"], copy)
    server = Server(copy)
    yield copy, server
    server.stop()


@pytest.fixture(scope="module")
def eval_x() -> np.ndarray:
    return np.load(DIGITS_EVAL)["x"]


def test_predictions_equal_the_artifacts_own(served, eval_x):
    build, server = served
    manifest = json.loads((build / "manifest.json").read_text())
    rt = runtime_for("executorch")
    rt.set_threads(1)
    rt.load(str(build / manifest["artifact"]["file"]))
    x = eval_x[:40]
    expected = np.concatenate([rt.run(rt.make_inputs(manifest["model"]["inputs"], [x[i:i + 1]]))[0].numpy()
                               for i in range(len(x))])

    status, doc, _ = server.predict(x)  # 40 samples in one request: 40 runs of the batch-1 artifact
    assert status == 200, doc
    got = np.asarray(doc["outputs"]["output"], dtype=np.float32)
    assert got.shape == (40, 10) and doc["samples"] == 40
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert doc["sha256"] == manifest["artifact"]["sha256"]
    # the app declares its label names: the best label of each sample is the artifact's argmax
    assert [int(s[0]["label"]) for s in doc["top_k"]] == list(expected.argmax(1))
    assert len(doc["top_k"][0]) == 5 and 0 < doc["top_k"][0][0]["score"] <= 1

    # one sample without its batch axis, as .npy and as .npz: the same answer
    buf = io.BytesIO()
    np.save(buf, x[3, ])
    status, data, _ = server.request("POST", "/v1/predict?top_k=0", buf.getvalue(), "application/x-npy")
    assert status == 200 and "top_k" not in json.loads(data)
    np.testing.assert_allclose(json.loads(data)["outputs"]["output"], expected[3:4], atol=1e-5)
    buf = io.BytesIO()
    np.savez(buf, x=x[5:7])
    status, data, _ = server.request("POST", "/v1/predict", buf.getvalue(), "application/x-npz")
    assert status == 200
    np.testing.assert_allclose(json.loads(data)["outputs"]["output"], expected[5:7], atol=1e-5)

    status, data = server.get("/v1/model")
    model = json.loads(data)
    assert model["inputs"] == manifest["model"]["inputs"] and model["outputs"] == [{"name": "output", "shape": [1, 10]}]
    assert model["target"] == "rpi4" and model["accuracy"]["accuracy_artifact"] == manifest["metrics"]["accuracy_artifact"]


def _npz_bomb() -> bytes:
    """A compressed .npz of a few KB that would inflate to 64 MB."""
    buf = io.BytesIO()
    np.savez_compressed(buf, x=np.zeros((16, 1024, 1024), np.float32))
    return buf.getvalue()


def _npy(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


BAD_INPUTS = [
    # (what, body, content type, status, words the message must contain)
    ("wrong shape", b'{"inputs": {"x": [[1, 2, 3]]}}', "application/json", 422, ["'x'", "[N, 1, 8, 8]"]),
    ("wrong dtype", json.dumps({"inputs": {"x": [[[["a"] * 8] * 8]]}}).encode(), "application/json", 422, ["'x'", "float32"]),
    ("missing input", b'{"inputs": {}}', "application/json", 422, ["missing input 'x'", "[N, 1, 8, 8]"]),
    ("unknown input", json.dumps({"inputs": {"x": [[[[0.0] * 8] * 8]], "mask": [1]}}).encode(), "application/json",
     422, ["unknown input 'mask'"]),
    ("ragged lists", b'{"inputs": {"x": [[1, 2], [3]]}}', "application/json", 422, ["'x'", "rectangular"]),
    ("NaN", ('{"inputs": {"x": [[' + ",".join(["[" + ",".join(["NaN"] + ["0"] * 7) + "]"] * 8) + "]]}}").encode(),
     "application/json", 422, ["'x'", "NaN", "--allow-nonfinite"]),
    ("invalid JSON", b'{"inputs": {"x": [', "application/json", 400, ["not valid JSON"]),
    ("JSON not an object", b"[1, 2]", "application/json", 400, ["object"]),
    ("too many samples", _npy(np.zeros((65, 1, 8, 8), np.float32)), "application/x-npy", 413, ["65 samples", "--max-samples"]),
    ("oversized body", b"0" * (4 * 2**20 + 1), "application/json", 413, ["--max-body-mb"]),
    ("npz that inflates past the limit", _npz_bomb(), "application/x-npz", 413, ["'x'", "--max-body-mb"]),
    ("not an npy", b"\x93NUMPY garbage", "application/x-npy", 400, [".npy"]),
    ("unsupported content type", b"x=1", "application/x-www-form-urlencoded", 415, ["application/json"]),
    ("sample without its channel axis", _npy(np.zeros((2, 8, 8), np.float32)), "application/x-npy", 422, ["[2, 8, 8]"]),
]


@pytest.mark.parametrize("what,body,content_type,status,words", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_refused_and_the_server_goes_on(served, eval_x, what, body, content_type, status, words):
    _, server = served
    got, data, _ = server.request("POST", "/v1/predict", body, content_type)
    assert got == status, data[:300]
    message = json.loads(data)["error"]
    for w in words:
        assert w in message, message
    ok, doc, _ = server.predict(eval_x[:1])
    assert ok == 200 and len(doc["outputs"]["output"]) == 1


def test_routes_and_methods(served):
    _, server = served
    assert server.get("/nope")[0] == 404
    assert server.request("GET", "/v1/predict")[0] == 405
    health = json.loads(server.get("/healthz")[1])
    assert health["ok"] and health["pid"] == server.proc.pid and health["warm_ms"] > 0


def test_bounded_load_no_5xx_and_rss_bound(served, run_cli, eval_x):
    """edgekit bench --serve: 2,000 requests at 1, 8 and 32 clients; every one answered 200, the
    server's RSS within RSS_GROWTH_BOUND_MB of its value after warm-up, the run recorded."""
    build, server = served
    for _ in range(200):
        assert server.predict(eval_x[:1])[0] == 200
    before = server.rss_mb()
    eval_file = build.parent / "one.npz"
    np.savez(eval_file, x=eval_x[:1])
    proc = run_cli("bench", str(build), "--serve", server.url, "--concurrency", "1,8,32", "--requests", "2000",
                   "--inputs", str(eval_file), "--json")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert [lv["concurrency"] for lv in record["levels"]] == [1, 8, 32]
    for lv in record["levels"]:
        assert lv["statuses"] == {"200": 2000}, lv
        assert lv["p50_ms"] <= lv["p90_ms"] <= lv["p99_ms"] and lv["throughput_rps"] > 0
    growth = server.rss_mb() - before
    assert growth < RSS_GROWTH_BOUND_MB, f"RSS grew {growth:.1f} MB over 6,000 requests"
    manifest = json.loads((build / "manifest.json").read_text())
    assert manifest["serve_loads"][-1]["levels"][2]["concurrency"] == 32
    assert (build / manifest["serve_loads"][-1]["file"]).is_file()

    metrics = server.get("/metrics")[1].decode()
    served_ok = next(float(line.split()[-1]) for line in metrics.splitlines()
                     if line.startswith('edgekit_requests_total{endpoint="/v1/predict",status="200"}'))
    assert served_ok >= 6200
    for name in ("edgekit_request_duration_seconds_bucket", "edgekit_queue_depth", "edgekit_in_flight_requests",
                 "edgekit_inference_duration_seconds_count", "edgekit_batch_samples_bucket"):
        assert name in metrics

    proc = run_cli("report", str(build))
    assert proc.returncode == 0, proc.stderr
    html = (build / "report.html").read_text()
    assert "<h2>Serving</h2>" in html and "server latency at http://127.0.0.1" in html


def test_load_test_refuses_other_servers(served, run_cli):
    build, server = served
    proc = run_cli("bench", str(build), "--serve", "http://192.0.2.7:8080", "--requests", "5")
    assert proc.returncode == 2 and "not this computer" in proc.stderr
    proc = run_cli("bench", str(build), "--serve", server.url, "--concurrency", "0")
    assert proc.returncode == 2 and "--concurrency" in proc.stderr


def test_overload_answers_503_with_retry_after(digits_build, tmp_path, eval_x):
    """A queue of 2 and 48 clients sending 64 samples each: the excess is refused with 503 and
    Retry-After, nothing else fails, and the server answers normally afterwards."""
    server = Server(digits_build["dir"], "--queue-size", "2", "--max-batch", "64")
    try:
        body = json.dumps({"inputs": {"x": eval_x[:64].tolist()}}).encode()
        answers = []

        def client():
            for _ in range(4):
                status, _, headers = server.request("POST", "/v1/predict", body, "application/json")
                answers.append((status, headers.get("Retry-After")))

        threads = [threading.Thread(target=client) for _ in range(48)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = {s for s, _ in answers}
        assert statuses <= {200, 503} and 503 in statuses and 200 in statuses, statuses
        assert all(r is not None and int(r) >= 1 for s, r in answers if s == 503)
        assert server.predict(eval_x[:1])[0] == 200
    finally:
        server.stop()


def test_sigterm_finishes_in_flight_requests_then_refuses(digits_build, eval_x):
    """A request whose body is half sent when SIGTERM arrives is still answered 200; meanwhile the
    port no longer accepts connections; then the server exits 0."""
    import socket

    server = Server(digits_build["dir"])
    body = json.dumps({"inputs": {"x": eval_x[:8].tolist()}}).encode()
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    slow.sendall(head + body[: len(body) // 2])
    time.sleep(0.5)  # the server has the headers: this request is in flight
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    with pytest.raises(OSError):  # no new connections once SIGTERM arrived
        server.get("/healthz")
    assert server.proc.poll() is None  # still draining: our request is not finished
    slow.sendall(body[len(body) // 2:])
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < 10:
        chunk = slow.recv(65536)
        if not chunk:
            break
        answer += chunk
    slow.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert server.proc.wait(timeout=60) == 0


def test_the_server_stack_list_is_closed():
    """serve.STACK_WITH_DEPENDENCIES is what the emulated board installs (with --no-deps): every
    dependency the stack declares for Python 3.11 on Linux is in it."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    env = {**default_environment(), "python_version": "3.11", "sys_platform": "linux", "extra": ""}
    listed = {n.replace("_", "-").lower() for n in STACK_WITH_DEPENDENCIES}
    todo, seen = list(STACK), set()
    while todo:
        name = todo.pop()
        seen.add(name)
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate(env):
                dep = req.name.replace("_", "-").lower()
                assert dep in listed, f"{name} needs {dep}, missing from STACK_WITH_DEPENDENCIES"
                if dep not in seen:
                    todo.append(dep)
    assert seen == listed


def test_the_device_file_imports_no_edgekit(tmp_path):
    """serve.py runs on the board beside runner.py alone."""
    from edgekit.runtime import RUNNER_PATH
    from edgekit.serve import SERVER_PATH

    (tmp_path / "serve.py").write_text(SERVER_PATH.read_text())
    (tmp_path / "runner.py").write_text(RUNNER_PATH.read_text())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # edgekit made unimportable, as on a board: serve.py must find runner.py beside itself
    probe = "import sys; sys.modules['edgekit'] = None; sys.path.insert(0, '.'); import serve; print(serve.runner.__file__)"
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "runner.py")


@pytest.mark.slow  # builds the real all-MiniLM-L6-v2 (~25 s; the default run serves the digits artifact)
def test_a_real_sentence_encoder_with_two_integer_inputs(tmp_path, run_cli):
    """all-MiniLM-L6-v2 (pretrained, two int64 inputs: token ids and the attention mask) served from its
    .onnx: real tokenized sentences sent as JSON get the artifact's own embeddings; ids that are not
    whole numbers or a missing mask are refused by name."""
    repo = Path(__file__).resolve().parents[1]
    data = tmp_path / "data"
    subprocess.run([sys.executable, str(repo / "sample_apps" / "minilm" / "data.py"), "--out", str(data)], check=True,
                   capture_output=True)
    out = tmp_path / "minilm"
    proc = run_cli("build", str(repo / "sample_apps" / "minilm"), "--calib", str(data / "calib.npz"), "--eval",
                   str(data / "eval.npz"), "--format", "onnx", "--quant", "dynamic", "--target", "rpi5", "--out", str(out),
                   timeout=900)
    assert proc.returncode == 0, proc.stderr
    sentences = np.load(data / "eval.npz")
    ids, mask = sentences["input_ids"][:6], sentences["attention_mask"][:6]
    rt = runtime_for("onnxruntime")
    rt.set_threads(1)
    rt.load(str(out / "model.onnx"))
    expected = np.concatenate([rt.run([ids[i:i + 1], mask[i:i + 1]])[0] for i in range(len(ids))])

    server = Server(out, "--threads", "1")
    try:
        body = json.dumps({"inputs": {"input_ids": ids.tolist(), "attention_mask": mask.tolist()}}).encode()
        status, data_, _ = server.request("POST", "/v1/predict", body, "application/json")
        assert status == 200, data_[:300]
        got = np.asarray(json.loads(data_)["outputs"]["output"], dtype=np.float32)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert "top_k" not in json.loads(data_)  # an embedding names no classes

        half = json.dumps({"inputs": {"input_ids": (ids[:1] + 0.5).tolist(), "attention_mask": mask[:1].tolist()}})
        status, data_, _ = server.request("POST", "/v1/predict", half.encode(), "application/json")
        assert status == 422 and "input 'input_ids' takes int64 values" in json.loads(data_)["error"]
        status, data_, _ = server.request("POST", "/v1/predict", json.dumps({"inputs": {"input_ids": ids[:1].tolist()}}).encode(),
                                          "application/json")
        assert status == 422 and "missing input 'attention_mask'" in json.loads(data_)["error"]
        buf = io.BytesIO()
        np.savez(buf, input_ids=ids[2:4], attention_mask=mask[2:4])
        status, data_, _ = server.request("POST", "/v1/predict", buf.getvalue(), "application/x-npz")
        assert status == 200
        np.testing.assert_allclose(json.loads(data_)["outputs"]["output"], expected[2:4], atol=1e-5)
    finally:
        server.stop()


@pytest.mark.slow  # builds the digits model again with a static batch of 4 (~30 s)
def test_requests_share_a_static_batch(tmp_path, run_cli, eval_x):
    """An artifact exported with batch 4: samples of concurrent requests fill its batches (the worker
    waits up to --max-wait-ms for more), the last one padded; each request gets its own samples' outputs."""
    app = Path(__file__).resolve().parents[1] / "sample_apps" / "digits"
    out = tmp_path / "digits-b4"
    proc = run_cli("build", "--model", "model:build_model", "--input-shape", "4,1,8,8", "--weights", "weights.pt",
                   "--calib", "calib.npz", "--eval", "eval.npz", "--format", "onnx", "--target", "rpi4", "--out", str(out),
                   cwd=app, timeout=900)
    assert proc.returncode == 0, proc.stderr
    rt = runtime_for("onnxruntime")
    rt.set_threads(1)
    rt.load(str(out / "model.onnx"))
    x = eval_x[:12]
    expected = np.concatenate([rt.run([x[i:i + 4]])[0] for i in range(0, 12, 4)])

    server = Server(out, "--threads", "1", "--max-wait-ms", "300")
    try:
        model = json.loads(server.get("/v1/model")[1])
        assert model["batch"] == 4 and model["server"]["micro_batching"] == "shared static batches"
        cuts = [(0, 1), (1, 3), (3, 6), (6, 7), (7, 12)]  # 1, 2, 3, 1 and 5 samples
        answers = {}

        def client(lo, hi):
            answers[(lo, hi)] = server.predict(x[lo:hi])

        threads = [threading.Thread(target=client, args=cut) for cut in cuts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for (lo, hi), (status, doc, _) in answers.items():
            assert status == 200, doc
            np.testing.assert_allclose(doc["outputs"]["output"], expected[lo:hi], atol=1e-5)
        metrics = server.get("/metrics")[1].decode()
        passes = next(float(line.split()[-1]) for line in metrics.splitlines()
                      if line.startswith("edgekit_batch_samples_count"))
        assert passes < len(cuts), "the requests were not taken together"
    finally:
        server.stop()
