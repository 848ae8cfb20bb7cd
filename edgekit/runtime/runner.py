#!/usr/bin/env python3
"""edgekit device runner: load one artifact, time it, print ONE JSON object.

This file is copied to the device as-is, so it imports nothing of edgekit:
the standard library plus exactly one runtime, the one the build's format
names (`--runtime`, or "runtime" in the spec file deploy writes):

    executorch               executorch.runtime      (pip: executorch; brings torch)
    onnxruntime              onnxruntime             (pip: onnxruntime; brings numpy)
    torch-lite-interpreter   torch.jit.mobile        (pip: torch)
    litert                   ai_edge_litert, else tflite_runtime (pip: ai-edge-litert)

    python3 runner.py model.pte --threads 4 --warmup 10 --runs 50
    python3 runner.py model.pte --check          # runtime importable + artifact loads
    python3 runner.py model.onnx --runtime onnxruntime --input-spec '[{"name": "x", "shape": [1, 3, 8, 8]}]'
    python3 runner.py model.pte --generate 64 --prompt-ids prompt.ids --runs 3   # a text-generation build

Inputs: random (seeded) tensors with the shapes/dtypes in `inputs.json` beside
the artifact (deploy writes the manifest's inputs and the runtime there), or
`--input-spec`, or real ones from `--inputs file.npz|.npy`.

Output (stdout, one JSON object): load_ms, first_ms, mean, std, min, p50, p90,
p99, max (all ms), samples_ms, runs, threads, threads_applied, peak_rss_kb,
runtime {name, version}, device facts, python, machine. With --generate (see
bench_generation): time_to_first_token_ms, prefill_tokens_per_s and
decode_tokens_per_s (medians over the runs), samples, tokens, and the
memory read bandwidth measured after them (memory_read_gbs). Failures print
{"ok": false, "error": ..., "error_kind": ...} and exit non-zero:
1 the runtime failed, 2 bad arguments/inputs, 3 the runtime is not installed.
A run longer than --timeout is killed by SIGALRM (exit status 142 from a shell).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import resource
import signal
import statistics
import sys
import time

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_RUNTIME = 3

SPEC_FILE = "inputs.json"  # written beside the artifact by `edgekit deploy`
SEED = 0

# ARM "CPU part" ids (MIDR PartNum) as printed in /proc/cpuinfo; source: Arm TRMs.
ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510",
    "0xd47": "Cortex-A710", "0xd48": "Cortex-X2", "0xd4d": "Cortex-A715", "0xd4e": "Cortex-X3",
    "0xd80": "Cortex-A520", "0xd81": "Cortex-A720", "0xd82": "Cortex-X4",
}


class RunnerError(Exception):
    """A failure reported as JSON; `kind` lets the host tell them apart."""

    def __init__(self, kind: str, message: str, code: int = EXIT_FAILED, **extra):
        super().__init__(message)
        self.kind, self.code, self.extra = kind, code, extra


# --- runtimes: one class per artifact format, the same five verbs -------------


def _missing(module: str, package: str, err: Exception) -> RunnerError:
    return RunnerError(
        "runtime_missing", f"cannot import {module} ({err}); install it with: {sys.executable} -m pip install {package}",
        EXIT_NO_RUNTIME, module=module, package=package,
    )


class TorchInputs:
    """Inputs as torch tensors (ExecuTorch and the lite interpreter both take them)."""

    DTYPES = {"float32": "float32", "float16": "float16", "int64": "int64", "int32": "int32", "bool": "bool"}

    def make_inputs(self, specs, arrays):
        torch = self.torch
        if arrays is not None:
            return [torch.from_numpy(a.copy()) for a in arrays]
        gen = torch.Generator().manual_seed(SEED)
        out = []
        for s in specs:
            dtype = getattr(torch, self.DTYPES[s["dtype"]])
            if s["dtype"].startswith("float"):
                out.append(torch.rand(s["shape"], generator=gen).to(dtype))
            elif s["dtype"] == "bool":  # masks: all positions attended
                out.append(torch.ones(s["shape"], dtype=dtype))
            else:  # ids/indices: 0 is valid for every embedding table
                out.append(torch.zeros(s["shape"], dtype=dtype))
        return out


class ExecutorchRuntime(TorchInputs):
    name, module, package = "executorch", "executorch.runtime", "executorch"

    def __init__(self):
        try:
            import torch
            from executorch.runtime import Runtime
        except ImportError as e:
            raise _missing(self.module, self.package, e) from None
        self.torch, self._runtime_cls = torch, Runtime

    def version(self):
        return _dist_version("executorch")

    def set_threads(self, n: int) -> bool:
        # The Python runtime has no public thread knob; the pybindings expose the
        # XNNPACK threadpool's experimental reset (executorch >= 0.6). Report it
        # applied only when the pool reads back the size we asked for.
        try:
            from executorch.extension.pybindings import portable_lib as pl

            pl._unsafe_reset_threadpool(n)
            return pl._threadpool_get_thread_count() == n
        except (ImportError, AttributeError):
            return False

    def load(self, path: str):
        program = self._runtime_cls.get().load_program(path)
        self._method = program.load_method("forward")

    def run(self, inputs):
        return self._method.execute(inputs)


class LiteInterpreterRuntime(TorchInputs):
    name, module, package = "torch-lite-interpreter", "torch.jit.mobile", "torch"

    def __init__(self):
        try:
            import torch
            from torch.jit.mobile import _load_for_lite_interpreter
        except ImportError as e:
            raise _missing(self.module, self.package, e) from None
        self.torch, self._load = torch, _load_for_lite_interpreter

    def version(self):
        return self.torch.__version__

    def set_threads(self, n: int) -> bool:
        self.torch.set_num_threads(n)
        return self.torch.get_num_threads() == n

    def load(self, path: str):
        self._module = self._load(path)

    def run(self, inputs):
        with self.torch.no_grad():
            return self._module(*inputs)


class NumpyInputs:
    """Inputs as numpy arrays (onnxruntime and LiteRT take them)."""

    def make_inputs(self, specs, arrays):
        np = self.np
        if arrays is not None:
            return arrays
        rng = np.random.default_rng(SEED)
        out = []
        for s in specs:
            if s["dtype"].startswith("float"):
                out.append(rng.random(s["shape"], dtype=np.float32).astype(s["dtype"]))
            elif s["dtype"] == "bool":
                out.append(np.ones(s["shape"], dtype=bool))
            else:
                out.append(np.zeros(s["shape"], dtype=s["dtype"]))
        return out


class OnnxRuntime(NumpyInputs):
    name, module, package = "onnxruntime", "onnxruntime", "onnxruntime"

    def __init__(self):
        try:
            import numpy as np
            import onnxruntime as ort
        except ImportError as e:
            raise _missing(self.module, self.package, e) from None
        self.np, self.ort = np, ort
        self._options = ort.SessionOptions()

    def version(self):
        return self.ort.__version__

    def set_threads(self, n: int) -> bool:
        self._options.intra_op_num_threads = n  # documented SessionOptions knob, honoured by the CPU EP
        self._options.inter_op_num_threads = 1
        return True

    def load(self, path: str):
        self._session = self.ort.InferenceSession(path, self._options, providers=["CPUExecutionProvider"])
        self._names = [i.name for i in self._session.get_inputs()]

    def run(self, inputs):
        return self._session.run(None, dict(zip(self._names, inputs)))


class OnnxDecoder(OnnxRuntime):
    """A text-generation `.onnx` as onnxruntime-genai's model builder lays it out (input_ids,
    attention_mask and past_key_values.N.key/value in; logits and present.N.key/value out), with its
    KV cache held here between calls. `step(ids, start)` feeds tokens at positions start.. and returns
    their logits (len(ids), vocab); a start below the cached length drops the cache past it.
    The head size and context length come from genai_config.json, which the builder writes beside it."""

    def load(self, path: str):
        super().load(path)
        with open(os.path.join(os.path.dirname(os.path.abspath(path)), "genai_config.json")) as f:
            config = json.load(f)["model"]
        self.max_seq_len = int(config["context_length"])
        shape = (1, int(config["decoder"]["num_key_value_heads"]), 0, int(config["decoder"]["head_size"]))
        self._empty = {i.name: self.np.zeros(shape, dtype=self.np.float32)
                       for i in self._session.get_inputs() if i.name.startswith("past_key_values.")}
        self._outputs = [o.name for o in self._session.get_outputs()]
        self._cache = dict(self._empty)

    def step(self, ids, start: int):
        np = self.np
        ids = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        cached = next(iter(self._cache.values())).shape[2]
        if start > cached:
            raise RunnerError("usage", f"step at position {start}, but the cache holds {cached} tokens", EXIT_USAGE)
        past = {k: v[:, :, :start] for k, v in self._cache.items()} if start else dict(self._empty)
        results = dict(zip(self._outputs, self._session.run(None, {
            "input_ids": ids, "attention_mask": np.ones((1, start + ids.shape[1]), dtype=np.int64), **past})))
        self._cache = {k: results[k.replace("past_key_values.", "present.")] for k in past}
        return results["logits"][0]


class ExecutorchDecoder(ExecutorchRuntime):
    """A text-generation `.pte` (transformers' ExecuTorch exporter: forward(input_ids (1, n), cache_position (n))
    with its static KV cache inside the program): `step(ids, start)` as OnnxDecoder's. The context length is
    the program's own get_max_seq_len method."""

    def load(self, path: str):
        try:
            import executorch.kernels.quantized  # noqa: F401  registers the 4-bit embedding op a .pte may call
        except ImportError:
            pass
        program = self._runtime_cls.get().load_program(path)
        self._method = program.load_method("forward")
        self.max_seq_len = int(program.load_method("get_max_seq_len").execute([])[0])

    def step(self, ids, start: int):
        torch = self.torch
        ids = torch.as_tensor([int(t) for t in ids], dtype=torch.long).reshape(1, -1)
        return self._method.execute([ids, torch.arange(start, start + ids.shape[1])])[0][0].float().numpy()


DECODERS = {"executorch": ExecutorchDecoder, "onnxruntime": OnnxDecoder}


def decoder_for(name: str | None):
    if name not in DECODERS:
        raise RunnerError("usage", f"no text-generation runtime {name!r}: one of {', '.join(DECODERS)}", EXIT_USAGE)
    return DECODERS[name]()


def generate_greedy(step, prompt: list, max_new_tokens: int, max_seq_len: int, eos_id=None, on_token=None):
    """Greedy generation with a decoder's `step(ids, start) -> logits`: one prefill call for the prompt,
    then one call per new token. `on_token(id)` is called as each token is made. Returns (tokens,
    {"prefill_s", "decode_s", "stopped"}), stopped being "eos", "max_new_tokens" or "context_full"."""
    start = time.perf_counter()
    token = int(step(prompt, 0)[-1].argmax())
    prefill_s = time.perf_counter() - start
    out = [token]
    if on_token:
        on_token(token)
    stopped = "max_new_tokens"
    decode_start = time.perf_counter()
    while True:
        if eos_id is not None and token == eos_id:
            stopped = "eos"
            break
        if len(out) >= max_new_tokens:
            break
        position = len(prompt) + len(out) - 1  # where the last token goes in the cache
        if position >= max_seq_len:
            stopped = "context_full"
            break
        token = int(step([token], position)[-1].argmax())
        out.append(token)
        if on_token:
            on_token(token)
    return out, {"prefill_s": prefill_s, "decode_s": time.perf_counter() - decode_start, "stopped": stopped}


def read_prompt_ids(path: str) -> list:
    """A prompt's token ids as raw little-endian int64 (what deploy pushes, and edgekit-et-runner reads)."""
    import struct

    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise RunnerError("usage", f"cannot read --prompt-ids {path}: {e.strerror}", EXIT_USAGE) from None
    if not raw or len(raw) % 8:
        raise RunnerError("usage", f"--prompt-ids {path} must hold int64 token ids", EXIT_USAGE)
    return list(struct.unpack(f"<{len(raw) // 8}q", raw))


def bench_generation(args, result: dict) -> dict:
    """--generate N: the artifact is a text-generation decoder. `--warmup` untimed generations, then
    `--runs` timed ones, each exactly N tokens from the --prompt-ids prompt (no stop at eos, so every run
    decodes as many), figures as generate_greedy measures them. Reports each run (samples) and the
    medians; `tokens` are the first timed run's, for the host to compare with its own.
    --check: the artifact loads and prefills the prompt once (first_ms)."""
    prompt = read_prompt_ids(args.prompt_ids)
    start = time.perf_counter_ns()
    rt = decoder_for(args.runtime or _spec_runtime(args.artifact, args.input_spec))
    result["import_ms"] = round(_ms(start), 3)
    applied = rt.set_threads(args.threads)
    _load(rt, args.artifact, result)
    result.update(_identity(rt, args.threads, applied), mode="generate", prompt_tokens=len(prompt))
    if len(prompt) >= rt.max_seq_len:
        raise RunnerError("usage", f"the prompt is {len(prompt)} tokens; the context holds {rt.max_seq_len}", EXIT_USAGE)
    try:
        if args.check:
            start = time.perf_counter_ns()
            rt.step(prompt, 0)
            result["first_ms"] = round(_ms(start), 3)
            return result
        runs = []
        for i in range(args.warmup + args.runs):
            tokens, timing = generate_greedy(rt.step, prompt, args.generate, rt.max_seq_len)
            if i == 0:
                result["first_ms"] = round(timing["prefill_s"] * 1e3, 3)
            if i >= args.warmup:
                runs.append((tokens, timing))
    except RunnerError:
        raise
    except Exception as e:
        raise RunnerError("run_failed", f"running {args.artifact} failed: {type(e).__name__}: {e}") from None
    decoded = len(runs[0][0]) - 1
    samples = [{"time_to_first_token_ms": round(t["prefill_s"] * 1e3, 3),
                "decode_tokens_per_s": round(decoded / t["decode_s"], 3) if decoded and t["decode_s"] > 0 else None}
               for _, t in runs]
    ttft = statistics.median(s["time_to_first_token_ms"] for s in samples)
    rates = [s["decode_tokens_per_s"] for s in samples if s["decode_tokens_per_s"] is not None]
    result.update({
        "time_to_first_token_ms": round(ttft, 3), "prefill_tokens_per_s": round(len(prompt) / (ttft / 1e3), 3),
        "decode_tokens_per_s": round(statistics.median(rates), 3) if rates else None,
        "new_tokens": len(runs[0][0]), "decoded_tokens": decoded, "stopped": runs[0][1]["stopped"],
        "runs": len(runs), "warmup": args.warmup, "samples": samples, "tokens": runs[0][0],
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss})
    # After the peak RSS is read (the buffer is not the model's). Under qemu the figure would be the
    # emulator's, not the board's: no limit to set decode against there.
    if _read(EMULATOR_MARKER) is None:
        bandwidth = memory_read_bandwidth()
        result.update(memory_read_gbs=bandwidth.pop("read_gbs"), memory_read=bandwidth)
    return result


def _spec_runtime(artifact: str, spec_arg: str | None):
    """The runtime the spec file beside the artifact names (a decoder's inputs are not checked here:
    their shapes grow with the prompt)."""
    where = spec_arg or os.path.join(os.path.dirname(os.path.abspath(artifact)), SPEC_FILE)
    try:
        with open(where) as f:
            doc = _parse_json(f.read(), where)
    except OSError:
        return None
    return doc.get("runtime") if isinstance(doc, dict) else None


class LiteRtRuntime(NumpyInputs):
    name, module, package = "litert", "ai_edge_litert.interpreter", "ai-edge-litert"

    def __init__(self):
        try:
            import numpy as np
            try:
                from ai_edge_litert.interpreter import Interpreter
            except ImportError:
                from tflite_runtime.interpreter import (
                    Interpreter,  # older boards: pip tflite-runtime
                )
        except ImportError as e:
            raise _missing(self.module, self.package, e) from None
        self.np, self._interpreter_cls, self._threads = np, Interpreter, None

    def version(self):
        return _dist_version("ai-edge-litert") or _dist_version("tflite-runtime")

    def set_threads(self, n: int) -> bool:
        self._threads = n  # applied at construction: Interpreter(num_threads=n)
        return True

    def load(self, path: str):
        self._interp = self._interpreter_cls(model_path=path, num_threads=self._threads)
        self._interp.allocate_tensors()
        self._inputs = self._interp.get_input_details()
        self._outputs = self._interp.get_output_details()

    def run(self, inputs):
        # An int8 model takes int8 inputs with its own scale: float inputs are quantized as an app would.
        for detail, value in zip(self._inputs, inputs):
            self._interp.set_tensor(detail["index"], litert_input(self.np, value, detail))
        self._interp.invoke()
        return [litert_output(self.np, self._interp.get_tensor(d["index"]), d) for d in self._outputs]


def litert_input(np, value, detail):
    """`value` as a LiteRT input tensor: quantized with the tensor's (scale, zero point) when the
    model takes integers but gets floats; cast otherwise."""
    dtype, (scale, zero) = detail["dtype"], detail["quantization"]
    value = np.asarray(value)
    if np.issubdtype(dtype, np.integer) and scale and np.issubdtype(value.dtype, np.floating):
        info = np.iinfo(dtype)
        return np.clip(np.round(value / scale) + zero, info.min, info.max).astype(dtype)
    return value.astype(dtype)


def litert_output(np, value, detail):
    """A LiteRT output tensor in float: dequantized when it is quantized."""
    scale, zero = detail["quantization"]
    return ((value.astype(np.float32) - zero) * scale).astype(np.float32) if scale else value.copy()


RUNTIMES = {"executorch": ExecutorchRuntime, "onnxruntime": OnnxRuntime, "torch-lite-interpreter": LiteInterpreterRuntime,
            "litert": LiteRtRuntime}


def runtime_for(name: str | None):
    if name not in RUNTIMES:
        raise RunnerError("usage", f"unknown runtime {name!r}: pass --runtime with one of {', '.join(RUNTIMES)} "
                          "(edgekit deploy writes it into inputs.json)", EXIT_USAGE)
    return RUNTIMES[name]()


def _dist_version(dist: str):
    try:
        from importlib import metadata

        return metadata.version(dist)
    except Exception:
        return None


# --- inputs ---------------------------------------------------------------------


def load_specs(artifact: str, spec_arg: str | None) -> list[dict]:
    """Input specs from --input-spec (a JSON file or inline JSON) or inputs.json beside the artifact."""
    return _load_spec_doc(artifact, spec_arg)[0]


def _load_spec_doc(artifact: str, spec_arg: str | None) -> tuple[list[dict], str | None]:
    """(input specs, the runtime the spec file names if it names one)."""
    if spec_arg and spec_arg.lstrip().startswith(("[", "{")):
        doc, where = _parse_json(spec_arg, "--input-spec"), "--input-spec"
    else:
        where = spec_arg or os.path.join(os.path.dirname(os.path.abspath(artifact)), SPEC_FILE)
        try:
            with open(where) as f:
                doc = _parse_json(f.read(), where)
        except OSError as e:
            raise RunnerError("usage", f"cannot read input spec {where}: {e.strerror}; pass --input-spec or --inputs", EXIT_USAGE) from None
    specs = doc.get("inputs") if isinstance(doc, dict) else doc
    if isinstance(specs, list):
        specs = [{"dtype": "float32", **s} if isinstance(s, dict) else s for s in specs]
    if not isinstance(specs, list) or not specs or not all(_valid_spec(s) for s in specs):
        raise RunnerError("usage", f"{where}: expected {{\"inputs\": [{{\"name\", \"shape\", \"dtype\"}}, ...]}}", EXIT_USAGE)
    return specs, doc.get("runtime") if isinstance(doc, dict) else None


def _parse_json(text: str, where: str):
    try:
        return json.loads(text)
    except ValueError as e:
        raise RunnerError("usage", f"{where}: not valid JSON: {e}", EXIT_USAGE) from None


def _valid_spec(s) -> bool:
    return (isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("shape"), list)
            and all(isinstance(d, int) and d > 0 for d in s["shape"]) and s["dtype"] in TorchInputs.DTYPES)


def load_arrays(path: str, specs: list[dict]):
    """Real inputs from .npz (one array per input, or `x` for a single one) or .npy; first batch taken."""
    import numpy as np  # only with --inputs: every runtime above brings numpy

    try:
        data = np.load(path)
    except (OSError, ValueError) as e:
        raise RunnerError("usage", f"--inputs {path}: cannot load: {e}", EXIT_USAGE) from None
    if isinstance(data, np.ndarray):
        found = {specs[0]["name"]: data} if len(specs) == 1 else {}
    else:
        found = {k: data[k] for k in data.files}
        if len(specs) == 1 and specs[0]["name"] not in found and "x" in found:
            found[specs[0]["name"]] = found["x"]
    arrays = []
    for s in specs:
        if s["name"] not in found:
            raise RunnerError("usage", f"--inputs {path}: no array named '{s['name']}' (has: {', '.join(found) or 'none'})", EXIT_USAGE)
        arrays.append(_fit(found[s["name"]], s, path).astype(s["dtype"]))
    return arrays


def _fit(a, spec, path):
    shape = tuple(spec["shape"])
    if a.shape == shape:
        return a
    if a.shape[1:] == shape[1:] and a.shape[0] >= shape[0]:  # N samples with the batch axis: take the first batch
        return a[: shape[0]]
    if a.shape == shape[1:] and shape[0] == 1:  # one sample without its batch axis
        return a.reshape(shape)
    raise RunnerError("usage", f"--inputs {path}: '{spec['name']}' has shape {list(a.shape)}, the model takes {list(shape)}", EXIT_USAGE)


# --- statistics and device facts ------------------------------------------------


def percentile(sorted_ms: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    pos = (len(sorted_ms) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (pos - lo)


def summarize(samples_ms: list[float]) -> dict:
    """mean/std/min/p50/p90/p99/max of per-run latencies; std is the sample standard deviation."""
    s = sorted(samples_ms)
    stats = {
        "mean": statistics.fmean(s), "std": statistics.stdev(s) if len(s) > 1 else 0.0, "min": s[0],
        "p50": percentile(s, 50), "p90": percentile(s, 90), "p99": percentile(s, 99), "max": s[-1],
    }
    return {k: round(v, 4) for k, v in stats.items()}  # 0.1 us: below any timer's noise


def cpu_from_cpuinfo(text: str) -> dict:
    """CPU model and board from /proc/cpuinfo text (x86 'model name', ARM 'CPU part', Pi 'Model')."""
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), []).append(value.strip())
    model = (fields.get("model name") or [None])[0]
    if not model and fields.get("cpu part"):
        parts = [ARM_PARTS.get(p.lower(), f"ARM part {p}") for p in fields["cpu part"]]
        model = " + ".join(f"{parts.count(p)}x {p}" for p in sorted(set(parts), key=parts.index))
    if not model:
        model = (fields.get("hardware") or fields.get("processor") or [None])[0]
    # Pi kernels print "Model : Raspberry Pi 4 Model B"; x86 prints "model : 85" (a number, not a board).
    boards = [v for v in fields.get("model", []) + fields.get("hardware", []) if not v.isdigit()]
    return {"cpu_model": model, "board": boards[0] if boards else None}


def _read(path: str):
    try:
        with open(path) as f:
            return f.read().strip("\x00\n ")
    except OSError:
        return None


def _number(text, scale: float):
    try:
        return round(float(text) / scale, 1)
    except (TypeError, ValueError):
        return None


def _cpu_temperature():
    """Degrees C from the CPU's thermal zone (else the first zone); None where /sys has none."""
    zones = sorted(glob.glob("/sys/class/thermal/thermal_zone*"))
    preferred = [z for z in zones if any(k in (_read(z + "/type") or "") for k in ("cpu", "soc", "x86_pkg"))]
    for zone in preferred + zones:
        value = _number(_read(zone + "/temp"), 1000.0)  # millidegrees
        if value is not None:
            return value
    return None


EMULATOR_MARKER = "/etc/edgekit-emulator.json"  # written into the rootfs `make emulator` builds


def emulated_facts(marker_text: str, qemu_cpu):
    """A board that is edgekit's qemu emulator says so: its timings are not latency."""
    try:
        doc = json.loads(marker_text)
    except ValueError:
        doc = {}
    return {"by": doc.get("by", "qemu-user"), "cpu": qemu_cpu or None}


def device_facts() -> dict:
    cpufreq = "/sys/devices/system/cpu/cpu0/cpufreq/"
    facts = cpu_from_cpuinfo(_read("/proc/cpuinfo") or "")
    facts["board"] = _read("/proc/device-tree/model") or facts["board"]
    facts.update({
        "cores": os.cpu_count(),
        "governor": _read(cpufreq + "scaling_governor"),
        "clock_mhz": _number(_read(cpufreq + "scaling_cur_freq"), 1000.0),  # kHz
        "max_clock_mhz": _number(_read(cpufreq + "cpuinfo_max_freq"), 1000.0),
        "temperature_c": _cpu_temperature(),
        "kernel": platform.release(),
    })
    marker = _read(EMULATOR_MARKER)
    if marker is not None:
        facts["emulated"] = emulated_facts(marker, os.environ.get("QEMU_CPU"))
    return facts


# Memory read bandwidth, the limit of decoding: each generated token reads every weight once
# (validate/cost.py decode_limit). Measured the way STREAM does (McCalpin, "Memory Bandwidth and
# Machine Balance in Current High Performance Computers", IEEE TCCA Newsletter 1995): an array several
# times the last-level cache, best of a few passes; here a read-only pass (a sum), every core summing
# its share, since decode reads weights and writes next to nothing.
BANDWIDTH_MIN_BYTES = 64 << 20      # above any L3 of the boards edgekit targets (Pi 5: 2 MB)
BANDWIDTH_CACHE_MULTIPLE = 4        # and 4x this machine's largest cache: a stream that long finds nothing of its last pass there
BANDWIDTH_MEMORY_SHARE = 8          # never more than 1/8 of the available memory (a 512 MB board)
BANDWIDTH_PASSES = 5


def _largest_cache_bytes(pattern: str = "/sys/devices/system/cpu/cpu0/cache/index*/size") -> int:
    sizes = []
    for path in glob.glob(pattern):
        text = (_read(path) or "").upper()
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=0)


def _available_memory_bytes():
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024  # kB
    return None


def memory_read_bandwidth(passes: int = BANDWIDTH_PASSES, threads: int | None = None) -> dict:
    """GB/s (1e9 bytes/s) this process reads from memory with every core busy (or `threads` threads),
    the buffer's size and the threads. numpy's sum releases the GIL, so a thread per core reads in
    parallel. None where numpy is missing or memory too small to measure past the caches."""
    try:
        import numpy as np
    except ImportError:
        return {"read_gbs": None, "why": "numpy is not installed"}
    from concurrent.futures import ThreadPoolExecutor

    size = max(BANDWIDTH_MIN_BYTES, BANDWIDTH_CACHE_MULTIPLE * _largest_cache_bytes())
    available = _available_memory_bytes()
    if available is not None and size > available // BANDWIDTH_MEMORY_SHARE:
        return {"read_gbs": None, "why": f"{size >> 20} MB to read past the caches is over 1/{BANDWIDTH_MEMORY_SHARE} "
                                         f"of the {available >> 20} MB available"}
    threads = threads or os.cpu_count() or 1
    buffer = np.ones(size // 8, dtype=np.float64)  # written once: every page is backed before timing
    shares = np.array_split(buffer, threads)
    seconds = []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(passes + 1):
            start = time.perf_counter_ns()
            list(pool.map(np.sum, shares))
            seconds.append((time.perf_counter_ns() - start) / 1e9)
    best = min(seconds[1:])  # the first pass warms the threads and the TLB: not timed
    return {"read_gbs": round(buffer.nbytes / best / 1e9, 2), "buffer_mb": buffer.nbytes >> 20,
            "threads": threads, "passes": passes}


# --- the run ----------------------------------------------------------------------


def _ms(start_ns: int) -> float:
    return (time.perf_counter_ns() - start_ns) / 1e6


def benchmark(args) -> dict:
    result = {"ok": True, "artifact": os.path.basename(args.artifact)}
    if args.generate:
        return bench_generation(args, result)
    specs, named = _load_spec_doc(args.artifact, args.input_spec)  # bad input specs fail before the slow runtime import
    start = time.perf_counter_ns()
    rt = runtime_for(args.runtime or named)
    result["import_ms"] = round(_ms(start), 3)
    arrays = load_arrays(args.inputs, specs) if args.inputs else None
    applied = rt.set_threads(args.threads)
    _load(rt, args.artifact, result)
    result.update(_identity(rt, args.threads, applied))
    inputs = rt.make_inputs(specs, arrays)
    try:
        start = time.perf_counter_ns()
        outputs = rt.run(inputs)
        result["first_ms"] = round(_ms(start), 3)
        if args.check:
            return result
        for _ in range(args.warmup):
            rt.run(inputs)
        samples = _timed_runs(rt, inputs, args.runs, args.min_seconds)
    except Exception as e:
        raise RunnerError("run_failed", f"running {args.artifact} failed: {type(e).__name__}: {e}") from None
    result.update(summarize(samples))
    result.update({"runs": len(samples), "warmup": args.warmup, "samples_ms": [round(x, 4) for x in samples],
                   "outputs": _describe(outputs), "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss})
    return result


def _load(rt, artifact: str, result: dict) -> None:
    try:
        start = time.perf_counter_ns()
        rt.load(artifact)
        result["load_ms"] = round(_ms(start), 3)
    except Exception as e:
        raise RunnerError("load_failed", f"loading {artifact} failed: {type(e).__name__}: {e}") from None


def _timed_runs(rt, inputs, runs: int, min_seconds: float) -> list[float]:
    """At least `runs` runs and at least `min_seconds` of them (like TFLite's benchmark_model)."""
    samples, begin = [], time.perf_counter()
    while len(samples) < runs or time.perf_counter() - begin < min_seconds:
        start = time.perf_counter_ns()
        rt.run(inputs)
        samples.append(_ms(start))
    return samples


def _identity(rt, threads: int, applied: bool) -> dict:
    return {
        "runtime": {"name": rt.name, "version": rt.version()}, "threads": threads, "threads_applied": applied,
        "python": platform.python_version(), "machine": platform.machine(), "device": device_facts(),
    }


def _describe(outputs) -> list[dict]:
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    return [{"shape": list(getattr(o, "shape", [])), "dtype": str(getattr(o, "dtype", type(o).__name__))} for o in outputs]


def parse_args(argv):
    p = argparse.ArgumentParser(description="Time one model artifact in its runtime; prints one JSON object.")
    p.add_argument("artifact")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--min-seconds", type=float, default=0.0)
    p.add_argument("--inputs", help=".npz (one array per input) or .npy of real inputs")
    p.add_argument("--input-spec", help=f"JSON file or inline JSON of the inputs [default: {SPEC_FILE} beside the artifact]")
    p.add_argument("--runtime", choices=sorted(RUNTIMES), help="the artifact's runtime [default: the spec file's]")
    p.add_argument("--timeout", type=float, default=0.0, help="kill the run after this many seconds (0: never)")
    p.add_argument("--check", action="store_true", help="import the runtime, load the artifact, run once; no benchmark")
    p.add_argument("--generate", type=int, metavar="N", help="a text-generation build: time greedy generations of N tokens")
    p.add_argument("--prompt-ids", help="with --generate: the prompt's token ids (raw little-endian int64)")
    args = p.parse_args(argv)
    if args.threads < 1 or args.runs < 1 or args.warmup < 0 or args.min_seconds < 0:
        raise RunnerError("usage", "--threads and --runs must be >= 1, --warmup and --min-seconds >= 0", EXIT_USAGE)
    if (args.generate is not None) != (args.prompt_ids is not None) or (args.generate is not None and args.generate < 1):
        raise RunnerError("usage", "--generate N (at least 1) and --prompt-ids FILE go together", EXIT_USAGE)
    return args


def main(argv=None) -> int:
    # Runtimes print from native code; keep the real stdout for our one JSON object
    # and send everything else written to fd 1 to stderr.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    try:
        doc, code = _main(argv)
        if doc is not None:
            out.write(json.dumps(doc) + "\n")
        return code
    finally:
        # fd 1 back to the real stdout: a caller in the same process (validate's limited_child.py)
        # prints its own JSON line after ours, and it must reach the parent, not stderr.
        out.flush()
        sys.stdout.flush()
        os.dup2(out.fileno(), 1)
        out.close()


def _main(argv) -> tuple[dict | None, int]:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        if args.timeout > 0:
            # Default SIGALRM action terminates the process even inside native
            # code, so a hung runtime cannot outlive its deadline on the device.
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(max(1, math.ceil(args.timeout)))
        doc, code = benchmark(args), 0
    except RunnerError as e:
        doc, code = {"ok": False, "error": str(e), "error_kind": e.kind, **e.extra}, e.code
    except SystemExit as e:  # argparse: its message (or --help) is already on stderr
        if not e.code:
            return None, 0
        doc, code = {"ok": False, "error": "bad arguments (see stderr)", "error_kind": "usage"}, EXIT_USAGE
    except Exception as e:
        doc, code = {"ok": False, "error": f"{type(e).__name__}: {e}", "error_kind": "internal"}, EXIT_FAILED
    doc.setdefault("python", platform.python_version())
    doc.setdefault("machine", platform.machine())
    return doc, code


if __name__ == "__main__":
    sys.exit(main())
