"""Interactive recipes: the DAgger / ActiveDAgger / ASkDAgger comparison, one run per (setting, mode, seed).

An interactive recipe (``Recipe(preset="interactive")``, e.g. ``askdagger_transfer_cube_state``) is a config
whose ``InteractiveAggregation`` callback runs the interactive rounds, and whose ``checkpoint`` group saves
``epoch<NNNN>.ckpt`` every N epochs without a monitor (nothing is selected). :func:`run_interactive` runs one
(mode, seed) of it in ``<work_dir>/<recipe>/<mode>-seed<s>-<timestamp>``:

1. writes ``run_config.yaml``: the shipped config with the callback's ``mode`` and the seeds below filled in
   (the only differences between the modes of one seed; nothing else in the run depends on the mode before
   the first round, so every mode of a seed starts from the same demos, warm-up and weights);
2. fits it (:func:`lit_imit.recipes.fit_run`, the learning recipes' code path): teacher demos, the BC
   warm-up, then the rounds;
3. evaluates the novice afterwards: every saved checkpoint is a point of the curve, with the callback's
   counters as the checkpoint holds them (interactive episodes, annotations, validations, relabels,
   annotated steps) and its success on held-out seeds: the first ``curve_episodes`` test seeds for the
   intermediate points, ``episodes`` (>= 50 for a quoted rate) for the last one, which is also the row's
   success. The test seeds (1000000+) are never used for demos, interactive episodes or selection.
   A run with domain shifts (the callback's ``domain_shifts``) tests each checkpoint in the domain its
   checkpoint records: the env the next interactive episode would have run in. So the point at the switch
   shows the policy trained in the old domain facing the new one, and the later points its recovery; each
   point's ``domain`` says which, and the row's ``domain_shifts`` lists the switches.

One row per run goes to ``results/results.jsonl`` (``mode``, ``seed``, counters, success with its Wilson
interval, ``curve``), also for a failed or stopped run (with the error and the counters ``last.ckpt`` holds);
``--retest RUN_DIR`` evaluates a finished or stopped run's checkpoints again without training.

Seeds: seed ``s`` sets ``seed_everything`` 1000 + s (initial weights, training draws), the DataModule's seed s
(its teacher demos are recorded from env seeds s, s+1, ..., and its sampling draws) and the callback's seed
10000 + 1000 s (interactive episode i runs env seed 10000 + 1000 s + i; the gate's random queries). With
s < 90 and fewer than 1000 interactive episodes, demos, interactive episodes, selection (100000+) and the
held-out test (1000000+) never share an env seed.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from lit_imit.checkpoints import load_checkpoint
from lit_imit.evaluation import policy_env_kwargs
from lit_imit.interactive import MODES
from lit_imit.recipes import (
    REPO_ROOT,
    TEST_SEED,
    Recipe,
    _new_row,
    _obs_from_config,
    _recorded,
    find_run_config,
    fit_run,
    heldout_envs,
    heldout_on,
    load_policy_from_run,
    recipe,
    rollout_settings,
)

log = logging.getLogger(__name__)

__all__ = ["MODE_ORDER", "CurvePoint", "check_mode", "check_seed", "grid", "run_config", "split_overrides",
           "curve_points", "run_interactive", "retest_interactive"]

#: the modes in the order runs, tables and plots use (``MODES``' own: the baselines first)
MODE_ORDER = tuple(MODES)
MAX_SEED = 89  # callback seeds 10000 + 1000 s stay below the selection seeds (100000+)
CALLBACK = "InteractiveAggregation"
RUN_FILE = "interactive.json"  # recipe, mode, seed and overrides of a run directory (what --retest reads)
CALLBACK_OVERRIDE = "--interactive."  # an --override of the callback's init args (split_overrides)
COUNTERS = ("annotations", "validations", "relabels", "annotated_steps", "demos", "decisions", "queries")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: choose from {', '.join(MODE_ORDER)}")
    return mode


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer in 0..{MAX_SEED} (it offsets the env seeds of demos and "
                         f"interactive episodes), got {seed!r}")
    return seed


def grid(modes: Sequence[str], seeds: Sequence[int]) -> list[tuple[str, int]]:
    """Every (mode, seed), seed by seed: a grid stopped part-way has every mode of its first seeds."""
    modes = [check_mode(m) for m in modes]
    return [(mode, check_seed(seed)) for seed in seeds for mode in MODE_ORDER if mode in modes]


def seeds_of(seed: int) -> dict[str, int]:
    """What seed ``s`` sets (see the module docstring)."""
    seed = check_seed(seed)
    return {"seed_everything": 1000 + seed, "data_seed": seed, "episode_seed": 10_000 + 1000 * seed}


def _callback(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``InteractiveAggregation`` entry of a config's callbacks (an error when there is none)."""
    for cb in (config.get("trainer") or {}).get("callbacks") or []:
        if isinstance(cb, dict) and str(cb.get("class_path", "")).endswith(CALLBACK):
            return cb
    raise ValueError(f"the config has no {CALLBACK} callback: it is not an interactive setting")


def split_overrides(overrides: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """``--interactive.KEY=VALUE`` overrides (the callback's init args, VALUE read as YAML) apart from the
    fit's own command-line arguments. The callback sits in a list of callbacks, where the command line cannot
    name it, so a variant of a setting (e.g. ``--interactive.pier_beta0=0``) goes into the run's config."""
    callback_args: dict[str, Any] = {}
    cli: list[str] = []
    for arg in overrides:
        if not arg.startswith(CALLBACK_OVERRIDE):
            cli.append(arg)
            continue
        key, sep, value = arg[len(CALLBACK_OVERRIDE):].partition("=")
        if not sep or not key:
            raise ValueError(f"{arg!r}: write a callback override as {CALLBACK_OVERRIDE}KEY=VALUE")
        if key in ("mode", "seed"):
            raise ValueError(f"{arg!r}: the callback's {key} comes from --{key}, not from an override")
        callback_args[key] = yaml.safe_load(value)
    return callback_args, cli


def run_config(rec: Recipe, mode: str, seed: int, callback_args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The recipe's config for one run: its callback's ``mode``, the seeds of ``seed`` and any
    ``callback_args`` (a variant of the setting; :func:`split_overrides`) filled in."""
    config = yaml.safe_load((REPO_ROOT / rec.config).read_text())
    seeds = seeds_of(seed)
    config["seed_everything"] = seeds["seed_everything"]
    config["data"].setdefault("init_args", {})["seed"] = seeds["data_seed"]
    callback = _callback(config).setdefault("init_args", {})
    callback.update(callback_args or {})
    callback["mode"] = check_mode(mode)
    callback["seed"] = seeds["episode_seed"]
    return config


# ---- the curve: one point per saved checkpoint ----------------------------------------------------------
@dataclass(frozen=True)
class CurvePoint:
    """A checkpoint of an interactive run and the callback's counters in it."""

    path: Path
    episodes: int  # interactive episodes done (the seed episodes of a from-scratch start included)
    train_steps: int
    counts: dict[str, int]
    domain: int = 0  # the domain (of the callback's domain_shifts) the next interactive episode runs in
    domain_env_kwargs: dict[str, Any] = field(default_factory=dict)  # its env arguments over the base ones

    @classmethod
    def read(cls, path: Path) -> "CurvePoint":
        ckpt = load_checkpoint(path)
        state = (ckpt.get("callbacks") or {}).get(CALLBACK)
        if state is None:
            raise ValueError(f"{path} holds no {CALLBACK} state: not a checkpoint of an interactive run")
        domain = state.get("domain") or {"domain": 0, "env_kwargs": {}}  # older checkpoints: one domain
        return cls(path, int(state["episodes_done"]), int(ckpt.get("global_step", 0)),
                   {k: int(v) for k, v in state["counts"].items()}, int(domain["domain"]), dict(domain["env_kwargs"]))


def curve_points(version_dir: Path) -> list[CurvePoint]:
    """The run's checkpoints, one per count of interactive episodes (the latest: for 0, the end of the
    warm-up), in order; ``last.ckpt`` counts when it is further than every ``epoch*`` file."""
    paths = sorted((version_dir / "checkpoints").glob("*.ckpt"), key=lambda p: (p.name.startswith("last"), p.name))
    if not paths:
        raise FileNotFoundError(f"no checkpoint in {version_dir / 'checkpoints'}")
    latest: dict[int, CurvePoint] = {}
    for point in map(CurvePoint.read, paths):
        if point.episodes not in latest or point.train_steps > latest[point.episodes].train_steps:
            latest[point.episodes] = point
    return [latest[e] for e in sorted(latest)]


def _counters(point: CurvePoint) -> dict[str, int]:
    return {"interactive_episodes": point.episodes, **{k: point.counts.get(k, 0) for k in COUNTERS}}


def evaluate_curve(rec: Recipe, run_dir: Path, row: dict[str, Any], episodes: int, curve_episodes: int,
                   test_seed: int) -> None:
    """Held-out success at every point of the run (the last on ``episodes`` seeds, the others on the first
    ``curve_episodes``), each in its checkpoint's domain; fills ``row`` with the curve, the last point's
    counters and success."""
    config_path = find_run_config(run_dir)
    config = yaml.safe_load(config_path.read_text())
    points = curve_points(config_path.parent)
    settings = rollout_settings(config)
    task = settings.get("task") or ((config.get("data") or {}).get("init_args") or {}).get("task")
    row.update(_obs_from_config(config))
    row.update({"curve_episodes": curve_episodes, "curve": [], "checkpoint": str(points[-1].path)})
    shifts = _callback(config).get("init_args", {}).get("domain_shifts")
    if shifts:
        row["domain_shifts"] = shifts
    env_kwargs = None
    start = time.perf_counter()
    with ExitStack() as stack:  # the envs open once per domain (points come in episode order, domains too)
        envs = None
        for k, point in enumerate(points):
            module = load_policy_from_run(config, point.path)
            wanted = {**policy_env_kwargs(module, settings.get("env_kwargs")), **point.domain_env_kwargs}
            if wanted != env_kwargs:
                stack.close()
                env_kwargs = wanted
                n_envs = min(rec.test_n_envs, max(episodes, curve_episodes))
                envs = stack.enter_context(heldout_envs(task, env_kwargs, n_envs, rec.test_workers))
            n = episodes if k == len(points) - 1 else min(curve_episodes, episodes)
            summary = heldout_on(module, envs, n, test_seed, settings.get("max_steps"))
            entry = {**_counters(point), "train_steps": point.train_steps, **_success(summary, n)}
            if shifts:
                entry.update(domain=point.domain, domain_env_kwargs=point.domain_env_kwargs)
            row["curve"].append(entry)
            log.info("[%s %s seed %s] %d interactive episodes, %d annotations: %d/%d%s", rec.name, row.get("mode"),
                     row.get("seed"), point.episodes, entry["annotations"], entry["successes"], n,
                     f" (domain {point.domain})" if shifts else "")
    last = points[-1]
    row.update({**_counters(last), "train_steps": last.train_steps, **_success_row(row["curve"][-1]),
                "env_kwargs": env_kwargs, "test_minutes": round((time.perf_counter() - start) / 60, 2)})


def _success(summary: Mapping[str, float], n: int) -> dict[str, Any]:
    return {"success_rate": summary["success_rate"], "successes": int(summary["successes"]), "episodes": n,
            "ci_low": round(summary["success_ci_low"], 4), "ci_high": round(summary["success_ci_high"], 4)}


def _success_row(point: Mapping[str, Any]) -> dict[str, Any]:
    return {k: point[k] for k in ("success_rate", "successes", "episodes", "ci_low", "ci_high")}


def _counters_so_far(run_dir: Path, row: dict[str, Any]) -> None:
    """A failed or stopped run's row says how far it got: the counters of its ``last.ckpt``, if any."""
    try:
        last = find_run_config(run_dir).parent / "checkpoints" / "last.ckpt"
        point = CurvePoint.read(last)
    except Exception:  # nothing written yet (or unreadable): the row has the error alone
        return
    row.update({**_counters(point), "train_steps": point.train_steps, "checkpoint": str(last)})


# ---- running -----------------------------------------------------------------------------------------
def _interactive_row(rec: Recipe, mode: str, seed: int, run_dir: Path, episodes: int, test_seed: int,
                     command: str) -> dict[str, Any]:
    row = _new_row(rec, run_dir, episodes, test_seed, command)
    row.update({"mode": mode, "seed": seed, **seeds_of(seed), "interactive_episodes": None,
                **{k: None for k in COUNTERS}, "curve": []})
    return row


def run_interactive(
    rec: Recipe,
    mode: str,
    seed: int,
    work_dir: str | Path,
    results_path: str | Path | None,
    episodes: int = 50,
    curve_episodes: int | None = None,
    test_seed: int = TEST_SEED,
    extra_overrides: Sequence[str] = (),
    command: str = "",
    python: str = sys.executable,
) -> dict[str, Any]:
    """One (mode, seed) of an interactive recipe: config -> fit -> the curve on held-out seeds -> a row
    (appended to ``results_path``, also when the run fails or is stopped; then the error re-raises)."""
    if not rec.interactive:
        raise ValueError(f"recipe {rec.name!r} is not an interactive experiment (no mode or seed to run)")
    mode, seed = check_mode(mode), check_seed(seed)
    callback_args, cli_overrides = split_overrides(extra_overrides)
    curve_episodes = rec.curve_episodes if curve_episodes is None else int(curve_episodes)
    if episodes < 1 or curve_episodes < 1:
        raise ValueError(f"need episodes >= 1 and curve_episodes >= 1, got {episodes} and {curve_episodes}")
    run_dir = Path(work_dir).resolve() / rec.name / f"{mode}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=False)
    start = time.perf_counter()
    command = command or f"python scripts/reproduce.py {rec.name} --mode {mode} --seed {seed}"
    row = _interactive_row(rec, mode, seed, run_dir, episodes, test_seed, command)
    row["overrides"] = [*rec.overrides, *extra_overrides]
    row["extra_overrides"] = list(extra_overrides)
    (run_dir / RUN_FILE).write_text(json.dumps({"recipe": rec.name, "mode": mode, "seed": seed,
                                                "extra_overrides": list(extra_overrides)}) + "\n")
    config = run_dir / "run_config.yaml"
    config.write_text(yaml.safe_dump(run_config(rec, mode, seed, callback_args), sort_keys=False))

    def work() -> None:
        try:
            fit_run(rec, run_dir, config, row, start, extra=cli_overrides, python=python)
        except BaseException:
            _counters_so_far(run_dir, row)
            raise
        evaluate_curve(rec, run_dir, row, episodes, curve_episodes, test_seed)

    return _recorded(row, work, start, results_path)


def retest_interactive(run_dir: str | Path, results_path: str | Path | None, episodes: int = 50,
                       test_seed: int = TEST_SEED, curve_episodes: int | None = None,
                       command: str = "") -> dict[str, Any]:
    """Evaluate an interactive run's checkpoints again (nothing retrained): a run whose evaluation was stopped,
    or more held-out episodes per point. Its own row, with ``retest_of``; a failure writes a row too."""
    run_dir = Path(run_dir).resolve()
    if not (run_dir / RUN_FILE).is_file():
        raise FileNotFoundError(f"{run_dir / RUN_FILE} is missing: not the directory of an interactive run")
    about = json.loads((run_dir / RUN_FILE).read_text())
    rec = recipe(about["recipe"])
    curve_episodes = rec.curve_episodes if curve_episodes is None else int(curve_episodes)
    start = time.perf_counter()
    row = _interactive_row(rec, about["mode"], int(about["seed"]), run_dir, episodes, test_seed,
                           command or f"python scripts/reproduce.py --retest {run_dir}")
    row["retest_of"] = str(run_dir)
    row["extra_overrides"] = list(about.get("extra_overrides", []))  # the run's variant, which the retest keeps
    row["overrides"] = [*rec.overrides, *row["extra_overrides"]]
    return _recorded(row, lambda: evaluate_curve(rec, run_dir, row, episodes, curve_episodes, test_seed), start,
                     results_path)
