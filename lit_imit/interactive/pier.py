"""PIER: Prioritized Interactive Experience Replay (ASkDAgger, Luijkx et al., TMLR 2025).

Interactive data is not equally informative. PIER replays a sample more often when it is a failure the
novice was confident about (the novice does not know what it does not know), and less often when it is
a confident, recent success that the teacher merely validated. Per sample ``i``::

    u~_i  = u_i / max(u)               (NaN for offline demos and relabeled entries)
    age_i = (k_ref - k_i) / k_ref      (k = model version that collected the sample; k_ref = max k)
    r~_i  = r_i with UNKNOWN_OFFLINE / UNKNOWN_RELABELING mapped to 0
    c_i   = lam * u~_i + (1 - lam) * age_i
    p_i   = 1 - r~_i * (b**(1 - c_i) - 1) / (b - 1),   NaN -> 1

so unknown/offline/relabeled samples have p = 1, validated successes p in [0, 1] (rising with c) and
failures (teacher annotations) p in [1, 2] (highest for confident, recent failures). Sampling uses
P(i) = p_i^alpha / sum_j p_j^alpha, and the loss of a sample is weighted by the importance weight
w_i = (N P(i))^-beta / max_j w_j with beta annealed linearly from beta0 to 1 over ``beta_steps``
interactive episodes.

Inputs are per-sample arrays with one entry per item the sampler can draw (an episode, or an
(episode, step) pair). Entries that produced no demo must be left out by the caller, as in the
reference. If priorities are per episode but the sampler draws steps, pass ``counts`` (the number of
drawable steps of each episode) to ``probabilities``/``importance_weights``: every step of an
episode then carries the episode's priority.

No Lightning, no torch: plain numpy, and a state dict of plain Python types.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .sag import Label

__all__ = ["PIER", "PIERResult", "pier_priorities"]


def pier_priorities(
    uncertainty: Sequence[float],
    label: Sequence[int],
    version: Sequence[int],
    current_version: int | None = None,
    lam: float = 0.5,
    base: float = 10.0,
) -> np.ndarray:
    """PIER priorities p_i (see the module docstring), one per entry.

    ``uncertainty``: raw novice uncertainty when the sample was collected, NaN when there is none
    (offline demos, relabeled demos). ``label``: the :class:`Label` code of the entry (KNOWN_SUCCESS
    for a validated demo, KNOWN_FAILURE for a teacher annotation after a failure, UNKNOWN_* otherwise).
    ``version``: model version (round) that collected the entry. ``current_version`` is the version
    ages are measured from; by default the newest entry's, as in the reference (then the newest samples
    have age 0). Ages are normalised by it, so they lie in [0, 1].
    """
    u = np.asarray(uncertainty, dtype=float)
    r = np.asarray(label, dtype=float)
    k = np.asarray(version, dtype=float)
    if not (u.shape == r.shape == k.shape) or u.ndim != 1:
        raise ValueError(f"uncertainty, label and version must be 1-D of equal length, got {u.shape}, {r.shape}, {k.shape}")
    if base <= 0 or base == 1:
        raise ValueError("base must be positive and != 1")
    if u.size == 0:
        return np.zeros(0)
    u_max = np.nanmax(u) if np.any(np.isfinite(u)) else math.nan
    u_t = u / u_max if (math.isfinite(u_max) and u_max != 0) else u
    k_ref = float(np.max(k)) if current_version is None else float(current_version)
    if k_ref < float(np.max(k)):
        raise ValueError(f"current_version {k_ref} is older than the newest entry {np.max(k)}")
    age = (k_ref - k) / k_ref if k_ref > 0 else np.zeros_like(k)
    r_t = np.where((r == Label.UNKNOWN_OFFLINE) | (r == Label.UNKNOWN_RELABELING), 0.0, r)
    c = lam * u_t + (1.0 - lam) * age
    with np.errstate(invalid="ignore"):
        p = 1.0 - r_t * (np.power(base, 1.0 - c) - 1.0) / (base - 1.0)
    p[np.isnan(p)] = 1.0
    return p


@dataclass(frozen=True)
class PIERResult:
    """Everything the sampler and the loss need: per-entry priority, probability and weight."""

    priorities: np.ndarray
    probs: np.ndarray  # probability of drawing one sample of each entry (sums to 1 over all samples)
    weights: np.ndarray  # importance weight of a sample of each entry (max 1, or mean 1 over the draws)
    beta: float


#: how PIER scales its importance weights (see :class:`PIER`); "max" is the reference's
WEIGHT_NORMALIZATIONS = ("max", "mean")


class PIER:
    """PIER hyperparameters and the three steps priorities -> probabilities -> importance weights.

    Defaults are the reference training config: lam 0.5, base b 10, alpha 1.5, beta0 1.0 (so beta is
    always 1), annealed over 100 interactive episodes, with bias compensation. ``bias_compensation=False``
    (the reference's ``bias_compensation`` flag) keeps the prioritized draws and drops the correction:
    beta is 0, every weight 1, so the loss is the plain batch mean of the prioritized samples.

    ``weight_normalization`` sets the weights' scale, never their ratios: ``"max"`` (the reference and
    prioritized experience replay) divides by the largest weight, so every weight is <= 1; ``"mean"`` divides by
    the weights' mean under the draws, sum_i P_i w_i, so a drawn sample weighs 1 on average (at beta 1 the
    weights are then (N P_i)^-1 themselves). The scale matters with Adam although Adam ignores a constant one:
    under ``"max"`` the scale is set by the rarest sample and moves with every round's priorities; on ACT
    transfer cube (alpha 1.5) it falls from 1 (before the first priorities) to 0.002-0.03 within ten rounds,
    after which Adam's second-moment estimate, still sized by the larger gradients, shrinks every update for
    thousands of steps.
    """

    def __init__(self, lam: float = 0.5, base: float = 10.0, alpha: float = 1.5, beta0: float = 1.0,
                 beta_steps: int = 100, bias_compensation: bool = True, weight_normalization: str = "max") -> None:
        if not 0.0 <= lam <= 1.0:
            raise ValueError("lam must lie in [0, 1]")
        if base <= 0 or base == 1:
            raise ValueError("base must be positive and != 1")
        if alpha < 0 or not 0.0 <= beta0 <= 1.0 or beta_steps < 1:
            raise ValueError("need alpha >= 0, 0 <= beta0 <= 1 and beta_steps >= 1")
        if weight_normalization not in WEIGHT_NORMALIZATIONS:
            raise ValueError(f"weight_normalization must be one of {WEIGHT_NORMALIZATIONS}, "
                             f"got {weight_normalization!r}")
        self.lam = float(lam)
        self.base = float(base)
        self.alpha = float(alpha)
        self.beta0 = float(beta0)
        self.beta_steps = int(beta_steps)
        self.bias_compensation = bool(bias_compensation)
        self.weight_normalization = weight_normalization

    def priorities(self, uncertainty: Sequence[float], label: Sequence[int], version: Sequence[int],
                   current_version: int | None = None) -> np.ndarray:
        """Per-entry priorities; see :func:`pier_priorities` for the inputs."""
        return pier_priorities(uncertainty, label, version, current_version, self.lam, self.base)

    def probabilities(self, priorities: Sequence[float], counts: Sequence[int] | None = None) -> np.ndarray:
        """P(one sample of entry i) = p_i^alpha / sum_j counts_j p_j^alpha (counts default to 1).

        With counts, ``sum(counts * probs) == 1``. All-zero priorities (only certain, recent
        successes) fall back to uniform sampling rather than dividing by zero.
        """
        p = np.asarray(priorities, dtype=float)
        n = self._counts(counts, p.shape[0])
        if np.any(p < 0) or not np.all(np.isfinite(p)):
            raise ValueError("priorities must be finite and non-negative")
        pa = np.power(p, self.alpha)
        total = float(np.dot(n, pa))
        if total <= 0:
            pa, total = np.ones_like(p), float(n.sum())
        return pa / total

    def importance_weights(self, probs: Sequence[float], beta: float,
                           counts: Sequence[int] | None = None) -> np.ndarray:
        """w_i = (N P_i)^-beta / max_j w_j with N the number of drawable samples; 0 where P_i = 0.
        With ``weight_normalization="mean"`` the divisor is sum_j n_j P_j (N P_j)^-beta instead: the mean
        weight of a draw (``probs`` are per sample, ``counts`` samples per entry).

        Entries that can never be drawn get weight 0 (they never reach the loss) and do not define
        the divisor.
        """
        P = np.asarray(probs, dtype=float)
        n = self._counts(counts, P.shape[0])
        N = float(n.sum())
        drawable = (P > 0) & (n > 0)
        w = np.zeros_like(P)
        if not drawable.any():
            return w
        raw = (N * P[drawable]) ** (-beta)
        if self.weight_normalization == "max":
            w[drawable] = raw / (N * float(P[drawable].min())) ** (-beta)
        else:
            w[drawable] = raw / float(np.sum(n[drawable] * P[drawable] * raw))
        return w

    def beta(self, n_interactive: int) -> float:
        """beta = min(beta0 + n (1 - beta0) / beta_steps, 1), n = interactive episodes collected so far;
        0 without bias compensation."""
        if not self.bias_compensation:
            return 0.0
        return float(min(self.beta0 + max(int(n_interactive), 0) * (1.0 - self.beta0) / self.beta_steps, 1.0))

    def compute(self, uncertainty: Sequence[float], label: Sequence[int], version: Sequence[int],
                n_interactive: int = 0, current_version: int | None = None,
                counts: Sequence[int] | None = None) -> PIERResult:
        """Priorities, sampling probabilities and importance weights in one call."""
        pri = self.priorities(uncertainty, label, version, current_version)
        probs = self.probabilities(pri, counts)
        b = self.beta(n_interactive)
        return PIERResult(pri, probs, self.importance_weights(probs, b, counts), b)

    @staticmethod
    def _counts(counts: Sequence[int] | None, n: int) -> np.ndarray:
        if counts is None:
            return np.ones(n)
        c = np.asarray(counts, dtype=float)
        if c.shape != (n,) or np.any(c < 0):
            raise ValueError("counts must be non-negative, one per entry")
        return c

    def state_dict(self) -> dict[str, Any]:
        """Hyperparameters (PIER holds no other state), plain Python types."""
        return {"lam": self.lam, "base": self.base, "alpha": self.alpha, "beta0": self.beta0,
                "beta_steps": self.beta_steps, "bias_compensation": self.bias_compensation,
                "weight_normalization": self.weight_normalization}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__init__(**{key: state[key] for key in ("lam", "base", "alpha", "beta0", "beta_steps")},
                      bias_compensation=state.get("bias_compensation", True),  # older states: the defaults
                      weight_normalization=state.get("weight_normalization", "max"))
