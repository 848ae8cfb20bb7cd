"""`edgekit serve`: one artifact of a build as an HTTP service (server.py), on this computer or,
through `edgekit deploy --serve`, on the board; and the bounded load test of such a service
(load.py, `edgekit bench --serve`).

server.py is copied to the device beside runner.py and imports nothing else of edgekit;
what the host needs to start it (the files, the spec it reads, the packages it imports)
is here.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from edgekit.serve.server import GENERATION_MODULES, STACK_MODULES, Settings

SERVER_PATH = Path(__file__).with_name("server.py")
SPEC_FILE = "serve.json"  # beside the artifact on the device: inputs, runtime, and what /v1/model shows

# The HTTP stack the server imports, with what those need on Python 3.11: all pure-Python wheels
# (the emulated board installs exactly these; tests/test_serve.py checks the list is closed).
STACK = ("uvicorn", "starlette", "prometheus-client")
STACK_WITH_DEPENDENCIES = (*STACK, "anyio", "click", "h11", "idna", "typing-extensions")
# What a text-generation build's server adds: its tokenizer, read by the tokenizers package (a compiled
# wheel for aarch64; the one dependency it brings on 3.11, huggingface-hub, is not imported by Tokenizer.from_file).
GENERATION_PACKAGES = ("tokenizers",)

__all__ = ["GENERATION_MODULES", "GENERATION_PACKAGES", "SERVER_PATH", "SPEC_FILE", "STACK", "STACK_MODULES",
           "STACK_WITH_DEPENDENCIES", "Settings", "generation_spec_doc", "install_hint", "spec_doc"]


def stack_versions() -> dict[str, str]:
    """{distribution: version} of the stack as installed here: what a device is told to install."""
    return {name: metadata.version(name) for name in STACK_WITH_DEPENDENCIES}


def install_hint(python: str, generating: bool = False) -> str:
    pins = " ".join(f"{name}=={metadata.version(name)}" for name in (*STACK, *(GENERATION_PACKAGES if generating else ())))
    return f"{python} -m pip install {pins} (Raspberry Pi OS: apt install python3-uvicorn python3-starlette python3-prometheus-client)"


def spec_doc(manifest: dict, format_name: str, artifact: dict, runtime: str) -> dict:
    """What the server reads: the artifact's inputs and runtime, and the model facts /v1/model shows."""
    metrics = (manifest.get("formats", {}).get(format_name) or {}).get("metrics") or manifest.get("metrics") or {}
    model = manifest.get("model") or {}
    return {
        "inputs": model["inputs"],
        "runtime": runtime,
        "model": {
            "name": manifest.get("name"), "target": manifest.get("target"), "format": format_name,
            "artifact": artifact["file"], "artifact_sha256": artifact["sha256"], "labels": model.get("labels"),
            "accuracy": {k: metrics.get(k) for k in ("accuracy_float", "accuracy_artifact", "accuracy_drop",
                                                     "top1_agreement", "samples") if k in metrics},
        },
    }


def generation_spec_doc(manifest: dict) -> dict:
    """What the server reads for a text-generation build (edgekit/llm): the decoder's runtime, its
    tokenizer file and where generation stops, and the facts /v1/model shows."""
    quality = manifest.get("quality") or {}
    return {
        "task": "text-generation",
        "runtime": "onnxruntime" if manifest.get("format") == "onnx" else "executorch",
        "tokenizer": "tokenizer.json",
        "eos_id": manifest.get("eos_id"),
        "model": {
            "name": manifest.get("name"), "target": manifest.get("target"), "format": manifest.get("format"),
            "artifact": manifest["artifact"]["file"], "artifact_sha256": manifest["artifact"]["sha256"],
            "quality": {k: quality.get(k) for k in ("perplexity", "float_perplexity", "perplexity_increase_pct",
                                                    "agreement_pct", "passed") if k in quality},
        },
    }
