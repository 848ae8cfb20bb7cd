"""DDP worker: `torchrun ... -m edgekit.train.ddp JOB.json` (launched by launch.py).

Each process rebuilds the teacher (the spec's model) and the student (the
saved transformed model), joins the process group (gloo on CPU, nccl when
CUDA is present) and runs the same distill() loop on its shard of each epoch.
Rank 0 writes the trained student and the result record.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from edgekit.quiet import quiet_model_libraries

quiet_model_libraries()  # a fresh worker process: before the imports below wake torch's and torchao's loggers

from edgekit.model.app import build_module
from edgekit.model.data import example_inputs, load_npz
from edgekit.model.saved import load_transformed, save_transformed
from edgekit.progress import Steps
from edgekit.train.distill import DistillConfig, distill
from edgekit.train.job import read_job, spec_from_job


@contextlib.contextmanager
def process_group():
    """This torchrun worker in its process group (gloo on CPU, nccl with CUDA): yields (rank, world);
    leaves the group on the way out."""
    import torch
    import torch.distributed as dist

    # One thread per process: N processes on N cores, not N x N threads fighting.
    torch.set_num_threads(int(os.environ.get("EDGEKIT_THREADS_PER_PROC", "1")))
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()


def main(job_path: str) -> None:
    import torch
    import torch.distributed as dist

    with process_group() as (rank, world):
        job = read_job(Path(job_path))
        spec = spec_from_job(job["spec"])
        cfg = DistillConfig(**{**job["config"], "features": tuple(job["config"]["features"])})
        teacher = build_module(spec)
        # A factory's student draws its first weights: seeded as in one process (api.distill), so a run is
        # reproducible; DDP then gives every rank rank 0's.
        torch.manual_seed(cfg.seed)
        student = load_transformed(build_module(spec), Path(job["student"])) if job.get("student") \
            else _student_from_factory(job)
        train = load_npz(spec.train, spec.inputs, spec.origin("train"), need_labels=False)
        evaluation = load_npz(spec.eval, spec.inputs, spec.origin("eval"), need_labels=False)
        steps = Steps(show=rank == 0)
        result = distill(student, teacher, train, evaluation, spec.inputs, cfg, steps, example_inputs(spec.inputs),
                         rank=rank, world=world)
        result["backend"] = dist.get_backend()
        if rank == 0:
            save_transformed(student, Path(job["out"]))
            Path(job["result"]).write_text(json.dumps(result))
        dist.barrier()


def _student_from_factory(job: dict):
    """A user's own smaller student: `--student module:factory` (+ optional weights)."""

    return build_module(spec_from_job(job["student_spec"]))


if __name__ == "__main__":
    main(sys.argv[1])
