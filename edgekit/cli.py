"""Click commands: parse options, call edgekit.api, print. No logic lives here.

Heavy imports (torch, executorch) happen inside commands so `edgekit --help`
starts fast.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import click

from edgekit import __version__
from edgekit.errors import EXIT_INTERNAL, EXIT_USAGE, EdgekitError, TrainingShareDone, UsageError, environment_fault
from edgekit.progress import QUIET_ENV
from edgekit.quiet import VERBOSE_ENV, quiet_model_libraries

_DEBUG_ENV = "EDGEKIT_DEBUG"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekit")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors, and the libraries' own output.")
@click.option("-v", "--verbose", is_flag=True, help="Show the libraries' own warnings and log lines.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines: results and errors only.")
def cli(debug: bool, verbose: bool, quiet: bool) -> None:
    """Take a trained PyTorch model to a phone, a Raspberry Pi or any ARM board.

    \b
    Exit codes: 0 ok, 1 internal error (please report), 2 usage, input or
    environment error, 3 a quality gate failed, 4 device or transport error,
    130 interrupted.

    \b
    --debug, -v and -q may also follow the command (`edgekit build APP -q`).
    NO_COLOR=1 turns colour off. Shell completion: eval "$(_EDGEKIT_COMPLETE=bash_source edgekit)".
    """
    if quiet:
        os.environ[QUIET_ENV] = "1"
    if debug:
        os.environ[_DEBUG_ENV] = "1"
    if debug or verbose:
        os.environ[VERBOSE_ENV] = "1"
    else:
        quiet_model_libraries()


def _complete_target(ctx, param, incomplete: str) -> list[str]:
    """Shell completion of --target and `targets show`: the profiles' names."""
    from edgekit.target import target_names

    return [n for n in target_names() if n.startswith(incomplete)]


_FORMAT_CHOICES = ("executorch", "torchscript-lite", "onnx", "litert", "all", "auto")


def _options(*options):
    """A group of click options applied as one decorator: each group is defined once."""
    def apply(command):
        for option in reversed(options):
            command = option(command)
        return command
    return apply


# compare.TASKS (what a model's output is) and the decoder task (edgekit/llm).
_TASK_CHOICES = ("auto", "classification", "embedding", "regression", "text-generation")

# What to build: an app directory, or your own model with its inputs and data files.
source_options = _options(
    click.argument("app_dir", required=False, type=click.Path(file_okay=False)),
    click.option("--model", metavar="MODULE:FACTORY", help="Your own model, without an app dir: a factory returning an nn.Module."),
    click.option("--input-shape", metavar="SHAPE", help="Shape of the one float input, batch first: 1,3,32,32."),
    click.option("--input", "inputs", multiple=True, metavar="NAME:SHAPE[:DTYPE]", help="One per input, e.g. input_ids:1x128:int64 (repeatable)."),
    click.option("--weights", type=click.Path(dir_okay=False), help="state_dict file (loaded with weights_only=True)."),
    click.option("--calib", type=click.Path(dir_okay=False), help="Calibration .npz: one array per input (or x)."),
    click.option("--eval", "eval_", type=click.Path(dir_okay=False),
                 help="Held-out .npz: real inputs, optionally integer labels y (accuracy)."),
    click.option("--train", type=click.Path(dir_okay=False), help="Training .npz (inputs, labels y) for --distill / taylor pruning."),
)

# How to build: the recipe (edgekit/recipe.py). Unset options leave the --recipe file's (or the app's) values.
recipe_options = _options(
    click.option("--recipe", "recipe_file", type=click.Path(dir_okay=False),
                 help="A build recipe: a TOML file with a [recipe] table, or a build's manifest.json to replay it."),
    click.option("-f", "--format", "formats", multiple=True, type=click.Choice(_FORMAT_CHOICES),
                 help="Export format (repeatable); `all` builds every one; `auto` builds every one and keeps "
                      "the one to ship (passes the gate, fastest predicted on the target) as the primary. "
                      "[default: the target's]"),
    click.option("--quant", type=click.Choice(("static", "dynamic", "fp16")),
                 help="static int8 (default), dynamic int8 (Linear/LSTM-heavy models), or fp16 (targets with fp16)."),
    click.option("--calibration", type=click.Choice(("minmax", "histogram", "percentile", "entropy")),
                 help="How activation ranges are chosen. [default: each format's own]"),
    click.option("--calib-samples", type=int, metavar="N", help="Use only the first N calibration samples."),
    click.option("--quality", type=click.Choice(("auto", "fast")),
                 help="auto: if int8 misses the gate on the calibration inputs, try other calibrations, "
                 "then dynamic activations (transformers); fast: one pass. [default: auto]"),
    click.option("--per-tensor", is_flag=True, default=None, help="Per-tensor weight scales instead of per-channel (to compare)."),
    click.option("--equalize/--no-equalize", default=None,
                 help="Cross-layer range equalization into depthwise convs before static int8 (Nagel et al., 2019)."),
    click.option("--smooth-quant", type=float, metavar="ALPHA",
                 help="SmoothQuant (Xiao et al., 2023) before static int8: move activation outliers into the "
                 "weights of Linears fed by a LayerNorm/RMSNorm, with strength ALPHA in (0, 1), e.g. 0.5."),
    click.option("--weight-rounding", type=click.Choice(("nearest", "gptq")),
                 help="Static int8 weights: rounded by GPTQ on the calibration inputs (Frantar et al., 2022), "
                 "or each to its nearest level. [default: gptq]"),
    click.option("--max-accuracy-drop", type=float, metavar="POINTS",
                 help="Gate: fail (exit 3) if the artifact loses more accuracy than this, against the model as "
                 "loaded (pruning, distillation and int8 together); first keeps sensitive layers float."),
    click.option("--latency-budget", type=float, metavar="MS",
                 help="Budget: predicted latency on the target; prunes as much as needed (with --distill) "
                 "unless --prune/--prune-macs say how much; exit 3 if the artifact misses it."),
    click.option("--size-budget", type=float, metavar="MB",
                 help="Budget: the artifact's size in MB; prunes as --latency-budget does; exit 3 if missed."),
    click.option("--min-cosine", type=float, metavar="C",
                 help="Gate: mean cosine similarity to float for every output. [default: 0.99, class scores 0.95; fp16 0.999]"),
    click.option("--min-agreement", type=float, metavar="PERCENT",
                 help="Gate: top-1 agreement with float on class scores (clear-cut samples). [default: 95; fp16 99]"),
    click.option("--task", type=click.Choice(_TASK_CHOICES),
                 help="What the output is: class scores get the top-1 check; text-generation builds a decoder "
                      "(`edgekit build` only). [default: the app's, else auto: 2-D outputs]"),
    click.option("--no-fallback", is_flag=True, default=None, help="With --max-accuracy-drop: only check, don't keep layers float."),
    click.option("--sensitivity", is_flag=True, default=None, help="Rank layers by how much quantizing each alone hurts."),
    click.option("--depth", type=float, metavar="KEEP", help="Depth pruning: keep this share of the repeated blocks (transformer layers), dropping the least influential."),
    click.option("--prune", type=float, metavar="RATIO", help="Channel pruning: remove this fraction of channels (DepGraph; rounded to the target's multiple)."),
    click.option("--prune-macs", type=float, metavar="FRACTION", help="Channel pruning until at most this fraction of the MACs is left."),
    click.option("--prune-steps", type=int, metavar="N",
                 help="Prune in N cuts with distillation after each (needs --distill). [default: with --distill, "
                 "--prune-macs 0.25 or less cuts in rounds, each before the last keeping half of the MACs left "
                 "(0.1: 0.5, 0.25, 0.1); else 1]"),
    click.option("--prune-importance", type=click.Choice(("l1", "l2", "taylor", "bn-scale")),
                 help="How channels are ranked. [default: l2]"),
    click.option("--prune-global", is_flag=True, default=None, help="Rank channels across layers (uneven widths) instead of per layer."),
    click.option("--distill", is_flag=True, default=None, help="Recover accuracy by distillation from the model as loaded (needs --train or data.train)."),
    click.option("--distill-epochs", type=int, metavar="N",
                 help="Distillation epochs (early stop on a validation part of the training data). "
                      "[default: fitted to the training data's size]"),
    click.option("--nproc", type=int, help="Training processes, for distillation and quantization-aware training (DDP via torchrun). [default: 1]"),
    click.option("--lowrank", type=float, metavar="FRACTION", help="SVD-factorise Linear/1x1 Conv layers, keeping this fraction of the rank (where it saves MACs)."),
    click.option("--lowrank-energy", type=float, metavar="E", help="Instead of --lowrank: the smallest rank keeping this share of sum(s^2)."),
    click.option("--sparsity", type=float, metavar="S", help="Zero this fraction of each layer's weights (L1); shrinks the zipped artifact, not latency."),
)

node_options = _options(
    click.option("--nnodes", type=int, default=1, show_default=True,
                 help="Machines the distillation spans (DDP over torchrun's rendezvous): run the same command on each."),
    click.option("--node-rank", type=int, help="This machine's place among --nnodes: 0 on the first, which writes the result."),
    click.option("--rdzv-endpoint", metavar="HOST:PORT",
                 help="The first machine's address and a free port there, the same on every node."),
)


# Decoders (--task text-generation, edgekit/llm): the KV cache, the 4-bit weights, the text they are judged on.
decoder_options = _options(
    click.option("--max-seq-len", type=int, metavar="TOKENS",
                 help="Text generation: tokens the KV cache holds (prompt + reply). [default: 256]"),
    click.option("--group-size", type=int, metavar="N",
                 help="Text generation: weights per fp32 scale in the 4-bit layers (16 to 256). [default: 32]"),
    click.option("--weight-bits", type=click.Choice(("4", "8")),
                 help="Text generation: bits of the Linear layers' weights; 8 for models that lose too much at 4. "
                      "[default: 4]"),
    click.option("--weight-method", type=click.Choice(("rtn", "hqq")),
                 help="Text generation: how 4-bit weights are rounded: to nearest (rtn) or by HQQ's optimized "
                      "scales (no data needed). [default: rtn]"),
    click.option("--embedding-bits", type=click.Choice(("4", "8")),
                 help="Text generation: bits of the embedding table and output head. [default: 8]"),
    click.option("--qat-steps", type=int, metavar="N",
                 help="Text generation: QAT steps distilled from the float model on --train-text (0: none). "
                      "[default: 300 with training text, else 0]"),
    click.option("--eval-text", type=click.Path(dir_okay=False),
                 help="Text generation: held-out UTF-8 text for perplexity and greedy agreement."),
    click.option("--train-text", type=click.Path(dir_okay=False), help="Text generation: UTF-8 text for QAT."),
    click.option("--max-perplexity-increase", type=float, metavar="PERCENT",
                 help="Text generation gate: the artifact's perplexity over float's, at most. [default: 10]"),
)


build_device_options = _options(
    click.option("-d", "--device", metavar="DEVICE",
                 help="Judge --latency-budget by timing the artifact on this device (user@host[:port], adb[:SERIAL] or "
                      "local) instead of by the cost model."),
    click.option("--python", "device_python", metavar="PATH", help="The device's python with the runtime. [default: python3; this one for local]"),
    click.option("--allow-arch-mismatch", is_flag=True, help="Time on a device that is not the target's architecture (e.g. --device local)."),
)


# The server's settings, for `edgekit serve` here and `edgekit deploy --serve` on the board.
server_options = _options(
    click.option("--host", "--listen", "listen", default="127.0.0.1", show_default=True, metavar="ADDR",
                 help="Address the server listens on: 127.0.0.1 keeps it on the machine; 0.0.0.0 opens it to the "
                      "network (it has no authentication: only on a network you trust)."),
    click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="TCP port of the server."),
    click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True,
                 help="Samples the worker takes from waiting requests at once."),
    click.option("--max-wait-ms", type=click.FloatRange(min=0), default=2.0, show_default=True,
                 help="How long a partly filled static batch (> 1) waits for more requests."),
    click.option("--queue-size", type=click.IntRange(min=1), default=32, show_default=True,
                 help="Requests that may wait; one more is answered 503 with Retry-After."),
    click.option("--max-body-mb", type=click.FloatRange(min=0, min_open=True), default=4.0, show_default=True,
                 help="Largest request body; larger ones get 413."),
    click.option("--max-samples", type=click.IntRange(min=1), default=64, show_default=True, help="Samples in one request."),
    click.option("--allow-nonfinite", is_flag=True, help="Accept NaN/inf in float inputs (refused with 422 by default)."),
    click.option("--drain-seconds", type=click.IntRange(min=0), default=30, show_default=True,
                 help="On SIGTERM: how long requests in flight may take to finish."),
)


def _server_settings(threads, listen, port, max_batch, max_wait_ms, queue_size, max_body_mb, max_samples,
                     allow_nonfinite, drain_seconds):
    from edgekit.serve import Settings

    return Settings(host=listen, port=port, threads=threads, max_batch=max_batch, max_wait_ms=max_wait_ms,
                    queue_size=queue_size, max_body_bytes=int(max_body_mb * 2**20), max_samples=max_samples,
                    allow_nonfinite=allow_nonfinite, drain_seconds=drain_seconds)


def _device(device: str | None, python: str | None, **settings):
    """The --device of build and search, with the device's python (local: the one running edgekit, which
    has every runtime, as `edgekit bench`) and other per-device settings (None: the default)."""
    from edgekit.deploy.devices import device_defaults, parse_device

    if device is None:
        return None
    python = python or (sys.executable if device == "local" else None)
    return parse_device(device, device_defaults(python=python, **settings))


def _use_nodes(nnodes: int, node_rank: int | None, rdzv_endpoint: str | None) -> bool:
    """Hand the rendezvous to the launcher (edgekit/train/launch.py reads it from EDGEKIT_TORCHRUN_ARGS);
    True when training spans machines."""
    import shlex

    from edgekit.train.launch import TORCHRUN_ARGS, rendezvous_args

    args = rendezvous_args(nnodes, node_rank, rdzv_endpoint)
    if args:
        os.environ[TORCHRUN_ARGS] = shlex.join(args)
    return bool(args)


output_options = _options(
    click.option("-t", "--target", shell_complete=_complete_target, help="Target profile name (see `edgekit targets`) or a .toml path. [default: rpi4]"),
    click.option("-o", "--out", type=click.Path(file_okay=False), help="Build directory [default: build/<name>-<target>]."),
    click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON instead of the summary table."),
)


def _source_of(app_dir, model, input_shape, inputs, weights, calib, eval_, train, replay: dict | None = None):
    """The model spec from the source options; replaying a manifest without one rebuilds its model."""
    from edgekit import api

    if app_dir is None and model is None and replay is not None:
        recorded = replay["model"]
        if recorded.get("source", "options") != "options":
            app_dir = str(Path(recorded["source"]).parent)
        else:
            model = recorded["factory"]
            inputs = tuple(f"{i['name']}:{'x'.join(map(str, i['shape']))}:{i['dtype']}" for i in recorded["inputs"])
            data = recorded.get("data") or {}
            weights, calib = weights or recorded.get("weights"), calib or data.get("calib")
            eval_, train = eval_ or data.get("eval"), train or data.get("train")
    return api.source(app_dir, model=model, input_shape=input_shape, inputs=inputs, weights=weights, calib=calib,
                      eval=eval_, train=train)


def _run_build(app_dir, model, input_shape, inputs, weights, calib, eval_, train, target, out, as_json,
               nnodes=1, node_rank=None, rdzv_endpoint=None, device=None, device_python=None,
               allow_arch_mismatch=False, **recipe) -> None:
    from edgekit import api
    from edgekit.errors import BuildGateFailed

    if _use_nodes(nnodes, node_rank, rdzv_endpoint) and not (recipe.get("distill") or recipe.get("distill_epochs")):
        raise UsageError(f"--nnodes {nnodes} spreads distillation over machines", hint="add --distill, or drop --nnodes")

    replay = _replayed_manifest(recipe.get("recipe_file"))
    spec = _source_of(app_dir, model, input_shape, inputs, weights, calib, eval_, train, replay)
    from edgekit.recipe import app_recipe, recipe_from_options

    built_recipe = recipe_from_options(app_recipe(spec), **recipe)
    target = target or (replay or {}).get("target") or "rpi4"
    # Progress goes to stderr, so --json stdout stays clean.
    try:
        manifest = api.build(spec, target, built_recipe, out=out, progress=True, device=_device(device, device_python),
                             allow_arch_mismatch=allow_arch_mismatch)
    except BuildGateFailed as e:  # the build dir was written: show it, with every artifact's verdict
        _show_build(e.manifest, as_json)
        raise
    _show_build(manifest, as_json)


def _replayed_manifest(recipe_file) -> dict | None:
    """The manifest `--recipe BUILD/manifest.json` names (its model and target are the defaults then)."""
    if not recipe_file or not str(recipe_file).endswith(".json"):
        return None
    try:
        doc = json.loads(Path(recipe_file).read_text())
    except (OSError, ValueError):
        return None  # BuildRecipe.from_file says what is wrong with it
    return doc if isinstance(doc, dict) and isinstance(doc.get("model"), dict) else None


def _show_build(manifest: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
    else:
        from edgekit.report.terminal import print_build_summary

        print_build_summary(manifest)


@cli.command()
@source_options
@recipe_options
@decoder_options
@node_options
@build_device_options
@output_options
def build(**options):
    """Quantize, export and validate a model for a target.

    \b
    edgekit build sample_apps/digits --target rpi4
    edgekit build sample_apps/digits --format all --max-accuracy-drop 0.5
    edgekit build --model mynets:make_net --input-shape 1,3,32,32 --calib calib.npz --eval eval.npz
    edgekit build --recipe build/digits-rpi4/manifest.json      # the same build again
    edgekit build sample_apps/digits --latency-budget 0.1 --prune-macs 0.5 --distill --device pi@raspberrypi.local
    """
    decoder = {k: options.pop(k) for k in _DECODER_KEYS}
    source = _decoder_source(options, decoder)
    if source is not None:
        return _run_decoder_build(source, options, decoder)
    given = [k for k, v in decoder.items() if v is not None]
    if given:
        raise UsageError(f"--{given[0].replace('_', '-')} applies to text-generation builds",
                         hint="add --task text-generation with --model MODEL_DIR, or leave it out")
    if (options["device_python"] or options["allow_arch_mismatch"]) and not options["device"]:
        raise UsageError("--python and --allow-arch-mismatch apply to the latency run of --device",
                         hint="add --device DEVICE with --latency-budget MS, or leave them out")
    _run_build(**options)


@cli.command()
@click.argument("build_dir", type=click.Path(file_okay=False))
@click.option("-p", "--prompt", required=True, help="The text to continue.")
@click.option("-n", "--max-new-tokens", type=int, default=64, show_default=True, help="Stop after this many tokens.")
@click.option("--emulate", is_flag=True,
              help="Generate on an emulated core of the build's target (qemu: the native runner for a .pte, the "
                   "guest's onnxruntime for an .onnx; `make emulator`).")
@click.option("--json", "as_json", is_flag=True, help="Print the text and the timings as JSON at the end instead of streaming.")
def generate(build_dir, prompt, max_new_tokens, emulate, as_json):
    """Generate text with a text-generation build on this computer (greedy), streamed as it is made.

    \b
    edgekit generate build/tinylm-rpi4 --prompt 'The "if" statement'
    """
    from edgekit.llm.generate import TextStream, generate as run_generation, open_build

    if max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens {max_new_tokens}: give 1 or more")
    runner, tokenizer, manifest = open_build(build_dir)
    ids = tokenizer.encode(prompt)
    if emulate:
        from edgekit.llm.generate import generate_emulated

        result = generate_emulated(build_dir, ids, max_new_tokens, tokenizer.eos_token_id)
        text = tokenizer.decode(result["tokens"], skip_special_tokens=True)
        if as_json:
            click.echo(json.dumps({"prompt": prompt, "text": text, **result}, indent=2))
            return
        click.echo(text)
        per_token = result["guest_instructions_per_token"]
        click.echo(f"emulated {result['cpu']} ({result['target']}): {len(result['tokens'])} new tokens "
                   f"({result['stopped'].replace('_', ' ')}) · "
                   f"{f'{per_token:,}' if per_token else '-'} guest instructions per decoded token "
                   f"(wall time under emulation is not a board's: not shown)", err=True)
        return
    stream = None if as_json else TextStream(tokenizer, lambda text: click.echo(text, nl=False))
    tokens, stats = run_generation(runner, ids, max_new_tokens, runner.max_seq_len,
                                   eos_id=tokenizer.eos_token_id, on_token=stream)
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    if as_json:
        click.echo(json.dumps({"prompt": prompt, "text": text, "tokens": tokens, "stats": stats.to_json()}, indent=2))
        return
    click.echo()
    rate = f"{stats.decode_tokens_per_s:,.0f}" if stats.decode_tokens_per_s else "-"
    click.echo(f"{stats.prompt_tokens} prompt tokens, {stats.new_tokens} new ({stats.stopped.replace('_', ' ')}) · "
               f"first token {stats.time_to_first_token_ms:.1f} ms · decode {rate} tok/s", err=True)


_DECODER_KEYS = ("max_seq_len", "group_size", "weight_bits", "weight_method", "embedding_bits", "qat_steps",
                 "eval_text", "train_text", "max_perplexity_increase")
# What a text-generation build reads besides the decoder options; every other build option is refused.
_DECODER_TAKES = {"app_dir", "model", "task", "target", "out", "as_json", "min_agreement", "nnodes", "formats"}


def _decoder_source(options: dict, decoder: dict):
    """The DecoderSource when this is a text-generation build (--task text-generation, or a decoder app)."""
    from edgekit.model.app import DecoderSource, check_model_dir, load_decoder_app

    app = load_decoder_app(options["app_dir"]) if options["app_dir"] else None
    if app is None and options["task"] != "text-generation":
        return None
    if app is None:
        if options["app_dir"]:
            raise UsageError(f"'{options['app_dir']}' is not a text-generation app",
                             hint='its edgekit.toml needs [model] task = "text-generation" and pretrained = "DIR"; '
                                  "or pass --model MODEL_DIR")
        if not options["model"]:
            raise UsageError("--task text-generation needs the model",
                             hint="pass --model MODEL_DIR (a Hugging Face model directory with config.json, "
                                  "model.safetensors and tokenizer.json)")
        model_dir = check_model_dir(Path(options["model"]), "--model")
        name = model_dir.resolve().stem if model_dir.is_file() else model_dir.resolve().name  # a .gguf, or a dir
        app = DecoderSource(name=name, model_dir=model_dir)
    elif options["model"]:
        raise UsageError("give an app directory or --model, not both")
    texts = {k: Path(decoder[f"{k}_text"]) for k in ("eval", "train") if decoder[f"{k}_text"]}
    from dataclasses import replace

    return replace(app, **{f"{k}_text": v for k, v in texts.items()})


def _run_decoder_build(source, options: dict, decoder: dict) -> None:
    from edgekit.llm.build import DecoderRecipe, build as build_decoder
    from edgekit.progress import Steps

    for key, value in options.items():
        if key not in _DECODER_TAKES and value not in (None, False, ()):
            raise UsageError(f"--{key.rstrip('_').replace('_', '-')} does not apply to text-generation builds",
                             hint="see `edgekit build --help` for the text-generation options")
    if options["nnodes"] != 1:
        raise UsageError("--nnodes does not apply to text-generation builds (QAT runs in one process)")
    given = {k: v for k, v in decoder.items() if v is not None and not k.endswith("_text")}
    for key in ("embedding_bits", "weight_bits"):
        if key in given:
            given[key] = int(given[key])
    if options["min_agreement"] is not None:
        given["min_agreement"] = options["min_agreement"]
    if options["formats"]:
        if len(options["formats"]) > 1:
            raise UsageError(f"--format {' --format '.join(options['formats'])}: a text-generation build makes one "
                             "artifact", hint="give --format executorch or --format onnx; build twice for both")
        given["format"] = options["formats"][0]
    recipe = DecoderRecipe(**given)
    from edgekit.errors import BuildGateFailed

    try:
        manifest = build_decoder(source, options["target"] or "rpi4", recipe,
                                 Path(options["out"]) if options["out"] else None, Steps(show=True))
    except BuildGateFailed as e:
        _show_decoder_build(e.manifest, options["as_json"])
        raise
    _show_decoder_build(manifest, options["as_json"])


def _show_decoder_build(manifest: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
    else:
        from edgekit.report.terminal import print_decoder_summary

        print_decoder_summary(manifest)


@cli.command()
@source_options
@recipe_options
@output_options
def quantize(**options):
    """The same as build; with --sensitivity, also prints the per-layer ranking.

    \b
    edgekit quantize sample_apps/digits --sensitivity
    """
    _run_build(**options)


@cli.command()
@source_options
@click.option("--student", metavar="MODULE:FACTORY", help="The student's factory (a smaller model).")
@click.option("--student-weights", type=click.Path(dir_okay=False), help="The student's starting state_dict.")
@click.option("--prune", type=float, metavar="RATIO", help="Instead of --student: the teacher with this fraction of channels pruned.")
@click.option("--prune-steps", type=int, metavar="N", help="With --prune: in N cuts, distilling after each. [default: 1]")
@click.option("--depth", type=float, metavar="KEEP", help="Instead of --student: the teacher keeping this share of its repeated blocks (with --prune too).")
@click.option("-t", "--target", shell_complete=_complete_target, default="rpi4", show_default=True, help="Target profile (its channel rounding, with --prune).")
@click.option("--epochs", type=int, help="[default: fitted to the training data's size, 20 to 200]")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Global batch, over all processes.")
@click.option("--lr", type=float, default=2e-3, show_default=True)
@click.option("--temperature", type=float, default=4.0, show_default=True, help="Softmax temperature T of the logit loss.")
@click.option("--alpha", type=float, default=0.7, show_default=True, help="Weight of the teacher (soft) loss; 1 - alpha: the label loss.")
@click.option("--feature-weight", type=float, default=1.0, show_default=True, help="Weight of the feature MSE; 0: logits only.")
@click.option("--feature", "features", multiple=True, metavar="MODULE", help="Match this module's output (repeatable). [default: the output layer's input]")
@click.option("--patience", type=int, help="Early stop after this many epochs without a lower validation loss. [default: a fifth of the epochs]")
@click.option("--mixup", type=float, default=0.4, show_default=True, metavar="A",
              help="Blend each training input with another, l ~ Beta(A, A), the teacher labelling the blend; 0: off.")
@click.option("--validation", type=float, default=0.15, show_default=True, metavar="SHARE",
              help="Share of the training data held out to choose the epoch (the evaluation data chooses nothing).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--nproc", type=int, default=1, show_default=True, help="Processes: > 1 runs DDP through torchrun (gloo on CPU, nccl on GPUs).")
@node_options
@click.option("-o", "--out", type=click.Path(file_okay=False), help="Output directory [default: build/<name>-distilled].")
@click.option("--json", "as_json", is_flag=True, help="Print the result record as JSON.")
def distill(app_dir, model, input_shape, inputs, weights, calib, eval_, train, student, student_weights, prune, prune_steps,
            depth, target, nproc, nnodes, node_rank, rdzv_endpoint, out, as_json, **training):
    """Train a smaller student from a teacher (logit + feature distillation).

    \b
    edgekit distill sample_apps/digits --prune 0.5
    edgekit distill sample_apps/digits --prune 0.5 --nproc 2
    edgekit distill sample_apps/digits --prune 0.5 --nnodes 2 --node-rank 0 --rdzv-endpoint head:29500
    edgekit distill --model nets:big --weights big.pt --input-shape 1,3,32,32 --student nets:small --train train.npz --eval eval.npz
    """
    import dataclasses

    from edgekit import api
    from edgekit.stages.depth import DepthConfig
    from edgekit.stages.options import StageOptions
    from edgekit.stages.prune import PruneConfig
    from edgekit.train.distill import DistillConfig

    spec = api.source(app_dir, model=model, input_shape=input_shape, inputs=inputs, weights=weights, calib=calib,
                      eval=eval_, train=train)
    student_spec = dataclasses.replace(spec, factory=student, weights=Path(student_weights).resolve() if student_weights else None,
                                       from_app=spec.from_app - {"weights"}) if student else None
    training["features"] = tuple(training["features"])
    _use_nodes(nnodes, node_rank, rdzv_endpoint)
    stages = StageOptions(depth=DepthConfig(depth) if depth is not None else None,
                          prune=PruneConfig(ratio=prune, steps=prune_steps) if prune is not None else None,
                          distill=DistillConfig(**training), nproc=nproc)
    record = api.distill(spec, target, stages, student=student_spec, out=out, progress=True)
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    validation = record["validation"]
    click.echo(f"student: {record['student']['macs']:,} MACs, {record['student']['params']:,} params "
               f"(teacher {record['teacher']['macs']:,} MACs); evaluation {record['evaluation_metric']} "
               f"{record['accuracy_before']:.2f} % -> {record['accuracy']:.2f} % (epoch {record['best_epoch']}, "
               f"chosen on {validation['samples']} training samples held out; {record['processes']} process(es))")
    click.echo(f"saved: {record['out']}/{record['files']['model']} and {record['files']['program']}")


def _fractions(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers, e.g. 1,0.5,0.25") from None


@cli.command()
@source_options
@click.option("-t", "--target", shell_complete=_complete_target, default="rpi4", show_default=True, help="Target profile.")
@click.option("--max-accuracy-drop", type=float, metavar="POINTS",
              help="Budget: accuracy lost against the model as loaded (pruning, distillation and int8 together).")
@click.option("--latency-budget", type=float, metavar="MS",
              help="Budget: latency on the target (measured with --device, else predicted).")
@click.option("--size-budget", type=float, metavar="MB", help="Budget: the artifact's size.")
@click.option("--fractions", callback=_fractions, metavar="F,F,...",
              help="Kept-MAC fractions to try (pruning + distillation; 1 is the model as it is). [default: 1,0.75,0.5,0.35,0.25,0.1]")
@click.option("--depth", "depths", metavar="F,F,...|none",
              help="Shares of the repeated blocks to keep, with every fraction (depth pruning + distillation). [default: 0.5 where the model has repeated blocks]")
@click.option("--lowrank", "lowrank", metavar="F,F,...|none",
              help="Rank fractions to try (low-rank factorisation + distillation). [default: 0.5 where the cost model predicts it saves 10 %]")
@click.option("--quant", "schemes", default="static", show_default=True, metavar="SCHEME,...",
              help="Quantization schemes to try: static, dynamic, fp16.")
@click.option("--format", "formats", multiple=True, type=click.Choice(("executorch", "torchscript-lite", "onnx", "litert")),
              help="Formats to try (repeatable). [default: the target's and onnx]")
@click.option("-d", "--device", metavar="DEVICE",
              help="Time every candidate on this device (user@host[:port], adb[:SERIAL] or local) and choose by that.")
@click.option("--python", metavar="PATH", help="The device's python with the runtimes installed. [default: python3; this one for local]")
@click.option("--remote-dir", metavar="DIR", help="Base directory on the device. [default: ~/edgekit; /data/local/tmp/edgekit on adb]")
@click.option("--ssh-config", type=click.Path(dir_okay=False), help="ssh config file to use instead of ~/.ssh/config (ssh -F).")
@click.option("--threads", type=int, metavar="N", help="Threads on the device. [default: the target profile's]")
@click.option("--runs", type=int, default=50, show_default=True, help="Timed runs per candidate on the device.")
@click.option("--allow-arch-mismatch", is_flag=True, help="Time on a device that is not the target's architecture (e.g. --device local).")
@click.option("--emulate", is_flag=True, help="Count each candidate's guest instructions on the target's emulated core (`make emulator` first) and choose by that.")
@click.option("--trials", type=int, metavar="N", help="Build at most N candidates.")
@click.option("--time-limit", type=float, metavar="SECONDS", help="Start no candidate after this many seconds.")
@click.option("-o", "--out", type=click.Path(file_okay=False), help="Search directory [default: build/<name>-<target>-search].")
@click.option("--json", "as_json", is_flag=True, help="Print the search record as JSON.")
def search(app_dir, model, input_shape, inputs, weights, calib, eval_, train, target, max_accuracy_drop,
           latency_budget, size_budget, fractions, depths, lowrank, schemes, formats, device, python, remote_dir, ssh_config,
           threads, runs, allow_arch_mismatch, emulate, trials, time_limit, out, as_json):
    """Try pruning amounts, dropped blocks, low rank, quantization schemes and formats; keep the Pareto
    front; build the best that meets the budget.

    \b
    edgekit search sample_apps/digits --target rpi4 --max-accuracy-drop 1.0
    edgekit search sample_apps/digits --latency-budget 0.1 --fractions 1,0.5,0.25 --trials 4
    edgekit search sample_apps/digits --device pi@raspberrypi.local --max-accuracy-drop 1.0
    """
    from edgekit import api
    from edgekit.errors import BuildGateFailed
    from edgekit.api import DEFAULT_BUILD_ROOT
    from edgekit.deploy import BenchOptions
    from edgekit.progress import Steps
    from edgekit.recipe import app_recipe
    from edgekit.search import FRACTIONS, TIMING_SECONDS, SearchOptions, run_search
    from edgekit.target import load_target

    spec = api.source(app_dir, model=model, input_shape=input_shape, inputs=inputs, weights=weights, calib=calib,
                      eval=eval_, train=train)
    tgt = load_target(target)
    if (python or remote_dir or ssh_config or threads or allow_arch_mismatch) and not device:
        raise UsageError("--python, --remote-dir, --ssh-config, --threads and --allow-arch-mismatch apply to "
                         "the device runs of --device",
                         hint="add --device DEVICE (e.g. --device local), or leave them out")
    options = SearchOptions(fractions=fractions or FRACTIONS, formats=tuple(formats),
                            lowrank=None if lowrank is None else _fractions(None, None, lowrank) if lowrank != "none" else (),
                            depths=None if depths is None else _fractions(None, None, depths) if depths != "none" else (),
                            schemes=tuple(q.strip() for q in schemes.split(",") if q.strip()),
                            max_accuracy_drop=max_accuracy_drop, latency_budget_ms=latency_budget,
                            size_budget_mb=size_budget, trials=trials, time_limit_s=time_limit,
                            device=_device(device, python, remote_dir=remote_dir,
                                           ssh_config=str(Path(ssh_config).resolve()) if ssh_config else None),
                            bench=BenchOptions(threads=threads, runs=runs, min_seconds=TIMING_SECONDS) if device else None,
                            allow_arch_mismatch=allow_arch_mismatch, emulate=emulate)
    out_dir = Path(out) if out else DEFAULT_BUILD_ROOT / f"{spec.name}-{tgt.name}-search"
    try:
        doc = run_search(spec, tgt, options, out_dir, Steps(show=True), base_recipe=app_recipe(spec))
    except BuildGateFailed as e:
        if as_json:
            click.echo(json.dumps(e.manifest, indent=2))
        raise
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    final = doc["final"]
    click.echo(f"{len(doc['results'])} candidates, {len(doc['pareto'])} on the Pareto front "
               f"({out_dir / 'pareto.json'}, plotted in {out_dir / 'report.html'})")
    click.echo(f"chosen: {doc['chosen']}, built from all of the data in {final['build_dir']}: "
               f"{final['accuracy']:.2f} % on the evaluation data" if final.get("accuracy") is not None else
               f"chosen: {doc['chosen']}, built in {final['build_dir']}")
    if final.get("measured_ms") is not None:
        click.echo(f"measured on {final['measured_on']}: {final['measured_ms']} ms (p50)")


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print every profile as JSON instead of the table.")
@click.pass_context
def targets(ctx, as_json):
    """List the target profiles (`edgekit targets show NAME` for one)."""
    if ctx.invoked_subcommand is None:
        from edgekit.report.terminal import print_targets
        from edgekit.target import list_targets

        if as_json:
            click.echo(json.dumps([t.to_json() for t in list_targets()], indent=2))
        else:
            print_targets(list_targets())


@targets.command("show")
@click.argument("name", shell_complete=_complete_target)
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON instead of the table.")
def targets_show(name, as_json):
    """Print one target profile."""
    from edgekit.report.terminal import print_target
    from edgekit.target import load_target

    if as_json:
        click.echo(json.dumps(load_target(name).to_json(), indent=2))
    else:
        print_target(load_target(name))


# Options of the edgekit group that a user may also write after the command.
_GLOBAL_FLAGS = ("--debug", "-v", "--verbose", "-q", "--quiet")


def hoist_global_flags(args: list[str]) -> list[str]:
    """`edgekit build APP --debug` as `edgekit --debug build APP`: the group's flags moved to the
    front from anywhere before a `--`."""
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in _GLOBAL_FLAGS]
    return flags + [a for a in args[:end] if a not in _GLOBAL_FLAGS] + args[end:]


def main(argv: list[str] | None = None) -> None:
    """Console entry point: maps errors to the documented exit codes."""
    argv = hoist_global_flags(list(argv if argv is not None else sys.argv[1:]))
    if not (os.environ.get(_DEBUG_ENV) or os.environ.get(VERBOSE_ENV) or
            {"--debug", "-v", "--verbose"} & set(argv)):
        # torch's C++ warnings (a deprecation per quantized op, cpuinfo probes) are not the user's to act
        # on; read by c10 when torch loads, so set before any command imports it. --debug shows them.
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    try:
        # Without standalone mode click returns --help/--version's exit code
        # instead of exiting, and lets our own errors through to be mapped here.
        code = cli.main(args=argv, prog_name="edgekit", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(EXIT_USAGE)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except TrainingShareDone as e:  # a node other than the first: its part is done, and that is all
        click.echo(e.message, err=True)
        sys.exit(e.exit_code)
    except EdgekitError as e:
        _debug_traceback()
        _error_line(f"error: {e.message}")
        if e.hint:
            click.echo(f"  fix: {e.hint}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as e:  # a full disk or a directory we may not write: the machine's to fix, not a bug
        fault = environment_fault(e)
        if fault is None:
            _internal_error(e)
        _debug_traceback()
        _error_line(f"error: {fault.message}")
        click.echo(f"  fix: {fault.hint}", err=True)
        sys.exit(fault.exit_code)
    except Exception as e:
        _internal_error(e)
    sys.exit(code if isinstance(code, int) else 0)


def _internal_error(e: BaseException) -> None:
    _debug_traceback()
    _error_line(f"internal error: {type(e).__name__}: {e}")
    click.echo("  this is a bug in edgekit: please report it with the output of --debug", err=True)
    sys.exit(EXIT_INTERNAL)


def _debug_traceback() -> None:
    if os.environ.get(_DEBUG_ENV) or "--debug" in sys.argv[1:]:
        traceback.print_exc()


def _error_line(text: str) -> None:
    """The red error line; plain where NO_COLOR is set (no-color.org) or stderr is not a terminal."""
    click.secho(text, fg="red", err=True, color=False if os.environ.get("NO_COLOR") else None)


# --- deploy, bench, report ---------------------------------------------------------------


def bench_options(command):
    """Options shared by `deploy --bench` and `bench`, defined once."""
    options = [
        click.option("--threads", type=int, metavar="N", help="Threads for the runtime. [default: the target profile's]"),
        click.option("--warmup", type=int, help="Untimed runs before timing. [default: 10; 1 generation for a "
                                                "text-generation build]"),
        click.option("--runs", type=int, help="Timed runs (at least). [default: 50; 3 generations for a "
                                              "text-generation build]"),
        click.option("--min-seconds", type=float, default=0.0, show_default=True, help="Keep timing until this many seconds passed."),
        click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds the runner may take on the device."),
        click.option("--inputs", type=click.Path(dir_okay=False), help="Real inputs (.npz per input, or .npy) instead of random ones."),
        click.option("--format", "format_", metavar="FORMAT", help="Which of the build's artifacts (see its manifest). [default: the primary]"),
        click.option("--json", "as_json", is_flag=True, help="Print the run records as JSON instead of the table."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


# (warmup, runs) when not given: latency percentiles want many short runs; a text-generation build's
# run is a whole generation (64 tokens by default), each already many timed calls.
BENCH_RUNS = {"inference": (10, 50), "generation": (1, 3)}


def _bench_settings(generating: bool, threads, warmup, runs, min_seconds, timeout, inputs):
    from pathlib import Path

    from edgekit.deploy import BenchOptions

    default_warmup, default_runs = BENCH_RUNS["generation" if generating else "inference"]
    return BenchOptions(threads=threads, warmup=default_warmup if warmup is None else warmup,
                        runs=default_runs if runs is None else runs, min_seconds=min_seconds, timeout=timeout,
                        inputs=Path(inputs) if inputs else None)


def _generates(build_dir) -> bool:
    """Whether BUILD_DIR holds a text-generation build; anything unreadable is left to the command's own
    checks, which name what is wrong."""
    from edgekit.errors import UsageError
    from edgekit.manifest import TEXT_GENERATION, read_manifest

    try:
        return read_manifest(build_dir).get("task") == TEXT_GENERATION
    except UsageError:
        return False


@cli.command()
@click.argument("build_dir", type=click.Path(file_okay=False))
@click.option("-d", "--device", "devices", multiple=True, metavar="DEVICE",
              help="user@host[:port] (ssh), adb[:SERIAL] or local; repeatable (deployed in parallel).")
@click.option("--devices", "devices_file", type=click.Path(dir_okay=False), help="A devices.toml fleet file (see the README).")
@click.option("--bench", "run_bench", is_flag=True, help="Also run the latency benchmark on each device.")
@click.option("--python", metavar="PATH", help="The device's python with the runtime installed. [default: python3]")
@click.option("--remote-dir", metavar="DIR", help="Base directory on the device. [default: ~/edgekit; /data/local/tmp/edgekit on adb]")
@click.option("--ssh-config", type=click.Path(dir_okay=False), help="ssh config file to use instead of ~/.ssh/config (ssh -F).")
@click.option("--ssh-option", "ssh_options", multiple=True, metavar="KEY=VALUE", help="Extra ssh option (ssh -o), repeatable.")
@click.option("--native-runner", metavar="[KIND=]PATH", help="A native benchmark binary for the device: executor_runner, benchmark_model or onnxruntime_perf_test.")
@click.option("--allow-arch-mismatch", is_flag=True, help="Run on a device whose architecture is not the target's (its latency is then not the target's).")
@click.option("--serve", "serve_action", type=click.Choice(("start", "stop")), is_flag=False, flag_value="start",
              default=None, help="Keep the model server running there as a service (systemd where it runs, else a "
                                 "supervisor) and wait for /healthz; `--serve stop` removes it (see --port).")
@click.option("--serve-wait", type=click.FloatRange(min=1), default=120.0, show_default=True,
              help="With --serve: seconds to wait for the server's /healthz on the device.")
@server_options
@bench_options
def deploy(build_dir, devices, devices_file, run_bench, python, remote_dir, ssh_config, ssh_options, native_runner,
           allow_arch_mismatch, serve_action, serve_wait, as_json, format_, listen, port, max_batch, max_wait_ms,
           queue_size, max_body_mb, max_samples, allow_nonfinite, drain_seconds, **bench_settings):
    """Push a build to devices, check the runtime there, optionally benchmark or serve.

    \b
    edgekit deploy build/digits-rpi4 --device pi@raspberrypi.local --bench
    edgekit deploy build/digits-rpi4 --devices fleet.toml --bench --runs 200
    edgekit deploy build/digits-android-arm64 --device adb:R58M123 --native-runner tools/executor_runner --bench
    edgekit deploy build/digits-rpi4 --device pi@raspberrypi.local --serve --listen 0.0.0.0 --port 8080
    edgekit deploy build/digits-rpi4 --device pi@raspberrypi.local --serve stop --port 8080
    """
    from edgekit import api
    from edgekit.deploy import DeployFailed

    generating = _generates(build_dir)
    settings = _bench_settings(generating, **bench_settings)
    if serve_action == "stop":
        records = api.stop_serving(build_dir, devices, port=port, devices_file=devices_file, format=format_,
                                   remote_dir=remote_dir, ssh_config=ssh_config, ssh_options=ssh_options)
        for r in records:
            stopped = r["service"]["stopped"]
            click.echo(f"{r['device']}: " + (f"stopped the server on port {port} ({', '.join(stopped)})" if stopped
                                            else f"nothing of edgekit's was serving on port {port}"))
        return
    service = None
    if serve_action == "start":
        from edgekit.deploy.records import open_build

        threads = settings.threads or open_build(build_dir, format_).threads  # default: the target profile's
        service = api.ServiceOptions(_server_settings(threads, listen, port, max_batch, max_wait_ms, queue_size,
                                                      max_body_mb, max_samples, allow_nonfinite, drain_seconds),
                                     wait_seconds=serve_wait)
    try:
        records = api.deploy(
            build_dir, devices, devices_file=devices_file, format=format_, bench=settings if run_bench else None,
            timeout=settings.timeout, allow_arch_mismatch=allow_arch_mismatch,
            python=python, remote_dir=remote_dir, ssh_config=ssh_config, ssh_options=ssh_options, native_runner=native_runner,
            serve=service, on_done=_progress_line,
        )
    except DeployFailed as e:
        if as_json or len(e.records) > 1:  # one device: the error line below says it all
            _show_runs(e.records, as_json)
        raise
    _show_runs(records, as_json)
    if service is not None and not as_json:
        endpoint = "POST /v1/generate" if generating else "POST /v1/predict"
        for r in records:
            svc = r["service"]
            click.echo(f"{r['device']}: serving at {svc['url']} ({svc['manager']}; {endpoint}, GET /healthz)")
            if svc["listen"] in ("127.0.0.1", "::1", "localhost"):
                click.echo("  it listens on the device's loopback only: reach it with an ssh tunnel, or deploy with "
                           "--listen 0.0.0.0 to open it to the network")


def _progress_line(record: dict) -> None:
    """One stderr line as each device finishes (fleets take a while); stdout stays for the result."""
    mark = click.style("✓", fg="green") if record["ok"] else click.style("✗", fg="red")
    what = record.get("stage") if not record["ok"] else "bench" if record.get("bench") else "deployed"
    click.echo(f"{mark} {record['device']}: {what}", err=True)


def _show_runs(records: list, as_json: bool) -> None:
    from edgekit.report.terminal import print_runs

    if as_json:
        click.echo(json.dumps(records, indent=2))
    else:
        print_runs(records)


def _levels(ctx, param, value):
    try:
        levels = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a comma-separated list of whole numbers, e.g. 1,8,32") from None
    if not levels or min(levels) < 1:
        raise click.BadParameter("give one or more levels of at least 1, e.g. 1,8,32")
    return levels


@cli.command()
@click.argument("build_dir", type=click.Path(file_okay=False))
@click.option("--python", metavar="PATH", help="Python with the runtime. [default: the one running edgekit]")
@click.option("--serve", "serve_url", metavar="URL",
              help="Load-test this build's running server instead (http://127.0.0.1:PORT, or the URL deploy --serve printed).")
@click.option("--concurrency", default="1,8,32", show_default=True, callback=_levels, metavar="C[,C...]",
              help="With --serve: clients sending at once, one level after another.")
@click.option("--requests", "requests_", type=click.IntRange(1, 100_000), default=2000, show_default=True,
              help="With --serve: requests per concurrency level.")
@bench_options
def bench(build_dir, python, serve_url, concurrency, requests_, as_json, format_, **bench_settings):
    """Time the build's artifact on this computer with the device runner, or load-test its server (--serve).

    Stored like a device run (device "host") in BUILD/device_runs/ and the manifest.

    \b
    edgekit bench build/digits-rpi4
    edgekit bench build/digits-rpi4 --serve http://127.0.0.1:8080 --concurrency 1,8,32 --requests 2000
    """
    from edgekit import api
    from edgekit.deploy import DeployFailed

    if serve_url:
        record = api.bench_serve(build_dir, serve_url, concurrency=concurrency, requests=requests_,
                                 inputs=bench_settings.get("inputs"), format=format_,
                                 say=lambda line: click.echo(line, err=True))
        if as_json:
            click.echo(json.dumps(record, indent=2))
        else:
            from edgekit.report.terminal import print_serve_load

            print_serve_load(record)
        return

    try:
        record = api.bench(build_dir, _bench_settings(_generates(build_dir), **bench_settings), format=format_, python=python)
    except DeployFailed as e:
        if as_json:
            _show_runs(e.records, as_json)
        raise
    _show_runs([record], as_json)


@cli.command()
@click.argument("build_dir", type=click.Path(file_okay=False))
@click.option("--format", "format_", metavar="FORMAT", help="Which of the build's artifacts (see its manifest). [default: the primary]")
@click.option("--threads", type=click.IntRange(min=1), metavar="N", help="Threads for the runtime. [default: the target profile's]")
@server_options
def serve(build_dir, format_, threads, **server_settings):
    """Serve the build's artifact over HTTP on this computer until Ctrl-C or SIGTERM.

    \b
    POST /v1/predict  {"inputs": {"x": [[...]]}} as JSON, or .npy / .npz
    POST /v1/generate {"prompt": "...", "max_new_tokens": 64} (text-generation
                      builds): tokens streamed as NDJSON lines, then the timings
    GET  /healthz     model loaded and one warm inference done
    GET  /v1/model    inputs, outputs, target, accuracy
    GET  /metrics     Prometheus: requests, latency, queue depth, in flight
    On the board: edgekit deploy BUILD --device pi@HOST --serve.
    """
    from edgekit import api
    from edgekit.deploy.records import open_build
    from edgekit.manifest import TEXT_GENERATION, read_manifest

    manifest = read_manifest(build_dir)
    generating = manifest.get("task") == TEXT_GENERATION
    default_threads = manifest["target_profile"]["threads"] if generating else open_build(build_dir, format_).threads
    settings = _server_settings(threads or default_threads, **server_settings)
    endpoint = "POST /v1/generate" if generating else "POST /v1/predict"

    def ready(state):
        model = state["model"]
        click.echo(f"serving {Path(build_dir).name} ({model.rt.name}, sha256 {model.sha256[:12]}) at "
                   f"http://{settings.host}:{settings.port}  {endpoint} · GET /healthz /v1/model /metrics  "
                   "(Ctrl-C stops)", err=True)

    api.serve(build_dir, settings, format=format_, on_ready=ready)


@cli.command()
@click.argument("build_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report data as JSON instead of the tables.")
@click.option("--no-html", is_flag=True, help="Do not write BUILD/report.html.")
def report(build_dir, as_json, no_html):
    """Accuracy, size, stages and latency of a build: tables, and BUILD/report.html."""
    from edgekit import api
    from edgekit.report.terminal import print_report

    data = api.report(build_dir, html=not no_html)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    print_report(data)
    if "html" in data:
        click.echo(f"report: {data['html']}")


@cli.command("debug")
@click.argument("build_dir", type=click.Path(file_okay=False))
@click.option("--format", "format_", metavar="FORMAT", help="Which artifact of the build (executorch or litert). [default: the primary]")
@click.option("--baseline", type=click.Choice(["tutorial"]), help="Also replay the format's stock quantizer (ExecuTorch's PT2E tutorial) and show its SQNR per layer.")
@click.option("--samples", type=click.IntRange(min=1), default=16, show_default=True, help="Evaluation samples to compare on.")
@click.option("--top", type=click.IntRange(min=1), default=8, show_default=True, help="How many offenders to diagnose.")
@click.option("--all-layers", is_flag=True, help="Print every layer, not only the offenders.")
@click.option("--app", type=click.Path(file_okay=False), help="The app dir, when the build was made elsewhere.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def debug_command(build_dir, format_, baseline, samples, top, all_layers, app, as_json):
    """Where the int8 model departs from float, layer by layer: SQNR and cosine of every
    intermediate output on the build's evaluation inputs, the layers where the error enters,
    and why. Kept in BUILD/manifest.json under 'numeric_debug'."""
    from edgekit import api
    from edgekit.report.terminal import print_numeric_debug

    doc = api.debug(build_dir, format=format_, app=app, samples=samples, baseline=baseline, top=top)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    print_numeric_debug(doc, all_layers=all_layers)


@cli.group()
def emulator():
    """The emulated arm64 board (qemu-user): build it once, check it, start its sshd."""


@emulator.command("build")
@click.option("--mirror", metavar="URL", help="Debian mirror for debootstrap. [default: the one apt uses]")
@click.option("--rebuild", is_flag=True, help="Throw away the cached rootfs and archive and build from scratch.")
def emulator_build(mirror, rebuild):
    """Build (or restore from the cache) the arm64 rootfs, the native ExecuTorch runner and the qemu plugin.

    Needs root, binfmt_misc and Debian's qemu-user-static, qemu-user, debootstrap, g++-aarch64-linux-gnu
    and zstd. The first build takes several minutes; later ones restore the cached archive in seconds.
    """
    from edgekit import api

    doc = api.emulator_build(mirror=mirror, rebuild=rebuild)
    click.echo(f"emulator ready: {doc['rootfs']} ({doc['qemu']}); runner {doc['runner']}")


@emulator.command("status")
@click.option("--json", "as_json", is_flag=True)
def emulator_status(as_json):
    """Whether the emulator is built, where, and with which runtimes (exit 2 when it is not)."""
    from edgekit import api

    doc = api.emulator_status()
    click.echo(json.dumps(doc, indent=2) if as_json else
               "\n".join(f"{k:9} {v if not isinstance(v, dict) else ', '.join(f'{a} {b}' for a, b in v.items())}" for k, v in doc.items()))


@emulator.command("board")
@click.option("-t", "--target", shell_complete=_complete_target, default="rpi4", show_default=True, help="The board to emulate (its core: QEMU_CPU and /proc/cpuinfo).")
@click.option("--port", type=int, default=2222, show_default=True, help="sshd listens on 127.0.0.1:PORT.")
@click.option("--authorized-key", "authorized_key", type=click.Path(dir_okay=False, exists=True), required=True,
              help="Public key allowed to log in as root (e.g. ~/.ssh/id_ed25519.pub).")
@click.option("--state", type=click.Path(file_okay=False), help="Where the board keeps its host key and log. [default: a temp dir]")
def emulator_board(target, port, authorized_key, state):
    """Run the emulated board's own arm64 sshd on 127.0.0.1 until Ctrl-C: a device for `make deploy`.

    Then: make deploy DEVICE=root@127.0.0.1:PORT BUILD=build/digits-rpi4. Its timings are emulated and are
    marked so in the records and the report: they are not latency.
    """
    from pathlib import Path

    from edgekit import api

    with api.emulator_board(target, port=port, authorized_key=Path(authorized_key).read_text(), state=state) as board:
        click.echo(f"emulated {target} ({board.qemu_cpu}) listening: ssh -p {port} root@127.0.0.1   host key:\n"
                   f"[127.0.0.1]:{port} {board.host_public_key()}\nCtrl-C stops it.")
        try:
            board.proc.wait()
        except KeyboardInterrupt:
            pass


@cli.command()
@click.argument("build_dir", type=click.Path(file_okay=False))
@click.option("--check", "checks", multiple=True, metavar="CHECK",
              help="Run only these: parity, lint, cost, resources, profile (repeatable). [default: all]")
@click.option("-t", "--target", shell_complete=_complete_target, help="Judge against this target profile instead of the build's (e.g. pi-zero2).")
@click.option("--format", "formats", multiple=True, metavar="FORMAT", help="Only this artifact of the build (repeatable).")
@click.option("--app", type=click.Path(file_okay=False), help="The app dir, when the build was made elsewhere (for parity).")
@click.option("--runs", type=int, default=20, show_default=True, help="Timed runs for host latency and the profile.")
@click.option("--samples", "max_samples", type=int, help="Parity on the first N evaluation samples. [default: all]")
@click.option("--fail-on-lint", is_flag=True, help="Exit 3 when an op is off the target runtime's fast path.")
@click.option("--emulate", is_flag=True, help="Also run each artifact on the target's emulated ARM core (qemu; `make emulator` first): outputs vs the host run, instruction counts.")
@click.option("--json", "as_json", is_flag=True, help="Print the validation record as JSON.")
def validate(build_dir, checks, formats, as_json, **options):
    """Re-check a build on this computer: sha256, parity, lint, predicted latency, fit in the target's RAM, profile.

    Results go into BUILD/manifest.json ('validation', 'prediction'). Exit 2: an artifact does not match
    its sha256; exit 3: a check failed.
    """
    from edgekit import api

    doc = api.validate(build_dir, checks=checks or None, formats=formats, say=lambda line: click.echo(line, err=True), **options)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
