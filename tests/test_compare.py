"""The one comparison (edgekit/compare.py): label-free metrics, the top-1 check that ignores
near-ties, and gates that fail an artifact which lost the float model's outputs."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.compare import GATES, Gate, compare_output, compare_runs, sqnr_db, summary


def test_near_tied_scores_do_not_fail_the_top1_check():
    # A random-weight net: ten nearly equal logits per sample, so any rounding reorders them.
    rng = np.random.default_rng(0)
    f = 5.0 + 1e-4 * rng.normal(size=(64, 10))
    f[0, 0] = 6.0  # one sample with a clear winner sets the output range (step ~ 1/255)
    a = f + 1e-4 * rng.normal(size=f.shape)
    m = compare_output(f, a, GATES["int8"], "int8")
    assert m["top1_agreement"] < 50  # reported as it is...
    assert m["top1_decisive_samples"] == 1 and m["top1_agreement_decisive"] == 100.0
    assert m["failures"] == []  # ...but not a failure: those samples had no decision to keep


def test_flipped_decisions_fail_the_top1_check():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(100, 10))
    f[np.arange(100), rng.integers(0, 10, 100)] += 5.0  # a trained net: a clear top class per sample
    a = f.copy()
    a[:20] = a[:20, ::-1]  # an artifact that scrambles the class order on 20 % of the samples
    m = compare_output(f, a, GATES["int8"], "int8")
    assert m["top1_decisive_samples"] == 100
    assert any("top-1 agreement" in msg for msg in m["failures"])


def _embeddings(n=64, dim=384, seed=2):
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(n, dim))
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_embeddings_are_judged_by_cosine_without_labels_or_top1():
    f = _embeddings()
    rng = np.random.default_rng(3)
    close = f + 0.02 * rng.normal(size=f.shape) / np.sqrt(f.shape[1])  # ~2 % noise: cosine ~0.9998
    m = compare_output(f, close, GATES["int8"], task="embedding")
    assert m["top1_agreement"] is None and m["failures"] == []
    assert m["cosine"] > 0.999 and m["sqnr_db"] > 30
    lost = f + 1.0 * rng.normal(size=f.shape) / np.sqrt(f.shape[1])  # as much noise as signal: cosine ~0.7
    m = compare_output(f, lost, GATES["int8"], task="embedding")
    assert 0.6 < m["cosine"] < 0.8
    assert m["failures"] and m["failures"][0].startswith("cosine similarity 0.") and "under the gate's 0.99" in m["failures"][0]


def test_cosine_is_per_sample_so_one_bad_sample_shows_as_the_worst():
    f = _embeddings()
    a = f.copy()
    a[5] = -a[5]  # one embedding flipped
    m = compare_output(f, a, GATES["int8"], task="embedding")
    assert m["cosine_min"] == pytest.approx(-1.0)
    assert m["cosine"] == pytest.approx((63 - 1) / 64)


def test_a_single_score_per_sample_is_compared_across_samples():
    rng = np.random.default_rng(4)
    f = rng.normal(size=(50, 1))  # a regression head
    m = compare_output(f, f * 1.001, GATES["int8"], task="regression")
    assert m["cosine"] == pytest.approx(1.0) and m["failures"] == []
    m = compare_output(f, rng.normal(size=(50, 1)), GATES["int8"], task="regression")
    assert m["cosine"] < 0.5 and m["failures"]


def test_accuracy_drop_needs_labels_and_names_the_budget():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 10, 100)
    f = rng.normal(size=(100, 10))
    f[np.arange(100), labels] += 5.0
    a = f.copy()
    a[:10] = a[:10, ::-1]
    m = compare_output(f, a, Gate(min_cosine=None, min_agreement=None, min_cosine_scores=None, max_accuracy_drop=1.0), labels=labels)
    assert m["accuracy_float"] == 100.0 and m["accuracy_artifact"] == 90.0
    assert m["failures"] == ["accuracy drops 10.00 points (100.00 -> 90.00 %), over the --max-accuracy-drop 1 budget"]


def test_step_bounds_catch_one_value_far_off_where_the_gate_has_them():
    """The emulated comparison (same artifact, two machines) bounds errors in output steps; the
    int8-vs-float gate does not: one isolated logit 40 levels off that flips no decision and keeps
    the direction is not a lost prediction."""
    rng = np.random.default_rng(0)
    f = rng.normal(size=(64, 10)).astype(np.float32)
    step = (f.max() - f.min()) / 255
    close = f + rng.uniform(-step, step, size=f.shape).astype(np.float32)  # ~1 int8 level of noise
    assert compare_runs([[f]], [[close]], GATES["emulated"], "emulated")["ok"]
    far = f.copy()
    far[3, 2] += 40 * step  # one value 40 levels off
    doc = compare_runs([[f], [f]], [[f], [far]], GATES["emulated"], "emulated", names=["logits"])
    assert not doc["ok"]
    assert doc["failures"][0].startswith("logits: max abs error") and "40.0 output steps" in doc["failures"][0]
    assert compare_runs([[f], [f]], [[f], [far]], GATES["int8"], "int8")["ok"]
    assert compare_runs([[f]], [[f[:, :5]]], GATES["int8"])["failures"]  # a shape mismatch is a failure, not a crash


def test_every_output_is_compared_and_the_summary_takes_the_worst_cosine():
    f1, f2 = _embeddings(seed=6), _embeddings(seed=7)
    bad = -f2
    doc = compare_runs([[f1, f2]], [[f1, bad]], GATES["int8"], names=["a", "b"], task="embedding")
    assert [o["output"] for o in doc["outputs"]] == ["a", "b"]
    assert doc["failures"] and all(m.startswith("b: ") for m in doc["failures"])
    assert summary(doc)["cosine"] == pytest.approx(-1.0)


def test_sqnr():
    x = np.ones(100)
    assert sqnr_db(x, x) == 200.0  # identical: the reported ceiling, not infinity
    assert sqnr_db(x, x * 1.1) == pytest.approx(20.0, abs=0.01)  # noise power 1 % of signal


def test_class_scores_are_judged_by_decisions_with_a_looser_cosine_floor():
    """Rescaled logits that keep every decision pass; --min-cosine tightens the floor for all outputs."""
    rng = np.random.default_rng(8)
    f = rng.normal(size=(100, 10))
    f[np.arange(100), rng.integers(0, 10, 100)] += 4.0
    a = f * np.linspace(0.8, 1.2, 10) + 0.3 * rng.normal(size=f.shape)  # per-class rescale + noise
    m = compare_output(f, a, GATES["int8"])
    assert m["top1_agreement_decisive"] >= 95 and 0.95 <= m["cosine"] < 0.99
    assert m["failures"] == []
    strict = GATES["int8"].with_overrides(min_cosine=0.99)
    assert strict.min_cosine_scores == 0.99
    assert compare_output(f, a, strict)["failures"][0].startswith("cosine similarity")
