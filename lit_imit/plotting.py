"""Plots of interactive runs (DAgger / ASkDAgger) for ``scripts/plot_interactive.py``: from their TensorBoard
logs, success against demonstrations collected, SAG's gating rates, and the kinds of demonstrations
(annotations, validations, relabels); from their results rows (``curve``), the comparison of the modes over
seeds (:func:`plot_mode_comparison`). Matplotlib draws off-screen (Agg).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["Series", "against", "load_scalars", "mode_curves", "plot_demo_types", "plot_gating", "plot_mode_comparison",
           "plot_success", "run_label"]

Series = tuple[np.ndarray, np.ndarray]  # (steps, values)

SUCCESS_TAGS = {
    "interactive/system_success": "system (decisions)",
    "interactive/novice_success": "novice (decisions)",
    "interactive/episode_success": "interactive episodes",
    "rollout/success_rate": "novice rollouts",
}
DEMO_TAGS = {"interactive/n_annotations": "teacher annotations", "interactive/n_validations": "validated",
             "interactive/n_relabels": "relabeled"}


def load_scalars(logdir: str | Path) -> dict[str, Series]:
    """Every scalar tag of every event file below ``logdir``, merged by step (the newest file wins)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(Path(logdir).rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no TensorBoard event files below {logdir}")
    merged: dict[str, dict[int, float]] = {}
    for path in files:
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            points = merged.setdefault(tag, {})
            for event in acc.Scalars(tag):
                points[int(event.step)] = float(event.value)
    out = {}
    for tag, points in merged.items():
        steps = sorted(points)
        out[tag] = (np.array(steps), np.array([points[s] for s in steps]))
    return out


def against(series: Series, x_series: Series) -> Series:
    """``series`` re-indexed by the value ``x_series`` had at (or last before) each of its steps.

    Interactive scalars are logged at the same step; rollout metrics may come at other epochs, which then
    take the newest count logged before them. Points before the first x value are dropped.
    """
    steps, values = series
    x_steps, x_values = x_series
    if len(x_steps) == 0 or len(steps) == 0:
        return np.array([]), np.array([])
    where = np.searchsorted(x_steps, steps, side="right") - 1
    keep = where >= 0
    return x_values[where[keep]], values[keep]


def run_label(path: str, labels: Sequence[str] | None, i: int) -> str:
    if labels and i < len(labels):
        return labels[i]
    p = Path(path).resolve()
    return p.name if not p.name.startswith("version_") else f"{p.parent.name}/{p.name}"


def plot_success(runs: dict[str, dict[str, Series]], out: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, (ax_s, ax_q) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    styles = ["-", "--", ":", "-."]
    for color, (label, scalars) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4, runs.items()):
        x = scalars.get("interactive/n_demos")
        if x is None:
            continue
        for style, (tag, name) in zip(styles, SUCCESS_TAGS.items()):
            if tag in scalars:
                xs, ys = against(scalars[tag], x)
                ax_s.plot(xs, ys, style, color=color, label=f"{label}: {name}")
        if "interactive/target_success" in scalars:  # success mode aims at the system success rate
            target = float(scalars["interactive/target_success"][1][-1])
            ax_s.axhline(target, color=color, ls="--", lw=1, label=f"{label}: target system success {target:g}")
        if "interactive/query_rate" in scalars:
            xs, ys = against(scalars["interactive/query_rate"], x)
            ax_q.plot(xs, ys, "-", color=color, label=label)
    ax_s.set_ylabel("success rate")
    ax_s.set_ylim(-0.02, 1.02)
    ax_s.legend(fontsize=7)
    ax_q.set_ylabel("query rate (last decisions)")
    ax_q.set_ylim(-0.02, 1.02)
    ax_q.set_xlabel("demonstrations collected")
    ax_q.legend(fontsize=7)
    return _save(fig, out / "success_vs_demos.png")


def plot_gating(runs: dict[str, dict[str, Series]], out: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4
    for ax, metric in zip(axes, ("sensitivity", "specificity")):
        for color, (label, scalars) in zip(colors, runs.items()):
            x = scalars.get("interactive/n_episodes")
            tag = f"interactive/{metric}"
            if x is None or tag not in scalars:
                continue
            xs, ys = against(scalars[tag], x)
            ax.plot(xs, ys, "-", color=color, label=label)
            target_tag = f"interactive/target_{metric}"  # logged for the rate the run's SAG mode aims at
            if target_tag in scalars:
                target = float(scalars[target_tag][1][-1])
                ax.axhline(target, color=color, ls="--", lw=1, label=f"{label}: target {target:g}")
        ax.set_title(metric)
        ax.set_xlabel("interactive episodes")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
    return _save(fig, out / "gating.png")


def plot_demo_types(runs: dict[str, dict[str, Series]], out: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, (ax_c, ax_b) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = dict(zip(DEMO_TAGS, ["-", "--", ":"]))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4
    finals: dict[str, list[float]] = {}
    for color, (label, scalars) in zip(colors, runs.items()):
        x = scalars.get("interactive/n_episodes")
        finals[label] = []
        for tag, name in DEMO_TAGS.items():
            if tag not in scalars:
                finals[label].append(0.0)
                continue
            finals[label].append(float(scalars[tag][1][-1]))
            if x is not None:
                xs, ys = against(scalars[tag], x)
                ax_c.plot(xs, ys, styles[tag], color=color, label=f"{label}: {name}")
    ax_c.set_xlabel("interactive episodes")
    ax_c.set_ylabel("demos (cumulative)")
    ax_c.legend(fontsize=7)
    bottom = np.zeros(len(finals))
    names = list(finals)
    for j, name in enumerate(DEMO_TAGS.values()):
        heights = np.array([finals[run][j] for run in names])
        ax_b.bar(names, heights, bottom=bottom, label=name)
        bottom += heights
    ax_b.set_ylabel("demos at the end of the run")
    ax_b.legend(fontsize=7)
    ax_b.tick_params(axis="x", labelrotation=20)
    return _save(fig, out / "demo_types.png")


def mode_curves(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
    """Per mode, the seeds' curves aligned on their evaluation points (interactive episodes): mean, min and max
    of the annotations and of the held-out success over the seeds that reached each point (``n``)."""
    from lit_imit.results import mode_rank

    by_mode: dict[str, list[Mapping[str, Any]]] = {}
    for r in runs:
        by_mode.setdefault(r["mode"], []).append(r)
    out = {}
    for mode in sorted(by_mode, key=mode_rank):
        points: dict[int, list[Mapping[str, Any]]] = {}
        for r in by_mode[mode]:
            for p in r["curve"]:
                points.setdefault(int(p["interactive_episodes"]), []).append(p)
        episodes = sorted(points)
        curves: dict[str, np.ndarray] = {"episodes": np.array(episodes),
                                         "n": np.array([len(points[e]) for e in episodes])}
        for key in ("annotations", "success_rate"):
            values = [np.array([float(p[key]) for p in points[e]]) for e in episodes]
            curves[key] = np.array([v.mean() for v in values])
            curves[f"{key}_min"] = np.array([v.min() for v in values])
            curves[f"{key}_max"] = np.array([v.max() for v in values])
        out[mode] = curves
    return out


def plot_mode_comparison(runs: Sequence[Mapping[str, Any]], out: Path, name: str, level: float | None = None) -> Path:
    """``<out>/interactive_<name>.png``: held-out success against annotations (one line per mode through the
    seed means at each evaluation point, success min-max over seeds shaded, annotation min-max as bars), success
    against interactive episodes, and annotations against interactive episodes. Runs with domain shifts get a
    dotted line at each switch on the episode axes (from the point there on, success is in the new domain)."""
    import matplotlib.pyplot as plt

    curves = mode_curves(runs)
    fig, (ax_a, ax_e, ax_n) = plt.subplots(1, 3, figsize=(16, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4
    for color, (mode, c) in zip(colors, curves.items()):
        seeds = sorted({r["seed"] for r in runs if r["mode"] == mode})
        label = f"{mode} ({len(seeds)} seed{'s' if len(seeds) != 1 else ''})"
        ax_a.plot(c["annotations"], c["success_rate"], "o-", ms=3, color=color, label=label)
        ax_a.fill_between(c["annotations"], c["success_rate_min"], c["success_rate_max"], color=color, alpha=0.15)
        ax_a.errorbar(c["annotations"], c["success_rate"], fmt="none", ecolor=color, alpha=0.4,
                      xerr=[c["annotations"] - c["annotations_min"], c["annotations_max"] - c["annotations"]])
        ax_e.plot(c["episodes"], c["success_rate"], "o-", ms=3, color=color, label=label)
        ax_e.fill_between(c["episodes"], c["success_rate_min"], c["success_rate_max"], color=color, alpha=0.15)
        ax_n.plot(c["episodes"], c["annotations"], "-", color=color, label=label)
        ax_n.fill_between(c["episodes"], c["annotations_min"], c["annotations_max"], color=color, alpha=0.15)
    for ax in (ax_a, ax_e):
        ax.set_ylabel("held-out success (novice)")
        ax.set_ylim(-0.02, 1.02)
        if level is not None:
            ax.axhline(level, color="grey", ls="--", lw=1, label=f"level {level:.2f}")
    for after in sorted({s["after_episodes"] for r in runs for s in r.get("domain_shifts") or []}):
        for ax in (ax_e, ax_n):
            ax.axvline(after, color="black", ls=":", lw=1, label=f"domain shift at {after}" if ax is ax_e else None)
    ax_a.set_xlabel("teacher annotations")
    ax_e.set_xlabel("interactive episodes")
    ax_n.set_xlabel("interactive episodes")
    ax_n.set_ylabel("teacher annotations (cumulative)")
    ax_a.legend(fontsize=7)
    if any(r.get("domain_shifts") for r in runs):
        ax_e.legend(fontsize=7)
    fig.suptitle(f"{name}: mean over seeds, shaded min-max", fontsize=10)
    return _save(fig, out / f"interactive_{name}.png")


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
