"""Parity metrics: the top-1 check ignores near-ties, and still catches an artifact that flips decisions."""

from __future__ import annotations

import numpy as np

from edgekit.emulate.parity import compare_output


def test_near_tied_scores_do_not_fail_the_top1_check():
    # A random-weight net: ten nearly equal logits per sample, so any rounding reorders them.
    rng = np.random.default_rng(0)
    f = 5.0 + 1e-4 * rng.normal(size=(64, 10))
    f[0, 0] = 6.0  # one sample with a clear winner sets the output range (step ~ 1/255)
    a = f + 1e-4 * rng.normal(size=f.shape)
    m = compare_output(f, a, "int8")
    assert m["top1_agreement"] < 50  # reported as it is...
    assert m["top1_decisive_samples"] == 1 and m["top1_agreement_decisive"] == 100.0
    assert m["failures"] == []  # ...but not a failure: those samples had no decision to keep


def test_flipped_decisions_fail_the_top1_check():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(100, 10))
    f[np.arange(100), rng.integers(0, 10, 100)] += 5.0  # a trained net: a clear top class per sample
    a = f.copy()
    a[:20] = a[:20, ::-1]  # an artifact that scrambles the class order on 20 % of the samples
    m = compare_output(f, a, "int8")
    assert m["top1_decisive_samples"] == 100
    assert any("top-1 agreement" in msg for msg in m["failures"])
