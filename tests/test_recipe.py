"""Build recipes: one object for how to build, round-tripped through TOML, recorded in the manifest and
replayable; and the step cache that lets an unchanged recipe skip the work it did before."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import DIGITS_APP, REPO
from edgekit.errors import UsageError
from edgekit.formats.base import QuantConfig
from edgekit.recipe import BuildRecipe, GateOptions, recipe_from_options
from edgekit.stages.options import StageOptions
from edgekit.stages.prune import PruneConfig
from edgekit.train.distill import DistillConfig


def _cli(*args, env=None, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "edgekit", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200", **(env or {})}, timeout=600)


def test_a_recipe_round_trips_through_toml():
    recipe = BuildRecipe(formats=("all",), quant=QuantConfig(scheme="static", per_channel=False, calibration="minmax"),
                         calib_samples=64, gate=GateOptions(min_cosine=0.995, max_accuracy_drop=0.5, fallback=False,
                                                            task="classification"),
                         stages=StageOptions(prune=PruneConfig(ratio=0.5, importance="l1"),
                                             distill=DistillConfig(epochs=7, features=("body.2",)), nproc=2),
                         sensitivity=True)
    text = recipe.to_toml()
    assert "[recipe.gate]" in text and "[recipe.stages.prune]" in text
    assert BuildRecipe.from_toml(text, "r.toml") == recipe
    assert BuildRecipe.from_json(json.loads(json.dumps(recipe.to_json())), "m.json") == recipe


def test_the_command_line_names_map_onto_the_recipe():
    r = recipe_from_options(formats=("onnx",), calibration="entropy", per_tensor=True, min_agreement=90, prune=0.25,
                            prune_importance="l1", distill=True, distill_epochs=3, nproc=2, no_fallback=True)
    assert r.formats == ("onnx",) and r.quant == QuantConfig(per_channel=False, calibration="entropy")
    assert r.gate == GateOptions(min_agreement=90, fallback=False)
    assert r.stages.prune == PruneConfig(ratio=0.25, importance="l1") and r.stages.distill.epochs == 3
    assert r.stages.nproc == 2
    base = BuildRecipe(formats=("executorch",), calib_samples=10)
    assert recipe_from_options(base, min_cosine=0.9).formats == ("executorch",)  # unset options keep the base's


@pytest.mark.parametrize("text, message", [
    ("[recipe]\nformat = ['onnx']\n", "unknown key 'format'"),
    ("[recipe.gate]\nmin_cos = 0.9\n", "gate: unknown key 'min_cos'"),
    ("[recipe.stages.prune]\nratio = 0.5\nhow = 'l1'\n", "stages.prune: unknown key 'how'"),
    ("[recipe.stages.quantum]\nbits = 2\n", "unknown stage 'quantum'"),
    ("[recipe]\nformats = ['coreml']\n", "--format coreml: unknown format"),
    ("[recipe.gate]\nmin_cosine = 3.0\n", "--min-cosine must be between -1 and 1"),
    ("[recipe\n", "not valid TOML"),
    ("[recipe.quant]\nweight_rounding = 'adaround'\n", "quant.weight_rounding = 'adaround' is not one of nearest, gptq"),
])
def test_a_wrong_recipe_names_the_key(text, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[")):
        BuildRecipe.from_toml(text, "r.toml")


@pytest.mark.slow  # two builds (~25 s)
def test_an_apps_recipe_is_its_default_and_the_command_line_wins(tmp_path):
    app = tmp_path / "digits"
    shutil.copytree(DIGITS_APP, app)
    with open(app / "edgekit.toml", "a") as f:
        f.write('\n[recipe]\nformats = ["onnx"]\n\n[recipe.quant]\ncalibration = "percentile"\n')
    proc = _cli("build", str(app), "--out", str(tmp_path / "a"), "--json")
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout)
    assert list(m["formats"]) == ["onnx"] and m["quantization"]["calibration"] == "percentile"
    proc = _cli("build", str(app), "--calibration", "minmax", "--out", str(tmp_path / "b"), "--json")
    assert json.loads(proc.stdout)["quantization"]["calibration"] == "minmax"


@pytest.mark.slow  # ~30 s: two builds; the recipe round trips stay in the default run
def test_a_manifest_replays_its_build_byte_for_byte(tmp_path):
    """`edgekit build --recipe BUILD/manifest.json` with no model given rebuilds that model, on that
    target, the same way: the .pte is the same file (same sha256), made again from scratch."""
    first = tmp_path / "first"
    proc = _cli("build", str(DIGITS_APP), "--target", "rpi5", "--calib-samples", "64", "--out", str(first))
    assert proc.returncode == 0, proc.stderr
    again = tmp_path / "again"
    proc = _cli("build", "--recipe", str(first / "manifest.json"), "--out", str(again), "--json")
    assert proc.returncode == 0, proc.stderr
    m1, m2 = json.loads((first / "manifest.json").read_text()), json.loads(proc.stdout)
    assert m2["target"] == "rpi5" and m2["recipe"] == m1["recipe"] and m2["recipe"]["calib_samples"] == 64
    assert m2["artifact"]["sha256"] == m1["artifact"]["sha256"]
    assert not any(s.get("cached") for s in m2["steps"])  # made again, not copied (the suite runs without the cache)


@pytest.mark.slow  # two builds (~50 s); the manifest replay runs by default
def test_an_unchanged_recipe_reuses_its_cached_steps_and_says_how_long_they_took(tmp_path):
    env = {"EDGEKIT_STEP_CACHE": "on", "EDGEKIT_STEP_CACHE_DIR": str(tmp_path / "cache")}
    args = ["build", str(DIGITS_APP), "--format", "executorch", "--format", "onnx"]
    first = _cli(*args, "--out", str(tmp_path / "one"), "--json", env=env)
    assert first.returncode == 0, first.stderr
    second = _cli(*args, "--out", str(tmp_path / "two"), "--json", env=env)
    assert second.returncode == 0, second.stderr
    m1, m2 = json.loads(first.stdout), json.loads(second.stdout)
    cached = [s for s in m2["steps"] if s.get("cached")]
    assert [s["config"]["format"] for s in cached] == ["executorch", "onnx"]
    first_seconds = {s["config"]["format"]: 0.0 for s in m1["steps"] if s["stage"] in ("quantize", "export")}
    for s in m1["steps"]:
        if s["stage"] in ("quantize", "export"):
            first_seconds[s["config"]["format"]] += s["seconds"]
    for s in cached:
        assert s["saved_seconds"] == pytest.approx(first_seconds[s["config"]["format"]], abs=0.5)
    for fmt in ("executorch", "onnx"):
        assert m2["formats"][fmt]["artifact"]["sha256"] == m1["formats"][fmt]["artifact"]["sha256"]
        assert m2["formats"][fmt]["gate"]["passed"]  # judged again: the artifact is re-checked every time
    assert "reused 2 cached step(s)" in second.stderr


@pytest.mark.slow  # two builds (~20 s); the default run keeps the cache-hit test above
def test_a_changed_forward_is_another_model_for_the_cache(tmp_path):
    """Same weights, edited forward(): the step key changes, nothing stale is reused."""
    env = {"EDGEKIT_STEP_CACHE": "on", "EDGEKIT_STEP_CACHE_DIR": str(tmp_path / "cache")}
    app = tmp_path / "digits"
    shutil.copytree(DIGITS_APP, app)
    proc = _cli("build", str(app), "--format", "onnx", "--out", str(tmp_path / "a"), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    source = (app / "model.py").read_text()
    assert "    def forward(" in source
    (app / "model.py").write_text(source.replace("    def forward(", "    # an edited forward: another model\n    def forward(", 1))
    proc = _cli("build", str(app), "--format", "onnx", "--out", str(tmp_path / "b"), "--json", env=env)
    assert not any(s.get("cached") for s in json.loads(proc.stdout)["steps"])


def test_another_edgekit_source_is_another_key_for_the_cache(monkeypatch):
    from edgekit import cache

    before = cache.step_key("quantize+export", {"format": "onnx"}, {"model": "abc"})
    monkeypatch.setattr(cache, "code_digest", lambda: "0" * 64)  # what an edited edgekit would digest to
    assert cache.step_key("quantize+export", {"format": "onnx"}, {"model": "abc"}) != before
