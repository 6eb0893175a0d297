"""Where a kitchen skill policy loses a sub-task: closed-loop drives from each target demonstration's own reset seed.

    python scripts/skill_probe.py runs/fist_kitchen/TIME                      # policy + skills, 10 demos
    python scripts/skill_probe.py runs/fist_kitchen/TIME --modes handover --subtask "light switch"

The held-out test says how many sub-tasks a FIST policy completes, not why it stops. Each mode here removes one
part of the policy, on the seeds the demonstrations were recorded from (the env is deterministic per seed, so a
replayed demo reproduces its states exactly):

* ``policy``: the run's policy as the test runs it (FIST: nearest demo state -> goal -> p(z | s, goal) -> decoder).
* ``skills``: the skill decoder alone, driven by the demo's own skills (z = the skill encoder's mean on the demo's
  H-step windows, in the demo's time order), closed loop from reset: a perfect high level.
* ``handover``: the demo's actions replayed until the sub-task before ``subtask`` is done plus ``lead`` steps,
  then the demo's own skills as in ``skills``: can the decoder do that one sub-task from the demo's own state?
* ``handover_policy``: the same replay, then the run's policy: can the whole policy do it from there?

Per demo and mode it reports the sub-tasks completed with the step of each, and for ``subtask`` the end effector's
closest pass to the sub-task's site and the smallest distance of its joints from their goal (below 0.3 = done).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import h5py
import mujoco
import numpy as np
import torch
import yaml

from lit_imit.data.episodes import EpisodeStore
from lit_imit.envs import make_env
from lit_imit.envs.kitchen import SUBTASK_SITE, subtask_distance

MODES = ("policy", "skills", "handover", "handover_policy")
#: steps driven past the demo's own length, so a decoder that lags the demo still gets to finish
EXTRA_STEPS = 40


@dataclass
class ProbeResult:
    """One demo driven one way."""

    demo: int
    mode: str
    completed: dict[str, int] = field(default_factory=dict)  # sub-task -> the step it was completed at
    switch_step: int | None = None  # the step the drive took over from the replay (None: the earlier sub-task failed)
    replay_gap: float | None = None  # handover: max |state - demo state| at the switch (0 for a faithful replay)
    closest_site: float | None = None  # metres, after the switch (handover) or over the episode
    closest_goal: float | None = None  # smallest joint distance of ``subtask`` from its goal


def demo_skills(module: Any, states: np.ndarray, actions: np.ndarray) -> torch.Tensor:
    """The skill encoder's mean z (W, nz) on each of the demo's whole H-step windows, in time order."""
    h = module.hparams.horizon
    windows = len(actions) // h
    if windows == 0:
        raise ValueError(f"a demo of {len(actions)} steps has no whole skill window of {h} steps")
    s = torch.stack([torch.from_numpy(states[k * h:(k + 1) * h + 1]) for k in range(windows)])
    a = torch.stack([torch.from_numpy(actions[k * h:(k + 1) * h]) for k in range(windows)]).float()
    with torch.no_grad():
        z, _ = module._encode(module.normalize_state(s), a)
    return z


def _decoded_action(module: Any, state: np.ndarray, z: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        s = module.normalize_state(torch.from_numpy(state)[None])
        action = module.decoder(s, z[None])
    return action.clamp(module.hparams.action_low, module.hparams.action_high)[0].numpy()


def drive(module: Any, env: Any, episode: dict[str, Any], mode: str, subtask: str, lead: int = 10) -> ProbeResult:
    """Drive one demo's seed in ``mode`` (see the module docstring) and measure what happened."""
    if mode not in MODES:
        raise ValueError(f"unknown probe mode {mode!r}; known: {list(MODES)}")
    key, h = module.hparams.state_key, module.hparams.horizon
    states, actions = episode["states"], episode["actions"]
    tasks = list(env.unwrapped.episode_tasks)
    if subtask not in tasks:
        raise ValueError(f"sub-task {subtask!r} is not one of this env's {tasks}")
    before = tasks[tasks.index(subtask) - 1] if tasks.index(subtask) > 0 else None
    result = ProbeResult(demo=episode["id"], mode=mode)
    handover, by_policy = mode.startswith("handover"), mode in ("policy", "handover_policy")
    skills = None if by_policy else demo_skills(module, states, actions)
    obs, _ = env.reset(seed=episode["seed"])
    module.reset()
    u = env.unwrapped
    site = mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_SITE, SUBTASK_SITE[subtask])
    effector = mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_SITE, "end_effector")
    if not handover or before is None:
        result.switch_step = 0
    for t in range(len(actions) + EXTRA_STEPS):
        if handover and result.switch_step is None:
            if before in u.completed and t >= result.completed[before] + lead:
                result.switch_step = t
                result.replay_gap = float(np.abs(obs[key] - states[t]).max()) if t < len(states) else None
            elif t >= len(actions):
                break
        if result.switch_step is None:
            action = actions[t]
        elif by_policy:
            action = module.select_action({key: obs[key][None]})[0].cpu().numpy()
        else:
            action = _decoded_action(module, obs[key], skills[min(t // h, len(skills) - 1)])
        obs, _, terminated, truncated, _ = env.step(action)
        for name in u.completed:
            result.completed.setdefault(name, t)
        if result.switch_step is not None:
            d_site = float(np.linalg.norm(u.data.site_xpos[effector] - u.data.site_xpos[site]))
            d_goal = subtask_distance(u.data.qpos, subtask)
            result.closest_site = d_site if result.closest_site is None else min(result.closest_site, d_site)
            result.closest_goal = d_goal if result.closest_goal is None else min(result.closest_goal, d_goal)
        if terminated or truncated:
            break
    return result


def read_demos(store_dir: Path, key: str, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` demos of a store: id, reset seed, states under ``key`` and actions."""
    store = EpisodeStore(store_dir, create=False)
    demos = []
    for eid in store.ids()[:limit]:
        with h5py.File(store.path(eid)) as f:
            if f"observations/{key}" not in f:
                raise KeyError(f"{store.path(eid)} has no observations/{key}")
            demos.append({"id": eid, "seed": int(f.attrs["seed"]), "states": f[f"observations/{key}"][()],
                          "actions": f["action"][()]})
    if not demos:
        raise FileNotFoundError(f"no demonstrations in {store_dir}")
    return demos


def probe(module: Any, task: str, demos: Sequence[dict[str, Any]], modes: Sequence[str], subtask: str,
          lead: int = 10) -> list[ProbeResult]:
    """Every demo in every mode, on ``task``'s env (its own episode cap)."""
    env = make_env(task)
    try:
        return [drive(module, env, demo, mode, subtask, lead) for demo in demos for mode in modes]
    finally:
        env.close()


def summary(results: Sequence[ProbeResult], tasks: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per mode: how many demos completed each sub-task, and the median closest passes."""
    out: dict[str, dict[str, Any]] = {}
    for mode in dict.fromkeys(r.mode for r in results):
        rows = [r for r in results if r.mode == mode]
        site = [r.closest_site for r in rows if r.closest_site is not None]
        goal = [r.closest_goal for r in rows if r.closest_goal is not None]
        out[mode] = {"demos": len(rows), **{name: sum(name in r.completed for r in rows) for name in tasks},
                     "median_closest_site": float(np.median(site)) if site else None,
                     "median_closest_goal": float(np.median(goal)) if goal else None}
    return out


def load_run(run_dir: Path, checkpoint: Path | None = None) -> tuple[Any, dict[str, Any]]:
    """The policy a recipe run chose (or ``checkpoint``) and the run's fit config."""
    from lit_imit.recipes import find_run_config, load_policy_from_run, select_checkpoint

    config_path = find_run_config(run_dir)
    config = yaml.safe_load(config_path.read_text())
    ckpt = checkpoint or select_checkpoint(config_path.parent)
    module = load_policy_from_run(config, ckpt).cpu().eval()
    return module, config


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a fist_kitchen run: runs/fist_kitchen/TIME")
    parser.add_argument("--modes", default="policy,skills", help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--subtask", default="top burner", help="the sub-task measured (and handed over to)")
    parser.add_argument("--lead", type=int, default=10, help="handover: steps replayed after the earlier sub-task")
    parser.add_argument("--demos", type=int, default=10)
    parser.add_argument("--checkpoint", type=Path, help="probe this checkpoint instead of the run's choice")
    parser.add_argument("--json", type=Path, help="also write every result here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    module, config = load_run(args.run_dir, args.checkpoint)
    data = config["data"]["init_args"]
    if not data.get("demo_dir"):
        raise ValueError(f"{args.run_dir}'s config names no demo_dir: probe a run that fine-tunes on demos")
    task = data["demo_task"]
    demos = read_demos(args.run_dir / data["demo_dir"], module.hparams.state_key, args.demos)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    results = probe(module, task, demos, modes, args.subtask, args.lead)
    for r in results:
        where = "" if r.closest_site is None else f"  {args.subtask}: site {r.closest_site:.3f} m, goal {r.closest_goal:.3f}"
        switch = f"  switch {r.switch_step}" if r.mode.startswith("handover") else ""
        print(f"demo {r.demo:3d} {r.mode:9s} {r.completed}{switch}{where}")
    env = make_env(task)
    tasks = list(env.unwrapped.episode_tasks)
    env.close()
    report = summary(results, tasks)
    for mode, row in report.items():
        print(mode, row)
    if args.json:
        args.json.write_text(json.dumps({"results": [asdict(r) for r in results], "summary": report}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
