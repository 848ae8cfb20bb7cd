"""What a text-generation build starts from: a Hugging Face causal-LM directory and its tokenizer.

A user's decoder is a model directory as `save_pretrained` writes it:
`config.json`, the weights (`model.safetensors`) and the tokenizer's files
(`tokenizer.json`); or a GGUF file (llama.cpp's single-file format, which is
how registry packages ship small LMs), read by transformers' GGUF reader and
dequantized to float32. Loading is safe: only safetensors or GGUF tensors are
read (no pickle) and no code from the directory runs (`trust_remote_code=False`),
so the architecture must be one transformers ships (Llama, Qwen2, SmolLM, GPT-2 ...).

`exportable()` turns the loaded model into what the exporters and the weight
quantizer expect: GPT-2's `Conv1D` layers (a Linear with its weight stored
transposed) become `nn.Linear`, tied input/output embeddings get their own
copy (4-bit embedding tables and 4-bit Linear weights are packed differently),
and the model's generation config asks for a static cache of `max_seq_len`.
"""

from __future__ import annotations

from pathlib import Path

from edgekit.errors import UsageError

# Files a tokenizer may bring; copied into the build so the device needs nothing else.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
DEFAULT_MAX_SEQ_LEN = 256  # tokens of context (prompt + generated) the KV cache holds


def is_gguf(path: Path) -> bool:
    return Path(path).suffix.lower() == ".gguf"


def require_transformers() -> None:
    """Text generation needs transformers (the `llm` extra); without it, say how to get it."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise UsageError("text generation needs the transformers package, which is not installed",
                         hint="pip install 'edgekit[llm]'") from None


def load(model_dir: Path):
    """(model in eval mode, float32; tokenizer) from a model directory or a .gguf file."""
    from edgekit.quiet import quiet_model_libraries

    quiet_model_libraries()  # before transformers is imported: it reads its verbosity then
    require_transformers()
    if is_gguf(model_dir):
        return _load_gguf(Path(model_dir))
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32", use_safetensors=True,
                                                     trust_remote_code=False)
    except (ValueError, KeyError) as e:
        raise UsageError(f"{model_dir}: transformers cannot load this causal LM: {e}",
                         hint="edgekit builds the decoder architectures transformers ships "
                              "(Llama, Qwen2, SmolLM, GPT-2 ...), without remote code") from None
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    return model.eval(), tokenizer


def _load_gguf(path: Path):
    """A GGUF file's model and tokenizer through transformers' GGUF reader (the gguf package). Its weights,
    4-bit or 8-bit blocks in llama.cpp's formats, are dequantized to float32: that float model is the
    reference the artifact is judged against."""
    try:
        import gguf  # noqa: F401  transformers' GGUF reader needs it
    except ImportError:
        raise UsageError(f"{path}: reading a GGUF file needs the gguf package, which is not installed",
                         hint="pip install 'edgekit[llm]'") from None
    import functools

    import torch
    import transformers.modeling_gguf_pytorch_utils as reader
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    from edgekit.quiet import verbose

    folder, name = str(path.parent), path.name
    # The reader's "de-quantizing GGUF tensors" bar is a plain tqdm, which no transformers setting turns off
    # (and TQDM_DISABLE is read when tqdm is first imported, long before): it is given disable=True here.
    bar = reader.tqdm
    if not verbose():
        reader.tqdm = functools.partial(bar, disable=True)
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        tensors = reader.load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    except (ValueError, KeyError, NotImplementedError) as e:
        raise UsageError(f"{path}: transformers cannot read this GGUF file as a causal LM: {e}",
                         hint="edgekit reads the GGUF architectures transformers reads (Llama, Qwen2, SmolLM, ...)") from None
    finally:
        reader.tqdm = bar
    model.config.architectures = [type(model).__name__]  # a GGUF's config names none; a saved copy should
    result = model.load_state_dict(tensors, strict=False)
    model.tie_weights()
    head = model.get_output_embeddings()
    missing = [k for k in result.missing_keys
               if not (head is not None and head.weight is model.get_input_embeddings().weight and k.endswith("weight")
                       and model.get_submodule(k.rsplit(".", 1)[0]) is head)]
    if missing or result.unexpected_keys:
        raise UsageError(f"{path}: the GGUF file's tensors do not fill {type(model).__name__} "
                         f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})")
    return model.eval(), tokenizer


def exportable(model, max_seq_len: int):
    """The model made ready for export and 4-bit weights (see the module doc); changed in place."""
    import torch

    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if limit is not None and max_seq_len > limit:
        raise UsageError(f"--max-seq-len {max_seq_len} is longer than the model's {limit} positions",
                         hint=f"use --max-seq-len {limit} or less")
    _conv1d_to_linear(model)
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is not None and out.weight is inp.weight:
        out.weight = torch.nn.Parameter(inp.weight.detach().clone())
        model.config.tie_word_embeddings = False  # so a saved copy (the ONNX builder's input) stays untied
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            # padding_idx only keeps that row's gradient at zero; the lookup is the same without it. With
            # it, the int8 embedding's dequantize is not fused into ExecuTorch's embedding_byte kernel and the
            # export fails ("Missing out variants: torchao::dequantize_affine"): SmolLM2's pad token is 2.
            module.padding_idx = None
    model.generation_config.cache_implementation = "static"
    model.generation_config.cache_config = {"batch_size": 1, "max_cache_len": max_seq_len}
    return model


def _conv1d_to_linear(module) -> None:
    import torch
    from transformers.pytorch_utils import Conv1D

    for name, child in module.named_children():
        if isinstance(child, Conv1D):
            # Conv1D computes x @ W + b with W of shape (in, out); Linear stores (out, in).
            linear = torch.nn.Linear(child.weight.shape[0], child.weight.shape[1])
            linear.weight = torch.nn.Parameter(child.weight.detach().t().contiguous())
            linear.bias = torch.nn.Parameter(child.bias.detach().clone())
            setattr(module, name, linear)
        else:
            _conv1d_to_linear(child)


class CachedStep:
    """The float model with a static KV cache, stepped as the artifact is: the reference it is judged against.

    `step(ids, start)` feeds tokens `ids` (a 1-D int64 array) at positions
    start.. and returns their logits (len(ids), vocab) as float32 numpy."""

    def __init__(self, model, max_seq_len: int):
        from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

        # The inner TorchExportableModuleWithStaticCache: the outer wrapper's eager forward drops
        # cache_position (transformers 5.24), which the cache needs to know where to write.
        self.module = TorchExportableModuleForDecoderOnlyLM(model, batch_size=1, max_cache_len=max_seq_len).model
        self.max_seq_len = max_seq_len

    def step(self, ids, start: int):
        import torch

        ids = torch.as_tensor(ids, dtype=torch.long).reshape(1, -1)
        with torch.no_grad():
            logits = self.module(input_ids=ids, cache_position=torch.arange(start, start + ids.shape[1]))
        return logits[0].float().numpy()
