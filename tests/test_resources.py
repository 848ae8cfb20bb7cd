"""Target resources: a model too big for a Pi Zero 2's 512 MB is flagged (exit 3), and passes on a Pi 4."""

from __future__ import annotations

import json

import pytest
import torch

from edgekit import api
from edgekit.formats import executorch as et
from edgekit.errors import EXIT_GATE, GateError
from edgekit.manifest import sha256_file

# fp32 Linear(7680, 7680): 236 MB of weights in the .pte. Loaded, the program buffer plus
# XNNPACK's packed copy of the weights take ~450 MB (2x), over the ~370 MB a Pi Zero 2 leaves a model
# (512 MB - 128 MB OS - 16 MB runtime) and far under a 4 GB Pi 4's. Export ~15 s, 236 MB of disk.
FEATURES = 7680


@pytest.fixture(scope="module")
def big_build(tmp_path_factory):
    """A build dir made by hand around one big fp32 .pte (no float model needed: resources only)."""
    out = tmp_path_factory.mktemp("big") / "big-rpi4"
    out.mkdir()
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, FEATURES)).eval()
    artifact = out / "model.pte"
    et.export(model, (torch.zeros(1, FEATURES),), artifact)
    del model
    inputs = [{"name": "x", "shape": [1, FEATURES], "dtype": "float32"}]
    manifest = {
        "schema": 1, "name": "big", "target": "rpi4", "target_profile": {"arch": "aarch64", "threads": 4},
        "format": "executorch", "backend": "xnnpack", "quantization": {"scheme": "fp16"},
        "model": {"name": "big", "factory": "none:none", "inputs": inputs},
        "artifact": {"file": "model.pte", "sha256": sha256_file(artifact), "bytes": artifact.stat().st_size},
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    yield out
    artifact.unlink()


def test_too_large_for_pi_zero2(big_build):
    with pytest.raises(GateError) as err:
        api.validate(big_build, checks=["resources"], target="pi-zero2", runs=2, warmup=1)
    assert err.value.exit_code == EXIT_GATE == 3
    assert "pi-zero2" in str(err.value) and "384 MB" in str(err.value)
    res = json.loads((big_build / "manifest.json").read_text())["validation"]["formats"]["executorch"]["resources"]
    assert res["fits"] is False and res["ram_mb"] == 512
    assert res["address_space_limit_mb"] is not None  # the child really ran under a limit


def test_fits_rpi4(big_build):
    doc = api.validate(big_build, checks=["resources"], runs=2, warmup=1)
    res = doc["formats"]["executorch"]["resources"]
    assert res["fits"] and res["ok"]
    # what the model added over the runtime, by the child's own peak (VmHWM; getrusage would carry
    # this test process's high-water mark across fork+exec): its weights twice, the program's data
    # and XNNPACK's packed copy (2.0x measured), a few copies at most
    assert "peak_rss_kb_getrusage" in res["runner"]  # the peak line reached the parent
    weights_mb = FEATURES * FEATURES * 4 / 2**20
    assert 1.5 * weights_mb < res["model_mb"] < 4 * weights_mb
    assert res["needed_mb"] > 384  # the reason it cannot fit the Pi Zero 2
    assert res["latency"]["p50"] > 0


def test_the_memory_plan_of_a_pte_is_reported(build_copy):
    """The arena ExecuTorch plans for the graph's own tensors, recorded at export and shown by validate."""
    manifest = json.loads((build_copy / "manifest.json").read_text())
    planned = manifest["lowering"]["planned_memory_bytes"]
    assert 0 < planned < 64 * 1024  # the digits CNN's tensors outside the delegate: bytes, not MBs
    doc = api.validate(build_copy, checks=["resources"], runs=2, warmup=1)
    assert doc["formats"]["executorch"]["resources"]["planned_memory_bytes"] == planned


def test_a_graph_outside_the_delegate_plans_its_intermediates(tmp_path):
    # Linear(64 -> 4096) then a cumsum, which XNNPACK cannot take: its (1, 4096) fp32 input and
    # output are planned by ExecuTorch, 16 KB each at least.
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(64, 4096)

        def forward(self, x):
            return torch.cumsum(self.fc(x), dim=-1)

    info = et.export(Model().eval(), (torch.zeros(1, 64),), tmp_path / "m.pte")
    assert info["planned_memory_bytes"] >= 2 * 4096 * 4
