"""Record scripted-teacher demonstrations into an episode store, or demonstrations on the real myCobot 320.

    python scripts/record_demos.py --task transfer_cube --episodes 50 --out data/transfer_cube --no-fast-render
    python scripts/record_demos.py --task insertion --episodes 5 --out data/ins --cameras "" --keep-failures
    python scripts/record_demos.py --task mycobot_move_cube --episodes 20 --out data/mycobot_move_cube

Only successful episodes are kept unless ``--keep-failures``. ``--no-fast-render`` renders the ALOHA images
with the MJCF's shadows and multisampling, as the paper configs' rollouts do (the env's default is the fast
look; record with the look the policy will be evaluated on). Re-running appends episodes with new ids and
new seeds; an interrupted run keeps every finished episode and leaves no half-written file.

Real robot (``--robot mycobot320``), by scripted waypoints or by hand-guiding::

    python scripts/record_demos.py --robot mycobot320 --port /dev/ttyUSB0 --mode waypoints
        --waypoints demos/move_cube.yaml --fps 20 --episodes 5 --out data/robot_move_cube --camera top=0
    python scripts/record_demos.py --robot mycobot320 --port /dev/ttyUSB0 --mode handguide --fps 20
        --out data/robot_move_cube --camera top=0 --image-size 240x320 --ask-success

(each command on one line).

Hand-guiding: hold the arm, press Enter to release the servos, move it; press Enter to toggle the gripper,
type q + Enter (or Ctrl-C) to end the demonstration; the servos lock again. Episodes get source="robot";
a fault (serial error, silent controller) stops the arm and still writes the steps recorded so far, with
success=False and an ``aborted`` attribute; so do ``kill`` (SIGTERM) and a closed terminal (SIGHUP).

Several ``record_demos.py`` runs may write into one ``--out`` store at once (on one machine): every
episode gets its own id and its own seed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from lit_imit.data.episodes import EpisodeStore, ForeignStoreError
from lit_imit.data.recording import record_teacher_episodes
from lit_imit.envs import task_spec
from lit_imit.robots import RobotError
from lit_imit.robots.recording import (
    WaypointError,
    add_robot_arguments,
    load_waypoints,
    parse_home,
    robot_from_args,
)
from lit_imit.robots.session import record_session
from lit_imit.signals import stop_signals_as_interrupt


def parse_image_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--image-size must look like 240x320 (HxW), got {text!r}") from err
    return height, width


def parse_episodes(text: str) -> int:
    """``--episodes``: at least one (zero would record nothing, and there would be nothing to report)."""
    try:
        episodes = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a whole number of episodes, got {text!r}") from err
    if episodes < 1:
        raise argparse.ArgumentTypeError(f"record at least 1 episode, got {episodes}")
    return episodes


def parse_cameras(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default=None,
                        help="task name, e.g. transfer_cube, insertion (required without --robot; with --robot a "
                             "label, default mycobot_move_cube)")
    parser.add_argument("--episodes", type=parse_episodes, default=None,
                        help="successful episodes to record (required without --robot; with --robot default 1)")
    parser.add_argument("--out", required=True, help="episode store directory")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode (continues on re-runs)")
    parser.add_argument("--cameras", type=parse_cameras, default=None,
                        help='comma-separated cameras, "" for none (default: the env default)')
    parser.add_argument("--image-size", type=parse_image_size, default=None, help="HxW, e.g. 240x320")
    parser.add_argument("--keep-failures", action="store_true", help="also keep unsuccessful episodes")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes simulating episodes at once (same seeds and ids as one process)")
    parser.add_argument("--action-noise", type=float, default=0.0,
                        help="DART: execute the teacher's action plus Gaussian noise of this std (action units) "
                             "and record the clean action (default 0: plain demos)")
    parser.add_argument("--env-state", action="store_true",
                        help="also record the object poses (/observations/env_state) for state-based policies")
    parser.add_argument("--fast-render", action=argparse.BooleanOptionalAction, default=None,
                        help="ALOHA envs: no shadows / multisampling (the env default) or, with --no-fast-render, "
                             "the MJCF's full look as in the paper configs")
    robot = parser.add_argument_group("recording on a real robot")
    robot.add_argument("--robot", choices=["mycobot320"], default=None, help="record on this robot instead of a sim")
    robot.add_argument("--mode", choices=["waypoints", "handguide"], default="waypoints")
    robot.add_argument("--waypoints", default=None, help="YAML/JSON file of taught poses (--mode waypoints)")
    robot.add_argument("--max-steps", type=int, default=6000, help="cap on samples per hand-guided episode")
    robot.add_argument("--ask-success", action="store_true", help="ask after each episode whether it succeeded")

    add_robot_arguments(parser)
    return parser


def recording_env_kwargs(args: argparse.Namespace) -> dict[str, object]:
    """Env options from the flags; an option left unset is not passed (envs without it still work)."""
    kwargs: dict[str, object] = {} if args.fast_render is None else {"fast_render": args.fast_render}
    if args.env_state:
        kwargs["env_state"] = True
    return kwargs


def main(argv: list[str] | None = None) -> int:
    """Run the command line; ``kill`` (SIGTERM) and a closed terminal (SIGHUP) end it as Ctrl-C does, so a
    robot recording stops the arm and writes its steps (see :mod:`lit_imit.signals`)."""

    with stop_signals_as_interrupt():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.robot is not None:
        return record_on_robot(args)
    if args.task is None or args.episodes is None:
        parser.error("--task and --episodes are required (unless --robot is given)")

    try:
        task_spec(args.task)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    store = EpisodeStore(args.out)
    start = time.perf_counter()
    try:
        report = record_teacher_episodes(
            args.task, args.episodes, store, cameras=args.cameras, image_size=args.image_size, seed=args.seed,
            keep_failures=args.keep_failures, progress=True, env_kwargs=recording_env_kwargs(args),
            workers=args.workers, action_noise=args.action_noise,
        )
    except KeyboardInterrupt:
        print(f"interrupted: {len(store)} complete episodes are in {args.out}", file=sys.stderr)
        return 130
    except (RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    minutes = (time.perf_counter() - start) / 60
    print(
        f"teacher success rate {report.success_rate:.3f} ({report.successes}/{report.attempts}); wrote "
        f"{len(report.ids)} episodes (ids {report.ids[0]}..{report.ids[-1]}) to {args.out}; "
        f"{len(report.ids) / max(minutes, 1e-9):.1f} episodes/min"
    )
    return 0


def record_on_robot(args: argparse.Namespace) -> int:
    """Record ``--episodes`` demonstrations on the real robot; a fault ends the session (data kept)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    task = args.task or "mycobot_move_cube"
    episodes = args.episodes if args.episodes is not None else 1
    try:
        waypoints = None
        if args.mode == "waypoints":
            if not args.waypoints:
                print("error: --mode waypoints needs --waypoints FILE", file=sys.stderr)
                return 2
            waypoints = load_waypoints(args.waypoints)
        robot = robot_from_args(args)
        home = parse_home(args.home)
        store = EpisodeStore(args.out)
        store.require_writable()  # before anyone demonstrates: another tool's directory is refused now
    except (ValueError, WaypointError, ForeignStoreError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = []
    try:
        with robot:
            session = record_session(
                robot, store, episodes=episodes, fps=args.fps, task=task, waypoints=waypoints, home=home,
                ask_success=args.ask_success, max_steps=args.max_steps, image_size=args.image_size,
                attrs={"waypoints_file": str(args.waypoints)} if waypoints is not None else {},
            )
            for result in session:
                results.append(result)
                print(f"episode {len(results)}/{episodes}: id {result.episode_id}, {result.steps} steps, "
                      f"success={result.success}" + (f", aborted: {result.aborted}" if result.aborted else ""))
    except KeyboardInterrupt:
        print(f"interrupted; episodes written: {[r.episode_id for r in results if r.episode_id is not None]}",
              file=sys.stderr)
        return 130
    except (RobotError, WaypointError, ImportError, EOFError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    last = results[-1] if results else None
    if last is not None and last.error is not None:
        print(f"error: {last.error}; stopping (the steps recorded so far were written)", file=sys.stderr)
        return 1
    if last is not None and last.aborted:
        return 130
    print(f"wrote episodes {[r.episode_id for r in results]} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
