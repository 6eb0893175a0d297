"""Shared fixtures: small synthetic episode stores written in the real on-disk format."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Before torch loads OpenMP: spinning worker threads fight the 2-process DDP tests and the data-loader
# workers for the two cores; passive waiting keeps them out of each other's way.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import h5py
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `callbacks` and `scripts` live at the top of the repo
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("MUJOCO_GL", "egl")
torch.set_num_threads(1)  # tiny test models: one thread avoids oversubscription on 2 cores


def make_episode_arrays(length: int = 30, dim: int = 14, cameras=("top",), hw=(24, 32), seed: int = 0):
    """A deterministic fake trajectory whose action at t equals qpos at t+1 (a learnable relation)."""
    rng = np.random.default_rng(seed)
    qpos = np.cumsum(rng.normal(0, 0.05, size=(length + 1, dim)), axis=0).astype(np.float32)
    arrays = {
        "observations/qpos": qpos[:-1],
        "observations/qvel": np.diff(qpos, axis=0).astype(np.float32),
        "action": qpos[1:].copy(),
    }
    for cam in cameras:
        frames = rng.integers(0, 255, size=(length, *hw, 3), dtype=np.uint8)
        frames[:, 0, 0, 0] = np.arange(length) % 256  # frame number readable from the pixel
        arrays[f"observations/images/{cam}"] = frames
    return arrays


@pytest.fixture
def episode_store(tmp_path):
    """A store with 5 episodes of lengths 20..28, one 24x32 'top' camera."""
    from lit_imit.data import EpisodeStore

    store = EpisodeStore(tmp_path / "store")
    for i in range(5):
        store.add(make_episode_arrays(20 + 2 * i, seed=i), {"task": "transfer_cube", "source": "teacher", "seed": i})
    return store


def write_act_original(path: Path, length: int = 12, dim: int = 14, hw=(16, 20), seed: int = 3,
                       env_state_dim: int | None = None, cameras=("top",)) -> None:
    """An episode exactly as the original ACT record_sim_episodes.py writes it (no compression, attrs sim),
    with its optional ``/observations/env_state`` when ``env_state_dim`` is given."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as root:
        root.attrs["sim"] = True
        obs = root.create_group("observations")
        image = obs.create_group("images")
        for cam in cameras:
            image.create_dataset(cam, (length, *hw, 3), dtype="uint8", chunks=(1, *hw, 3))[...] = rng.integers(
                0, 255, (length, *hw, 3)
            )
        obs.create_dataset("qpos", (length, dim), dtype="float32")[...] = rng.normal(size=(length, dim))
        obs.create_dataset("qvel", (length, dim), dtype="float32")[...] = rng.normal(size=(length, dim))
        if env_state_dim is not None:
            obs.create_dataset("env_state", (length, env_state_dim), dtype="float32")[...] = rng.normal(
                size=(length, env_state_dim))
        root.create_dataset("action", (length, dim), dtype="float32")[...] = rng.normal(size=(length, dim))
