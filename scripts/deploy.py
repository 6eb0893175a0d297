"""Run a trained policy checkpoint on the real myCobot 320 or on its MuJoCo twin, logging every step.

    python scripts/deploy.py --ckpt lightning_logs/version_0/checkpoints/last.ckpt --robot twin --episodes 10
    python scripts/deploy.py --ckpt last.ckpt --robot mycobot320 --port /dev/ttyUSB0 --camera top=0 --fps 20
        --steps 300 --image-size 240x320 --crop 40,80,400,480 --temporal-ensemble 0.01 --out data/deploy
    (one line)

The checkpoint is read with ``torch.load(weights_only=True)`` (no code from the file is run; an empty,
truncated or foreign file is one line of error naming it, see :mod:`lit_imit.checkpoints`); the policy
class comes from ``--policy-class``, the checkpoint's ``_class_path`` hyper-parameter, or the known
modules whose constructor fits the saved hyper-parameters (ACT, Diffusion). ``--temporal-ensemble M``
turns ACT's temporal ensembling on (coefficient M, one query per step).

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
"""

from __future__ import annotations

import argparse
import inspect
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

log = logging.getLogger("deploy")

#: modules whose classes a checkpoint may hold (tried in order when it does not name its class)
KNOWN_POLICIES = ("lit_imit.modules.act:ACTModule", "lit_imit.modules.diffusion:DiffusionModule")


class DeployError(RuntimeError):
    """The checkpoint, the preprocessing options or the robot set-up cannot work together."""


# ---------------------------------------------------------------------------------------------- checkpoint
def _import(path: str) -> type:
    module, _, name = path.replace(":", ".").rpartition(".")
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise DeployError(f"cannot import policy class {path!r}: {e}") from e


def _policy_class(hparams: Mapping[str, Any], explicit: str | None) -> type:
    """The LightningModule class: explicit, recorded in the checkpoint, or the known one that fits."""
    if explicit:
        return _import(explicit)
    if hparams.get("_class_path"):
        return _import(str(hparams["_class_path"]))
    keys = {k for k in hparams if not k.startswith("_")}
    fits = []
    for path in KNOWN_POLICIES:
        try:
            cls = _import(path)
        except DeployError:
            continue
        params = set(inspect.signature(cls.__init__).parameters) - {"self"}
        if keys <= params:
            fits.append((len(params - keys), cls))
    if not fits:
        raise DeployError(f"no known policy class takes the checkpoint's hyper-parameters {sorted(keys)}; "
                          "name it with --policy-class module:Class")
    return min(fits, key=lambda f: f[0])[1]


def load_policy(path: str | Path, device: str = "cpu", policy_class: str | None = None,
                overrides: Mapping[str, Any] | None = None) -> Any:
    """Rebuild a policy module from a Lightning checkpoint (weights_only load), in eval mode on ``device``.

    ``overrides`` replace hyper-parameters before the module is built (e.g. ACT's
    ``temporal_ensemble_coeff`` and ``n_action_steps``); an override the class does not take is an error.
    """
    from lit_imit.checkpoints import CheckpointError, load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise DeployError(f"checkpoint {path} does not exist")
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as e:  # empty, truncated, corrupt, not a checkpoint, disallowed objects: one line
        raise DeployError(str(e)) from e
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise DeployError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    cls = _policy_class(hparams, policy_class)
    params = set(inspect.signature(cls.__init__).parameters)
    kwargs = {k: v for k, v in hparams.items() if not k.startswith("_") and k in params}
    for key, value in (overrides or {}).items():
        if key not in params:
            raise DeployError(f"{cls.__name__} has no hyper-parameter {key!r} to override")
        kwargs[key] = value
    for key in ("pretrained_backbone", "clip_pretrained"):
        if key in params:
            kwargs[key] = None  # the checkpoint holds the trained weights; read (and ask for) no other file
    try:
        module = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise DeployError(f"cannot build {cls.__name__} from the checkpoint's hyper-parameters: {e}") from e
    missing, unexpected = module.load_state_dict(checkpoint["state_dict"], strict=False)
    if missing or unexpected:
        raise DeployError(f"{path} does not match {cls.__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if getattr(module, "normalized_keys", ()) and not bool(module.stats_initialized):
        raise DeployError(f"{path} has no normalisation statistics: it was never set up with data")
    return module.to(device).eval()


def policy_cameras(module: Any) -> list[str]:
    cameras = getattr(module, "cameras", None)
    if cameras is None:
        cameras = getattr(module, "hparams", {}).get("cameras", [])
    return list(cameras)


# ---------------------------------------------------------------------------------------------- images
def parse_crop(text: str | None) -> tuple[int, int, int, int] | None:
    if not text:
        return None
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError as e:
        raise DeployError(f"--crop must be four integers y0,x0,h,w, got {text!r}") from e
    if len(values) != 4 or values[0] < 0 or values[1] < 0 or values[2] <= 0 or values[3] <= 0:
        raise DeployError(f"--crop must be y0,x0,h,w with y0, x0 >= 0 and h, w > 0, got {text!r}")
    return values  # type: ignore[return-value]


def parse_size(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise DeployError(f"--image-size must look like 240x320 (HxW), got {text!r}") from e
    if height <= 0 or width <= 0:
        raise DeployError(f"--image-size must be positive, got {text!r}")
    return height, width


def load_mask(path: str | None) -> np.ndarray | None:
    """A boolean (H, W) keep-mask from a .npy array or an image (non-zero / bright = keep)."""
    if not path:
        return None
    try:
        if str(path).endswith(".npy"):
            mask = np.load(path)
        else:
            import imageio.v2 as imageio

            mask = imageio.imread(path)
    except (OSError, ValueError) as e:
        raise DeployError(f"cannot read mask {path}: {e}") from e
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., :3].mean(axis=-1)
    if mask.ndim != 2:
        raise DeployError(f"mask {path} must be a (H, W) array or image, got shape {mask.shape}")
    threshold = 0.5 if mask.dtype == bool or mask.max() <= 1 else 127
    return mask > threshold


class ImagePreprocess:
    """Mask, crop and resize camera images exactly as the policy must see them (raw frame coordinates).

    Order: the mask (same size as the frame) blacks out pixels, then the crop window is cut, then the
    result is resized to ``size`` -- by default back to the frame size when cropping, i.e. the size the
    policy was trained at.
    """

    def __init__(self, crop: tuple[int, int, int, int] | None = None, mask: np.ndarray | None = None,
                 size: tuple[int, int] | None = None):
        self.crop, self.mask, self.size = crop, mask, size

    @property
    def active(self) -> bool:
        return self.crop is not None or self.mask is not None or self.size is not None

    def image(self, frame: np.ndarray, name: str = "image") -> np.ndarray:
        from lit_imit.robots.recording import resize_image

        frame = np.asarray(frame)
        height, width = frame.shape[:2]
        if self.mask is not None:
            if self.mask.shape != (height, width):
                raise DeployError(f"mask of shape {self.mask.shape} does not fit {name} frames of {(height, width)}")
            frame = frame * self.mask[..., None].astype(frame.dtype)
        target = self.size
        if self.crop is not None:
            y0, x0, h, w = self.crop
            if y0 + h > height or x0 + w > width:
                raise DeployError(f"crop {self.crop} (y0,x0,h,w) leaves the {height}x{width} {name} frame")
            frame = frame[y0:y0 + h, x0:x0 + w]
            target = target or (height, width)
        return resize_image(np.ascontiguousarray(frame), target)

    def __call__(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self.image(v, k) if k.startswith("images/") else v for k, v in obs.items()}

    def attrs(self) -> dict[str, Any]:
        return {"crop": list(self.crop) if self.crop else None,
                "policy_image_size": list(self.size) if self.size else None, "masked": self.mask is not None}


class PolicyRunner:
    """One observation (numpy, unbatched) in, one action (7,) float32 out, through ``select_action``."""

    def __init__(self, module: Any, preprocess: ImagePreprocess, keys: list[str]):
        self.module, self.preprocess, self.keys = module, preprocess, keys
        self.last_input: dict[str, Any] | None = None

    def reset(self) -> None:
        self.module.reset()

    def __call__(self, obs: Mapping[str, Any]) -> np.ndarray:
        import torch

        missing = [k for k in self.keys if k not in obs]
        if missing:
            raise DeployError(f"the policy needs {missing} but the observation has {sorted(obs)}")
        seen = self.preprocess({k: obs[k] for k in self.keys})
        self.last_input = seen
        batch = {k: np.asarray(v)[None] for k, v in seen.items()}
        with torch.inference_mode():
            action = self.module.select_action(batch)
        return action[0].detach().float().cpu().numpy()


def _logged_obs(obs: Mapping[str, Any], runner: PolicyRunner, images: str) -> dict[str, Any]:
    """What goes into the episode: the observation, with the images the policy saw (``images="policy"``)."""
    if images == "raw" or runner.last_input is None:
        return dict(obs)
    return {**obs, **{k: v for k, v in runner.last_input.items() if k.startswith("images/")}}


# ---------------------------------------------------------------------------------------------- running
def run_twin(runner: PolicyRunner, store: Any, *, variant: str, episodes: int, steps: int | None, seed: int,
             fps: float, max_delta_deg: float | None, image_size: tuple[int, int], cameras: list[str],
             images: str = "policy", attrs: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Episodes of the policy in the twin; each one logged to ``store``. Returns per-episode summaries."""
    from lit_imit.data.recording import EpisodeBuffer
    from lit_imit.envs import task_spec
    from lit_imit.envs.mycobot import MyCobotMoveCubeEnv

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
                buffer.add(_logged_obs(obs, runner, images), info["action_sent"])
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
    from lit_imit.robots import run_loop
    from lit_imit.robots.recording import RobotEpisodeRecorder

    meta = {"sim": False, "robot": "mycobot320", "port": getattr(robot, "port", None), "task": task,
            "source": "novice", "round": 0, "mode": "policy", "fps": float(fps), **(attrs or {})}
    recorder = RobotEpisodeRecorder(store, meta)
    first = robot.get_observation()
    runner(first)  # warm-up: kernels, allocations; checks the cameras the policy needs are there
    runner.reset()

    def record(step: Any) -> None:
        recorder.add(_logged_obs(step.observation, runner, images), step.action_sent, stale=step.stale,
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


# ---------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    from lit_imit.robots.recording import add_robot_arguments

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="Lightning checkpoint of an ACT or Diffusion module")
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
    from lit_imit.signals import stop_signals_as_interrupt

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

    from lit_imit.data.episodes import EpisodeStore

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    overrides: dict[str, Any] = {}
    if args.temporal_ensemble is not None:
        overrides.update(temporal_ensemble_coeff=float(args.temporal_ensemble), n_action_steps=1)
    elif args.n_action_steps is not None:
        overrides["n_action_steps"] = int(args.n_action_steps)
    try:
        module = load_policy(args.ckpt, device, args.policy_class, overrides)
        preprocess = ImagePreprocess(parse_crop(args.crop), load_mask(args.mask), parse_size(args.image_size))
        twin_size = parse_size(args.twin_size)
    except DeployError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cameras = policy_cameras(module)
    runner = PolicyRunner(module, preprocess, ["qpos", *(f"images/{c}" for c in cameras)])
    store = EpisodeStore(args.out)
    attrs = {"ckpt": str(Path(args.ckpt).resolve()), "policy": type(module).__name__,
             "temporal_ensemble": args.temporal_ensemble, **preprocess.attrs()}
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
    from lit_imit.robots import RobotError
    from lit_imit.robots.recording import robot_from_args

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
