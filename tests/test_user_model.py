"""A user's own model, without an app dir: `--model module:factory` and its options."""

from __future__ import annotations

import json
import shutil
import textwrap

import numpy as np
import pytest

TEXT_MODEL = textwrap.dedent(
    '''
    import torch
    from torch import nn

    class TinyText(nn.Module):
        """Token ids + attention mask -> 4 classes: integer inputs feed an embedding and a mask."""

        def __init__(self, vocab=100, dim=32):
            super().__init__()
            self.emb = nn.Embedding(vocab, dim)
            self.attn = nn.MultiheadAttention(dim, 4, batch_first=True)
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, 4)

        def forward(self, input_ids, attention_mask):
            h = self.emb(input_ids)
            a, _ = self.attn(h, h, h, key_padding_mask=attention_mask == 0, need_weights=False)
            h = self.norm(h + a)
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            return self.head((h * m).sum(1) / m.sum(1).clamp(min=1))

    def build():
        torch.manual_seed(0)
        return TinyText()
    '''
)

RANDOM_CNN = textwrap.dedent(
    '''
    from torch import nn

    def make_net():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(8, 5))
    '''
)


@pytest.mark.slow  # ~40 s; --model by default: the random-calibration build here and the Python API test
def test_own_model_with_weights_calib_and_eval(run_cli, digits_app, tmp_path):
    """The digits network as if it were the user's: module in the cwd, files by flag."""
    shutil.copy(digits_app / "model.py", tmp_path / "mynet.py")
    for name in ("weights.pt", "calib.npz", "eval.npz"):
        shutil.copy(digits_app / name, tmp_path / name)
    proc = run_cli(
        "build", "--model", "mynet:build_model", "--input-shape", "1,1,8,8", "--weights", "weights.pt",
        "--calib", "calib.npz", "--eval", "eval.npz", "--out", "out", "--json", cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout)
    assert m["name"] == "build_model"
    assert m["model"]["source"] == "options"
    assert (tmp_path / "out" / "model.pte").is_file()
    assert m["metrics"]["accuracy_float"] >= 95.0
    assert abs(m["metrics"]["accuracy_artifact"] - m["metrics"]["accuracy_float"]) <= 1.0


def test_without_data_calibrates_on_random_inputs_and_says_so(run_cli, tmp_path):
    (tmp_path / "nets.py").write_text(RANDOM_CNN)
    proc = run_cli("build", "--model", "nets:make_net", "--input-shape", "1,3,16,16", "--out", "o", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "RANDOM" in proc.stderr and "--calib" in proc.stderr
    assert "--eval" in proc.stderr
    m = json.loads(proc.stdout)
    assert m["metrics"]["accuracy_float"] is None and m["metrics"]["accuracy_artifact"] is None
    assert 0 <= m["metrics"]["top1_agreement"] <= 100
    assert len(m["warnings"]) == 2
    assert m["model"]["inputs"] == [{"name": "x", "shape": [1, 3, 16, 16], "dtype": "float32"}]


def _text_data(tmp_path):
    (tmp_path / "textnet.py").write_text(TEXT_MODEL)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 100, (40, 16))
    mask = np.ones((40, 16), dtype=np.int64)
    mask[:, 12:] = 0  # padded tail
    np.savez(tmp_path / "calib.npz", input_ids=ids, attention_mask=mask)
    np.savez(tmp_path / "eval.npz", input_ids=ids[:20], attention_mask=mask[:20], y=rng.integers(0, 4, 20))


TEXT_INPUTS = ("--model", "textnet:build", "--input", "input_ids:1x16:int64", "--input", "attention_mask:1x16:int64",
               "--calib", "calib.npz", "--eval", "eval.npz")


@pytest.mark.slow  # ~30 s; tests/test_real_models.py's masked encoder runs by default
def test_text_model_with_int64_ids_and_mask(run_cli, tmp_path):
    """Integer index paths (embedding, mask) are left alone by the quantizer, not broken by it."""
    _text_data(tmp_path)
    proc = run_cli("build", *TEXT_INPUTS, "--format", "executorch", "--format", "onnx", "--out", "o", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout)
    assert [i["dtype"] for i in m["model"]["inputs"]] == ["int64", "int64"]
    assert "embedding" in m["lowering"]["ops_outside_delegate"]  # gathered in float, not quantized
    assert m["lowering"]["xnnpack_delegated"]
    for fmt in ("executorch", "onnx"):
        assert m["formats"][fmt]["metrics"]["top1_agreement"] >= 70.0, fmt  # random weights: close logits
        assert m["formats"][fmt]["metrics"]["samples"] == 20


def test_text_model_names_the_fx_limit_for_torchscript_lite(run_cli, tmp_path):
    """FX observes the int64 mask through unsqueeze/cast; edgekit takes those observers out
    (else calibration dies histogramming integers, exit 1). What FX then still lacks — a
    quantized clamp with one bound — is reported as a limit of that format, exit 2."""
    _text_data(tmp_path)
    proc = run_cli("build", *TEXT_INPUTS, "--format", "torchscript-lite", "--out", "o", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "torchscript-lite: FX quantization could not trace this model" in proc.stderr
    assert "--format executorch or --format onnx" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_python_api_raises_the_build_warnings_and_reports_each_step(tmp_path, monkeypatch):
    """ek.build() without progress: the random-calibration warnings arrive as Python warnings, and
    `on_step` hears of every step the manifest records, in order."""
    from edgekit import api

    (tmp_path / "nets.py").write_text(RANDOM_CNN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    spec = api.source(model="nets:make_net", input_shape="1,3,16,16")
    heard = []
    with pytest.warns(api.EdgekitWarning) as caught:
        m = api.build(spec, "rpi5", api.recipe(formats=("onnx",), quality="fast"), out=tmp_path / "o",
                      on_step=heard.append)
    assert [str(w.message) for w in caught if w.category is api.EdgekitWarning] == m["warnings"]
    assert any("RANDOM" in w for w in m["warnings"])
    assert [r["stage"] for r in heard] == [r["stage"] for r in m["steps"]]
    assert all(r["seconds"] >= 0 for r in heard)
