"""The rows of ``scripts/benchmark.py``: each a generator of throughput figures, one dict per setting.

A row is a function of the command line's options (``steps``, ``device``, ``threads``; ``act_fit`` also reads
the ``fit_*`` ones) registered in :data:`ROWS` by name; each figure is ``{"name", "value", "unit", ...the settings
that produced it}``. The synthetic batches
and timers the rows share are in :mod:`lit_imit.benchmarking`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402  (after MUJOCO_GL is set)
import torch  # noqa: E402

# Each row imports the project modules it measures inside its function, so that `--only ROW` and `--list`
# do not load every simulator and network.
ROWS: dict[str, Callable[[argparse.Namespace], Iterator[dict[str, Any]]]] = {}


def row(name: str):
    def register(fn):
        ROWS[name] = fn
        return fn

    return register


def timed(fn: Callable[[], Any], repeat: int, warmup: int = 1) -> float:
    """Seconds per call (after warm-up calls)."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def device_of(args: argparse.Namespace) -> torch.device:
    return torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                        ("cpu" if args.device == "auto" else args.device))


# ---- envs ---------------------------------------------------------------------------------------------
def _env_rate(task: str, steps: int, **kwargs: Any) -> float:
    from lit_imit.envs import make_env

    env = make_env(task, **kwargs)
    obs, _ = env.reset(seed=0)
    action = np.asarray(obs["qpos"], dtype=np.float32)  # hold the start pose
    start = time.perf_counter()
    for _ in range(steps):
        env.step(action)
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


@row("env_steps")
def env_steps(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """ALOHA transfer-cube env steps/s: physics only, with one rendered camera, and a vector env."""
    yield {"name": "env_steps_no_render", "value": _env_rate("transfer_cube", 400, cameras=[]), "unit": "steps/s",
           "task": "transfer_cube", "cameras": []}
    for size in ((480, 640), (240, 320)):
        yield {"name": "env_steps_render", "value": _env_rate("transfer_cube", 100, cameras=["top"], image_size=size),
               "unit": "steps/s", "task": "transfer_cube", "cameras": ["top"], "image_size": list(size)}
    import gymnasium as gym

    from lit_imit.envs import make_env

    n = 4
    vec = gym.vector.SyncVectorEnv([lambda: make_env("transfer_cube", cameras=[]) for _ in range(n)])
    obs, _ = vec.reset(seed=0)
    actions = np.asarray(obs["qpos"], dtype=np.float32)
    steps = 100
    start = time.perf_counter()
    for _ in range(steps):
        vec.step(actions)
    rate = n * steps / (time.perf_counter() - start)
    vec.close()
    yield {"name": "env_steps_vector", "value": rate, "unit": "env-steps/s", "task": "transfer_cube",
           "num_envs": n, "vector": "SyncVectorEnv", "cameras": []}


def _rollout_rate(env_kwargs: dict[str, Any], n_envs: int, workers: int, steps: int,
                  repeat: int = 3) -> dict[str, float]:
    """env-steps/s of ``evaluate`` (n_envs lock-stepped envs, ``steps`` each) in-process (0) or in workers,
    with a fixed action: only env stepping, batching and IPC are timed; the best of ``repeat`` runs (the box
    is shared). Pool start-up is reported apart: spawn re-imports a main *script* (this one: torch) in every
    worker, ``python -m lit_imit`` is not re-imported."""
    from lit_imit.envs import make_env
    from lit_imit.envs.vector import ProcessEnvPool
    from lit_imit.evaluation import evaluate

    start = time.perf_counter()
    if workers == 0:
        envs: Any = [make_env("transfer_cube", **env_kwargs) for _ in range(n_envs)]
    else:
        envs = ProcessEnvPool.for_task("transfer_cube", n_envs, workers, env_kwargs=env_kwargs)
    startup = time.perf_counter() - start
    hold: list[np.ndarray] = []

    def policy(obs: dict[str, np.ndarray]) -> np.ndarray:
        if not hold:
            hold.append(obs["qpos"].copy())  # the start pose, held for ever
        return hold[0]

    episodes = list(range(n_envs))
    evaluate(envs, policy, lambda: None, episodes, seed=0, max_steps=2)  # warm-up: renderers, first resets
    seconds = min(timed(lambda: evaluate(envs, policy, lambda: None, episodes, seed=0, max_steps=steps), 1, 0)
                  for _ in range(repeat))
    rate = n_envs * steps / seconds
    for env in envs if isinstance(envs, list) else [envs]:
        env.close()
    return {"rate": rate, "startup_s": startup}


@row("rollout_parallel")
def rollout_parallel(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """Rollout env-steps/s with the envs in-process (0) or in 1, 2 and N worker processes (fixed policy)."""
    from lit_imit.envs.vector import available_cpus

    cpus = available_cpus()
    n_envs = 2 * max(2, cpus)  # the same envs for every worker count; two per worker at N
    obs_kinds = {"state": ({"cameras": []}, 100), "top_120x160": ({"cameras": ["top"], "image_size": (120, 160)}, 20)}
    for kind, (env_kwargs, steps) in obs_kinds.items():
        baseline = None
        for workers in sorted({0, 1, 2, cpus}):
            result = _rollout_rate(env_kwargs, n_envs, workers, steps)
            baseline = baseline or result["rate"]
            yield {"name": "rollout_parallel", "value": result["rate"], "unit": "env-steps/s", "obs": kind,
                   "num_workers": workers, "num_envs": n_envs, "steps_per_env": steps, "cpus": cpus,
                   "speedup_vs_in_process": result["rate"] / baseline, "startup_s": round(result["startup_s"], 2),
                   "task": "transfer_cube", "policy": "fixed action"}


@row("interactive_round")
def interactive_round(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """Seconds per ASkDAgger round (4 full transfer-cube episodes, decisions of one 100-step chunk, a gate with
    no history: every decision is queried, judged by foresight with the teacher labelling each visited state,
    and taken over by the teacher when invalid) with the episodes in-process (0) or in N worker processes."""
    from lit_imit.envs import make_judge
    from lit_imit.envs.vector import available_cpus
    from lit_imit.interactive import SAG, InteractiveConfig, info_relabel
    from lit_imit.rounds import EpisodeJob, RoundRunner, RoundSetting

    cpus = available_cpus()
    config = InteractiveConfig(mode="askdagger", decision_steps=100, max_steps=400)
    setting = RoundSetting("transfer_cube", make_judge("transfer_cube"), config, info_relabel(), seed=0)
    obs_kinds = {"state": ([], {"cameras": [], "env_state": True}),
                 "top_120x160": (["top"], {"cameras": ["top"], "env_state": True, "image_size": (120, 160)})}
    for kind, (cameras, env_kwargs) in obs_kinds.items():
        from lit_imit.modules.act import ACTModule

        module = ACTModule(cameras=cameras, state_keys=["qpos", "env_state"], state_dim=[14, 7], chunk_size=100,
                           n_action_steps=100, pretrained_backbone=None, **ACT_SHAPES["quickstart"]["model"]).eval()
        baseline = None
        for workers in sorted({0, cpus}):
            runner = RoundRunner("transfer_cube", env_kwargs, workers)
            jobs = [EpisodeJob(i, 1, SAG(seed=i)) for i in range(4)]
            try:
                runner.run(module, jobs[:1], setting) if workers else None  # start the workers outside the timing
                seconds = timed(lambda: runner.run(module, jobs, setting), 1, 0)
            finally:
                runner.close()
            baseline = baseline or seconds
            yield {"name": "interactive_round", "value": seconds, "unit": "s/round", "obs": kind, "episodes": 4,
                   "num_workers": workers, "cpus": cpus, "speedup_vs_in_process": baseline / seconds,
                   "task": "transfer_cube", "novice": "ACT (quickstart shape, chunk 100), untrained"}


# ---- recording and loading ----------------------------------------------------------------------------
def _recorded_store(root: Path, episodes: int, image_size: tuple[int, int]) -> tuple[Any, float]:
    from lit_imit.data.episodes import EpisodeStore
    from lit_imit.data.recording import record_teacher_episodes

    store = EpisodeStore(root)
    start = time.perf_counter()
    record_teacher_episodes("transfer_cube", episodes, store, cameras=["top"], image_size=image_size, seed=0)
    return store, episodes / ((time.perf_counter() - start) / 60)


@row("record_demos")
def record_demos(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """Teacher episodes recorded per minute (400 steps, one camera), end to end incl. HDF5 writes."""
    with tempfile.TemporaryDirectory() as tmp:
        for size in ((480, 640), (120, 160)):
            _, per_minute = _recorded_store(Path(tmp) / f"{size[0]}", 1, size)
            yield {"name": "record_demos", "value": per_minute, "unit": "episodes/min", "task": "transfer_cube",
                   "cameras": ["top"], "image_size": list(size), "episode_steps": 400}


@row("loader_samples")
def loader_samples(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """HDF5 chunk-window loader samples/s at batch 8, one 480x640 camera, chunk 100 (ACT's shape)."""
    from lit_imit.data.datamodule import EpisodeDataModule

    with tempfile.TemporaryDirectory() as tmp:
        store, _ = _recorded_store(Path(tmp) / "store", 2, (480, 640))
        for workers in (0, 2):
            dm = EpisodeDataModule(str(store.root), cameras=["top"], chunk_size=100, batch_size=8,
                                   num_workers=workers, val_episodes=0, samples_per_epoch=8 * 40)
            dm.setup("fit")
            loader = dm.train_dataloader()
            it = iter(loader)
            next(it)  # workers started, first batch out
            start, count = time.perf_counter(), 0
            for batch in it:
                count += len(batch["action"])
            rate = count / (time.perf_counter() - start)
            yield {"name": "loader_samples", "value": rate, "unit": "samples/s", "batch_size": 8,
                   "cameras": ["top"], "image_size": [480, 640], "chunk_size": 100, "num_workers": workers}


# ---- ACT ------------------------------------------------------------------------------------------------
ACT_SHAPES = {
    # LeRobot's default ACT: batch 8, one 480x640 camera, chunk 100, d_model 512, ff 3200, 4 enc / 1 dec, VAE on
    "lerobot": dict(batch=8, image_hw=(480, 640), chunk=100, model={}),
    # a small CPU ACT (one 120x160 camera, chunk 50): the quickstart's policy until it moved to state-based BC
    "quickstart": dict(batch=8, image_hw=(120, 160), chunk=50, model=dict(
        dim_model=128, n_heads=4, dim_feedforward=512, n_encoder_layers=2, n_vae_encoder_layers=2)),
}


def _act_module(shape: dict[str, Any], device: torch.device, **overrides: Any):
    from lit_imit.modules.act import ACTModule

    module = ACTModule(cameras=["top"], chunk_size=shape["chunk"], n_action_steps=shape["chunk"],
                       **shape["model"], **overrides)
    return module.to(device)


@row("act_train")
def act_train(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """ACT training samples/s (fwd+bwd+AdamW, batch in memory) at LeRobot's shape and the quickstart's, with
    the model's FLOP/s against the machine's peak."""
    from lit_imit.benchmarking import act_batch, count_train_flops, flops_fields, measure_train_throughput

    device = device_of(args)
    for shape_name, shape in ACT_SHAPES.items():
        for precision in ("32", "bf16-mixed"):
            module = _act_module(shape, device)
            batch = act_batch(shape["batch"], image_hw=shape["image_hw"], chunk_size=shape["chunk"],
                              device=device)
            dtype = torch.bfloat16 if precision != "32" else None
            result = measure_train_throughput(module, batch, steps=args.steps, warmup=1, autocast_dtype=dtype)
            flops = count_train_flops(module, batch, autocast_dtype=dtype)
            yield {"name": f"act_train_{shape_name}_shape", "value": result["samples_per_s"], "unit": "samples/s",
                   "precision": precision, "batch_size": shape["batch"], "image_size": list(shape["image_hw"]),
                   "chunk_size": shape["chunk"], "device": str(device),
                   **{k: v for k, v in result.items() if k != "samples_per_s"},
                   **flops_fields(flops, result["step_s"], device, precision)}


#: the one-camera CPU config that ``act_cameras`` compares with its three-camera variant
CPU_ACT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "act" / "transfer_cube_cpu.yaml"
THREE_CAMERAS = ["top", "left_wrist", "right_wrist"]


def _config_act_module(cameras: list[str], device: torch.device):
    """ACTModule with the model ``init_args`` of ``CPU_ACT_CONFIG`` (random ResNet, as that config trains it)."""
    import yaml

    from lit_imit.modules.act import ACTModule

    init_args = dict(yaml.safe_load(CPU_ACT_CONFIG.read_text())["model"]["init_args"])
    init_args.update(cameras=cameras, pretrained_backbone=None)
    return ACTModule(**init_args).to(device), int(init_args["chunk_size"])


@row("act_cameras")
def act_cameras(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """ACT train s/step (transfer_cube_cpu.yaml's model, batch 8, 96x128) and env steps/s with 1 and 3 cameras."""
    from lit_imit.benchmarking import act_batch, measure_train_throughput

    device = device_of(args)
    hw = (96, 128)
    for cameras in (["top"], THREE_CAMERAS):
        torch.manual_seed(0)
        module, chunk = _config_act_module(cameras, device)
        batch = act_batch(8, cameras, image_hw=hw, chunk_size=chunk, device=device)
        result = measure_train_throughput(module, batch, steps=args.steps, warmup=1)
        yield {"name": f"act_train_{len(cameras)}cam", "value": result["step_s"], "unit": "s/step",
               "cameras": cameras, "batch_size": 8, "image_size": list(hw), "device": str(device),
               "cpu_s_per_step": result["cpu_s_per_step"], "config": "configs/act/transfer_cube_cpu.yaml"}
    for cameras in (["top"], THREE_CAMERAS):
        yield {"name": f"env_steps_{len(cameras)}cam", "unit": "steps/s", "task": "transfer_cube",
               "value": _env_rate("transfer_cube", 100, cameras=cameras, image_size=hw), "cameras": cameras,
               "image_size": list(hw)}


@row("act_select_action")
def act_select_action(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """ACT select_action latency at LeRobot's model size, fp32 and bf16 autocast: a query (temporal ensembling) vs
    a queued step, for one env at 480x640 and 240x320 (the real robot's loop), and 4 envs batched as in rollouts."""
    from lit_imit.modules.act import ACTModule

    device = device_of(args)
    modes = {
        "temporal_ensembling_query_every_step": dict(n_action_steps=1, temporal_ensemble_coeff=0.01),
        "chunk_execution_mean_over_100_steps": dict(n_action_steps=100),
    }
    shapes = [((480, 640), 1), ((240, 320), 1), ((240, 320), 4)]
    for precision in ("32", "bf16-mixed"):
        for mode, overrides in modes.items():
            module = ACTModule(cameras=["top"], chunk_size=100, **overrides).to(device).eval()
            module.set_inference_precision(precision)
            for (h, w), n_envs in shapes:
                obs = {"qpos": np.zeros((n_envs, 14), np.float32),
                       "images/top": np.zeros((n_envs, h, w, 3), np.uint8)}
                module.reset()
                repeat = 100 if overrides["n_action_steps"] == 100 else max(3, args.steps)
                seconds = timed(lambda: module.select_action(obs), repeat=repeat, warmup=0 if repeat == 100 else 2)
                yield {"name": "act_select_action", "value": seconds * 1000, "unit": "ms/step", "mode": mode,
                       "precision": precision, "image_size": [h, w], "n_envs": n_envs,
                       "ms_per_env": seconds * 1000 / n_envs, "device": str(device)}


@row("act_rollout")
def act_rollout(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """Rollout steps/s of the quickstart ACT in the transfer-cube env (120x160 camera, chunk execution)."""
    from lit_imit.envs import make_env
    from lit_imit.evaluation import evaluate

    device = device_of(args)
    module = _act_module(ACT_SHAPES["quickstart"], device).eval()
    n_envs, steps = 2, 100
    envs = [make_env("transfer_cube", cameras=["top"], image_size=(120, 160)) for _ in range(n_envs)]

    def policy(obs):
        with torch.inference_mode():
            return module.select_action(obs).float().cpu().numpy()

    start = time.perf_counter()
    evaluate(envs, policy, module.reset, list(range(n_envs)), seed=0, max_steps=steps)
    rate = n_envs * steps / (time.perf_counter() - start)
    yield {"name": "act_rollout", "value": rate, "unit": "env-steps/s", "num_envs": n_envs, "image_size": [120, 160],
           "policy": "quickstart ACT, chunk 50", "device": str(device)}


# ---- ACT end to end: `python -m lit_imit fit` on recorded episodes -------------------------------------
#: ALOHA's control rate (``lit_imit.envs.aloha.DT`` = 0.02 s): the fps of the LeRobot export of the episodes
ALOHA_FPS = 50
#: LeRobot's side of ``act_fit`` (run with the python of LeRobot's own venv; it imports nothing of ours)
BENCHMARK_LEROBOT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_lerobot.py"
#: the package root, put first on the fit's PYTHONPATH so that it runs this checkout's lit_imit and callbacks
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def _image_hw(text: str) -> tuple[int, int]:
    """``480x640`` -> (480, 640); anything else is an error naming the option."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--fit-image-size {text!r}: expected HEIGHTxWIDTH, e.g. 480x640") from None
    return height, width


def _fit_store(path: Path, episodes: int, image_hw: tuple[int, int]) -> dict[str, Any]:
    """The store at ``path``: recorded there (``episodes`` teacher episodes of transfer cube, one ``top`` camera
    at ``image_hw``) when it holds none, else reused as it is after checking its camera's frame size (a store
    recorded at another size would time another shape). Returns its episode and frame counts."""
    import h5py

    from lit_imit.data.episodes import EpisodeStore

    store = EpisodeStore(path)
    if not store.ids():
        _recorded_store(path, episodes, image_hw)
        store = EpisodeStore(path)
    first = store.path(store.ids()[0])
    with h5py.File(first, "r") as f:
        if "observations/images/top" not in f:
            raise ValueError(f"{first}: no observations/images/top (act_fit trains ACT on the top camera)")
        shape = f["observations/images/top"].shape
    if tuple(shape[1:3]) != tuple(image_hw):
        raise ValueError(f"{first}: observations/images/top is {shape[1]}x{shape[2]}, --fit-image-size asks for "
                         f"{image_hw[0]}x{image_hw[1]}; use another --fit-store (or the same size)")
    return {"episodes": len(store.ids()), "frames": sum(store.length(i) for i in store.ids())}


def _fit_overrides(text: str | None) -> dict[str, Any]:
    """``--fit-model``'s JSON object of ACTModule arguments (tests pass a tiny ACT); ``{}`` when not given."""
    import json

    try:
        overrides = json.loads(text) if text else {}
    except json.JSONDecodeError as err:
        raise ValueError(f"--fit-model: not a JSON object of ACTModule arguments: {err}") from err
    if not isinstance(overrides, dict):
        raise ValueError(f"--fit-model: expected a JSON object of ACTModule arguments, got {text!r}")
    return overrides


def _act_fit_model(overrides: dict[str, Any]) -> dict[str, Any]:
    """ACTModule's init args: LeRobot's shape (``ACT_SHAPES["lerobot"]``: the module's defaults, chunk 100) under
    ``overrides``."""
    chunk = ACT_SHAPES["lerobot"]["chunk"]
    return {"cameras": ["top"], "chunk_size": chunk, "n_action_steps": chunk, **ACT_SHAPES["lerobot"]["model"],
            **overrides}


def _fit_config(run: Path, store: Path, model: dict[str, Any], args: argparse.Namespace, precision: str,
                device: torch.device) -> Path:
    """The config of the timed fit, written to ``run/config.yaml``: the real DataModule (workers, no validation
    split: LeRobot validates nothing either), the CLI's TensorBoard logging, a checkpoint every
    ``--fit-checkpoint-every`` steps (besides ``last.ckpt`` at each epoch end), no rollouts, and a StepTimer
    stamping the first and the last timed step."""
    import yaml

    config = {
        "seed_everything": 0,
        "trainer": {
            "max_steps": args.fit_steps, "max_epochs": -1, "precision": precision,
            "accelerator": "gpu" if device.type == "cuda" else "cpu", "devices": 1,
            "callbacks": [{"class_path": "callbacks.step_timer.StepTimer",
                           "init_args": {"path": str(run / "step_times.json"),
                                         "steps": [args.fit_skip, args.fit_steps]}}],
        },
        "checkpoint": {"every_n_train_steps": args.fit_checkpoint_every},
        "model": {"class_path": "lit_imit.modules.act.ACTModule", "init_args": model},
        "data": {"class_path": "lit_imit.data.EpisodeDataModule",
                 "init_args": {"data_dir": str(store), "batch_size": ACT_SHAPES["lerobot"]["batch"],
                               "num_workers": args.fit_workers, "val_episodes": 0}},
    }
    path = run / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _run_fit(run: Path, config: Path, threads: int | None) -> float:
    """``python -m lit_imit fit --config config`` in ``run`` (logs and checkpoints land there, its output in
    ``run/fit.log``); returns the Unix time it was launched. A failed fit is an error with the log's tail."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT),
                                                                      os.environ.get("PYTHONPATH")]))}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads in the fit, as --threads sets them here
    launched = time.time()
    with open(run / "fit.log", "w") as log:
        done = subprocess.run([sys.executable, "-m", "lit_imit", "fit", "--config", str(config)], cwd=run,
                              stdout=log, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        tail = (run / "fit.log").read_text()[-3000:]
        raise RuntimeError(f"python -m lit_imit fit --config {config} failed (exit {done.returncode}):\n{tail}")
    return launched


def _in_memory_rate(model: dict[str, Any], image_hw: tuple[int, int], precision: str, device: torch.device,
                    steps: int) -> dict[str, float]:
    """The same ACT's training rate on one synthetic batch in memory (``measure_train_throughput``): the step
    alone, without loading, logging or checkpoints."""
    from lit_imit.benchmarking import act_batch, measure_train_throughput
    from lit_imit.modules.act import ACTModule

    torch.manual_seed(0)
    module = ACTModule(**model).to(device)
    batch = act_batch(ACT_SHAPES["lerobot"]["batch"], ["top"], image_hw, chunk_size=model["chunk_size"],
                      device=device)
    dtype = torch.bfloat16 if precision != "32" else None
    return measure_train_throughput(module, batch, steps=steps, warmup=1, autocast_dtype=dtype)


def _lerobot_dataset(store: Path, dest: Path) -> Path:
    """The store exported to LeRobot's format at ``dest`` with our exporter (LeRobot's own video defaults: AV1,
    crf 30, a keyframe every 2 frames), or ``dest`` as it is when an export is already there."""
    from lit_imit.data.lerobot_format import INFO_PATH, export_lerobot

    if (dest / INFO_PATH).exists():
        return dest
    return export_lerobot(store, dest, "lit-imit/act_fit", fps=ALOHA_FPS)


def _lerobot_fit(python: str, dataset: Path, model_overrides: dict[str, Any], args: argparse.Namespace,
                 precision: str, device: torch.device) -> dict[str, Any]:
    """``scripts/benchmark_lerobot.py --fit`` under LeRobot's python (it runs ``lerobot-train`` at the same
    steps, checkpoint interval, workers and precision); its JSON line."""
    import json
    import subprocess

    cmd = [python, str(BENCHMARK_LEROBOT), "--fit", str(dataset), "--fit-steps", str(args.fit_steps),
           "--fit-skip", str(args.fit_skip), "--checkpoint-every", str(args.fit_checkpoint_every),
           "--workers", str(args.fit_workers), "--precision", precision, "--device", device.type]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    cmd += [f"--train-arg=--policy.{key}={json.dumps(value)}" for key, value in model_overrides.items()]
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {done.returncode}):\n{done.stdout[-2000:]}"
                           f"\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def _timed_fit(run: Path, store: Path, model: dict[str, Any], args: argparse.Namespace, precision: str,
               device: torch.device) -> dict[str, Any]:
    """One timed fit in the new directory ``run`` (removed afterwards: full-size checkpoints are large): its
    steady-state rate between the stamped steps, the time from launch to the first of them, the checkpoints."""
    import shutil

    from lit_imit.benchmarking import read_step_times, steady_rate

    run.mkdir()
    launched = _run_fit(run, _fit_config(run, store, model, args, precision, device), args.threads)
    stamps = read_step_times(run / "step_times.json")
    rate = steady_rate(stamps["steps"], args.fit_skip, args.fit_steps, ACT_SHAPES["lerobot"]["batch"])
    checkpoints = sorted(p.name for p in run.rglob("*.ckpt"))
    shutil.rmtree(run)
    return {"samples_per_s": rate["samples_per_s"], "fit_steps_per_s": rate["steps_per_s"],
            "to_first_timed_step_s": round(stamps["unix"][args.fit_skip] - launched, 2), "checkpoints": checkpoints}


@row("act_fit")
def act_fit(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """ACT `python -m lit_imit fit` samples/s on recorded episodes (HDF5 store, loader workers, logging, a
    checkpoint every N steps) against the in-memory step rate; with --fit-lerobot-python, lerobot-train too."""
    from lit_imit.cli import trainer_defaults

    if not 1 <= args.fit_skip < args.fit_steps:
        raise ValueError(f"--fit-skip ({args.fit_skip}) must be >= 1 and below --fit-steps ({args.fit_steps})")
    device, image_hw = device_of(args), _image_hw(args.fit_image_size)
    overrides = _fit_overrides(args.fit_model)
    model = _act_fit_model(overrides)
    with tempfile.TemporaryDirectory(prefix="act_fit_") as tmp:
        store = Path(args.fit_store) if args.fit_store else Path(tmp) / "store"
        counts = _fit_store(store, args.fit_episodes, image_hw)
        dataset = None
        if args.fit_lerobot_python:
            dataset = _lerobot_dataset(store, store.with_name(store.name + "_lerobot"))
        for precision in [p.strip() for p in args.fit_precision.split(",") if p.strip()]:
            fit = _timed_fit(Path(tmp) / f"run_{precision}", store, model, args, precision, device)
            memory = _in_memory_rate(model, image_hw, precision, device, args.steps)
            result = {
                "name": "act_fit", "value": fit.pop("samples_per_s"), "unit": "samples/s", "precision": precision,
                "batch_size": ACT_SHAPES["lerobot"]["batch"], "image_size": list(image_hw),
                "chunk_size": model["chunk_size"], "model": overrides or "ACT_SHAPES['lerobot']",
                "device": str(device), **counts, "store": str(store), "num_workers": args.fit_workers,
                "fit_steps": args.fit_steps, "timed_steps": [args.fit_skip, args.fit_steps],
                "checkpoint_every": args.fit_checkpoint_every,
                "log_every_n_steps": trainer_defaults()["log_every_n_steps"], **fit,
                "in_memory_samples_per_s": memory["samples_per_s"],
            }
            result["fit_vs_in_memory"] = round(result["value"] / memory["samples_per_s"], 4)
            if dataset is not None:
                lerobot = _lerobot_fit(args.fit_lerobot_python, dataset, overrides, args, precision, device)
                result.update({"lerobot_samples_per_s": lerobot["value"], "lerobot_dataset": str(dataset),
                               "fit_vs_lerobot": round(result["value"] / lerobot["value"], 4)})
            yield result


# ---- CLIPort (Ravens pick-and-place) -------------------------------------------------------------------
def _cliport_presets(device: torch.device) -> dict[str, tuple[dict[str, Any], tuple[int, ...]]]:
    """(module arguments, batch sizes) of configs/cliport/quick.yaml's network and of the paper's (RN50 CLIP,
    width 64, full resolution; random weights). On a CPU the paper's network is timed at batch 1 only (a step is
    2 TFLOP): its wide convolutions show the rate the narrow CPU-sized ones cannot reach."""
    from lit_imit.modules.cliport import TINY_CLIP

    quick = dict(spatial_width=8, clip_overrides=TINY_CLIP, downsample=4, crop_size=32)
    return {"quick": (quick, (1, 8)), "paper": ({}, (1, 8) if device.type == "cuda" else (1,))}


@row("cliport_train")
def cliport_train(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """CLIPort training samples/s (pick + place fwd/bwd + Adam, batch in memory) with FLOP/s: the CPU-sized network at
    batch 1 and 8, the paper's at batch 1 on a CPU (1 and 8 on CUDA)."""
    from lit_imit.benchmarking import cliport_batch, count_train_flops, flops_fields, measure_train_throughput
    from lit_imit.modules.cliport import CLIPortModule

    device = device_of(args)
    for preset, (config, batch_sizes) in _cliport_presets(device).items():
        module = CLIPortModule(**config).to(device)
        for batch_size in batch_sizes:
            batch = cliport_batch(batch_size, device=device)
            # the paper's network on a CPU: 14 s a step at 2 threads, so a fifth of the steps
            steps = max(1, args.steps // batch_size // (5 if preset == "paper" and device.type == "cpu" else 1))
            result = measure_train_throughput(module, batch, steps=steps, warmup=1)
            flops = count_train_flops(module, batch)
            yield {"name": f"cliport_train_{preset}", "value": result["samples_per_s"], "unit": "samples/s",
                   "batch_size": batch_size, "heightmap": [320, 160], "augment": True, "device": str(device),
                   "timed_steps": steps, "channels_last": bool(module.hparams.channels_last), **config,
                   **{k: v for k, v in result.items() if k != "samples_per_s"},
                   **flops_fields(flops, result["step_s"], device, "32")}


@row("cliport_decisions")
def cliport_decisions(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """CLIPort decisions/s of predict() (pick, place over 36 rotations, entropies) for 1 and 4 envs."""
    from lit_imit.benchmarking import cliport_batch, measure_rate
    from lit_imit.modules.cliport import CLIPortModule

    device = device_of(args)
    for preset, config in _cliport_presets(device).items():
        module = CLIPortModule(**config).to(device)
        for n_envs in (1, 4):
            batch = cliport_batch(n_envs, device=device)
            rate = measure_rate(lambda: module.predict(batch), n_envs, repeat=3, device_type=device.type)
            yield {"name": f"cliport_decisions_{preset}", "value": rate, "unit": "decisions/s", "num_envs": n_envs,
                   "device": str(device), **config}


@row("cliport_rollout")
def cliport_rollout(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """Pick-place steps/s of the quick CLIPort policy in 2 lock-stepped put-block-in-bowl envs (policy + sim)."""
    from lit_imit.envs import make_env
    from lit_imit.evaluation import evaluate
    from lit_imit.modules.cliport import CLIPortModule

    device = device_of(args)
    config = _cliport_presets(torch.device("cpu"))["quick"]
    module = CLIPortModule(**config).to(device).eval()
    task, n_envs = "put-block-in-bowl-seen-colors", 2
    envs = [make_env(task) for _ in range(n_envs)]

    def policy(obs):
        return module.select_action(obs).float().cpu().numpy()

    start = time.perf_counter()
    results = evaluate(envs, policy, module.reset, list(range(2 * n_envs)), seed=0)
    seconds = time.perf_counter() - start
    for env in envs:
        env.close()
    steps = sum(r.length for r in results)
    yield {"name": "cliport_rollout", "value": steps / seconds, "unit": "pick-place steps/s", "task": task,
           "num_envs": n_envs, "episodes": len(results), "policy": "quick CLIPort", "device": str(device)}


@row("ravens_env_steps")
def ravens_env_steps(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """Ravens pick-place steps/s driven by the oracle (physics + three rendered views fused per step), and resets/s."""
    from lit_imit.envs import make_env, make_teacher

    for task in ("put-block-in-bowl-seen-colors", "packing-seen-shapes"):
        env = make_env(task)
        teacher = make_teacher(task, env)
        steps = resets = 0
        step_time = reset_time = 0.0
        for seed in range(3):
            start = time.perf_counter()
            env.reset(seed=seed)
            reset_time += time.perf_counter() - start
            resets += 1
            done = False
            while not done:
                action = teacher.act(None)
                start = time.perf_counter()
                _, _, terminated, truncated, _ = env.step(action)
                step_time += time.perf_counter() - start
                steps += 1
                done = terminated or truncated
        env.close()
        yield {"name": "ravens_env_steps", "value": steps / step_time, "unit": "pick-place steps/s", "task": task,
               "steps": steps, "resets_per_s": resets / reset_time}


# ---- Diffusion Policy ---------------------------------------------------------------------------------
def _diffusion_module(device: torch.device, **overrides: Any):
    """LeRobot's Diffusion image shape: one 480x640 camera cropped to 440x560, To 2, Tp 16, dims 512/1024/2048."""
    from lit_imit.benchmarking import identity_stats
    from lit_imit.modules.diffusion import DiffusionModule

    kwargs = dict(cameras=["top"], n_obs_steps=2, horizon=16, n_action_steps=8, down_dims=[512, 1024, 2048],
                  crop_shape=[440, 560], warmup_steps=1, max_steps=1000)
    kwargs.update(overrides)
    module = DiffusionModule(**kwargs)
    module.load_stats(identity_stats())
    return module.to(device)


@row("diffusion_train")
def diffusion_train(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """Diffusion training samples/s at LeRobot's Diffusion image shape (batch 8), fp32 and bf16 autocast, with
    the model's FLOP/s against the machine's peak."""
    from lit_imit.benchmarking import count_train_flops, diffusion_batch, flops_fields

    device = device_of(args)
    batch = {k: v.to(device) for k, v in diffusion_batch(8).items()}
    for precision in ("32", "bf16-mixed"):
        module = _diffusion_module(device).train()
        optimizer = module.configure_optimizers()["optimizer"]

        def step() -> None:
            ctx = torch.autocast(device.type, dtype=torch.bfloat16) if precision != "32" else nullcontext()
            with ctx:
                loss = module.per_sample_loss(batch).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        cpu0 = time.process_time()
        seconds = timed(step, repeat=max(1, args.steps // 2), warmup=1)
        cpu_s = time.process_time() - cpu0
        dtype = torch.bfloat16 if precision != "32" else None
        flops = count_train_flops(module, batch, autocast_dtype=dtype,
                                  loss_fn=lambda: module.per_sample_loss(batch).mean())
        yield {"name": "diffusion_train_lerobot_shape", "value": 8 / seconds, "unit": "samples/s",
               "precision": precision, "batch_size": 8, "image_size": [480, 640], "crop": [440, 560],
               "n_obs_steps": 2, "horizon": 16, "down_dims": [512, 1024, 2048], "device": str(device),
               "step_s": seconds, "cpu_s_total": cpu_s, **flops_fields(flops, seconds, device, precision)}


@row("diffusion_inference")
def diffusion_inference(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """Diffusion latency per action chunk for one env at LeRobot's model size: DDIM 10 (fp32, bf16 autocast) vs
    DDPM 100, at 480x640 (LeRobot's 440x560 crop) and 240x320 (the same crop ratio, 220x280)."""
    device = device_of(args)
    for (h, w), crop in (((480, 640), [440, 560]), ((240, 320), [220, 280])):
        obs = {"qpos": np.zeros((1, 14), np.float32), "images/top": np.zeros((1, h, w, 3), np.uint8)}
        for scheduler, steps, precision in (("ddim", 10, "32"), ("ddim", 10, "bf16-mixed"), ("ddpm", 100, "32")):
            module = _diffusion_module(device, inference_scheduler=scheduler, num_inference_steps=steps,
                                       crop_shape=crop).eval()
            module.set_inference_precision(precision)

            def query() -> None:
                module.reset()  # an empty queue: every call denoises a new chunk
                module.select_action(obs)

            seconds = timed(query, repeat=2 if scheduler == "ddim" else 1, warmup=1)
            yield {"name": "diffusion_inference", "value": seconds * 1000, "unit": "ms/chunk",
                   "scheduler": scheduler, "denoising_steps": steps, "precision": precision, "image_size": [h, w],
                   "crop_shape": crop, "device": str(device)}


@row("vinn_train")
def vinn_train(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """VINN's BYOL step (2 views x batch 16 at 96x128: online fwd+bwd, target fwd, Adam; the target's moving
    average, ~1 % of a step, is left out) and its memory's encoding cost per frame: configs/vinn/transfer_cube.yaml."""
    from lit_imit.benchmarking import measure_train_throughput
    from lit_imit.modules.vinn import VINNModule

    device = device_of(args)
    module = VINNModule(cameras=["top"], chunk_size=20, n_action_steps=1, temporal_ensemble_coeff=0.01,
                        crop_scale=(0.5, 1.0)).to(device)
    batch = {"images/top": torch.randint(0, 255, (16, 96, 128, 3), dtype=torch.uint8, device=device),
             "qpos": torch.zeros(16, 14, device=device), "weight": torch.ones(16, device=device)}
    result = measure_train_throughput(module, batch, steps=args.steps, warmup=1)
    yield {"name": "vinn_byol_step", "value": result["step_s"], "unit": "s/step", "batch_size": 16,
           "image_size": [96, 128], "device": str(device), "cpu_s_per_step": result["cpu_s_per_step"]}
    module.eval()
    frames = {"top": torch.randint(0, 255, (128, 96, 128, 3), dtype=torch.uint8)}
    with torch.no_grad():
        seconds = timed(lambda: module.encode_images(frames), repeat=1, warmup=1)
    yield {"name": "vinn_encode_frame", "value": seconds / 128 * 1000, "unit": "ms/frame", "image_size": [96, 128],
           "device": str(device)}
