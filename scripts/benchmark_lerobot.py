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
"""

from __future__ import annotations

import argparse
import json
import time
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (2 on the reference box)")
    parser.add_argument("--steps", type=int, default=6, help="timed optimisation steps per row")
    parser.add_argument("--only", default="act,diffusion", help="comma-separated: act, diffusion")
    parser.add_argument("--precision", default="32,bf16-mixed",
                        help="comma-separated: 32 (LeRobot's default) and/or bf16-mixed (its use_amp on CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import lerobot
    except ImportError:
        parser.error("lerobot is not installed in this environment; run this script with the python of a venv "
                     "that has it (pip install 'lerobot==0.4.4'), see the top of this file")

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
