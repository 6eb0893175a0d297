"""Run a trained policy (a checkpoint or a policy directory) on the real myCobot 320 or on its MuJoCo twin,
logging every step.

    python scripts/deploy.py --ckpt lightning_logs/version_0/checkpoints/last.ckpt --robot twin --episodes 10
    python scripts/deploy.py --ckpt last.ckpt --robot mycobot320 --port /dev/ttyUSB0 --camera top=0 --fps 20
        --steps 300 --image-size 240x320 --crop 40,80,400,480 --temporal-ensemble 0.01 --out data/deploy
    (one line)

The checkpoint is read with ``torch.load(weights_only=True)`` (no code from the file is run; an empty,
truncated or foreign file is one line of error naming it, see :mod:`lit_imit.checkpoints`); the policy
class comes from ``--policy-class``, else the class the checkpoint records (see :mod:`lit_imit.policies`),
else the known modules whose constructor fits the saved hyper-parameters (ACT, Diffusion). ``--ckpt`` (or
``--policy``) may also name a policy directory written by ``scripts/export_policy.py``: same policy, same
actions.
``--temporal-ensemble M`` turns ACT's temporal ensembling on (coefficient M, one query per step).

Images are preprocessed before the policy sees them: ``--mask FILE`` (an image or .npy the size of the
camera frame; zero = blacked out), then ``--crop y0,x0,h,w``, then a resize to ``--image-size`` (default:
back to the frame size when cropping), i.e. to the size the policy was trained at. Every step (the
observation, with the images as the policy saw them unless ``--log-images raw``, and the action actually
executed after the safety clamps) goes to an episode in ``--out`` (source="novice").

On the robot the loop runs at ``--fps`` through the adapter's ``run_loop``: joint limits and a per-step
cap of ``--max-delta-deg`` around the measured pose are enforced, a policy that takes longer than
``--policy-timeout`` stops the arm, and Ctrl-C, ``kill`` (SIGTERM), a closed terminal (SIGHUP) or a
communication error stops the arm and still writes the steps so far, every command sent included.
``--robot twin`` runs the same policy in the simulated twin, with the same clamps, and reports the
success rate.

This file is the command line only: loading and preprocessing live in :mod:`lit_imit.robots.policy`, the
twin and robot runs in :mod:`lit_imit.robots.deploy`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Mapping

from lit_imit.data.episodes import EpisodeStore, ForeignStoreError
from lit_imit.robots import RobotError
from lit_imit.robots.deploy import run_robot, run_twin
from lit_imit.robots.policy import (
    DeployError,
    ImagePreprocess,
    PolicyRunner,
    load_mask,
    load_policy,
    parse_crop,
    parse_size,
    policy_cameras,
)
from lit_imit.robots.recording import add_robot_arguments, robot_from_args
from lit_imit.signals import stop_signals_as_interrupt


# ---------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", "--policy", dest="ckpt", required=True,
                        help="Lightning checkpoint of a policy module, or a policy directory (scripts/export_policy.py)")
    parser.add_argument("--robot", choices=["mycobot320", "twin"], required=True)
    parser.add_argument("--steps", type=int, default=None, help="control steps per episode (default 300)")
    parser.add_argument("--out", default="data/deploy", help="episode store for the logs")
    parser.add_argument("--crop", default=None, help="y0,x0,h,w crop window in camera-frame pixels")
    parser.add_argument("--mask", default=None, help="keep-mask image or .npy of the camera frame size")
    parser.add_argument("--image-size", default=None, help="HxW the policy sees (default: the frame size)")
    parser.add_argument("--temporal-ensemble", type=float, default=None, metavar="M",
                        help="ACT temporal ensembling coefficient (e.g. 0.01); queries the policy every step")
    parser.add_argument("--n-action-steps", type=int, default=None, help="override the actions run per query")
    parser.add_argument("--policy-class", default=None, help="module:Class when the checkpoint does not tell")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--precision", choices=["32", "bf16-mixed"], default="32",
                        help="the policy's networks in float32 or under bfloat16 autocast (ACT, Diffusion; on a "
                             "CPU with AVX512_BF16 an ACT query at 240x320 takes ~0.75x the time)")
    parser.add_argument("--log-images", choices=["policy", "raw"], default="policy",
                        help="log the images as the policy saw them or as the camera delivered them")
    parser.add_argument("--policy-timeout", type=float, default=1.0,
                        help="robot: seconds before a stalled policy stops the arm")
    parser.add_argument("--ask-success", action="store_true",
                        help="robot: ask the operator whether the episode succeeded")
    twin = parser.add_argument_group("twin")
    twin.add_argument("--variant", default="move", choices=["move", "occupied", "mixed"])
    twin.add_argument("--episodes", type=int, default=1)
    twin.add_argument("--seed", type=int, default=100_000)
    twin.add_argument("--twin-size", default="240x320", help="HxW the twin renders its cameras at")
    add_robot_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; ``kill`` (SIGTERM) and a closed terminal (SIGHUP) end it as Ctrl-C does: the arm
    is stopped and the steps that ran are written (see :mod:`lit_imit.signals`)."""
    with stop_signals_as_interrupt():
        try:
            return _main(argv)
        except KeyboardInterrupt as err:  # outside the control loop (connecting, homing, the twin)
            print(f"interrupted: {err or 'Ctrl-C'}", file=sys.stderr)
            return 130


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    overrides: dict[str, Any] = {}
    if args.temporal_ensemble is not None:
        overrides.update(temporal_ensemble_coeff=float(args.temporal_ensemble), n_action_steps=1)
    elif args.n_action_steps is not None:
        overrides["n_action_steps"] = int(args.n_action_steps)
    try:
        module = load_policy(args.ckpt, device, args.policy_class, overrides)
        try:
            module.set_inference_precision(args.precision)
        except ValueError as err:
            raise DeployError(f"--precision {args.precision}: {err}") from err
        preprocess = ImagePreprocess(parse_crop(args.crop), load_mask(args.mask), parse_size(args.image_size))
        twin_size = parse_size(args.twin_size)
        store = EpisodeStore(args.out)
        store.require_writable()  # before the arm moves: another tool's directory is refused now
    except (DeployError, ForeignStoreError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cameras = policy_cameras(module)
    runner = PolicyRunner(module, preprocess, ["qpos", *(f"images/{c}" for c in cameras)])
    attrs = {"ckpt": str(Path(args.ckpt).resolve()), "policy": type(module).__name__,
             "temporal_ensemble": args.temporal_ensemble, "precision": args.precision, **preprocess.attrs()}
    print(f"{type(module).__name__} from {args.ckpt} on {device}, cameras {cameras}, {args.robot} at {args.fps:g} Hz")
    try:
        if args.robot == "twin":
            results = run_twin(runner, store, variant=args.variant, episodes=args.episodes, steps=args.steps,
                               seed=args.seed, fps=args.fps, max_delta_deg=args.max_delta_deg,
                               image_size=twin_size, cameras=cameras, images=args.log_images, attrs=attrs)
            rate = sum(r["success"] for r in results) / max(1, len(results))
            print(f"twin success rate {rate:.3f} ({sum(r['success'] for r in results)}/{len(results)}) "
                  f"[{args.variant}]; logs in {args.out}")
            return 0
        return _deploy_on_robot(args, runner, store, attrs)
    except (DeployError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _deploy_on_robot(args: argparse.Namespace, runner: PolicyRunner, store: Any, attrs: Mapping[str, Any]) -> int:
    try:
        robot = robot_from_args(args)
        with robot:
            judge = None
            if args.ask_success:
                judge = lambda: input("did the robot succeed? [y/N] ").strip().lower() in ("y", "yes")  # noqa: E731
            result = run_robot(runner, robot, store, steps=args.steps or 300, fps=args.fps,
                               policy_timeout_s=args.policy_timeout, images=args.log_images, attrs=attrs, judge=judge)
    except (RobotError, ImportError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"robot episode {result['episode_id']}: {result['steps']} steps, success={result['success']}, "
          f"{result['overruns']} overruns, "
          f"slowest step {result['max_step_s'] * 1e3:.1f} ms"
          + (f"; aborted: {result['aborted']}" if result["aborted"] else ""))
    if result["error"] is not None:
        print(f"error: {result['error']} (the {result['steps']} steps that ran were written to {args.out})",
              file=sys.stderr)
        return 1
    return 130 if result["aborted"] else 0


if __name__ == "__main__":
    sys.exit(main())
