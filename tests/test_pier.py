"""PIER: priorities by hand, the orderings the reference intends, probabilities and IS weights."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from lit_imit.interactive import PIER, Label, pier_priorities

F, S, U = int(Label.KNOWN_FAILURE), int(Label.KNOWN_SUCCESS), int(Label.UNKNOWN)
OFF, REL = int(Label.UNKNOWN_OFFLINE), int(Label.UNKNOWN_RELABELING)
G = (10 ** 0.5 - 1) / 9  # (b^(1-c) - 1)/(b - 1) at b = 10, c = 0.5


def test_priorities_by_hand():
    # u~ = u / 2 = [.5, 1, nan, .25]; age = (4 - k)/4 = [.5, 0, 0, 1]; c = [.5, .5, nan, .625]
    p = pier_priorities([1.0, 2.0, math.nan, 0.5], [S, F, REL, OFF], [2, 4, 4, 0])
    assert p == pytest.approx([1 - G, 1 + G, 1.0, 1.0])
    assert 1 - G == pytest.approx(0.7597469, abs=1e-7)


def test_priority_ranges_and_extremes():
    # c = 0 (certain, newest): success never replayed, failure doubled; c = 1: both 1
    p = pier_priorities([0.0, 0.0, 1.0, 1.0, 0.5], [S, F, S, F, U], [1, 1, 0, 0, 1], lam=0.5)
    assert p.tolist() == pytest.approx([0.0, 2.0, 1.0, 1.0, 1.0])
    rng = np.random.default_rng(0)
    u, k = rng.random(500), rng.integers(0, 10, 500)
    r = rng.choice([S, F, U, OFF, REL], 500)
    p = pier_priorities(u, r, k)
    assert np.all((p[r == S] >= 0) & (p[r == S] <= 1))
    assert np.all((p[r == F] >= 1) & (p[r == F] <= 2))
    assert np.all(p[(r == U) | (r == OFF) | (r == REL)] == 1)


def test_orderings_as_the_reference_intends():
    """Failures above unknowns above successes; among successes, uncertain or old ones are replayed
    more; among failures, confident and recent ones (the novice did not know it would fail)."""
    base = dict(version=[4, 5, 10, 10], current_version=10)
    u = [0.5, 0.5, 0.5, 0.5]
    p = pier_priorities(u, [S, F, U, S], **base)
    assert p[1] > p[2] > p[0] and p[2] > p[3]
    # uncertainty at fixed version
    hi_lo = [1.0, 0.2]
    ps = pier_priorities(hi_lo, [S, S], [3, 3], current_version=5)
    pf = pier_priorities(hi_lo, [F, F], [3, 3], current_version=5)
    assert ps[0] > ps[1] and pf[0] < pf[1]
    # recency at fixed uncertainty: version 9 is newer than version 2
    ps = pier_priorities([0.5, 0.5, 1.0], [S, S, S], [9, 2, 9], current_version=10)
    pf = pier_priorities([0.5, 0.5, 1.0], [F, F, F], [9, 2, 9], current_version=10)
    assert ps[0] < ps[1] and pf[0] > pf[1]


def test_lambda_selects_the_term():
    # lam = 1: only uncertainty matters; lam = 0: only age
    p1 = pier_priorities([0.2, 0.2], [F, F], [0, 10], lam=1.0)
    assert p1[0] == p1[1]
    p0 = pier_priorities([0.1, 0.9], [F, F], [10, 10], lam=0.0)
    assert p0[0] == p0[1] == pytest.approx(2.0)


def test_default_version_reference_and_validation():
    p_default = pier_priorities([1.0, 1.0], [F, F], [3, 6])
    p_explicit = pier_priorities([1.0, 1.0], [F, F], [3, 6], current_version=6)
    assert p_default.tolist() == p_explicit.tolist()
    assert pier_priorities([], [], []).shape == (0,)
    with pytest.raises(ValueError):
        pier_priorities([1.0], [F], [7], current_version=6)
    with pytest.raises(ValueError):
        pier_priorities([1.0, 2.0], [F], [7, 7])


def test_probabilities_and_weights_by_hand():
    pier = PIER(alpha=2.0)
    probs = pier.probabilities([1.0, 2.0, 1.0])
    assert probs.tolist() == pytest.approx([1 / 6, 4 / 6, 1 / 6])
    w = pier.importance_weights(probs, beta=1.0)
    # (N P)^-1 = [2, .5, 2] -> divided by the max 2
    assert w.tolist() == pytest.approx([1.0, 0.25, 1.0])
    w = pier.importance_weights(probs, beta=0.5)
    assert w.tolist() == pytest.approx([1.0, 0.5, 1.0])
    assert pier.importance_weights(probs, beta=0.0).tolist() == [1.0, 1.0, 1.0]


def test_probabilities_sum_to_one_and_weights_at_most_one():
    rng = np.random.default_rng(1)
    n = 300
    res = PIER().compute(rng.random(n), rng.choice([S, F, OFF, REL], n), rng.integers(0, 20, n), n_interactive=7)
    assert res.probs.sum() == pytest.approx(1.0)
    assert res.weights.max() == pytest.approx(1.0) and np.all(res.weights > 0) and np.all(res.weights <= 1 + 1e-12)
    assert res.beta == 1.0  # default beta0 = 1
    # the weight exactly compensates the sampling bias: P_i * w_i is constant when beta = 1
    pw = res.probs * res.weights
    assert np.allclose(pw, pw[0])


def test_zero_priority_entries():
    pier = PIER()
    probs = pier.probabilities([0.0, 1.0, 2.0])
    assert probs[0] == 0.0 and probs.sum() == pytest.approx(1.0)
    w = pier.importance_weights(probs, 1.0)
    assert w[0] == 0.0 and w.max() == pytest.approx(1.0)
    assert pier.probabilities([0.0, 0.0]).tolist() == [0.5, 0.5]  # all certain successes: uniform
    with pytest.raises(ValueError):
        pier.probabilities([1.0, math.nan])


def test_counts_expand_entries_to_samples():
    """Episode priorities with per-episode step counts: each step carries its episode's priority."""
    pier = PIER(alpha=1.0)
    probs = pier.probabilities([1.0, 2.0], counts=[3, 1])
    # per-step probability: 1/5 for the 3 steps of episode 0, 2/5 for the single step of episode 1
    assert probs.tolist() == pytest.approx([0.2, 0.4])
    assert float(np.dot([3, 1], probs)) == pytest.approx(1.0)
    w = pier.importance_weights(probs, 1.0, counts=[3, 1])
    assert w.tolist() == pytest.approx([1.0, 0.5])  # (N P)^-1 with N = 4: [1.25, .625]


def test_beta_annealing_endpoints():
    pier = PIER(beta0=0.4, beta_steps=100)
    assert pier.beta(0) == pytest.approx(0.4)
    assert pier.beta(50) == pytest.approx(0.7)
    assert pier.beta(100) == 1.0 and pier.beta(10_000) == 1.0
    assert PIER().beta(0) == 1.0  # reference default beta0 = 1: no annealing
    betas = [pier.beta(n) for n in range(0, 120, 10)]
    assert all(a <= b for a, b in zip(betas, betas[1:]))


def test_without_bias_compensation_the_draws_stay_prioritized_and_every_weight_is_one():
    args = ([0.1, 0.9, np.nan, 0.5], [S, F, OFF, S], [3, 1, 0, 2])
    with_ = PIER().compute(*args, n_interactive=7)
    without = PIER(bias_compensation=False).compute(*args, n_interactive=7)
    assert without.beta == 0.0 and with_.beta == 1.0
    assert without.probs.tolist() == with_.probs.tolist() and len(set(with_.probs.round(9))) > 1
    drawable = with_.probs > 0
    assert np.all(without.weights[drawable] == 1.0) and with_.weights[drawable].min() < 0.5


def test_state_dict_roundtrip_weights_only():
    pier = PIER(lam=0.3, base=100.0, alpha=1.0, beta0=0.5, beta_steps=20, bias_compensation=False)
    buf = io.BytesIO()
    torch.save(pier.state_dict(), buf)
    buf.seek(0)
    other = PIER()
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert other.state_dict() == pier.state_dict()
    args = ([0.3, 0.9], [S, F], [1, 2])
    assert other.priorities(*args).tolist() == pier.priorities(*args).tolist()
    assert other.beta(10) == 0.0 and not other.bias_compensation
    other.load_state_dict({k: v for k, v in PIER(beta0=0.5, beta_steps=20).state_dict().items()
                           if k != "bias_compensation"})  # a state from before the flag: compensated
    assert other.beta(10) == pytest.approx(0.75)



def test_mean_normalized_weights_keep_the_ratios_and_weigh_one_per_draw_on_average():
    """Same draws and same weight ratios as the reference's max normalisation; only the scale differs: the
    mean weight of a draw is 1 (at beta 1 the weights are (N P_i)^-1 themselves)."""
    args = ([0.1, 0.9, np.nan, 0.5, 0.2], [S, F, OFF, S, F], [3, 1, 0, 2, 3])
    counts = [10, 20, 30, 40, 50]
    ref = PIER().compute(*args, n_interactive=3, counts=counts)
    mean = PIER(weight_normalization="mean").compute(*args, n_interactive=3, counts=counts)
    assert mean.probs.tolist() == ref.probs.tolist()
    drawable = ref.probs > 0
    assert ref.weights[drawable].max() == pytest.approx(1.0)
    ratio = mean.weights[drawable] / ref.weights[drawable]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-12)  # one scale factor for every entry
    n = np.asarray(counts, dtype=float)
    assert float(np.sum(n * mean.probs * mean.weights)) == pytest.approx(1.0)  # E_P[w] = 1
    np.testing.assert_allclose(mean.weights[drawable], 1.0 / (n.sum() * mean.probs[drawable]), rtol=1e-12)
    assert np.all(mean.weights[~drawable] == 0.0)
    half = PIER(beta0=0.5, weight_normalization="mean").compute(*args, n_interactive=0, counts=counts)
    assert float(np.sum(n * half.probs * half.weights)) == pytest.approx(1.0)  # at any beta
    with pytest.raises(ValueError, match="weight_normalization must be one of"):
        PIER(weight_normalization="sum")


def test_weight_normalization_survives_a_state_round_trip_and_older_states_get_the_reference():
    pier = PIER(weight_normalization="mean")
    other = PIER()
    other.load_state_dict(pier.state_dict())
    assert other.weight_normalization == "mean" and other.state_dict() == pier.state_dict()
    other.load_state_dict({k: v for k, v in pier.state_dict().items() if k != "weight_normalization"})
    assert other.weight_normalization == "max"

# ---- the importance correction in the loss (modules/base.weighted_mean) ---------------------------------
def test_weighted_loss_under_pier_sampling_estimates_the_uniform_loss():
    """With beta = 1, E_P[w l] = mean(l) / w_max: the weighted loss of prioritized draws is the uniform loss
    (times the constant 1/w_max); the unweighted loss of the same draws is biased towards high-priority entries."""
    from lit_imit.modules.base import weighted_mean

    rng = np.random.default_rng(0)
    losses = torch.tensor(rng.uniform(0.0, 2.0, 40))
    pier = PIER(alpha=1.5)
    priorities = np.concatenate([rng.uniform(0.0, 0.2, 30), rng.uniform(0.8, 1.0, 10)])
    losses[30:] *= 3.0  # the high-priority entries also have the high losses, as uncertain failures do
    probs = pier.probabilities(priorities)
    weights = torch.tensor(pier.importance_weights(probs, beta=1.0))
    w_max = (len(probs) * probs.min()) ** -1.0
    draws = torch.tensor(rng.choice(len(probs), size=200_000, p=probs))
    uniform = float(losses.mean())
    corrected = float(weighted_mean(losses[draws], weights[draws])) * w_max
    biased = float(losses[draws].mean())
    assert corrected == pytest.approx(uniform, rel=0.02)
    assert biased > 1.3 * uniform


def test_at_batch_size_one_the_gradient_scales_with_the_weight():
    from lit_imit.modules.base import weighted_mean

    param = torch.tensor([1.5, -0.5], requires_grad=True)
    per_sample = (param ** 2).sum().reshape(1)
    grads = []
    for w in (1.0, 0.25):
        (g,) = torch.autograd.grad(weighted_mean(per_sample, torch.tensor([w])), param, retain_graph=True)
        grads.append(g)
    torch.testing.assert_close(grads[1], 0.25 * grads[0])
