"""Launch distillation under DDP with torchrun (`python -m torch.distributed.run`).

The student travels to the workers as a saved transformed model (saved.py) and
comes back the same way: rank 0 writes it. One machine: `--standalone`. Several
machines: the same command on each with `--nnodes`, `--node-rank` and
`--rdzv-endpoint` (the CLI's, see the README), which become torchrun's static
rendezvous: node 0 hosts it at the endpoint and runs global rank 0, so the
result is written there; the other nodes train their share and stop
(TrainingShareDone, exit 0). `EDGEKIT_TORCHRUN_ARGS` carries the rendezvous
arguments to this module (the CLI sets it; set it yourself for torchrun options
the CLI does not name).
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

from edgekit.errors import EdgekitError, TrainingShareDone, UsageError
from edgekit.model.app import build_module
from edgekit.model.saved import load_transformed, save_transformed
from edgekit.train.job import spec_to_job, write_job

ENTRY = "edgekit.train.ddp"
TORCHRUN_ARGS = "EDGEKIT_TORCHRUN_ARGS"


def rendezvous_args(nnodes: int, node_rank: int | None, endpoint: str | None) -> list[str]:
    """torchrun's arguments for `nnodes` machines meeting at `endpoint` (HOST:PORT), this one being
    `node_rank`: its static rendezvous (node 0 hosts the store at the endpoint and runs global rank 0;
    gloo or nccl then connect the workers)."""
    if nnodes < 1:
        raise UsageError(f"--nnodes must be at least 1, got {nnodes}")
    if nnodes == 1:
        if node_rank not in (None, 0) or endpoint is not None:
            raise UsageError("--node-rank and --rdzv-endpoint apply to several machines", hint="add --nnodes N (N > 1)")
        return []
    if endpoint is None or node_rank is None:
        raise UsageError(f"--nnodes {nnodes}: every node needs --node-rank (0 on the first) and the same "
                         "--rdzv-endpoint HOST:PORT (the first node's address and a free port)",
                         hint="e.g. --nnodes 2 --node-rank 0 --rdzv-endpoint 10.0.0.5:29500 on the first node")
    if not 0 <= node_rank < nnodes:
        raise UsageError(f"--node-rank {node_rank} is not one of 0..{nnodes - 1} (--nnodes {nnodes})")
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--rdzv-endpoint {endpoint!r} is not HOST:PORT", hint="e.g. --rdzv-endpoint 10.0.0.5:29500")
    return ["--nnodes", str(nnodes), "--node-rank", str(node_rank), "--master-addr", host, "--master-port", port]


def _extra_args() -> list[str]:
    return shlex.split(os.environ.get(TORCHRUN_ARGS, ""))


def several_nodes() -> bool:
    """Whether training spans machines (then it runs under torchrun even at one process per node)."""
    extra = _extra_args()
    return "--nnodes" in extra and extra[extra.index("--nnodes") + 1] not in ("1", "1:1")


def _node_rank() -> int:
    extra = _extra_args()
    return int(extra[extra.index("--node-rank") + 1]) if "--node-rank" in extra else 0


def torchrun_command(job: Path, nproc: int, entry: str = ENTRY) -> list[str]:
    extra = _extra_args()
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
    if not result.is_file() and _node_rank() != 0:  # several machines: rank 0 ran on the first, which has it
        raise TrainingShareDone(f"node {_node_rank()}: trained its share of the {what}; the result, and what "
                                "follows it, are on the first node (--node-rank 0)")
    if not result.is_file():
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
