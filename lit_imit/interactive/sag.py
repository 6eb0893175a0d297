"""S-Aware Gating (SAG): when should the novice ask the teacher?

SAG (ASkDAgger, Luijkx et al., TMLR 2025) turns a desired *sensitivity* (fraction of novice failures
that are caught by a query), *specificity* (fraction of novice successes that are left alone) or
*system success rate* into an uncertainty threshold ``gamma``.  The teacher is queried when
``u >= gamma`` or, with probability ``p_rand``, at random.  The threshold is re-estimated from the
history of (uncertainty ``u``, label ``r``, model version ``k``) entries:

1. a window over model versions grows back from the current version until it holds ``n_min`` known
   labels of the relevant kind (failures in sensitivity/success mode, successes in specificity mode)
   and at least one of the other kind; if all data is not enough, every decision is queried;
2. the drift of the uncertainty scale across model versions is removed with a linear fit ``u ~ k``;
3. labels of unqueried decisions are imputed ``n_rep`` times from a logistic fit P(failure | u);
4. each imputation gives a threshold, read off the operating curve at the target (corrected for the
   queries that ``p_rand`` adds); the median is used.

Everything here is plain numpy; the gate's state (history + RNG) is a dict of plain Python types so a
checkpoint restores it bit-exactly.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = [
    "Label",
    "Decision",
    "SAG",
    "sag_threshold",
    "operating_threshold",
    "fit_logistic",
    "gating_metrics",
    "MODES",
]

MODES = ("sensitivity", "specificity", "success")


class Label(enum.IntEnum):
    """Label codes of history entries, identical to the reference implementation's integers.

    Known labels come from a teacher query (the novice's plan judged valid or invalid). The unknown
    codes differ only in where the entry came from, which matters to SAG (only online entries, codes
    -1/0/+1, enter the gating window) and to PIER (all unknowns get priority 1).
    """

    KNOWN_SUCCESS = 1
    UNKNOWN = 0
    UNKNOWN_ONLINE = 0  # alias of UNKNOWN: a novice decision that was not queried
    KNOWN_FAILURE = -1
    UNKNOWN_OFFLINE = -2  # an offline (BC pre-training) sample
    UNKNOWN_RELABELING = -3  # a relabeled demo entry (carries no uncertainty)


ONLINE_CODES = (Label.KNOWN_SUCCESS, Label.UNKNOWN, Label.KNOWN_FAILURE)


@dataclass(frozen=True)
class Decision:
    """Outcome of one gating decision.

    ``active`` is the threshold test ``u >= threshold``; ``random`` is the independent ``p_rand`` draw.
    FIER needs ``random_only`` because a random-only query on a failure yields a label (and maybe a
    relabeled demo) but no teacher annotation.
    """

    query: bool
    active: bool
    random: bool
    uncertainty: float
    threshold: float
    version: int

    @property
    def random_only(self) -> bool:
        return self.random and not self.active


# ----------------------------------------------------------------------------------------------
# pure building blocks
# ----------------------------------------------------------------------------------------------


def fit_logistic(x: np.ndarray, y: np.ndarray, max_iter: int = 50, tol: float = 1e-10) -> tuple[float, float]:
    """Unpenalised 1-D logistic regression P(y=1|x) = sigmoid(a + b*x) by Newton's method.

    The reference uses sklearn's unpenalised LogisticRegression; sklearn is not a dependency, and a
    two-parameter Newton iteration is exact and fast. ``x`` is standardised internally for
    conditioning; on (quasi-)separable data the MLE diverges, so the iteration count caps the slope,
    as the iteration limit does in sklearn. Returns (intercept, slope) on the original scale.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    mu, sd = float(x.mean()), float(x.std())
    sd = sd if sd > 0 else 1.0
    z = (x - mu) / sd
    X = np.stack([np.ones_like(z), z], axis=1)
    w = np.zeros(2)
    for _ in range(max_iter):
        p = _sigmoid(X @ w)
        grad = X.T @ (y - p)
        hess = (X * (p * (1 - p))[:, None]).T @ X + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        if not np.all(np.isfinite(step)):
            break
        # trust region: on separable data the Newton step explodes; a capped step keeps w finite
        step *= min(1.0, 10.0 / max(float(np.max(np.abs(step))), 1e-300))
        w = w + step
        if float(np.max(np.abs(step))) < tol:
            break
    slope = w[1] / sd
    return float(w[0] - slope * mu), float(slope)


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(t, dtype=float)))


def _operating_points(scores_sorted_desc: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TP and FP counts at every distinct threshold, for one or several label draws at once.

    ``scores_sorted_desc`` (n,) must be sorted in decreasing order and ``positives`` (reps, n) holds
    the failure indicators in that order. A threshold ``t`` queries every score ``>= t`` (the gate's
    convention), so the counts at a distinct value are the cumulative counts at the end of its group.
    Returns (thresholds (m,), tp (reps, m), fp (reps, m)).
    """
    group_end = np.flatnonzero(np.r_[scores_sorted_desc[1:] != scores_sorted_desc[:-1], True])
    tp = np.cumsum(positives, axis=1)[:, group_end]
    fp = (group_end + 1)[None, :] - tp
    return scores_sorted_desc[group_end], tp, fp


def operating_threshold(
    thresholds: np.ndarray,
    tp: np.ndarray,
    fp: np.ndarray,
    target: float,
    p_rand: float,
    mode: str,
) -> float:
    """Threshold at which the *effective* rate of ``mode`` equals ``target`` (linear interpolation).

    ``thresholds`` are the distinct scores in decreasing order with the TP/FP counts of ``u >= t``.
    Effective rates include the random queries: sensitivity TPR + p(1 - TPR); specificity (1 - p)TNR;
    system success s + p(1 - s) with s = 1 - FN/N (unqueried failures fail the system).
    The point "threshold = +inf" (nothing queried actively) is returned when random queries alone
    meet the target (sensitivity/success) or when the target cannot be met (specificity above 1 - p).
    Ties on the curve (several thresholds with the same rate) are resolved by ``np.interp`` exactly as
    in the reference. Two deliberate differences: a target between the "+inf" point and the highest
    score gives the highest score instead of NaN (which the reference turned into "query everything");
    and the success curve uses the same "u >= t is queried" convention as the ROC, whereas the
    reference's success curve pairs each threshold with the items at or below it (one item off).
    """
    P = float(tp[-1] if tp.size else 0)
    Nn = float(fp[-1] if fp.size else 0)
    N = P + Nn
    if P == 0 or Nn == 0:
        raise ValueError("the operating curve needs at least one failure and one success")
    if mode == "specificity":
        tnr = 1.0 - fp / Nn
        eff = (1.0 - p_rand) * tnr  # decreasing along decreasing thresholds
        if target > eff[0]:
            return math.inf
        return float(np.interp(target, eff[::-1], thresholds[::-1]))
    if mode == "sensitivity":
        rate = tp / P
        rate_inf = 0.0
    elif mode == "success":
        rate = 1.0 - (P - tp) / N
        rate_inf = 1.0 - P / N
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    eff = rate + p_rand * (1.0 - rate)
    if target <= rate_inf + p_rand * (1.0 - rate_inf):
        return math.inf
    return float(np.interp(target, eff, thresholds))


def _select_window(r: np.ndarray, k: np.ndarray, n_min: int, mode: str) -> np.ndarray | None:
    """Boolean mask of the online entries of the smallest version window with enough labels.

    The window holds online entries with ``k >= k_last - w`` and grows (w = 0, 1, ...) until it has
    ``n_min`` relevant known labels and one of the opposite kind. Returns None when even all online
    entries are not enough. (The reference stops once the window holds fewer entries than ``w``; that
    equals "all data used" whenever every version has at least one entry, and stays correct here when
    some versions have none.) Versions without entries do not change the window, so only the
    distinct versions present are tried, newest first, with cumulative label counts.
    """
    online = r > Label.UNKNOWN_OFFLINE
    if not online.any():
        return None
    relevant = int(Label.KNOWN_SUCCESS if mode == "specificity" else Label.KNOWN_FAILURE)
    k_on, r_on = k[online], r[online]
    versions, inverse = np.unique(k_on, return_inverse=True)
    n_rel = np.bincount(inverse, weights=(r_on == relevant), minlength=versions.size)[::-1].cumsum()
    n_opp = np.bincount(inverse, weights=(r_on == -relevant), minlength=versions.size)[::-1].cumsum()
    ok = np.flatnonzero((n_rel >= n_min) & (n_opp >= 1))
    if ok.size == 0:
        return None
    start = versions[::-1][ok[0]]
    mask = online.copy()
    mask[online] = k_on >= start
    return mask


def _detrend(u: np.ndarray, k: np.ndarray, k_ref: float) -> np.ndarray:
    """Remove the linear drift of ``u`` over model versions, expressing every u at version ``k_ref``.

    u' = u - f(k) + f(k_ref) with f the least-squares line u ~ k; a window with one version has no
    drift to remove.
    """
    kc = k - k.mean()
    var = float(np.dot(kc, kc))
    if var == 0.0:
        return u.copy()
    slope = float(np.dot(kc, u - u.mean())) / var
    return u + slope * (k_ref - k)


def sag_threshold(
    u: Sequence[float],
    r: Sequence[int],
    k: Sequence[int],
    target: float = 0.9,
    p_rand: float = 0.0,
    mode: str = "sensitivity",
    n_min: int = 1,
    n_rep: int = 10,
    u_normalization: bool = True,
    impute: bool = True,
    rng: np.random.Generator | None = None,
) -> float:
    """The SAG threshold gamma for histories ``u, r, k`` (Luijkx et al., TMLR 2025), -inf = query everything.

    The last online entry defines the current model version (pass the pending decision as an UNKNOWN
    entry, as the reference does). Offline and relabeling entries are ignored. ``rng`` drives the
    imputation draws.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    u_arr = np.asarray(u, dtype=float)
    r_arr = np.asarray(r, dtype=int)
    k_arr = np.asarray(k, dtype=int)
    mask = _select_window(r_arr, k_arr, n_min, mode)
    if mask is None:
        return -math.inf
    u_w, r_w, k_w = u_arr[mask], r_arr[mask], k_arr[mask]
    if u_normalization:
        u_w = _detrend(u_w, k_w.astype(float), float(k_w[-1]))
    known = r_w != Label.UNKNOWN
    fail_known = (r_w[known] == Label.KNOWN_FAILURE).astype(float)

    order = np.argsort(-u_w, kind="stable")
    scores = u_w[order]
    if impute and not known.all():
        rng = rng if rng is not None else np.random.default_rng()
        a, b = fit_logistic(u_w[known], fail_known)
        unknown = ~known
        p_fail = _sigmoid(a + b * u_w[unknown])
        draws = rng.random((n_rep, p_fail.shape[0])) < p_fail[None, :]
        labels = np.empty((n_rep, u_w.shape[0]))
        labels[:, known] = fail_known[None, :]
        labels[:, unknown] = draws
        thresholds, tp, fp = _operating_points(scores, labels[:, order])
        gammas = [operating_threshold(thresholds, tp[i], fp[i], target, p_rand, mode) for i in range(n_rep)]
        gamma = float(np.median(gammas))
    else:
        kn_order = order[known[order]]
        labels = (r_w[kn_order] == Label.KNOWN_FAILURE).astype(float)[None, :]
        thresholds, tp, fp = _operating_points(u_w[kn_order], labels)
        gamma = operating_threshold(thresholds, tp[0], fp[0], target, p_rand, mode)
    return -math.inf if math.isnan(gamma) else gamma


def gating_metrics(failed: Iterable[bool], queried: Iterable[bool], window: int | None = 50) -> dict[str, float]:
    """Sensitivity, specificity, query rate and system success of a gate over its recent decisions.

    ``failed`` says whether the novice plan would fail (known in simulation by foresight, privileged
    information) and ``queried`` whether the teacher was asked. Like the reference logging, sensitivity
    uses the last ``window`` failures, specificity the last ``window`` successes, and query rate and
    system success (a queried failure is repaired by the teacher) the last ``window`` decisions.
    NaN where undefined.
    """
    f = np.asarray(list(failed), dtype=bool)
    q = np.asarray(list(queried), dtype=bool)
    if f.shape != q.shape:
        raise ValueError("failed and queried must have the same length")
    w = f.shape[0] if window is None else window
    fail_idx = np.flatnonzero(f)[-w:] if w > 0 else np.array([], dtype=int)
    succ_idx = np.flatnonzero(~f)[-w:] if w > 0 else np.array([], dtype=int)
    recent = slice(max(f.shape[0] - w, 0), None)
    nan = float("nan")
    return {
        "sensitivity": float(q[fail_idx].mean()) if fail_idx.size else nan,
        "specificity": float((~q[succ_idx]).mean()) if succ_idx.size else nan,
        "query_rate": float(q[recent].mean()) if q[recent].size else nan,
        "system_success": float((~f[recent] | q[recent]).mean()) if f[recent].size else nan,
        "novice_success": float((~f[recent]).mean()) if f[recent].size else nan,
    }


# ----------------------------------------------------------------------------------------------
# the stateful gate
# ----------------------------------------------------------------------------------------------


class SAG:
    """Stateful S-Aware gate: keeps the (u, r, k) history and an RNG, decides, records labels.

    Typical loop (one decision point)::

        d = gate.decide(u, version=k)             # threshold from history + this pending entry
        if d.query: label = Label.KNOWN_FAILURE if invalid else Label.KNOWN_SUCCESS
        else:       label = Label.UNKNOWN
        gate.record(u, label, version=k)

    ``decide`` does not modify the history (only the RNG advances); ``record`` appends. Relabeled demos
    and offline samples may be recorded too (``UNKNOWN_RELABELING``/``UNKNOWN_OFFLINE``, u = NaN): they
    do not enter the gating window, but let the same history feed PIER (after dropping entries
    without a demo, as the reference does).
    For vectorised rollouts, ``decide_batch`` uses one threshold for a batch of simultaneous decisions.

    Keep ``p_rand > 0`` (the reference trains with 0.2): random queries label low-uncertainty
    decisions too. With ``p_rand = 0`` specificity mode still tracks its target, but sensitivity and
    success modes drift below theirs (by up to 0.08 and 0.24 on the synthetic streams of
    tests/test_sag.py), because the logistic imputation must extrapolate from high-u labels only.
    """

    def __init__(
        self,
        mode: str = "sensitivity",
        target: float = 0.9,
        p_rand: float = 0.2,
        n_min: int = 15,
        n_rep: int = 10,
        u_normalization: bool = True,
        impute: bool = True,
        seed: int | None = 0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not 0.0 <= target <= 1.0 or not 0.0 <= p_rand <= 1.0:
            raise ValueError("target and p_rand must lie in [0, 1]")
        if n_min < 1 or n_rep < 1:
            raise ValueError("n_min and n_rep must be >= 1")
        self.mode = mode
        self.target = float(target)
        self.p_rand = float(p_rand)
        self.n_min = int(n_min)
        self.n_rep = int(n_rep)
        self.u_normalization = bool(u_normalization)
        self.impute = bool(impute)
        self._rng = np.random.default_rng(seed)
        self.u: list[float] = []
        self.r: list[int] = []
        self.k: list[int] = []
        self.last_decision: Decision | None = None

    # -- history -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.u)

    @property
    def version(self) -> int:
        """Model version of the newest entry (0 when empty): the default for pending decisions."""
        return self.k[-1] if self.k else 0

    def record(self, uncertainty: float, label: Label | int, version: int | None = None) -> None:
        """Append one history entry. Online labels need a finite uncertainty; others may be NaN."""
        lab = Label(int(label))
        v = self.version if version is None else int(version)
        u = float(uncertainty)
        if lab in ONLINE_CODES and not math.isfinite(u):
            raise ValueError(f"an online entry ({lab.name}) needs a finite uncertainty, got {u}")
        if self.k and v < self.k[-1]:
            raise ValueError(f"versions must not decrease: got {v} after {self.k[-1]}")
        self.u.append(u)
        self.r.append(int(lab))
        self.k.append(v)

    def fork(self, seed: Any) -> "SAG":
        """A gate with this one's settings and history and an RNG of its own (``seed``).

        Parallel episodes of one round each gate with a fork, extended by their own decisions; the shared
        gate then records everyone's decisions in episode order (``callbacks.interactive``).
        """
        gate = SAG(self.mode, self.target, self.p_rand, self.n_min, self.n_rep, self.u_normalization,
                   self.impute, seed=seed)
        gate.u, gate.r, gate.k = list(self.u), list(self.r), list(self.k)
        return gate

    # -- gating ------------------------------------------------------------------------------
    def threshold(self, pending: Sequence[float] | float | None = None, version: int | None = None) -> float:
        """Current gamma; ``pending`` uncertainties join the window as unknown entries at ``version``.

        Returns -inf while there are not enough labels (query everything).
        """
        pend = [] if pending is None else list(np.atleast_1d(np.asarray(pending, dtype=float)))
        v = self.version if version is None else int(version)
        if v < self.version:
            raise ValueError(f"a pending decision cannot be older than the history ({v} < {self.version})")
        if not pend:
            return sag_threshold(self.u, self.r, self.k, **self._kwargs())
        return sag_threshold(
            self.u + [float(x) for x in pend],
            self.r + [int(Label.UNKNOWN)] * len(pend),
            self.k + [v] * len(pend),
            **self._kwargs(),
        )

    def decide(self, uncertainty: float, version: int | None = None) -> Decision:
        """Gate one decision: active if ``u >= gamma``, random with probability ``p_rand``."""
        return self.decide_batch([uncertainty], version)[0]

    def decide_batch(self, uncertainties: Sequence[float], version: int | None = None) -> list[Decision]:
        """Gate simultaneous decisions (vectorised rollouts) with one threshold computed for all."""
        us = [float(x) for x in np.atleast_1d(np.asarray(uncertainties, dtype=float))]
        if not all(math.isfinite(x) for x in us):
            raise ValueError("uncertainties must be finite")
        v = self.version if version is None else int(version)
        gamma = self.threshold(us, v)
        rand = self._rng.random(len(us)) < self.p_rand
        out = [
            Decision(query=bool(x >= gamma or rd), active=bool(x >= gamma), random=bool(rd),
                     uncertainty=x, threshold=gamma, version=v)
            for x, rd in zip(us, rand)
        ]
        if out:
            self.last_decision = out[-1]
        return out

    def _kwargs(self) -> dict[str, Any]:
        return dict(target=self.target, p_rand=self.p_rand, mode=self.mode, n_min=self.n_min,
                    n_rep=self.n_rep, u_normalization=self.u_normalization, impute=self.impute, rng=self._rng)

    # -- persistence -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Config, history and RNG state as plain Python types (loads with weights_only=True)."""
        ld = self.last_decision
        return {
            "mode": self.mode,
            "target": self.target,
            "p_rand": self.p_rand,
            "n_min": self.n_min,
            "n_rep": self.n_rep,
            "u_normalization": self.u_normalization,
            "impute": self.impute,
            "u": [float(x) for x in self.u],
            "r": [int(x) for x in self.r],
            "k": [int(x) for x in self.k],
            "rng": _plain(self._rng.bit_generator.state),
            "last_decision": None if ld is None else {
                "query": ld.query, "active": ld.active, "random": ld.random,
                "uncertainty": ld.uncertainty, "threshold": ld.threshold, "version": ld.version},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore config, history and RNG so the gate continues exactly where it stopped."""
        self.mode = str(state["mode"])
        self.target = float(state["target"])
        self.p_rand = float(state["p_rand"])
        self.n_min = int(state["n_min"])
        self.n_rep = int(state["n_rep"])
        self.u_normalization = bool(state["u_normalization"])
        self.impute = bool(state["impute"])
        self.u = [float(x) for x in state["u"]]
        self.r = [int(x) for x in state["r"]]
        self.k = [int(x) for x in state["k"]]
        rng_state = state["rng"]
        self._rng = np.random.Generator(getattr(np.random, rng_state["bit_generator"])())
        self._rng.bit_generator.state = rng_state
        ld = state.get("last_decision")
        self.last_decision = None if ld is None else Decision(**ld)


def _plain(obj: Any) -> Any:
    """Deep-convert numpy scalars/containers to plain Python types for weights-only checkpoints."""
    if isinstance(obj, dict):
        return {str(key): _plain(val) for key, val in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(x) for x in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
