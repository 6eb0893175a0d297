"""S-Aware Gating: threshold rule pieces by hand, and target tracking on synthetic streams.

The tracking tests validate SAG the way the paper does (MNIST there, a synthetic stream here): the
chance that the novice fails rises with its uncertainty, P(fail | u) = sigmoid(a (u - b)), and u drifts
down as the model version grows (the novice improves). The loop is the real one: decide -> if queried
record the known label, else record UNKNOWN. Realised rates are measured after a warm-up quarter.

Measured (8 seeds, 40 versions x 50 decisions, one threshold per version batch, first quarter
skipped; ``test_tracking_sweep`` prints this table), mean realised value [worst seed]:
- p_rand = 0.2: sensitivity for targets 0.5/0.7/0.9 -> 0.50/0.68/0.89 [0.46/0.63/0.85];
  specificity for 0.5/0.6/0.7 -> 0.50/0.61/0.69 (the maximum reachable is 1 - p_rand = 0.8);
  system success (novice alone ~0.3) for 0.5/0.7/0.9 -> 0.52/0.69/0.89. All means within 0.025.
- p_rand = 0: specificity still tracks (0.51/0.61/0.70/0.90 for 0.5/0.6/0.7/0.9), but sensitivity and
  system success drift down: sensitivity 0.47/0.62/0.88 (-0.03/-0.08/-0.02, worst seed 0.31 at 0.5),
  system success 0.37/0.46/0.80 (-0.13/-0.24/-0.10, worst seed 0.63 at 0.9). Without random queries
  labels only come from high-u decisions, the logistic imputation extrapolates to low u from truncated
  data, and a too-high threshold yields even fewer labels: the reason the reference uses p_rand = 0.2.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from lit_imit.interactive import SAG, Decision, Label, gating_metrics, sag_threshold
from lit_imit.interactive.sag import _operating_points, fit_logistic, operating_threshold

F, S, U = int(Label.KNOWN_FAILURE), int(Label.KNOWN_SUCCESS), int(Label.UNKNOWN)


def _curve(scores, failures):
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    s = np.asarray(scores, float)[order]
    y = np.asarray(failures, float)[order][None, :]
    thr, tp, fp = _operating_points(s, y)
    return thr, tp[0], fp[0]


# ------------------------------------------------------------------------------------------------
# operating curve by hand
# scores 5..1, failures at 5, 3, 1 (P = 3), successes at 4, 2 (N- = 2)
# ------------------------------------------------------------------------------------------------
SCORES, FAILS = [5, 4, 3, 2, 1], [1, 0, 1, 0, 1]


def test_operating_points_counts():
    thr, tp, fp = _curve([3, 5, 3, 1], [1, 0, 0, 1])  # tie at 3
    assert thr.tolist() == [5, 3, 1]
    assert tp.tolist() == [0, 1, 2] and fp.tolist() == [1, 2, 2]


def test_sensitivity_threshold_by_hand():
    thr, tp, fp = _curve(SCORES, FAILS)
    # TPR at thresholds 5,4,3,2,1 = 1/3,1/3,2/3,2/3,1; 0.5 lies between (1/3, 4) and (2/3, 3)
    assert operating_threshold(thr, tp, fp, 0.5, 0.0, "sensitivity") == pytest.approx(3.5)
    assert operating_threshold(thr, tp, fp, 1.0, 0.0, "sensitivity") == 1.0  # query everything
    assert operating_threshold(thr, tp, fp, 0.2, 0.0, "sensitivity") == 5.0  # highest score
    # p_rand = 0.5: effective = 2/3, 2/3, 5/6, 5/6, 1 and 0.5 at "+inf" (no active query)
    assert operating_threshold(thr, tp, fp, 0.75, 0.5, "sensitivity") == pytest.approx(3.5)
    assert operating_threshold(thr, tp, fp, 0.5, 0.5, "sensitivity") == math.inf


def test_specificity_threshold_by_hand():
    thr, tp, fp = _curve(SCORES, FAILS)
    # TNR at thresholds 1..5 ascending = 0, 0, .5, .5, 1 -> 0.75 between (.5, 4) and (1, 5)
    assert operating_threshold(thr, tp, fp, 0.75, 0.0, "specificity") == pytest.approx(4.5)
    # with p_rand = 0.2 the best reachable specificity is 0.8: beyond it, never query actively
    assert operating_threshold(thr, tp, fp, 0.6, 0.2, "specificity") == pytest.approx(4.5)
    assert operating_threshold(thr, tp, fp, 0.85, 0.2, "specificity") == math.inf


def test_success_threshold_by_hand():
    thr, tp, fp = _curve(SCORES, FAILS)
    # system success 1 - (P - TP)/N = .6,.6,.8,.8,1 at thresholds 5..1; novice alone: 1 - 3/5 = .4
    assert operating_threshold(thr, tp, fp, 0.7, 0.0, "success") == pytest.approx(3.5)
    assert operating_threshold(thr, tp, fp, 0.4, 0.0, "success") == math.inf
    # p_rand = 0.5 lifts the floor to .4 + .5 * .6 = .7
    assert operating_threshold(thr, tp, fp, 0.7, 0.5, "success") == math.inf
    assert operating_threshold(thr, tp, fp, 0.85, 0.5, "success") == pytest.approx(3.5)


def test_fit_logistic_recovers_parameters():
    rng = np.random.default_rng(0)
    x = rng.normal(size=20000)
    y = rng.random(x.size) < 1 / (1 + np.exp(-(0.5 + 2.0 * x)))
    a, b = fit_logistic(x * 3 + 1, y)  # on a shifted/scaled axis: a + b(3x+1) = 0.5 + 2x
    assert b == pytest.approx(2.0 / 3, abs=0.05)
    assert a + b == pytest.approx(0.5, abs=0.06)
    a, b = fit_logistic([0.0, 1.0, 2.0, 3.0], [0, 0, 1, 1])  # separable: stays finite, steep
    assert math.isfinite(a) and math.isfinite(b) and b > 5


# ------------------------------------------------------------------------------------------------
# window, normalisation, imputation
# ------------------------------------------------------------------------------------------------
def _history(rng, n, version, shift=0.0):
    u = rng.random(n)
    fail = rng.random(n) < u  # failure more likely at high u
    fail[:2], fail[2:4] = True, False  # both labels present
    return list(u + shift), [F if f else S for f in fail], [version] * n


def test_query_everything_until_enough_labels():
    assert sag_threshold([], [], []) == -math.inf
    gate = SAG(mode="sensitivity", target=0.9, p_rand=0.0, n_min=5, seed=0)
    assert gate.threshold() == -math.inf
    for i in range(4):  # 4 failures + 1 success: one failure short
        gate.record(1.0 + i, Label.KNOWN_FAILURE, version=i)
    gate.record(0.1, Label.KNOWN_SUCCESS, version=4)
    d = gate.decide(0.0, version=4)
    assert d.query and d.active and not d.random_only and d.threshold == -math.inf
    gate.record(5.0, Label.KNOWN_FAILURE, version=4)
    assert gate.threshold(0.0, version=4) > -math.inf
    # specificity mode counts successes instead: 1 success < n_min
    spec = SAG(mode="specificity", n_min=2, p_rand=0.0)
    spec.load_state_dict({**gate.state_dict(), "mode": "specificity", "n_min": 2})
    assert spec.threshold() == -math.inf


def test_window_uses_newest_versions_that_suffice():
    rng = np.random.default_rng(1)
    u2, r2, k2 = _history(rng, 60, version=7)
    alone = sag_threshold(u2, r2, k2, target=0.8, n_min=10, impute=False)
    u0, r0, k0 = _history(rng, 60, version=3, shift=5.0)  # very different old data
    both = sag_threshold(u0 + u2, r0 + r2, k0 + k2, target=0.8, n_min=10, impute=False)
    assert both == alone
    # with n_min above what version 7 holds, the window reaches back and the old data matters
    n_fail7 = r2.count(F)
    grown = sag_threshold(u0 + u2, r0 + r2, k0 + k2, target=0.8, n_min=n_fail7 + 1, impute=False)
    assert grown != alone


def test_offline_and_relabeling_entries_are_ignored():
    rng = np.random.default_rng(2)
    u, r, k = _history(rng, 80, version=2)
    ref = sag_threshold(u, r, k, target=0.7, n_min=5, impute=False)
    u2 = [math.nan] * 5 + u + [math.nan] * 3
    r2 = [int(Label.UNKNOWN_OFFLINE)] * 5 + r + [int(Label.UNKNOWN_RELABELING)] * 3
    k2 = [0] * 5 + k + [2] * 3
    assert sag_threshold(u2, r2, k2, target=0.7, n_min=5, impute=False) == ref


def test_drift_normalisation_aligns_versions():
    """Version 0 is version 1 shifted up by 1: detrended, both collapse onto version 1's scale."""
    rng = np.random.default_rng(3)
    x, r, _ = _history(rng, 50, version=0)
    u = [v + 1.0 for v in x] + x
    k = [0] * 50 + [1] * 50
    target = 0.7
    n_min = r.count(F) + 1  # forces the window to span both versions
    alone = sag_threshold(x, r, [1] * 50, target=target, n_min=1, impute=False)
    norm = sag_threshold(u, r + r, k, target=target, n_min=n_min, impute=False, u_normalization=True)
    raw = sag_threshold(u, r + r, k, target=target, n_min=n_min, impute=False, u_normalization=False)
    assert norm == pytest.approx(alone, abs=1e-9)
    assert raw > alone + 0.2  # without it, the old high uncertainties pull the threshold up


def test_imputation_corrects_selection_bias():
    """Labels known only for queried decisions (high u, plus random ones): imputing the rest gets
    the threshold the full labels would give; using the known labels alone overshoots."""
    rng = np.random.default_rng(4)
    n = 3000
    u = rng.random(n)
    fail = rng.random(n) < 1 / (1 + np.exp(-8 * (u - 0.5)))
    full = sag_threshold(u, np.where(fail, F, S), np.zeros(n), target=0.9, impute=False)
    known = (u > 0.6) | (rng.random(n) < 0.1)
    r = np.where(known, np.where(fail, F, S), U)
    imputed = sag_threshold(u, r, np.zeros(n), target=0.9, rng=np.random.default_rng(0))
    naive = sag_threshold(u, r, np.zeros(n), target=0.9, impute=False)
    assert abs(imputed - full) < 0.03
    assert naive - full > 0.1


def test_threshold_is_reproducible_given_seed():
    rng = np.random.default_rng(5)
    u = rng.random(200)
    r = np.where(rng.random(200) < 0.5, np.where(rng.random(200) < u, F, S), U)
    a = sag_threshold(u, r, np.zeros(200), rng=np.random.default_rng(9))
    b = sag_threshold(u, r, np.zeros(200), rng=np.random.default_rng(9))
    assert a == b and math.isfinite(a)


# ------------------------------------------------------------------------------------------------
# the gate object
# ------------------------------------------------------------------------------------------------
def test_decision_flags_and_random_queries():
    gate = SAG(p_rand=1.0, n_min=1, seed=0)
    for i in range(10):
        gate.record(float(i), Label.KNOWN_FAILURE if i >= 5 else Label.KNOWN_SUCCESS, version=0)
    d = gate.decide(-5.0)
    assert isinstance(d, Decision) and d.query and d.random and not d.active and d.random_only
    assert gate.last_decision == d
    gate.p_rand = 0.0
    assert gate.decide(100.0).query and not gate.last_decision.random
    assert not gate.decide(-100.0).query


def test_fork_shares_the_history_not_the_rng():
    gate = SAG(p_rand=0.5, n_min=1, seed=0)
    for i in range(10):
        gate.record(float(i), Label.KNOWN_FAILURE if i >= 5 else Label.KNOWN_SUCCESS, version=0)
    a, b = gate.fork([1, 0]), gate.fork([1, 0])
    assert (a.u, a.r, a.k) == (gate.u, gate.r, gate.k) and a.threshold() == gate.threshold()
    assert [a.decide(2.0).random for _ in range(20)] == [b.decide(2.0).random for _ in range(20)]
    a.record(3.0, Label.KNOWN_FAILURE, version=0)
    assert len(gate) == 10 and len(a) == 11  # a fork's decisions stay its own


def test_random_query_rate_when_threshold_is_infinite():
    """Sensitivity target below p_rand: random queries alone meet it, so only p_rand queries remain."""
    gate = SAG(mode="sensitivity", target=0.15, p_rand=0.2, n_min=1, seed=1)
    for i in range(40):
        gate.record(float(i % 10), Label.KNOWN_FAILURE if i % 10 >= 5 else Label.KNOWN_SUCCESS, version=0)
    ds = gate.decide_batch(np.linspace(0, 20, 4000), version=0)
    assert ds[0].threshold == math.inf and not any(d.active for d in ds)
    assert np.mean([d.query for d in ds]) == pytest.approx(0.2, abs=0.02)


def test_record_validation():
    gate = SAG()
    with pytest.raises(ValueError):
        gate.record(math.nan, Label.KNOWN_FAILURE, version=0)
    gate.record(math.nan, Label.UNKNOWN_RELABELING, version=3)
    with pytest.raises(ValueError):
        gate.record(0.5, Label.UNKNOWN, version=2)  # versions never go back
    with pytest.raises(ValueError):
        SAG(mode="recall")


def _run(gate, rng, versions, per_version, batch, b=1.0, start=0):
    """Drive a gate on a synthetic stream; returns (failed, queried, thresholds) per decision.

    P(fail | u) = sigmoid(5 (u - b)); u ~ N(1 - 0.02 k, 0.5) at model version k (the novice grows more
    certain). ``batch``: one threshold per version (vectorised rollouts), else one per decision.
    """
    failed, queried, gammas = [], [], []
    for k in range(start, start + versions):
        u = rng.normal(1.0 - 0.02 * k, 0.5, size=per_version)
        fail = rng.random(per_version) < 1 / (1 + np.exp(-5 * (u - b)))
        ds = gate.decide_batch(u, version=k) if batch else None
        for i in range(per_version):
            d = ds[i] if batch else gate.decide(u[i], version=k)
            gate.record(u[i], (Label.KNOWN_FAILURE if fail[i] else Label.KNOWN_SUCCESS) if d.query else Label.UNKNOWN, k)
            failed.append(bool(fail[i]))
            queried.append(d.query)
            gammas.append(d.threshold)
    return failed, queried, gammas


def test_state_dict_roundtrip_is_bit_exact():
    gate = SAG(mode="sensitivity", target=0.8, p_rand=0.2, n_min=5, n_rep=5, seed=3)
    _run(gate, np.random.default_rng(0), versions=4, per_version=10, batch=False)
    buf = io.BytesIO()
    torch.save(gate.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    clone = SAG(seed=123)
    clone.load_state_dict(state)
    a = _run(gate, np.random.default_rng(1), versions=3, per_version=10, batch=False, start=4)
    b = _run(clone, np.random.default_rng(1), versions=3, per_version=10, batch=False, start=4)
    assert any(math.isfinite(g) for g in a[2])  # the continuation gates with real thresholds
    assert a == b
    assert clone.state_dict() == gate.state_dict()


def test_state_dict_is_plain_python():
    gate = SAG(seed=0)
    gate.record(0.3, Label.KNOWN_FAILURE, version=0)
    gate.decide(0.2)

    def walk(o):
        if isinstance(o, dict):
            return all(isinstance(k, str) and walk(v) for k, v in o.items())
        if isinstance(o, list):
            return all(walk(v) for v in o)
        return o is None or type(o) in (bool, int, float, str)

    assert walk(gate.state_dict())


def test_gating_metrics():
    m = gating_metrics(failed=[1, 1, 0, 0, 0], queried=[1, 0, 1, 0, 0], window=None)
    assert m["sensitivity"] == 0.5 and m["specificity"] == pytest.approx(2 / 3)
    assert m["query_rate"] == 0.4 and m["system_success"] == 0.8 and m["novice_success"] == 0.6
    m = gating_metrics(failed=[1, 1, 0], queried=[0, 1, 1], window=1)
    assert m["sensitivity"] == 1.0 and m["specificity"] == 0.0 and m["query_rate"] == 1.0


# ------------------------------------------------------------------------------------------------
# target tracking on synthetic streams
# ------------------------------------------------------------------------------------------------
KEY = {"sensitivity": "sensitivity", "specificity": "specificity", "success": "system_success"}


def _realised(mode, target, p_rand, seed, versions=40, per_version=50, batch=True, b=1.0):
    gate = SAG(mode=mode, target=target, p_rand=p_rand, n_min=15, n_rep=10, seed=seed)
    failed, queried, _ = _run(gate, np.random.default_rng(1000 + seed), versions, per_version, batch, b)
    skip = len(failed) // 4  # warm-up: everything is queried until n_min failures are known
    return gating_metrics(failed[skip:], queried[skip:], window=None)


# success mode needs a weak novice (b = 0.2: novice success ~0.3), else targets sit below the floor
CASES = [("sensitivity", t, 1.0) for t in (0.5, 0.7, 0.9)] + \
        [("specificity", t, 1.0) for t in (0.5, 0.6, 0.7)] + \
        [("success", t, 0.2) for t in (0.5, 0.7, 0.9)]


@pytest.mark.parametrize("mode,target,b", CASES)
def test_tracks_target_with_random_queries(mode, target, b):
    vals = [_realised(mode, target, 0.2, seed, b=b)[KEY[mode]] for seed in (0, 1)]
    assert abs(np.mean(vals) - target) < 0.05, vals
    assert all(abs(v - target) < 0.08 for v in vals), vals


@pytest.mark.parametrize("mode,target", [("sensitivity", 0.9), ("specificity", 0.6)])
def test_tracks_target_decision_by_decision(mode, target):
    """The reference's per-decision loop (threshold recomputed after every record)."""
    vals = [_realised(mode, target, 0.2, seed, versions=20, per_version=30, batch=False)[KEY[mode]]
            for seed in (0, 1)]
    assert abs(np.mean(vals) - target) < 0.06, vals


def test_success_floor_is_random_queries_only():
    """A target below what the novice (plus random queries) already reaches: query rate -> p_rand."""
    m = _realised("success", 0.5, 0.2, seed=0, b=1.0)  # novice success ~0.78
    assert m["system_success"] > 0.75
    assert m["query_rate"] == pytest.approx(0.2, abs=0.04)


@pytest.mark.slow
def test_tracking_sweep():
    """8 seeds per setting; the numbers quoted in the module docstring come from this sweep."""
    rows = []
    for p_rand in (0.2, 0.0):
        for mode, t, b in CASES + ([("specificity", 0.9, 1.0)] if p_rand == 0 else []):
            vals = [_realised(mode, t, p_rand, seed, b=b)[KEY[mode]] for seed in range(8)]
            rows.append((p_rand, mode, t, float(np.mean(vals)), float(np.min(vals))))
    for row in rows:
        print("p_rand=%.1f %-11s target=%.1f mean=%.3f min=%.3f" % row)
    for p_rand, mode, t, mean, _ in rows:
        if p_rand == 0.2 or mode == "specificity":
            assert abs(mean - t) < 0.04, (p_rand, mode, t, mean)
