"""Windows over episodes: the training samples of the action-chunking methods (ACT, Diffusion).

A sample is anchored at one step ``t`` of one episode and holds

* the observation at ``t`` (or a history ``t-To+1 .. t`` when ``n_obs_steps > 1``, the first frame repeated
  before the episode start, as Diffusion Policy does);
* the actions ``t+offset .. t+offset+k-1`` with an ``action_is_pad`` mask for steps past the episode end
  (ACT) — a negative ``action_offset`` starts the window at the first observation step (Diffusion Policy);
* ``weight``: the importance-sampling weight of the sample (1 unless prioritized sampling sets it).

Co-training reads several stores: :class:`StoreUnion` lays one :class:`ChunkDataset` per store end to end,
after :func:`check_same_layout` has made sure that the stores agree on every key's shape.

Low-dimensional arrays are loaded once into RAM. Images are read lazily from the HDF5 files, one chunk
(frame) at a time, through handles opened inside each DataLoader worker (h5py handles do not survive fork).
"""

from __future__ import annotations

from typing import Any, Sequence

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from lit_imit.data.episodes import (
    EpisodeError,
    EpisodeStore,
    LazyEpisodeFiles,
    nonfinite_summary,
    obs_path,
    open_episode,
)


class ChunkDataset(Dataset):
    """(observation [history], action chunk) samples over a set of episodes of one store."""

    def __init__(
        self,
        store: EpisodeStore,
        episode_ids: Sequence[int],
        state_keys: Sequence[str] = ("qpos",),
        camera_keys: Sequence[str] = ("top",),
        chunk_size: int = 100,
        n_obs_steps: int = 1,
        action_offset: int = 0,
        action_dim: int | None = None,
        drop_last_steps: int = 0,
    ) -> None:
        if chunk_size < 1 or n_obs_steps < 1:
            raise ValueError(f"chunk_size ({chunk_size}) and n_obs_steps ({n_obs_steps}) must be >= 1")
        self.store = store
        self.episode_ids = [int(i) for i in episode_ids]
        self.state_keys = list(state_keys)
        self.image_keys = [f"images/{cam}" for cam in camera_keys]
        self.chunk_size = chunk_size
        self.n_obs_steps = n_obs_steps
        self.action_offset = action_offset
        self.paths = [str(store.path(i)) for i in self.episode_ids]
        self.lowdim = [self._load_lowdim(p, action_dim) for p in self.paths]
        self._check_images()
        self.index = self._build_index(drop_last_steps)
        self.weights = np.ones(len(self.index), dtype=np.float32)
        self._files = LazyEpisodeFiles()
        self._flat: dict[str, np.ndarray] | None = None  # built by _flat_lowdim on first use

    # ---- construction -----------------------------------------------------------------------------
    def _load_lowdim(self, path: str, action_dim: int | None) -> dict[str, np.ndarray]:
        with open_episode(path) as f:
            arrays = {}
            for key in [*self.state_keys, "action"]:
                file_key = "action" if key == "action" else obs_path(key)
                if file_key not in f or not isinstance(f[file_key], h5py.Dataset):
                    raise EpisodeError(f"{path}: missing key {file_key!r}")
                arrays[key] = np.asarray(f[file_key][()], dtype=np.float32)
                _check_finite(arrays[key], path, file_key)
        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise EpisodeError(f"{path}: arrays disagree on the episode length: {lengths}")
        if action_dim is not None and arrays["action"].shape[-1] != action_dim:
            raise EpisodeError(
                f"{path}: action dimension is {arrays['action'].shape[-1]}, the config expects {action_dim}"
            )
        return arrays

    def _check_images(self) -> None:
        """Every requested camera must exist with the episode's length: fail at start, not mid-epoch."""
        for path, low in zip(self.paths, self.lowdim):
            length = len(low["action"])
            with open_episode(path) as f:
                for key in self.image_keys:
                    file_key = obs_path(key)
                    if file_key not in f:
                        have = sorted(f["observations/images"].keys()) if "observations/images" in f else []
                        raise EpisodeError(f"{path}: missing camera key {file_key!r} (cameras in file: {have})")
                    if f[file_key].shape[0] != length:
                        raise EpisodeError(
                            f"{path}: {file_key!r} has {f[file_key].shape[0]} frames, actions have {length}"
                        )

    def layout(self) -> dict[str, tuple[int, ...]]:
        """Per-step shape of every key read (from the first episode): what other stores must match."""
        if not self.paths:
            return {}
        shapes = {obs_path(key) if key != "action" else key: tuple(value.shape[1:])
                  for key, value in self.lowdim[0].items()}
        with open_episode(self.paths[0]) as f:
            for key in self.image_keys:
                shapes[obs_path(key)] = tuple(f[obs_path(key)].shape[1:])
        return shapes

    def _build_index(self, drop_last_steps: int) -> np.ndarray:
        rows = []
        for e, low in enumerate(self.lowdim):
            n = len(low["action"]) - drop_last_steps
            rows.append(np.stack([np.full(max(n, 0), e), np.arange(max(n, 0))], axis=1))
        return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 2), np.int64)

    # ---- access -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index)

    def episode_of(self, index: int) -> int:
        return self.episode_ids[int(self.index[index, 0])]

    def _obs_steps(self, t: int) -> np.ndarray:
        return np.clip(np.arange(t - self.n_obs_steps + 1, t + 1), 0, None)

    def __getitem__(self, index: int) -> dict[str, Any]:
        e, t = (int(x) for x in self.index[index])
        low = self.lowdim[e]
        length = len(low["action"])
        sample: dict[str, Any] = {}
        obs_steps = self._obs_steps(t)
        for key in self.state_keys:
            value = low[key][obs_steps]
            sample[key] = torch.from_numpy(value[0] if self.n_obs_steps == 1 else value)
        if self.image_keys:
            handle = self._files.get(self.paths[e])
            for key in self.image_keys:
                ds = handle[obs_path(key)]
                try:
                    frames = np.stack([ds[s] for s in obs_steps])
                except OSError as err:
                    raise EpisodeError(f"{self.paths[e]}: frame {t} of {key!r} cannot be read: {err}") from err
                sample[key] = torch.from_numpy(frames[0] if self.n_obs_steps == 1 else frames)
        steps = np.arange(t + self.action_offset, t + self.action_offset + self.chunk_size)
        is_pad = steps >= length
        sample["action"] = torch.from_numpy(low["action"][np.clip(steps, 0, length - 1)])
        sample["action_is_pad"] = torch.from_numpy(is_pad)
        sample["weight"] = torch.tensor(float(self.weights[index]))
        sample["episode_index"] = torch.tensor(self.episode_ids[e])
        sample["frame_index"] = torch.tensor(t)
        return sample


    def __getitems__(self, indices: Sequence[int]) -> "list[dict[str, Any]] | CollatedBatch":
        """A whole batch at once. Without cameras it is gathered with array indexing into a
        :class:`CollatedBatch`, equal to collating ``[self[i] for i in indices]`` but tens of times faster
        (state-only policies train faster than one sample per ~0.2 ms of Python could feed them); with
        cameras, the samples one by one."""
        if self.image_keys:
            return [self[i] for i in indices]
        flat = self._flat_lowdim()
        rows = self.index[np.asarray(indices, dtype=np.int64)]
        e, t = rows[:, 0], rows[:, 1]
        start, length = flat["start"][e], flat["length"][e]
        batch = CollatedBatch()
        obs_steps = np.clip(t[:, None] + np.arange(1 - self.n_obs_steps, 1)[None], 0, None)  # (B, To)
        for key in self.state_keys:
            value = flat[key][start[:, None] + obs_steps]
            batch[key] = torch.from_numpy(value[:, 0] if self.n_obs_steps == 1 else value)
        steps = t[:, None] + self.action_offset + np.arange(self.chunk_size)[None]  # (B, k)
        batch["action"] = torch.from_numpy(flat["action"][start[:, None] + np.clip(steps, 0, length[:, None] - 1)])
        batch["action_is_pad"] = torch.from_numpy(steps >= length[:, None])
        batch["weight"] = torch.from_numpy(self.weights[np.asarray(indices, dtype=np.int64)].astype(np.float32))
        batch["episode_index"] = torch.from_numpy(np.asarray(self.episode_ids, dtype=np.int64)[e])
        batch["frame_index"] = torch.from_numpy(t.astype(np.int64))
        return batch

    def _flat_lowdim(self) -> dict[str, np.ndarray]:
        """The episodes' low-dimensional arrays end to end, with each episode's start and length (built once)."""
        if self._flat is None:
            lengths = np.array([len(low["action"]) for low in self.lowdim], dtype=np.int64)
            flat = {key: np.concatenate([low[key] for low in self.lowdim]) for key in (*self.state_keys, "action")}
            flat["start"] = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
            flat["length"] = lengths
            self._flat = flat
        return self._flat


class StoreUnion(Dataset):
    """The :class:`ChunkDataset` of each store end to end: index ``i`` of the union is sample
    ``i - offsets[s]`` of store ``s`` (the layout :class:`~lit_imit.data.samplers.WeightedStoreSampler`
    draws from). ``lowdim`` and ``paths`` are the stores' in the same order, so the normalisation statistics of
    the union are one ``compute_stats`` call over all of them."""

    def __init__(self, parts: Sequence[ChunkDataset]) -> None:
        if not parts:
            raise ValueError("a union of stores needs at least one store")
        self.parts = list(parts)
        self.sizes = [len(part) for part in self.parts]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.image_keys = self.parts[0].image_keys
        self.state_keys = self.parts[0].state_keys

    @property
    def lowdim(self) -> list[dict[str, np.ndarray]]:
        return [low for part in self.parts for low in part.lowdim]

    @property
    def paths(self) -> list[str]:
        return [path for part in self.parts for path in part.paths]

    def __len__(self) -> int:
        return int(sum(self.sizes))

    def locate(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(store, index within that store) of union indices."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"index out of range for a union of {len(self)} samples")
        stores = np.searchsorted(self.offsets, indices, side="right") - 1
        return stores, indices - self.offsets[stores]

    def __getitem__(self, index: int) -> dict[str, Any]:
        (store,), (local,) = self.locate([index])
        return self.parts[int(store)][int(local)]

    def __getitems__(self, indices: Sequence[int]) -> "list[dict[str, Any]] | CollatedBatch":
        """A batch in the order asked: each store gathers its share (at once when it can), then the rows are
        put back in order."""
        if self.image_keys:
            return [self[i] for i in indices]
        stores, local = self.locate(indices)
        order, batches = [], []
        for s in np.unique(stores):
            rows = np.nonzero(stores == s)[0]
            order.append(rows)
            batches.append(self.parts[int(s)].__getitems__(local[rows].tolist()))
        back = torch.from_numpy(np.argsort(np.concatenate(order), kind="stable"))
        return CollatedBatch({key: torch.cat([b[key] for b in batches])[back] for key in batches[0]})


def check_same_layout(datasets: Sequence[ChunkDataset], names: Sequence[str]) -> None:
    """Stores trained on together must give every key the same per-step shape: a mismatch is an
    :class:`EpisodeError` naming the store and the key (else it surfaces mid-epoch as a collate error)."""
    reference = datasets[0].layout()
    for dataset, name in zip(datasets[1:], names[1:]):
        for key, shape in dataset.layout().items():
            if key in reference and shape != reference[key]:
                raise EpisodeError(
                    f"store {name}: key {key!r} has per-step shape {shape}, but {names[0]} has "
                    f"{reference[key]}: stores trained together must agree on every key"
                )


class CollatedBatch(dict):
    """A batch the dataset already collated (``ChunkDataset.__getitems__``); ``collate`` passes it through."""


def collate(samples: "list[dict[str, Any]] | CollatedBatch") -> dict[str, Any]:
    """The DataLoader's collate_fn: a :class:`CollatedBatch` as it is, a list of samples by torch's default."""
    if isinstance(samples, CollatedBatch):
        return dict(samples)
    from torch.utils.data import default_collate

    return default_collate(samples)


def _check_finite(values: np.ndarray, path: str, key: str) -> None:
    """NaN / inf in training data poisons the statistics and then every weight: refuse it, naming file and key."""
    problem = nonfinite_summary(values)
    if problem is not None:
        raise EpisodeError(f"{path}: key {key!r} has non-finite values: {problem}")


def compute_stats(
    datasets_lowdim: Sequence[dict[str, np.ndarray]], keys: Sequence[str], std_floor: float = 1e-2,
    paths: Sequence[str] | None = None,
) -> dict[str, dict[str, list[float]]]:
    """Per-dimension mean/std (std floored, as ACT does) and min/max over all steps of all episodes.

    Returned as plain lists so the statistics can live in a checkpoint loaded with weights_only=True.
    Non-finite values are an EpisodeError naming the episode (its file, given ``paths``) and the key.
    """
    stats: dict[str, dict[str, list[float]]] = {}
    for key in keys:
        if not datasets_lowdim:
            raise ValueError("cannot compute normalisation statistics of an empty training split")
        for i, d in enumerate(datasets_lowdim):
            _check_finite(d[key], paths[i] if paths is not None else f"episode #{i} of the split", obs_path(key))
        values = np.concatenate([d[key].reshape(len(d[key]), -1) for d in datasets_lowdim]).astype(np.float64)
        stats[key] = {
            "mean": values.mean(0).tolist(),
            "std": np.maximum(values.std(0), std_floor).tolist(),
            "min": values.min(0).tolist(),
            "max": values.max(0).tolist(),
        }
    return stats
