"""Depth pruning (edgekit/stages/depth.py): which blocks can go, which ones do, and a saved model that
comes back with the same blocks gone -- on the sample ViT, a ResNet and the real all-MiniLM-L6-v2."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.model.saved import load_transformed, save_transformed
from edgekit.model.layers import DROPPED_ATTR
from edgekit.stages.depth import DepthConfig, drop_blocks, droppable_blocks, influence, kept_count

REPO = Path(__file__).resolve().parent.parent
APPS = REPO / "sample_apps"


def _app_model(app: str):
    from edgekit import api
    from edgekit.model.loaded import LoadedModel

    return LoadedModel.load(api.source(str(APPS / app)), warn=lambda *_: None)


def _train_batches(app: str, n: int = 128):
    x = np.load(APPS / app / "train.npz")["x"][:n]
    return [(torch.from_numpy(x[i:i + 64]),) for i in range(0, n, 64)]


def test_kept_count_rounds_half_up_and_keeps_one():
    assert [kept_count(3, k) for k in (0.5, 0.34, 0.67, 0.1)] == [2, 1, 2, 1]
    assert kept_count(6, 0.5) == 3 and kept_count(12, 0.75) == 9


def test_the_vit_has_three_blocks_to_drop_and_the_cnn_none():
    """ViT encoder blocks qualify; the digits CNN's conv-BN-ReLU groups are torch.nn.Sequential (not a class
    of the model's own) and change the channel count: nothing to drop."""
    vit = _app_model("vit_digits")
    assert droppable_blocks(vit.model, vit.example) == ["blocks.0", "blocks.1", "blocks.2"]
    cnn = _app_model("digits")
    assert droppable_blocks(cnn.model, cnn.example) == []
    with pytest.raises(Exception, match="--depth 0.5: the model has no blocks"):
        drop_blocks(cnn.model, cnn.example, DepthConfig(0.5))


def test_only_shape_keeping_blocks_of_a_resnet_stage_can_go():
    """A stage's first block downsamples (its output is not the shape it was given): it stays."""
    from edgekit.zoo.resnet18 import build_model

    model = build_model().eval()
    blocks = droppable_blocks(model, (torch.randn(1, 3, 64, 64),))
    assert blocks == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]


def test_the_least_influential_blocks_go_and_a_saved_model_comes_back_the_same(tmp_path):
    loaded = _app_model("vit_digits")
    model = loaded.model
    batches = _train_batches("vit_digits")
    scores = influence(model, droppable_blocks(model, loaded.example), batches)
    facts = drop_blocks(model, loaded.example, DepthConfig(0.34), batches)
    assert facts["kept"] == 1 and facts["influence"] == scores
    assert sorted(facts["dropped"]) == sorted(sorted(scores, key=scores.get)[:2])  # the two lowest
    assert len(model.blocks) == 1 and getattr(model, DROPPED_ATTR) == {
        "blocks": sorted(int(n.rpartition(".")[2]) for n in facts["dropped"])}
    save_transformed(model, tmp_path / "float_model.pt")
    fresh = _app_model("vit_digits").model
    back = load_transformed(fresh, tmp_path / "float_model.pt")
    x = batches[0][0]
    with torch.no_grad():
        assert torch.equal(back(x), model(x)) and len(back.blocks) == 1


def test_depth_needs_blocks_named_on_the_command_line(run_cli, digits_app, tmp_path):
    proc = run_cli("build", str(digits_app), "--depth", "0.5", "--distill", "--format", "onnx", "-o", str(tmp_path / "b"))
    assert proc.returncode == 2, proc.stderr
    assert "--depth 0.5" in proc.stderr and "--prune-macs" in proc.stderr
    assert not (tmp_path / "b").exists()


def test_a_pretrained_sentence_encoder_keeps_half_its_layers(tmp_path):
    """all-MiniLM-L6-v2 (real weights from its registry package): its six BertLayers in a ModuleList return
    tuples and take the mask by keyword; three go by influence on real sentences, the model still embeds, and
    the saved model is rebuilt from the factory with the same three gone."""
    sys.path.insert(0, str(APPS / "minilm"))
    try:
        import data as minilm_data
        from model import build_model

        tokens = minilm_data.tokenise(minilm_data.sentences()[:32])
        model = build_model()
        fresh = build_model()
    finally:  # the app's modules are named like other apps': leave nothing behind
        sys.path.remove(str(APPS / "minilm"))
        sys.modules.pop("model", None)
        sys.modules.pop("data", None)
    example = (torch.from_numpy(tokens["input_ids"][:1]), torch.from_numpy(tokens["attention_mask"][:1]))
    blocks = droppable_blocks(model, example)
    assert blocks == [f"encoder.encoder.layer.{i}" for i in range(6)]
    batch = (torch.from_numpy(tokens["input_ids"]), torch.from_numpy(tokens["attention_mask"]))
    with torch.no_grad():
        before = model(*batch)
    facts = drop_blocks(model, example, DepthConfig(0.5), [batch])
    assert facts["kept"] == 3 and len(model.encoder.encoder.layer) == 3
    with torch.no_grad():
        after = model(*batch)
    assert after.shape == before.shape and torch.allclose(after.norm(dim=1), torch.ones(len(after)), atol=1e-4)
    save_transformed(model, tmp_path / "float_model.pt")
    back = load_transformed(fresh, tmp_path / "float_model.pt")
    with torch.no_grad():
        assert torch.allclose(back(*batch), after, atol=1e-6)


@pytest.mark.heavy  # a distillation and an int8 export of the ViT; dropping blocks (ViT, ResNet, MiniLM) stays in the default run
def test_the_vit_with_two_of_three_blocks_and_half_the_macs_keeps_its_accuracy(run_cli, tmp_path):
    """What `edgekit search` finds for vit_digits, built directly: a block dropped (the least influential on
    the training inputs), channels pruned in the rest, distilled; int8 within a point of the model as loaded
    (the build's own --max-accuracy-drop check, on evaluation data that chose nothing)."""
    import json

    out = tmp_path / "vit"
    proc = run_cli("build", str(APPS / "vit_digits"), "--depth", "0.5", "--prune-macs", "0.5", "--distill",
                   "--format", "executorch", "--max-accuracy-drop", "1.0", "-o", str(out), "--json", timeout=900)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    steps = {s["stage"]: s for s in manifest["steps"]}
    order = [s["stage"] for s in manifest["steps"]]
    assert order.index("measure") < order.index("depth") < order.index("prune") < order.index("distill")
    assert steps["depth"]["blocks"] == 3 and steps["depth"]["kept"] == 2
    assert manifest["budget"]["artifacts"]["executorch"]["accuracy_drop"] <= 1.0
    back = load_transformed(_app_model("vit_digits").model, out / "float_model.pt")
    assert len(back.blocks) == 2
