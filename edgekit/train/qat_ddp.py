"""QAT worker: `torchrun ... -m edgekit.train.qat_ddp JOB.json` (launched by qat.finetune_ddp).

Each process rebuilds the float model (the saved transformed model, saved.py), the format's
prepared graph from it and the calibration inputs (the same on every rank, so every rank starts
from the same ranges), joins the process group (gloo on CPU, nccl with CUDA) and runs
qat.finetune on its share of each epoch. Rank 0 writes the trained state (weights, fake-quant
scales, observer ranges: tensors only, loaded back with weights_only) and the record.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edgekit.quiet import quiet_model_libraries

quiet_model_libraries()  # a fresh worker process: before the imports below wake torch's and torchao's loggers

from edgekit.formats import get_format
from edgekit.model.app import build_module
from edgekit.model.data import load_npz
from edgekit.model.saved import load_transformed
from edgekit.progress import Steps
from edgekit.train.ddp import process_group
from edgekit.train.job import read_job, spec_from_job
from edgekit.train.qat import QatConfig, finetune, quant_config_from_json


def main(job_path: str) -> None:
    import torch
    import torch.distributed as dist

    with process_group() as (rank, world):
        job = read_job(Path(job_path))
        spec = spec_from_job(job["spec"])
        fmt = get_format(job["format"])
        model = load_transformed(build_module(spec), Path(job["model"])).eval()
        calib = load_npz(Path(job["calib"]), spec.inputs, "the build's calibration inputs", need_labels=False)
        train = load_npz(spec.train, spec.inputs, spec.origin("train"), need_labels=False)
        prepared, record = finetune(fmt, model, calib, train, spec.inputs, quant_config_from_json(job["quant"]),
                                    QatConfig(**job["qat"]), Steps(show=rank == 0), rank=rank, world=world)
        record["backend"] = dist.get_backend()
        if rank == 0:
            torch.save(prepared.state_dict(), job["out"])
            Path(job["result"]).write_text(json.dumps(record))
        dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
