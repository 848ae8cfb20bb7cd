"""Keep third-party chatter out of the user's terminal, without hiding real errors.

torchao logs a warning for each optional CUDA kernel library it can't load on a
CPU machine, and ExecuTorch's C++ runtime prints cpuinfo probing lines to the
process's stderr when it loads a method. Neither is actionable for the user.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings


VERBOSE_ENV = "EDGEKIT_VERBOSE"  # set by `edgekit -v` / `--debug`: the libraries' output is shown


def verbose() -> bool:
    return bool(os.environ.get(VERBOSE_ENV))


def quiet_model_libraries() -> None:
    """What the libraries a user's model factory loads print on their own (set before they are
    imported; a value the user exported wins): Hugging Face's per-file "Loading weights" bars
    and transformers' info/warning logs; and the loggers below, which a factory importing
    transformers (which imports torchao) would otherwise wake before edgekit's own imports."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read by huggingface_hub, used by transformers
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    _quiet_loggers()


def _quiet_loggers() -> None:
    """Known-noisy loggers and warnings, set without importing any of them."""
    if verbose():
        return
    # torchao logs each optional CUDA kernel library it cannot load; torch's pytree warns about Enum
    # constants torchao registers. torch.onnx warns that torchvision ops can't be registered when
    # torchvision is absent. onnxscript's optimizer logs each constant it fails to fold.
    for name in ("torchao", "torch.utils._pytree", "torch._export", "torch.export", "executorch", "torch.onnx",
                 "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Deprecation chatter from inside torch/executorch internals, not the user's code.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*is an Enum subclass.*")
    # Exporting a Hugging Face decoder (edgekit/llm): dynamo notes transformers' output-capturing global,
    # and ExecuTorch notes that the KV cache is a mutated buffer (its initial state is meant to be empty).
    warnings.filterwarnings("ignore", message=".*found certain side effects happened in the model.forward.*")
    warnings.filterwarnings("ignore", message=".*Mutation on a buffer in the model is detected.*")


def quiet_python_logs() -> None:
    """Silence known-noisy loggers and warnings; call before importing torch stacks."""
    _quiet_loggers()
    if verbose():
        return
    # torch.jit.trace warns about every Python branch on a tensor (Hugging Face shape checks): the
    # artifact's outputs are compared with the float model's on real inputs, which is the real check.
    from torch.jit import TracerWarning

    warnings.filterwarnings("ignore", category=TracerWarning)
    # torch.ao's eager quantized tensors (what the lite interpreter's QNNPACK ops use) are deprecated upstream.
    warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")


@contextlib.contextmanager
def native_stderr_captured():
    """Capture what native code writes to fd 2; replay it if the block fails (`-v`: let it through)."""
    if verbose():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@contextlib.contextmanager
def root_logger_quiet():
    """onnxruntime's quantizer logs its notes ("Axis 1 is out-of-range for weight ...") on the
    root logger: raise it to ERROR for the block only, so a calling program's logging is untouched."""
    if verbose():
        yield
        return
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
