"""Click commands: parse options, call edgekit.api, print. No logic lives here.

Heavy imports (torch, executorch) happen inside commands so `edgekit --help`
starts fast.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import click

from edgekit import __version__
from edgekit.errors import EXIT_INTERNAL, EXIT_USAGE, EdgekitError

_DEBUG_ENV = "EDGEKIT_DEBUG"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekit")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
def cli(debug: bool) -> None:
    """Take a trained PyTorch model to a phone, a Raspberry Pi or any ARM board.

    \b
    Exit codes: 0 ok, 1 internal error (please report), 2 usage or input error,
    3 a quality gate failed, 4 device or transport error.
    """
    if debug:
        os.environ[_DEBUG_ENV] = "1"


@cli.command()
@click.argument("app_dir", required=False, type=click.Path(file_okay=False))
@click.option("-t", "--target", default="rpi4", show_default=True, help="Target profile name (see `edgekit targets`) or a .toml path.")
@click.option("--model", metavar="MODULE:FACTORY", help="Your own model, without an app dir: a factory returning an nn.Module.")
@click.option("--input-shape", metavar="SHAPE", help="Shape of the one float input, batch first: 1,3,32,32.")
@click.option("--input", "inputs", multiple=True, metavar="NAME:SHAPE[:DTYPE]", help="One per input, e.g. input_ids:1x128:int64 (repeatable).")
@click.option("--weights", type=click.Path(dir_okay=False), help="state_dict file (loaded with weights_only=True).")
@click.option("--calib", type=click.Path(dir_okay=False), help="Calibration .npz: one array per input (or x).")
@click.option("--eval", "eval_", type=click.Path(dir_okay=False), help="Evaluation .npz: inputs plus integer labels y.")
@click.option("--calib-samples", type=int, metavar="N", help="Use only the first N calibration samples.")
@click.option("-o", "--out", type=click.Path(file_okay=False), help="Build directory [default: build/<name>-<target>].")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON instead of the summary table.")
def build(app_dir, target, model, input_shape, inputs, weights, calib, eval_, calib_samples, out, as_json):
    """Quantize, export and validate a model for a target.

    \b
    edgekit build sample_apps/digits --target rpi4
    edgekit build --model mynets:make_net --input-shape 1,3,32,32 --calib calib.npz --eval eval.npz
    """
    from edgekit import api

    manifest = api.build(
        app_dir, target=target, model=model, input_shape=input_shape, inputs=inputs, weights=weights,
        calib=calib, eval=eval_, out=out, calib_samples=calib_samples, show_progress=True,  # stderr: --json stdout stays clean
    )
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
    else:
        from edgekit.summary import print_build_summary

        print_build_summary(manifest)


@cli.group(invoke_without_command=True)
@click.pass_context
def targets(ctx):
    """List the target profiles (`edgekit targets show NAME` for one)."""
    if ctx.invoked_subcommand is None:
        from edgekit.summary import print_targets
        from edgekit.target import list_targets

        print_targets(list_targets())


@targets.command("show")
@click.argument("name")
def targets_show(name):
    """Print one target profile."""
    from edgekit.summary import print_target
    from edgekit.target import load_target

    print_target(load_target(name))


def main(argv: list[str] | None = None) -> None:
    """Console entry point: maps errors to the documented exit codes."""
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
    except EdgekitError as e:
        _debug_traceback()
        click.secho(f"error: {e.message}", fg="red", err=True)
        if e.hint:
            click.echo(f"  fix: {e.hint}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:
        _debug_traceback()
        click.secho(f"internal error: {type(e).__name__}: {e}", fg="red", err=True)
        click.echo("  this is a bug in edgekit: please report it with the output of --debug", err=True)
        sys.exit(EXIT_INTERNAL)
    sys.exit(code if isinstance(code, int) else 0)


def _debug_traceback() -> None:
    if os.environ.get(_DEBUG_ENV) or "--debug" in sys.argv[1:]:
        traceback.print_exc()
