"""Oracle sweeps: success rate of the scripted oracle and env throughput, per task.

``python -m lit_imit.envs.ravens.evaluate --episodes 20`` prints one JSON line per task (success rate over
seeds 0..N-1, mean score, pick-places per second of wall time including rendering).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from lit_imit.envs.ravens.registry import RAVENS_TASKS
from lit_imit.envs.registry import make_env, make_teacher


def oracle_sweep(task: str, seeds, **env_kwargs) -> dict:
    """Run the oracle for one episode per seed; report success, score and env steps per second."""
    env = make_env(task, **env_kwargs)
    teacher = make_teacher(task, env)
    successes, scores, failures = [], [], []
    n_steps, step_time = 0, 0.0
    try:
        for seed in seeds:
            obs, info = env.reset(seed=int(seed))
            teacher.reset()
            done = False
            while not done:
                action = teacher.act(obs)
                start = time.perf_counter()
                obs, _, terminated, truncated, info = env.step(action)
                step_time += time.perf_counter() - start
                n_steps += 1
                done = terminated or truncated
            successes.append(bool(info["is_success"]))
            scores.append(float(info["score"]))
            if not info["is_success"]:
                failures.append(int(seed))
    finally:
        env.close()
    return {
        "task": task,
        "episodes": len(successes),
        "success_rate": float(np.mean(successes)),
        "mean_score": float(np.mean(scores)),
        "failed_seeds": failures,
        "steps": n_steps,
        "steps_per_s": n_steps / max(step_time, 1e-9),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", nargs="*", default=list(RAVENS_TASKS))
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--split", default="train")
    parser.add_argument("--camera-scale", type=float, default=1.0)
    args = parser.parse_args()
    for task in args.tasks:
        result = oracle_sweep(task, range(args.episodes), split=args.split, camera_scale=args.camera_scale)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
