"""LeRobot's ACT and Diffusion training throughput, for the comparison rows of ``scripts/benchmark.py``.

LeRobot pins its own torch, so this runs in a separate virtual environment that has ``lerobot`` installed
(nothing from lit_imit is imported)::

    python3.11 -m venv /tmp/lerobot-venv && /tmp/lerobot-venv/bin/pip install "lerobot==0.4.4"
    OMP_WAIT_POLICY=PASSIVE /tmp/lerobot-venv/bin/python scripts/benchmark_lerobot.py --threads 2
    OMP_WAIT_POLICY=PASSIVE python scripts/benchmark.py --only act_train,diffusion_train --threads 2

It times what a LeRobot training step does (policy forward with the loss, backward, optimizer step) on a
batch already in memory, at the shapes of our ``act_train_lerobot_shape`` and
``diffusion_train_lerobot_shape`` rows: batch 8, one 480x640 camera; ACT with chunk 100, d_model 512,
ff 3200, 4 encoder / 1 decoder layers and the VAE; Diffusion with 2 observation steps, horizon 16, crops
of 440x560 and down dims (512, 1024, 2048). Inputs are random and already normalised (in LeRobot 0.4
normalisation is a separate processor step, outside the policy), backbones randomly initialised (no
download). Both LeRobot's default fp32 and its ``use_amp`` (bf16 autocast on CPU) are timed, so each of
our precisions has its like-for-like number. One JSON object per line, like ``scripts/benchmark.py``.

``--fit DATASET_DIR`` times ``lerobot-train`` itself instead, end to end, as the ``act_fit`` row of
``scripts/benchmark.py`` times ``python -m lit_imit fit``: the same episodes, exported with our exporter
(``python scripts/convert.py lerobot-export STORE DIR --repo-id lit-imit/act_fit --fps 50``, or the row itself with
``--fit-lerobot-python``), ACT at LeRobot's defaults (its shape: chunk 100, d_model 512...), batch 8,
``--fit-steps`` steps with a checkpoint every ``--checkpoint-every``, ``--workers`` loader workers, no eval, no
wandb, the ResNet randomly initialised (no download), videos decoded with PyAV (``torchcodec`` needs FFmpeg's
shared libraries). ``--precision bf16-mixed`` sets ``ACCELERATE_MIXED_PRECISION=bf16``: LeRobot 0.4.4's train
script autocasts through its ``Accelerator``, which takes the precision from there (``policy.use_amp`` is not read
by ``lerobot-train``). The steady-state rate leaves the start-up out the same way as ours: ``--log_freq=1`` makes
``lerobot-train`` log one ``step:N smpl:...`` line after each update (before that step's checkpoint, as our
StepTimer stamps before Lightning's checkpoint), this script stamps each line with ``time.perf_counter`` as it
arrives through the pipe (the log's own timestamps have one-second resolution), and the rate is the steps
between the ``--fit-skip``-th and the last line over the seconds between them::

    python scripts/convert.py lerobot-export data/act_fit data/act_fit_lerobot --repo-id lit-imit/act_fit --fps 50
    /tmp/lerobot-venv/bin/python scripts/benchmark_lerobot.py --fit data/act_fit_lerobot --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch


def features(state_dim: int, action_dim: int, image_hw: tuple[int, int]) -> tuple[dict, dict]:
    from lerobot.configs.types import FeatureType, PolicyFeature

    inputs = {"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(state_dim,)),
              "observation.images.top": PolicyFeature(type=FeatureType.VISUAL, shape=(3, *image_hw))}
    outputs = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(action_dim,))}
    return inputs, outputs


def act_policy_and_batch(batch_size: int, image_hw: tuple[int, int]) -> tuple[Any, dict[str, torch.Tensor]]:
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy

    inputs, outputs = features(14, 14, image_hw)
    config = ACTConfig(input_features=inputs, output_features=outputs, pretrained_backbone_weights=None,
                       device="cpu")
    chunk = config.chunk_size
    batch = {
        "observation.state": torch.randn(batch_size, 14),
        "observation.images.top": torch.rand(batch_size, 3, *image_hw),
        "action": torch.randn(batch_size, chunk, 14),
        "action_is_pad": torch.zeros(batch_size, chunk, dtype=torch.bool),
    }
    return ACTPolicy(config), batch


def diffusion_policy_and_batch(batch_size: int, image_hw: tuple[int, int]) -> tuple[Any, dict[str, torch.Tensor]]:
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    inputs, outputs = features(14, 14, image_hw)
    config = DiffusionConfig(input_features=inputs, output_features=outputs, crop_shape=(440, 560),
                             pretrained_backbone_weights=None, device="cpu")
    n_obs, horizon = config.n_obs_steps, config.horizon
    batch = {
        "observation.state": torch.randn(batch_size, n_obs, 14),
        "observation.images.top": torch.rand(batch_size, n_obs, 3, *image_hw),
        "action": torch.randn(batch_size, horizon, 14).clamp(-1, 1),
        "action_is_pad": torch.zeros(batch_size, horizon, dtype=torch.bool),
    }
    return DiffusionPolicy(config), batch


def optimizer_for(policy: Any) -> torch.optim.Optimizer:
    """LeRobot's optimizer preset of the policy (AdamW for ACT, Adam for Diffusion)."""
    preset = policy.config.get_optimizer_preset()
    return preset.build(policy.get_optim_params())


def timed_steps(step: Callable[[], float], steps: int, warmup: int) -> tuple[float, float, float]:
    for _ in range(warmup):
        step()
    start, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        loss = step()
    return (time.perf_counter() - start) / steps, (time.process_time() - cpu0) / steps, loss


# ---- --fit: lerobot-train end to end --------------------------------------------------------------------
#: the line ``lerobot-train`` logs after each update with ``--log_freq=1`` (``MetricsTracker.__str__``)
STEP_LINE = re.compile(r"\bstep:\S+ smpl:\S+ ep:")


def dataset_summary(root: Path) -> dict[str, Any]:
    """Episodes, frames and the camera's (H, W) from ``meta/info.json`` (an error naming the file otherwise)."""
    path = root / "meta" / "info.json"
    try:
        info = json.loads(path.read_text())
        camera = info["features"]["observation.images.top"]
        return {"episodes": info["total_episodes"], "frames": info["total_frames"],
                "image_size": [int(v) for v in camera["shape"][:2]]}
    except FileNotFoundError:
        sys.exit(f"{path}: missing; --fit takes a LeRobotDataset v3 directory (scripts/convert.py lerobot-export)")
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as err:
        sys.exit(f"{path}: no total_episodes, total_frames or observation.images.top shape ({err!r})")


def train_command(args: argparse.Namespace, output_dir: Path, device: str) -> list[str]:
    """``lerobot-train`` (the console script of this venv) with the settings of our ``act_fit`` row."""
    exe = Path(sys.executable).with_name("lerobot-train")
    if not exe.exists():
        sys.exit(f"{exe}: missing; run this script with the python of the venv that has lerobot==0.4.4")
    return [str(exe), f"--dataset.repo_id={args.repo_id}", f"--dataset.root={args.fit}",
            "--dataset.video_backend=pyav", "--policy.type=act", f"--policy.device={device}",
            "--policy.pretrained_backbone_weights=null", "--policy.push_to_hub=false", "--wandb.enable=false",
            f"--batch_size={args.batch_size}", f"--steps={args.fit_steps}", f"--save_freq={args.checkpoint_every}",
            "--log_freq=1", "--eval_freq=0", f"--num_workers={args.workers}", f"--output_dir={output_dir}",
            "--seed=0", *args.train_arg]


def stamp_steps(command: list[str], env: dict[str, str], log_path: Path) -> tuple[dict[int, float], float, int]:
    """Runs ``command``, copying its output to ``log_path``; returns ``{step: perf_counter when its log line
    arrived}`` (the n-th step line is step n), the launch time and the exit status."""
    stamps: dict[int, float] = {}
    launched = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        for raw in iter(proc.stdout.readline, b""):
            now = time.perf_counter()
            line = raw.decode(errors="replace")
            log.write(line)
            if STEP_LINE.search(line):
                stamps[len(stamps) + 1] = now
        status = proc.wait()
    return stamps, launched, status


def fit_rate(stamps: dict[int, float], first: int, last: int, batch_size: int) -> dict[str, float]:
    """Steps/s and samples/s between the ends of steps ``first`` and ``last`` (``steady_rate`` of
    lit_imit.benchmarking, restated here: this file imports nothing of ours)."""
    missing = [s for s in (first, last) if s not in stamps]
    if missing:
        raise ValueError(f"steps {missing} were not logged (logged up to {max(stamps, default=0)})")
    steps_per_s = (last - first) / (stamps[last] - stamps[first])
    return {"steps_per_s": steps_per_s, "samples_per_s": steps_per_s * batch_size}


def run_fit(args: argparse.Namespace) -> None:
    """One ``lerobot-train`` run per precision; one JSON line each."""
    import lerobot

    if not 1 <= args.fit_skip < args.fit_steps:
        sys.exit(f"--fit-skip ({args.fit_skip}) must be >= 1 and below --fit-steps ({args.fit_steps})")
    dataset = dataset_summary(args.fit)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    for precision in [p.strip() for p in args.precision.split(",") if p.strip()]:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1",
               "ACCELERATE_MIXED_PRECISION": "bf16" if precision == "bf16-mixed" else "no"}
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        work = Path(tempfile.mkdtemp(prefix="lerobot_fit_"))
        try:
            command = train_command(args, work / "train", device)
            stamps, launched, status = stamp_steps(command, env, work / "train.log")
            if status != 0:
                sys.exit(f"lerobot-train failed (exit {status}):\n{(work / 'train.log').read_text()[-4000:]}")
            rate = fit_rate(stamps, args.fit_skip, args.fit_steps, args.batch_size)
            checkpoints = sorted(p.name for p in (work / "train" / "checkpoints").iterdir() if p.name != "last")
        finally:
            shutil.rmtree(work, ignore_errors=True)  # full-size checkpoints are large
        print(json.dumps({"name": "lerobot_act_fit", "value": round(rate["samples_per_s"], 4), "unit": "samples/s",
                          "lerobot": lerobot.__version__, "torch": torch.__version__, "precision": precision,
                          "batch_size": args.batch_size, **dataset, "dataset": str(args.fit), "device": device,
                          "num_workers": args.workers, "fit_steps": args.fit_steps,
                          "timed_steps": [args.fit_skip, args.fit_steps], "checkpoint_every": args.checkpoint_every,
                          "checkpoints": checkpoints, "fit_steps_per_s": rate["steps_per_s"],
                          "to_first_timed_step_s": round(stamps[args.fit_skip] - launched, 2),
                          "video_backend": "pyav", "train_args": args.train_arg,
                          "threads": args.threads or "torch default"}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (2 on the reference box)")
    parser.add_argument("--steps", type=int, default=6, help="timed optimisation steps per row")
    parser.add_argument("--only", default="act,diffusion", help="comma-separated: act, diffusion")
    parser.add_argument("--precision", default="32,bf16-mixed",
                        help="comma-separated: 32 (LeRobot's default) and/or bf16-mixed (its use_amp on CPU)")
    fit = parser.add_argument_group("--fit", "lerobot-train end to end on an exported dataset")
    fit.add_argument("--fit", type=Path, default=None, metavar="DATASET_DIR",
                     help="LeRobotDataset v3 directory (our export of the act_fit store): time lerobot-train on it")
    fit.add_argument("--repo-id", default="lit-imit/act_fit", help="repo_id to load the dataset under (any owner/name)")
    fit.add_argument("--fit-steps", type=int, default=60, help="training steps (the last timed one)")
    fit.add_argument("--fit-skip", type=int, default=10, help="steps left out as start-up")
    fit.add_argument("--checkpoint-every", type=int, default=20, help="lerobot-train --save_freq")
    fit.add_argument("--workers", type=int, default=2, help="lerobot-train --num_workers")
    fit.add_argument("--batch-size", type=int, default=8, help="lerobot-train --batch_size")
    fit.add_argument("--device", default="auto", help="auto, cpu or cuda (--policy.device)")
    fit.add_argument("--train-arg", action="append", default=[], metavar="--KEY=VALUE",
                     help="extra lerobot-train argument, e.g. --train-arg=--policy.dim_model=64 (repeatable)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import lerobot
    except ImportError:
        parser.error("lerobot is not installed in this environment; run this script with the python of a venv "
                     "that has it (pip install 'lerobot==0.4.4'), see the top of this file")

    if args.fit is not None:
        run_fit(args)
        return
    builders = {"act": act_policy_and_batch, "diffusion": diffusion_policy_and_batch}
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    for name, precision in [(n.strip(), p) for n in args.only.split(",") if n.strip() for p in precisions]:
        torch.manual_seed(0)
        policy, batch = builders[name](8, (480, 640))
        policy.train()
        optimizer = optimizer_for(policy)

        def step() -> float:
            # LeRobot's train script wraps the forward in torch.autocast(device.type) when use_amp is set;
            # on CPU that is bfloat16
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
                loss, _ = policy.forward(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return float(loss.detach())

        seconds, cpu_seconds, loss = timed_steps(step, args.steps if name == "act" else max(1, args.steps // 2), 1)
        print(json.dumps({"name": f"lerobot_{name}_train", "value": round(8 / seconds, 4), "unit": "samples/s",
                          "lerobot": lerobot.__version__, "torch": torch.__version__, "precision": precision,
                          "batch_size": 8, "image_size": [480, 640], "step_s": seconds,
                          "cpu_s_per_step": cpu_seconds, "last_loss": loss, "threads": torch.get_num_threads()}),
              flush=True)


if __name__ == "__main__":
    main()
