"""Pick-and-place decisions as training samples (CLIPort / Ravens) and their DataModule.

One sample is one decision: the observation at step t of an episode (fused top-down colour and height maps
plus the language instruction in force at t) and the teacher's pick and place at t, turned into CLIPort's
labels:

* ``pick_pixel`` / ``place_pixel``: (row, col) heightmap pixels containing the pick and place positions
  (``geometry.xyz_to_pix``; clipped into the map);
* ``place_theta``: the place yaw relative to the pick yaw (radians, in [-pi, pi)); the module bins it into its
  own ``n_rotations``, so the dataset does not need to know the model's rotation count.

Episodes are read from the layout ``record_teacher_episodes`` writes for the Ravens envs:
``observations/color`` (T, H, W, 3) uint8, ``observations/height`` (T, H, W) float32,
``observations/instruction`` (T,) UTF-8 strings, ``action/pick`` and ``action/place`` (T, 7) (xyz + xyzw).

Normalisation uses CLIPort's fixed constants inside the network, so the DataModule computes no statistics.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Sequence

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from lit_imit.data.datamodule import EpisodeDataModule
from lit_imit.data.episodes import EpisodeError, EpisodeStore, LazyEpisodeFiles, open_episode
from lit_imit.data.recording import record_teacher_episodes
from lit_imit.envs.ravens import geometry as geo

log = logging.getLogger(__name__)

COLOR_KEY = "observations/color"
HEIGHT_KEY = "observations/height"
INSTRUCTION_KEY = "observations/instruction"
PICK_KEY = "action/pick"
PLACE_KEY = "action/place"


def pick_place_labels(pick: np.ndarray, place: np.ndarray,
                      shape: tuple[int, int] = geo.HEIGHTMAP_SHAPE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CLIPort labels of T pick/place poses (T, 7): pick pixels (T, 2), place pixels (T, 2), place yaw (T,).

    Pixels contain the pose's xy (rows = y, cols = x) and are clipped into the map; the yaw is the place
    yaw minus the pick yaw (what the tool turns while carrying), wrapped to [-pi, pi).
    """
    picks, places, thetas = [], [], []
    for p0, p1 in zip(np.asarray(pick, np.float64), np.asarray(place, np.float64)):
        pick_pix, place_pix, theta = geo.pixels_from_action({"pick": p0, "place": p1})
        picks.append(pick_pix)
        places.append(place_pix)
        thetas.append(theta)
    limit = np.array(shape) - 1
    picks_arr = np.clip(np.array(picks, np.int64).reshape(-1, 2), 0, limit)
    places_arr = np.clip(np.array(places, np.int64).reshape(-1, 2), 0, limit)
    return picks_arr, places_arr, np.array(thetas, np.float32)


def read_instructions(f: h5py.File, length: int, path: str) -> list[str]:
    """Per-step instructions: the ``observations/instruction`` strings, else an ``instructions`` attr list."""
    if INSTRUCTION_KEY in f:
        texts = [t.decode() if isinstance(t, bytes) else str(t) for t in f[INSTRUCTION_KEY].asstr()[()]]
    else:
        attr = f.attrs.get("instructions")
        if attr is None:
            raise EpisodeError(f"{path}: no per-step instructions ({INSTRUCTION_KEY!r} or an 'instructions' attr)")
        texts = json.loads(attr) if isinstance(attr, str) else [str(a) for a in attr]
    if len(texts) != length:
        raise EpisodeError(f"{path}: {len(texts)} instructions for {length} steps")
    return texts


class PickPlaceDataset(Dataset):
    """(heightmap, instruction) -> (pick pixel, place pixel, place yaw) samples over episodes of one store.

    Labels and instructions are loaded at construction. Heightmaps are cached in RAM when ``cache`` is true
    (a decision is ~350 kB: 1000 decisions ~ 350 MB), else read per sample through per-worker HDF5 handles.
    ``loaded`` maps episode ids to what was already read (episodes never change once written), so a dataset
    rebuilt after ``add_episodes`` only reads the new files; it is filled in place.
    """

    def __init__(self, store: EpisodeStore, episode_ids: Sequence[int], cache: bool = True,
                 loaded: dict[int, tuple[dict[str, Any], Any]] | None = None) -> None:
        self.store = store
        self.episode_ids = [int(i) for i in episode_ids]
        self.paths = [str(store.path(i)) for i in self.episode_ids]
        self.cache = cache
        self.labels: list[dict[str, Any]] = []
        self.images: list[tuple[np.ndarray, np.ndarray]] = []
        loaded = {} if loaded is None else loaded
        rows = []
        for e, (episode_id, path) in enumerate(zip(self.episode_ids, self.paths)):
            if episode_id not in loaded or (cache and loaded[episode_id][1] is None):
                loaded[episode_id] = self._load(path)
            labels, images = loaded[episode_id]
            self.labels.append(labels)
            if cache:
                self.images.append(images)
            n = len(labels["instruction"])
            rows.append(np.stack([np.full(n, e), np.arange(n)], axis=1))
        self.index = np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 2), np.int64)
        self.weights = np.ones(len(self.index), dtype=np.float32)
        self._files = LazyEpisodeFiles()

    def _load(self, path: str) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray] | None]:
        with open_episode(path) as f:
            for key in (COLOR_KEY, HEIGHT_KEY, PICK_KEY, PLACE_KEY):
                if key not in f:
                    raise EpisodeError(f"{path}: missing key {key!r}: not a pick-and-place (Ravens) episode")
            pick = np.asarray(f[PICK_KEY][()], np.float32)
            place = np.asarray(f[PLACE_KEY][()], np.float32)
            length = len(pick)
            shapes = {k: f[k].shape for k in (COLOR_KEY, HEIGHT_KEY)}
            if len(place) != length or any(s[0] != length for s in shapes.values()):
                raise EpisodeError(f"{path}: lengths disagree: pick {length}, place {len(place)}, {shapes}")
            if shapes[COLOR_KEY][1:3] != shapes[HEIGHT_KEY][1:3]:
                raise EpisodeError(f"{path}: colour {shapes[COLOR_KEY]} and height {shapes[HEIGHT_KEY]} maps disagree")
            instructions = read_instructions(f, length, path)
            images = (f[COLOR_KEY][()], np.asarray(f[HEIGHT_KEY][()], np.float32)) if self.cache else None
            hw = tuple(shapes[HEIGHT_KEY][1:3])
        pick_pix, place_pix, theta = pick_place_labels(pick, place, hw)
        labels = {"pick_pixel": pick_pix, "place_pixel": place_pix, "place_theta": theta,
                  "instruction": instructions, "pick": pick, "place": place}
        return labels, images

    # ---- access -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index)

    def episode_of(self, index: int) -> int:
        return self.episode_ids[int(self.index[index, 0])]

    def _images(self, e: int, t: int) -> tuple[np.ndarray, np.ndarray]:
        if self.cache:
            color, height = self.images[e]
            return color[t], height[t]
        f = self._files.get(self.paths[e])
        try:
            return f[COLOR_KEY][t], np.asarray(f[HEIGHT_KEY][t], np.float32)
        except OSError as err:
            raise EpisodeError(f"{self.paths[e]}: step {t} cannot be read: {err}") from err

    def __getitem__(self, index: int) -> dict[str, Any]:
        e, t = (int(x) for x in self.index[index])
        labels = self.labels[e]
        color, height = self._images(e, t)
        return {
            "color": torch.from_numpy(np.ascontiguousarray(color)),
            "height": torch.from_numpy(np.ascontiguousarray(height)),
            "instruction": labels["instruction"][t],
            "pick_pixel": torch.from_numpy(labels["pick_pixel"][t]),
            "place_pixel": torch.from_numpy(labels["place_pixel"][t]),
            "place_theta": torch.tensor(float(labels["place_theta"][t])),
            "action": torch.from_numpy(np.concatenate([labels["pick"][t], labels["place"][t]])),
            "weight": torch.tensor(float(self.weights[index])),
            "episode_index": torch.tensor(self.episode_ids[e]),
            "frame_index": torch.tensor(t),
        }


class CLIPortDataModule(EpisodeDataModule):
    """EpisodeDataModule over pick-and-place decisions: splits by episode, seeded uniform or prioritized
    sampling with importance weights, growth by ``add_episodes`` and the resumable ``state_dict`` all come
    from the base class; only the dataset, the (absent) statistics and the demo recording differ.

    Args:
        data_dir: the episode store.
        task: Ravens task whose oracle records demos when the store is empty and ``generate_if_missing`` > 0.
        batch_size: CLIPort trains with 1 (cliport-batchify with 4); any size works here.
        num_workers: DataLoader workers (0 is fine with ``cache_in_memory``).
        val_episodes: validation split by episode (fraction < 1 or count); CLIPort validates by rollouts,
            so 0 is the paper's setting.
        sampling / samples_per_epoch / priority_alpha / seed: see ``EpisodeDataModule``.
        generate_if_missing: oracle demos to record into an empty store (CLIPort's n_demos).
        cache_in_memory: keep all heightmaps in RAM (else read lazily from the HDF5 files).
        allow_empty: start from an empty store (interactive learning from scratch fills it).
        reuse_interactive_store, test_loss: see ``EpisodeDataModule``.
    """

    def __init__(
        self,
        data_dir: str,
        task: str | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        val_episodes: float = 0.0,
        sampling: str = "uniform",
        samples_per_epoch: int | None = None,
        priority_alpha: float = 1.0,
        seed: int = 0,
        generate_if_missing: int = 0,
        cache_in_memory: bool = True,
        pin_memory: bool = True,
        allow_empty: bool = False,
        reuse_interactive_store: bool = False,
        test_loss: bool = False,
    ) -> None:
        super().__init__(
            data_dir=data_dir, task=task, cameras=[], state_keys=[], chunk_size=1, batch_size=batch_size,
            num_workers=num_workers, val_episodes=val_episodes, sampling=sampling,
            samples_per_epoch=samples_per_epoch, priority_alpha=priority_alpha, seed=seed,
            generate_if_missing=generate_if_missing, pin_memory=pin_memory, allow_empty=allow_empty,
            reuse_interactive_store=reuse_interactive_store, test_loss=test_loss,
        )
        self.cache_in_memory = cache_in_memory
        self._loaded: dict[int, tuple[dict[str, Any], Any]] = {}  # episode id -> (labels, images), reused by rebuilds

    def prepare_data(self) -> None:
        """Record oracle demos into an empty store (the Ravens envs take no camera/image-size options)."""
        store = EpisodeStore(self.data_dir)
        if self.generate_if_missing > 0 and len(store) == 0:
            if self.task is None:
                raise ValueError(f"{self.data_dir} is empty and no task is configured to generate demos for")

            log.info("recording %d %s oracle episodes into %s", self.generate_if_missing, self.task, self.data_dir)
            record_teacher_episodes(self.task, self.generate_if_missing, store, seed=self.seed, progress=True)

    def make_dataset(self, ids: Sequence[int]) -> PickPlaceDataset:
        return PickPlaceDataset(self.store, ids, cache=self.cache_in_memory, loaded=self._loaded)

    def compute_stats(self) -> dict[str, dict[str, list[float]]]:
        """None needed: CLIPort normalises with fixed constants (``nets.cliport``)."""
        return {}
