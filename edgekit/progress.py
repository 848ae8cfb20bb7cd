"""Progress on the terminal (stderr) and the timed record of each pipeline step.

Everything here writes to stderr so that `--json` output on stdout stays clean.
On a terminal a stage shows a live line (and bars for its loops) and leaves a
✓ line; piped (CI logs) it prints a plain line when it starts too, so a long
stage is never silent. `edgekit -q` (QUIET_ENV) keeps only warnings.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from typing import Callable, Iterable, Iterator


class EdgekitWarning(UserWarning):
    """A build's warning (random calibration data, a skipped check), raised by the Python API."""


QUIET_ENV = "EDGEKIT_QUIET"  # set by `edgekit -q`: no progress lines, warnings still shown


class Steps:
    """Times each stage, shows it while it runs, and keeps the manifest's `steps` list."""

    def __init__(self, show: bool = True, on_step: Callable[[dict], None] | None = None,
                 python_warnings: bool = False):
        """`on_step`: called with each step's record when it ends (the Python API's progress);
        `python_warnings`: each warning is also raised as an EdgekitWarning (where nothing is shown)."""
        from rich.console import Console

        self.console = Console(stderr=True, quiet=not show)
        self.quiet = bool(os.environ.get(QUIET_ENV))
        self.on_step = on_step
        self.python_warnings = python_warnings
        self.records: list[dict] = []
        self.warnings: list[str] = []
        self._live = None  # the Progress display of the running stage

    @contextlib.contextmanager
    def step(self, stage: str, config: dict | None = None, label: str | None = None) -> Iterator[dict]:
        """Run one stage; the caller may add facts (e.g. an output digest) to the record."""
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        record = {"stage": stage, "config": config or {}}
        start = time.perf_counter()
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        # One live display per stage: rich allows only one at a time, so loops
        # inside the stage (track) add their bars to it instead of opening their own.
        live_display = self.console.is_terminal and not self.quiet
        if not live_display and not self.quiet:
            self.console.print(f"… {label or stage}")
        with Progress(*columns, console=self.console, transient=True, disable=not live_display) as live:
            self._live = live
            live.add_task(f"[bold]{label or stage}[/]", total=None)
            try:
                yield record
            finally:
                self._live = None
        record["seconds"] = round(time.perf_counter() - start, 3)
        self.records.append(record)
        if self.on_step is not None:
            self.on_step(dict(record))
        if not self.quiet:
            self.console.print(f"[green]✓[/] {label or stage} [dim]({record['seconds']:.1f} s)[/]")

    def track(self, items: Iterable, total: int, description: str) -> Iterator:
        """A progress bar over a loop (calibration, evaluation) inside the running stage."""
        if self._live is None:
            yield from items
            return
        task = self._live.add_task(f"  {description}", total=total)
        for item in items:
            yield item
            self._live.advance(task)
        self._live.remove_task(task)

    def warn(self, message: str) -> None:
        """A warning recorded in the manifest and shown."""
        self.warnings.append(message)
        self.console_warning(message)
        if self.python_warnings:
            warnings.warn(message, EdgekitWarning, stacklevel=2)

    def console_warning(self, message: str) -> None:
        """Shown only (the manifest already holds it)."""
        from rich.markup import escape

        self.console.print(f"[bold yellow]warning:[/] {escape(message)}")
