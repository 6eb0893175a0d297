"""Synthetic batches and throughput timers for ``scripts/benchmark.py`` (and tests that need a batch).

The batches follow each method's training layout (what its DataModule yields), filled with seeded random
values, so a throughput figure measures the model and the optimizer alone, and a test can build a valid
batch without recording episodes. Kept out of the module files: measuring is not part of a method.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from lit_imit.envs.ravens import geometry as geo


# ---- batches in each method's training layout ----------------------------------------------------------
def act_batch(
    batch_size: int = 8,
    cameras: Sequence[str] = ("top",),
    image_hw: tuple[int, int] = (480, 640),
    state_dim: int = 14,
    action_dim: int = 14,
    chunk_size: int = 100,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, Tensor]:
    """ACT's layout: qpos (B, D), uint8 images (B, H, W, 3), raw action chunks with the tails of some rows
    padded (as the last steps of an episode are). Defaults: LeRobot's ACT shape on ALOHA (batch 8, 480x640)."""
    g = torch.Generator().manual_seed(seed)
    h, w = image_hw
    batch: dict[str, Tensor] = {
        "qpos": torch.randn(batch_size, state_dim, generator=g),
        "action": torch.randn(batch_size, chunk_size, action_dim, generator=g),
        "weight": torch.ones(batch_size),
    }
    valid = torch.randint(chunk_size // 2, chunk_size + 1, (batch_size,), generator=g)
    batch["action_is_pad"] = torch.arange(chunk_size)[None, :] >= valid[:, None]
    for cam in cameras:
        batch[f"images/{cam}"] = torch.randint(0, 256, (batch_size, h, w, 3), dtype=torch.uint8, generator=g)
    return {k: v.to(device) for k, v in batch.items()}


def diffusion_batch(
    batch_size: int = 8,
    n_obs_steps: int = 2,
    horizon: int = 16,
    cameras: Sequence[str] = ("top",),
    image_shape: tuple[int, int] = (480, 640),
    state_dim: int = 14,
    action_dim: int = 14,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Diffusion Policy's layout: To observation steps per sample, a horizon of actions in [-1, 1].

    Defaults are LeRobot's Diffusion image setting on ALOHA: batch 8, 2 observation steps of one 480x640
    camera, horizon 16, 14-D qpos and action (use ``crop_shape=[440, 560]`` on the module).
    """
    g = torch.Generator().manual_seed(seed)
    batch = {
        "qpos": torch.rand(batch_size, n_obs_steps, state_dim, generator=g) * 2 - 1,
        "action": torch.rand(batch_size, horizon, action_dim, generator=g) * 2 - 1,
        "action_is_pad": torch.zeros(batch_size, horizon, dtype=torch.bool),
        "weight": torch.ones(batch_size),
    }
    for cam in cameras:
        batch[f"images/{cam}"] = torch.randint(
            0, 256, (batch_size, n_obs_steps, *image_shape, 3), dtype=torch.uint8, generator=g
        )
    return batch


def identity_stats(state_dim: int = 14, action_dim: int = 14) -> dict[str, dict[str, Tensor]]:
    """Normalisation statistics under which synthetic qpos and actions in [-1, 1] are already normalised."""
    stats = {}
    for key, dim in (("qpos", state_dim), ("action", action_dim)):
        stats[key] = {"mean": torch.zeros(dim), "std": torch.ones(dim), "min": -torch.ones(dim), "max": torch.ones(dim)}
    return stats


def cliport_batch(batch_size: int = 1, hw: tuple[int, int] = geo.HEIGHTMAP_SHAPE, seed: int = 0,
                  device: str | torch.device = "cpu") -> dict[str, Any]:
    """CLIPort's layout: decisions of uint8 colour, heights in metres, an instruction and pick/place labels."""
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    return {
        "color": torch.randint(0, 256, (batch_size, h, w, 3), dtype=torch.uint8, generator=g).to(device),
        "height": (torch.rand(batch_size, h, w, generator=g) * 0.05).to(device),
        "instruction": ["put the red blocks in a green bowl"] * batch_size,
        "pick_pixel": torch.stack([torch.randint(0, h, (batch_size,), generator=g),
                                   torch.randint(0, w, (batch_size,), generator=g)], dim=1).to(device),
        "place_pixel": torch.stack([torch.randint(0, h, (batch_size,), generator=g),
                                    torch.randint(0, w, (batch_size,), generator=g)], dim=1).to(device),
        "place_theta": (torch.rand(batch_size, generator=g) * 2 * math.pi - math.pi).to(device),
        "weight": torch.ones(batch_size, device=device),
    }


# ---- timers ---------------------------------------------------------------------------------------------
def _synchronize(device_type: str) -> None:
    if device_type == "cuda":
        torch.cuda.synchronize()


def _first_optimizer(configured: Any) -> torch.optim.Optimizer:
    """The optimizer of whatever ``configure_optimizers`` returned (an optimizer or Lightning's dict)."""
    return configured["optimizer"] if isinstance(configured, Mapping) else configured


def measure_train_throughput(
    module: Any,
    batch: Mapping[str, Any],
    steps: int = 3,
    warmup: int = 1,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Samples/s of full optimizer steps (the module's training losses, backward, its optimizer) on a batch
    already in memory — what a training step costs without data loading.

    ``warmup`` steps run first, untimed (allocator, oneDNN/cuDNN kernel selection, compilation).
    ``autocast_dtype=torch.bfloat16`` measures what ``Trainer(precision="bf16-mixed")`` runs. The batch size
    is the length of ``batch["weight"]``, which every method's layout carries.
    """
    module.train()
    optimizer = _first_optimizer(module.configure_optimizers())
    device_type = next(module.parameters()).device.type

    def step() -> float:
        ctx = torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
        with ctx:
            loss = module.training_losses(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    for _ in range(warmup):
        step()
    _synchronize(device_type)
    start, start_cpu = time.perf_counter(), time.process_time()
    losses = [step() for _ in range(steps)]
    _synchronize(device_type)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return {
        "samples_per_s": steps * len(batch["weight"]) / elapsed,
        "step_s": elapsed / steps,
        # process CPU seconds per step: on a shared CPU, wall time mostly measures the neighbours
        "cpu_s_per_step": cpu / steps,
        "last_loss": losses[-1],
    }


def measure_rate(call: Callable[[], Any], items: int, repeat: int = 3, device_type: str = "cpu") -> float:
    """Items/s of ``call`` (run once untimed first), e.g. CLIPort decisions/s of ``predict`` on a batch."""
    call()
    _synchronize(device_type)
    start = time.perf_counter()
    for _ in range(repeat):
        call()
    _synchronize(device_type)
    return repeat * items / (time.perf_counter() - start)
