"""Launch distillation under DDP with torchrun (`python -m torch.distributed.run`).

The student travels to the workers as a saved transformed model (saved.py) and
comes back the same way: rank 0 writes it. One machine: `--standalone`. Several
machines: run the same `torchrun` command on each with `--nnodes`, `--node-rank`
and `--rdzv-endpoint` (see the README); `EDGEKIT_TORCHRUN_ARGS` adds such
arguments here.
"""

from __future__ import annotations

import collections
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.model.app import build_module
from edgekit.model.saved import load_transformed, save_transformed
from edgekit.train.job import spec_to_job, write_job

ENTRY = "edgekit.train.ddp"


def torchrun_command(job: Path, nproc: int, entry: str = ENTRY) -> list[str]:
    extra = shlex.split(os.environ.get("EDGEKIT_TORCHRUN_ARGS", ""))
    rendezvous = extra or ["--standalone"]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), *rendezvous,
            "-m", entry, str(job)]


def run_ddp(job: dict, nproc: int, workdir: Path, entry: str = ENTRY, what: str = "distillation") -> dict:
    """Run the job on `nproc` local processes (the worker module `entry`); returns rank 0's result record."""

    job_file = workdir / "distill_job.json"
    write_job(job_file, **job, result=str(workdir / "distill_result.json"))
    # Workers' output (rank 0's epoch lines) goes to our stderr as it comes, so
    # progress shows live and --json stdout stays clean; the tail explains a failure.
    tail = collections.deque(maxlen=15)
    # torchrun sets OMP_NUM_THREADS=1 for each worker when it is unset, with a banner saying so: set
    # it here (the same value; a user's own wins) so the banner does not reach the terminal.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with subprocess.Popen(torchrun_command(job_file, nproc, entry), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=env) as proc:
        for line in proc.stdout:
            sys.stderr.write(line)
            tail.append(line.rstrip())
    if proc.returncode != 0:
        raise EdgekitError(f"distributed {what} failed (torchrun exit {proc.returncode}):\n" + "\n".join(tail))
    result = workdir / "distill_result.json"
    if not result.is_file():  # multi-node: rank 0 ran on another node, which has the result
        raise EdgekitError(f"this node ran no rank 0: the result of {what} is written on the first node (--node-rank 0)")
    return json.loads(result.read_text())


def distill_ddp(spec, cfg, nproc: int, student=None, student_spec=None):
    """Teacher = the spec's model as loaded; the student is either a model in memory
    (a pruned copy: sent as a saved transformed model) or another factory's
    (`student_spec`). Returns (trained student, rank 0's result record)."""
    import dataclasses


    with tempfile.TemporaryDirectory(prefix="edgekit-ddp-") as tmp:
        work = Path(tmp)
        job = {"spec": spec_to_job(spec), "config": dataclasses.asdict(cfg), "out": str(work / "student_out.pt"),
               "student": None, "student_spec": spec_to_job(student_spec) if student_spec else None}
        if student is not None:
            save_transformed(student, work / "student_in.pt")
            job["student"] = str(work / "student_in.pt")
        result = run_ddp(job, nproc, work)
        trained = load_transformed(build_module(student_spec or spec), work / "student_out.pt")
    return trained, result
