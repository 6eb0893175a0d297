"""A policy on the myCobot 320 or on its MuJoCo twin, every executed step logged as an episode.

Both runs log the same thing (the observation, with the images as the policy saw them unless
``images="raw"``, and the action actually executed after the safety clamps) with ``source="novice"``, so a
deployment log can join a DAgger round or be replayed in the twin. On the robot the steps run through
:func:`lit_imit.robots.loop.run_loop` (fixed rate, safe stop, every sent command logged); in the twin the
same clamps apply and success is known, so the twin gives a success rate before the arm is risked.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from lit_imit.data.recording import EpisodeBuffer
from lit_imit.envs import task_spec
from lit_imit.envs.mycobot import MyCobotMoveCubeEnv
from lit_imit.robots.loop import run_loop
from lit_imit.robots.policy import PolicyRunner, logged_obs
from lit_imit.robots.recording import RobotEpisodeRecorder

__all__ = ["run_robot", "run_twin"]


def run_twin(runner: PolicyRunner, store: Any, *, variant: str, episodes: int, steps: int | None, seed: int,
             fps: float, max_delta_deg: float | None, image_size: tuple[int, int], cameras: list[str],
             images: str = "policy", attrs: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Episodes of the policy in the twin; each one logged to ``store``. Returns per-episode summaries."""

    spec = task_spec("mycobot_move_cube")
    env = MyCobotMoveCubeEnv(variant=variant, cameras=cameras, image_size=image_size, control_hz=fps,
                             max_delta_deg=max_delta_deg)
    steps = steps or spec.max_episode_steps
    results = []
    try:
        for episode in range(episodes):
            obs, info = env.reset(seed=seed + episode)
            runner.reset()
            buffer, success, total = EpisodeBuffer(), False, 0.0
            for _ in range(steps):
                action = runner(obs)
                next_obs, reward, terminated, truncated, info = env.step(action)
                buffer.add(logged_obs(obs, runner, images), info["action_sent"])
                success, total = success or bool(info["is_success"]), total + float(reward)
                obs = next_obs
                if terminated or truncated:
                    break
            meta = {"sim": spec.env_id, "task": spec.name, "variant": variant, "source": "novice", "round": 0,
                    "success": success, "seed": seed + episode, "return": total, "max_reward": env.max_reward,
                    "occupied": env.layout.occupied, **(attrs or {})}
            episode_id = store.add(buffer.arrays(), meta)
            results.append({"episode_id": episode_id, "steps": len(buffer), "success": success,
                            "max_reward": env.max_reward})
            print(f"twin episode {episode + 1}/{episodes} (seed {seed + episode}): success={success}, "
                  f"max reward {env.max_reward}, {len(buffer)} steps -> episode {episode_id}", flush=True)
    finally:
        env.close()
    return results


def run_robot(runner: PolicyRunner, robot: Any, store: Any, *, steps: int, fps: float,
              policy_timeout_s: float | None, images: str = "policy", attrs: Mapping[str, Any] | None = None,
              task: str = "mycobot_move_cube", judge: Callable[[], bool] | None = None) -> dict[str, Any]:
    """One episode of the policy on a connected robot through ``run_loop``; always writes what ran.

    The robot cannot tell whether the task succeeded: the episode is written with ``success=False``
    unless ``judge()`` (asked after a complete run, e.g. a prompt to the operator) says so.
    """

    meta = {"sim": False, "robot": "mycobot320", "port": getattr(robot, "port", None), "task": task,
            "source": "novice", "round": 0, "mode": "policy", "fps": float(fps), **(attrs or {})}
    recorder = RobotEpisodeRecorder(store, meta)
    first = robot.get_observation()
    runner(first)  # warm-up: kernels, allocations; checks the cameras the policy needs are there
    runner.reset()

    def record(step: Any) -> None:
        recorder.add(logged_obs(step.observation, runner, images), step.action_sent, stale=step.stale,
                     timestamp=step.timestamp)

    aborted, error, stats = None, None, None
    try:
        stats = run_loop(robot, runner, steps, on_step=record, fps=fps, policy_timeout_s=policy_timeout_s)
        if stats.stop_reason != "completed":
            aborted = f"{stats.stop_reason} after {stats.steps} of {steps} steps"
    except Exception as e:  # run_loop stopped the arm already
        error = e
        stats = getattr(e, "loop_stats", None)
        aborted = f"{getattr(stats, 'stop_reason', 'error')}: {type(e).__name__}: {e}"
    success = False
    if aborted is None and judge is not None:
        try:
            success = bool(judge())
        except BaseException:  # Ctrl-C at the prompt: keep the log, unjudged
            recorder.save(success=False, aborted="not judged")
            raise
    episode_id = recorder.save(success=success, aborted=aborted,
                               overruns=int(getattr(stats, "overruns", 0)),
                               max_step_s=float(getattr(stats, "max_step_s", 0.0)))
    return {"episode_id": episode_id, "steps": len(recorder), "aborted": aborted, "error": error, "success": success,
            "overruns": int(getattr(stats, "overruns", 0)), "max_step_s": float(getattr(stats, "max_step_s", 0.0))}
