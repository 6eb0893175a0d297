"""EpisodeDataModule: splits, normalisation statistics, uniform/prioritized sampling, growth and resume.

The DataModule owns *which* episodes are trained on. Its ``state_dict`` is the exact episode list (train
and validation), the statistics, the per-episode interactive metadata and the sampling priorities, all as
plain Python types (checkpoints are loaded with ``weights_only=True``). Episodes written to the store after
a checkpoint stay on disk, untouched and unused, when that checkpoint is resumed.

Co-training (``extra_stores``) trains on several stores at once, drawn by weight (:class:`CoStore` holds one
of them, :class:`~lit_imit.data.samplers.WeightedStoreSampler` draws); a train loader that is resumed mid-epoch
continues its draw where the checkpoint left it (:class:`EpochDataLoader`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from lit_imit.data.datasets import ChunkDataset, StoreUnion, check_same_layout, collate, compute_stats
from lit_imit.data.episodes import Episode, EpisodeError, EpisodeStore
from lit_imit.data.recording import record_teacher_episodes
from lit_imit.data.samplers import SeededSampler, WeightedStoreSampler
from lit_imit.envs import task_spec
from lit_imit.envs.vector import available_cpus
from lit_imit.interactive.pier import PIER

log = logging.getLogger(__name__)


#: where DDP ranks stage interactive demonstrations for rank 0 (inside the store's directory)
STAGING_DIR = ".interactive_staging"

#: values of the model-owned settings when the DataModule is used without a model
STANDALONE_DEFAULTS: dict[str, Any] = {
    "cameras": ["top"], "state_keys": ["qpos"], "chunk_size": 100, "n_obs_steps": 1, "action_offset": 0,
    "action_dim": None,
}


@dataclass
class CoStore:
    """A further store trained on with the main ``data_dir`` (co-training): where it is, its sampling weight,
    and its own split."""

    path: str
    weight: float = 1.0
    store: EpisodeStore | None = None
    train_ids: list[int] = field(default_factory=list)
    val_ids: list[int] = field(default_factory=list)

    @classmethod
    def from_config(cls, entry: Any) -> "CoStore":
        """``{path: ..., weight: ...}`` (weight 1 when left out); anything else is an error saying so."""
        if not isinstance(entry, dict) or "path" not in entry or set(entry) - {"path", "weight"}:
            raise ValueError(f"each of extra_stores is {{path: <store>, weight: <float>}}, got {entry!r}")
        weight = float(entry.get("weight", 1.0))
        if not np.isfinite(weight) or weight < 0:
            raise ValueError(f"the weight of store {entry['path']} must be finite and >= 0, got {weight}")
        return cls(path=str(entry["path"]), weight=weight)

    def open(self) -> EpisodeStore:
        """The store, read-only (training never writes into a co-training store)."""
        if self.store is None:
            if not Path(self.path).is_dir():
                raise FileNotFoundError(f"co-training store {self.path} (data.init_args.extra_stores) does not exist")
            self.store = EpisodeStore(self.path, create=False)
        return self.store

    def state(self) -> dict[str, Any]:
        return {"path": str(Path(self.path).resolve()), "weight": self.weight,
                "train_ids": list(self.train_ids), "val_ids": list(self.val_ids)}


class EpisodeDataModule(pl.LightningDataModule):
    """Episodes of one store, or of several (co-training), as (observation, action chunk) windows.

    Args:
        data_dir: the episode store (a directory of ``episode_<id>.hdf5``), or any directory of episodes in the
            ACT layout, however its files are numbered (``episode_0.hdf5``...: the original ACT datasets). Training
            only reads it: no index, lock or cache file is written there (what the store caches stays in memory);
            only recording into an empty store (``generate_if_missing``) and interactive rounds add episodes, and
            only to a store of ours (``lit_imit.data.episodes.import_episodes`` copies another tool's directory).
        task: the task whose scripted teacher records demos when ``generate_if_missing`` > 0 and the store
            is empty (``lit_imit.envs.TASKS`` names them).
        cameras: camera names to load (``images/<cam>``); ``[]`` for state-only policies.
        state_keys: low-dimensional observation keys (``qpos``, ``qvel``...).
        chunk_size: actions per sample (ACT's k, Diffusion's horizon).
        n_obs_steps: observation history per sample (1 = no time axis).
        action_offset: first action relative to the anchor step; ``-(n_obs_steps-1)`` for Diffusion Policy.
        action_dim: checked against the files when given (a mismatch names the file).

            These six say what the model reads, so a config says them once, in the model: left out (None),
            each is taken from the model this data trains (its ``data_requirements``) when ``fit`` / ``test``
            starts, before demos are recorded; without a model (the DataModule on its own) they default to
            the top camera, qpos, chunks of 100, no history, offset 0 and no action check. Given here too,
            they must agree with the model's (``PolicyModule.check_data_compatibility`` names both keys).
        val_episodes: validation split by episode: a fraction (< 1) or a count (>= 1); 0 disables validation.
        sampling: "uniform" or "prioritized" (per-episode priorities, importance weights in the batch).
        samples_per_epoch: fixed number of samples per epoch over all ranks (default: the train split size).
        priority_alpha: exponent of the priorities (P ∝ p^alpha); importance weights use ``beta``.
        seed: seed of the split and of the per-epoch draws.
        generate_if_missing: record this many teacher episodes when the store is empty.
        record_workers: processes that simulate those episodes at once (``"auto"``: the CPUs this process may
            use); the store gets the same seeds under the same ids whatever the count.
        record_action_noise: DART noise of those demos (``record_teacher_episodes``' ``action_noise``; 0: plain
            teacher demos).
        image_size: (H, W) of recorded images when generating.
        allow_empty: start from an empty store (interactive learning from scratch fills it; statistics are
            computed from the first episodes added).
        env_kwargs: extra arguments of the env that records the demos (e.g. ``fast_render: false``);
            ``env_state: true`` is added automatically when ``state_keys`` asks for ``env_state``.
        reuse_interactive_store: let a fresh interactive run (no ``--ckpt_path``) start on a store that
            already holds interactively collected episodes and train on all of them. Off by default: such
            episodes belong to the run that collected them, which resumes with ``--ckpt_path .../last.ckpt``.
        test_loss: ``test`` also scores the validation split (``test/loss`` and the other loss terms; limit it
            with ``trainer.limit_test_batches``). Off by default: ``test`` is the rollouts of
            ``RolloutEvaluation`` (``test/success_rate`` with its Wilson interval).
        extra_stores: co-training (act-plus-plus's ``sample_weights``): further stores ``[{path, weight}]``
            trained on with ``data_dir``. Every sample of a batch first picks a store with probability ∝ its
            weight, then a sample of that store's training split (``WeightedStoreSampler``). Each store is
            split by ``val_episodes`` on its own (validation scores all stores' held-out episodes together);
            the normalisation statistics are those of the union of all stores' training splits, every step
            counting once whatever the weights (act-plus-plus also computes them over all datasets). All
            stores must hold the keys the model reads with the same shapes: a mismatch is an error naming
            the store and the key. Only ``data_dir`` is recorded into (``generate_if_missing``); the others must
            exist. Prioritized sampling and interactive rounds (which grow one store) are refused with
            co-training. ``samples_per_epoch`` defaults to all stores' training samples.
        data_weight: the sampling weight of ``data_dir`` itself next to ``extra_stores`` (weights need not sum
            to 1: they are normalised).
    """

    def __init__(
        self,
        data_dir: str,
        task: str | None = None,
        cameras: list[str] | None = None,
        state_keys: list[str] | None = None,
        chunk_size: int | None = None,
        n_obs_steps: int | None = None,
        action_offset: int | None = None,
        action_dim: int | None = None,
        drop_last_steps: int = 0,
        batch_size: int = 8,
        num_workers: int = 2,
        val_episodes: float = 0.2,
        sampling: str = "uniform",
        samples_per_epoch: int | None = None,
        priority_alpha: float = 1.0,
        seed: int = 0,
        generate_if_missing: int = 0,
        image_size: list[int] | None = None,
        pin_memory: bool = True,
        allow_empty: bool = False,
        env_kwargs: dict[str, Any] | None = None,
        reuse_interactive_store: bool = False,
        record_workers: int | str = 1,
        record_action_noise: float = 0.0,
        test_loss: bool = False,
        extra_stores: list[dict[str, Any]] | None = None,
        data_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if sampling not in ("uniform", "prioritized"):
            raise ValueError(f"sampling must be 'uniform' or 'prioritized', got {sampling!r}")
        self.co_stores = [CoStore.from_config(entry) for entry in extra_stores or []]
        self.data_weight = float(data_weight)
        self._check_co_training(sampling, allow_empty)
        if task is not None:
            task_spec(task)  # an unknown task fails at config time, naming the known ones
        self.data_dir = data_dir
        self.task = task
        given = {"cameras": cameras, "state_keys": state_keys, "chunk_size": chunk_size,
                 "n_obs_steps": n_obs_steps, "action_offset": action_offset, "action_dim": action_dim}
        self._from_model = {name for name, value in given.items() if value is None}  # filled by the model
        for name, value in given.items():
            value = STANDALONE_DEFAULTS[name] if value is None else value
            setattr(self, name, list(value) if isinstance(value, (list, tuple)) else value)
        self.drop_last_steps = drop_last_steps
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_episodes = val_episodes
        self.sampling = sampling
        self.samples_per_epoch = samples_per_epoch
        self.priority_alpha = priority_alpha
        self.seed = seed
        self.generate_if_missing = generate_if_missing
        if record_workers != "auto" and (not isinstance(record_workers, int) or record_workers < 1):
            raise ValueError(f"record_workers must be a count >= 1 or 'auto', got {record_workers!r}")
        self.record_workers = record_workers
        self.record_action_noise = float(record_action_noise)
        self.image_size = image_size
        self.pin_memory = pin_memory
        self.allow_empty = allow_empty
        self.env_kwargs = dict(env_kwargs or {})
        self.reuse_interactive_store = bool(reuse_interactive_store)
        self.test_loss = bool(test_loss)
        self.store: EpisodeStore | None = None
        self.train_ids: list[int] = []
        self.val_ids: list[int] = []
        self.stats: dict[str, dict[str, list[float]]] | None = None
        self.episode_meta: dict[int, dict[str, Any]] = {}
        self.episode_priority: dict[int, float] = {}
        self.importance_beta = 1.0
        self.weight_normalization = "max"  # PIER's, as the callback sets it with the priorities
        self.train_set: ChunkDataset | None = None
        self.val_set: ChunkDataset | None = None
        # Recording (``generate_if_missing``) runs once per job, on global rank 0, not once per node: every
        # node trains on the same store, which multi-node runs therefore keep on a filesystem all nodes share
        # (the interactive rounds' hand-over files live there too). One recorder per node would race to fill
        # one shared store twice.
        self.prepare_data_per_node = False

    def _check_co_training(self, sampling: str, allow_empty: bool) -> None:
        """Refuse what co-training does not combine with, at config time."""
        if not np.isfinite(self.data_weight) or self.data_weight < 0:
            raise ValueError(f"data_weight must be finite and >= 0, got {self.data_weight}")
        if not self.co_stores:
            return
        if sampling != "uniform":
            raise ValueError("extra_stores (co-training) draws stores by weight and samples uniformly within each: "
                             "it does not combine with sampling: prioritized")
        if allow_empty:
            raise ValueError("extra_stores (co-training) does not combine with allow_empty: interactive learning "
                             "grows one store, train it without extra_stores")
        if self.data_weight + sum(c.weight for c in self.co_stores) <= 0:
            raise ValueError("data_weight and the extra_stores weights are all 0: nothing could be drawn")

    def store_names(self) -> list[str]:
        """Every store trained on, ``data_dir`` first (the order of the weights and of the samples)."""
        return [str(self.data_dir), *(c.path for c in self.co_stores)]

    def store_weights(self) -> list[float]:
        return [self.data_weight, *(c.weight for c in self.co_stores)]

    # ---- what the model reads ---------------------------------------------------------------------
    def adopt_model_settings(self, model: Any = None) -> None:
        """Take the settings this config left out from the model's ``data_requirements`` (``model``: the
        trainer's LightningModule by default); settings the config gives are kept (and checked later)."""
        if model is None:
            trainer = getattr(self, "_trainer", None) or getattr(self, "trainer", None)
            model = getattr(trainer, "lightning_module", None) if trainer is not None else None
        if model is None or not hasattr(model, "data_requirements"):
            return
        for name, (_, value, _) in model.data_requirements().items():
            if name in self._from_model:
                setattr(self, name, list(value) if isinstance(value, (list, tuple)) else value)

    # ---- data generation --------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Record teacher demos into an empty store (runs once per node, before setup)."""
        self.adopt_model_settings()
        store = EpisodeStore(self.data_dir)
        missing = self.generate_if_missing - len(store)
        if self.generate_if_missing > 0 and len(store) == 0:
            if self.task is None:
                raise ValueError(f"{self.data_dir} is empty and no task is configured to generate demos for")

            log.info("recording %d %s teacher episodes into %s", missing, self.task, self.data_dir)
            record_teacher_episodes(
                self.task, missing, store, cameras=self.cameras,
                image_size=tuple(self.image_size) if self.image_size else None, seed=self.seed, progress=True,
                env_kwargs=self.recording_env_kwargs(), workers=self._recording_workers(missing),
                action_noise=self.record_action_noise,
            )

    def _recording_workers(self, episodes: int) -> int:
        if self.record_workers == "auto":
            return max(1, min(episodes, available_cpus()))
        return max(1, min(episodes, int(self.record_workers)))

    def recording_env_kwargs(self) -> dict[str, Any]:
        """Env arguments for recording: the configured ones, plus ``env_state`` when the policy reads it."""
        kwargs = dict(self.env_kwargs)
        if "env_state" in self.state_keys:
            kwargs.setdefault("env_state", True)
        return kwargs

    # ---- splits and datasets ----------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.store is not None:
            return
        self.adopt_model_settings()
        self.store = EpisodeStore(self.data_dir, create=self.allow_empty)
        ids = self.store.ids()
        if not ids and not self.allow_empty:
            raise FileNotFoundError(
                f"no episodes in {self.data_dir}: record some with scripts/record_demos.py or set "
                f"data.generate_if_missing"
            )
        self.train_ids, self.val_ids = self.split(ids) if ids else ([], [])
        for k, co in enumerate(self.co_stores, start=1):
            co_ids = co.open().ids()
            if not co_ids:
                raise FileNotFoundError(f"no episodes in co-training store {co.path} (data.init_args.extra_stores)")
            co.train_ids, co.val_ids = self.split(co_ids, seed=self.seed + k)
        self._build()

    def split(self, ids: Sequence[int], seed: int | None = None) -> tuple[list[int], list[int]]:
        """Seeded split by episode; validation never takes the last training episode. ``seed`` (default the
        DataModule's) differs per co-training store, so equal-sized stores do not hold out the same positions."""
        n = len(ids)
        n_val = int(round(self.val_episodes * n)) if self.val_episodes < 1 else int(self.val_episodes)
        n_val = min(max(n_val, 1 if self.val_episodes > 0 and n > 1 else 0), n - 1)
        perm = np.random.default_rng(self.seed if seed is None else seed).permutation(n)
        val = sorted(int(ids[i]) for i in perm[:n_val])
        train = sorted(int(ids[i]) for i in perm[n_val:])
        return train, val

    def make_dataset(self, ids: Sequence[int], store: EpisodeStore | None = None) -> ChunkDataset:
        """The windows of episodes ``ids`` of ``store`` (default: ``data_dir``'s)."""
        return ChunkDataset(
            self.store if store is None else store, ids, state_keys=self.state_keys, camera_keys=self.cameras,
            chunk_size=self.chunk_size, n_obs_steps=self.n_obs_steps, action_offset=self.action_offset,
            action_dim=self.action_dim, drop_last_steps=self.drop_last_steps,
        )

    def _build(self) -> None:
        self.train_set = self.make_dataset(self.train_ids)
        self.val_set = self.make_dataset(self.val_ids) if self.val_ids else None
        if self.co_stores:
            self._build_union()
        if self.stats is None and self.train_ids:
            self.stats = self.compute_stats()

    def _co_dataset(self, co: CoStore, ids: Sequence[int]) -> ChunkDataset:
        """A co-training store's windows; its errors say which store (the model's keys must all be there)."""
        try:
            return self.make_dataset(ids, co.open())
        except EpisodeError as err:
            raise EpisodeError(f"co-training store {co.path}: {err}") from err

    def _build_union(self) -> None:
        """Lay the co-training stores' splits after ``data_dir``'s, once they are known to agree on the keys."""
        names = self.store_names()
        train = [self.train_set, *(self._co_dataset(co, co.train_ids) for co in self.co_stores)]
        check_same_layout(train, names)
        empty = [name for name, part, w in zip(names, train, self.store_weights()) if w > 0 and len(part) == 0]
        if empty:
            raise ValueError(f"co-training stores {empty} have a sampling weight but no training samples")
        self.train_set = StoreUnion(train)
        val = [part for part in [self.val_set, *(self._co_dataset(co, co.val_ids) for co in self.co_stores
                                                 if co.val_ids)] if part is not None]
        self.val_set = StoreUnion(val) if val else None

    def read_episodes(self, split: str = "train", keys: Sequence[str] | None = None) -> Iterator[tuple[int, Episode]]:
        """The episodes of a split (``"train"`` or ``"val"``), one at a time and read whole: ``(id, Episode)`` in
        the split's order.

        For methods that use every step of their data rather than sampled windows of it (VINN's memory of
        neighbours is built from the training episodes, its k chosen on the validation ones). ``keys``: the
        observation keys (``"qpos"``, ``"images/top"``) and ``"action"`` to read; None reads everything.
        """
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if self.store is None:
            raise RuntimeError("setup() has not run: there is no store to read episodes from")
        for episode_id in list(self.train_ids if split == "train" else self.val_ids):
            yield episode_id, self.store.read(episode_id, keys)
        for co in self.co_stores:  # co-training stores follow (their ids are their own store's)
            for episode_id in list(co.train_ids if split == "train" else co.val_ids):
                yield episode_id, co.open().read(episode_id, keys)

    def compute_stats(self) -> dict[str, dict[str, list[float]]]:
        """Normalisation statistics of the training split (subclasses with other layouts override)."""
        return compute_stats(self.train_set.lowdim, [*self.state_keys, "action"], paths=self.train_set.paths)

    # ---- growth (interactive learning) ------------------------------------------------------------
    def add_episodes(self, episode_ids: Sequence[int], meta: Sequence[dict[str, Any]] | None = None) -> None:
        """Append stored episodes to the training split (statistics stay those of the initial data)."""
        if self.co_stores:
            raise RuntimeError("interactive rounds grow one store and do not combine with extra_stores "
                               "(co-training): train them on data_dir alone")
        meta = list(meta) if meta is not None else [{} for _ in episode_ids]
        for episode_id, info in zip(episode_ids, meta):
            episode_id = int(episode_id)
            if episode_id in self.train_ids:
                raise ValueError(f"episode {episode_id} is already in the training split")
            self.train_ids.append(episode_id)
            self.episode_meta[episode_id] = {k: _plain(v) for k, v in info.items()}
        self.train_set = self.make_dataset(self.train_ids)
        if self.stats is None:
            self.stats = self.compute_stats()

    def add_demos(self, demos: Sequence[tuple[dict[str, np.ndarray], dict[str, Any]]],
                  meta: Sequence[dict[str, Any]]) -> list[int]:
        """Write demonstrations ((arrays, file attributes) pairs) to the store, in order, and append them to the
        training split with their metadata; returns their ids (they continue after the largest on disk)."""
        if self.store is None:
            raise RuntimeError("setup() has not run: there is no store to add demonstrations to")
        ids = [self.store.add(arrays, attrs) for arrays, attrs in demos]
        if ids:
            self.add_episodes(ids, meta)
        return ids

    def collected_episode_ids(self) -> list[int]:
        """Ids of the store's episodes that interactive rounds wrote (their files carry ``interactive_episode``)."""
        if self.store is None and not Path(self.data_dir).is_dir():
            return []
        store = self.store if self.store is not None else EpisodeStore(self.data_dir, create=False)
        return [i for i in store.ids() if "interactive_episode" in store.info(i)["attrs"]]

    def episode_step_counts(self) -> list[int]:
        """Drawable samples of each training episode, in ``train_ids`` order (PIER's ``counts``)."""
        if self.train_set is None:
            return [0] * len(self.train_ids)
        return np.bincount(self.train_set.index[:, 0], minlength=len(self.train_ids)).astype(int).tolist()

    def staging_path(self, name: str) -> Path:
        """A hand-over file next to the store (DDP ranks pass demonstrations to rank 0 through it)."""
        path = Path(self.data_dir) / STAGING_DIR / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def set_priorities(self, priorities: dict[int, float], beta: float, weight_normalization: str = "max") -> None:
        """Per-episode priorities (from PIER), the importance-sampling exponent of this round and how the
        weights are scaled (:class:`PIER`'s ``weight_normalization``)."""
        PIER(weight_normalization=weight_normalization)  # the error names the choices
        self.episode_priority = {int(k): float(v) for k, v in priorities.items()}
        self.importance_beta = float(beta)
        self.weight_normalization = weight_normalization

    def sampling_distribution(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(P(i), w_i) per training sample under prioritized sampling, None under uniform.

        PIER's own ``probabilities`` and ``importance_weights`` with the step counts of the episodes: every
        step of an episode carries its episode's priority (1 until a round has set them), P ∝ p^alpha, and
        w_i = (N·P(i))^-beta / max w (or / its mean under the draws: ``weight_normalization``).
        """
        if self.sampling != "prioritized" or self.train_set is None:
            return None
        counts = self.episode_step_counts()
        replay = PIER(alpha=self.priority_alpha, weight_normalization=self.weight_normalization)
        priorities = [self.episode_priority.get(i, 1.0) for i in self.train_ids]
        probs = replay.probabilities(priorities, counts)
        weights = replay.importance_weights(probs, self.importance_beta, counts)
        rows = self.train_set.index[:, 0]
        return probs[rows], weights[rows].astype(np.float32)

    # ---- loaders ----------------------------------------------------------------------------------
    def _loader(self, dataset: ChunkDataset, sampler: SeededSampler) -> DataLoader:
        return EpochDataLoader(
            dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
            generator_seed=self.seed * 7919 + sampler.epoch,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=False, prefetch_factor=4 if self.num_workers > 0 else None, collate_fn=collate,
        )

    def train_epoch(self) -> int:
        """The epoch the next train loader serves, as Lightning will pass it to ``set_epoch``.

        The loader must know it when it is built: Lightning iterates a new train loader (and worker
        processes start prefetching) before it calls ``set_epoch``, and on resume it trains on that first
        iterator. ``epoch_progress.current.processed`` is already the resumed epoch at that point, while
        ``current_epoch`` still says the previous one. Outside a fit (tests, scripts) this is 0.
        """
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0
        return int(trainer.fit_loop.epoch_progress.current.processed)

    def train_dataloader(self) -> DataLoader:
        """Side-effect free (Lightning may call it twice on resume): the draw depends on (seed, epoch)."""
        ds = self.train_set
        if self.co_stores:
            sampler = WeightedStoreSampler(ds.sizes, self.store_weights(), self.samples_per_epoch, seed=self.seed)
            sampler.set_epoch(self.train_epoch())
            return self._loader(ds, sampler)
        distribution = self.sampling_distribution()
        probs, ds.weights = distribution if distribution is not None else (None, np.ones(len(ds), np.float32))
        sampler = SeededSampler(len(ds), self.samples_per_epoch, probs, seed=self.seed, shuffle=True)
        sampler.set_epoch(self.train_epoch())
        return self._loader(ds, sampler)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None or len(self.val_set) == 0:
            return []
        return self._loader(self.val_set, SeededSampler(len(self.val_set), seed=self.seed, shuffle=False))

    def test_dataloader(self) -> DataLoader:
        """The validation split with ``test_loss``; else (or when there is no validation split) one empty batch,
        because Lightning runs no test epoch, and so no rollout callback, without a batch."""
        loader = self.val_dataloader() if self.test_loss else []
        if self.test_loss and not loader:
            log.warning("test_loss: true, but %s has no validation split (val_episodes: %s): no test loss",
                        self.data_dir, self.val_episodes)
        return loader or DataLoader([{}], batch_size=None)

    # ---- checkpointing ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The exact episode list and what sampling needs to resume, plus where the episodes are (``data_dir``,
        ``task``: provenance for a policy exported from the checkpoint; not restored, a resumed run reads the
        ``data_dir`` its config names)."""
        return {
            "data_dir": str(Path(self.data_dir).resolve()),
            "task": self.task,
            "train_ids": list(self.train_ids),
            "val_ids": list(self.val_ids),
            "stats": self.stats,
            "episode_meta": {str(k): v for k, v in self.episode_meta.items()},
            "episode_priority": {str(k): v for k, v in self.episode_priority.items()},
            "importance_beta": self.importance_beta,
            "weight_normalization": self.weight_normalization,
            "co_stores": [co.state() for co in self.co_stores],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the exact episode list; episodes written after the checkpoint are left unused."""
        if self.store is None:
            self.store = EpisodeStore(self.data_dir, create=False)
        missing = [i for i in [*state["train_ids"], *state["val_ids"]] if not self.store.path(i).exists()]
        if missing:
            raise FileNotFoundError(f"the checkpoint trains on episodes missing from {self.data_dir}: {missing}")
        self.train_ids = [int(i) for i in state["train_ids"]]
        self.val_ids = [int(i) for i in state["val_ids"]]
        self.stats = state["stats"]
        self.episode_meta = {int(k): v for k, v in state.get("episode_meta", {}).items()}
        self.episode_priority = {int(k): float(v) for k, v in state.get("episode_priority", {}).items()}
        self.importance_beta = float(state.get("importance_beta", 1.0))
        self.weight_normalization = state.get("weight_normalization", "max")  # older states: the reference's
        self._load_co_stores(state.get("co_stores", []))
        self._build()

    def _load_co_stores(self, saved: Sequence[dict[str, Any]]) -> None:
        """The co-training stores' exact splits; the checkpoint and the config must name as many stores."""
        if len(saved) != len(self.co_stores):
            raise ValueError(
                f"the checkpoint was trained on {len(saved)} extra stores {[s['path'] for s in saved]}, the config "
                f"names {len(self.co_stores)} {[c.path for c in self.co_stores]} (data.init_args.extra_stores)"
            )
        for co, state in zip(self.co_stores, saved):
            store = co.open()
            missing = [i for i in [*state["train_ids"], *state["val_ids"]] if not store.path(i).exists()]
            if missing:
                raise FileNotFoundError(f"the checkpoint trains on episodes missing from {co.path}: {missing}")
            co.train_ids = [int(i) for i in state["train_ids"]]
            co.val_ids = [int(i) for i in state["val_ids"]]


class EpochDataLoader(DataLoader):
    """A DataLoader whose every iterator starts from the same generator state, and that resumes mid-epoch.

    The generator gives worker processes their base seed, so creating an iterator never draws from the
    global RNG. Lightning creates one iterator per epoch in an uninterrupted run but sometimes two (the
    first is thrown away), and one on resume; re-seeding in ``__iter__`` makes the workers' seeds depend
    on (seed, epoch) only, however often the loader is iterated.

    ``state_dict`` is (epoch, samples of this rank served): Lightning saves it with a checkpoint written
    mid-epoch and hands it to ``load_state_dict`` of the resumed run's loader, whose sampler then skips what
    was served, so the resumed epoch trains on exactly the batches the uninterrupted one had left (without
    it Lightning would replay the epoch's first batches). A state of an earlier epoch (a checkpoint from an
    epoch's end) changes nothing. The loader's length stays the whole epoch's, as Lightning expects.
    """

    def __init__(self, *args: Any, generator_seed: int, **kwargs: Any) -> None:
        super().__init__(*args, generator=torch.Generator().manual_seed(generator_seed), **kwargs)
        self.generator_seed = generator_seed
        self.batches_served = 0  # by the newest iterator, counted as the training loop takes them

    def __iter__(self):
        self.generator.manual_seed(self.generator_seed)
        self.batches_served = 0
        return _CountingIterator(super().__iter__(), self)

    def samples_served(self) -> int:
        """Samples of this rank's epoch served so far: those skipped on resume, then whole batches."""
        start = getattr(self.sampler, "start", 0)
        return min(start + self.batches_served * (self.batch_size or 1), len(self.sampler))

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(getattr(self.sampler, "epoch", 0)), "samples_served": self.samples_served()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sampler = self.sampler
        if hasattr(sampler, "resume") and int(state.get("epoch", -1)) == int(getattr(sampler, "epoch", 0)):
            sampler.resume(int(state["epoch"]), int(state.get("samples_served", 0)))


class _CountingIterator:
    """A DataLoader iterator that counts the batches it hands out (``EpochDataLoader.batches_served``)."""

    def __init__(self, iterator: Any, loader: EpochDataLoader) -> None:
        self.iterator = iterator
        self.loader = loader

    def __iter__(self) -> "_CountingIterator":
        return self

    def __next__(self) -> Any:
        batch = next(self.iterator)
        self.loader.batches_served += 1
        return batch

    def __len__(self) -> int:
        return len(self.iterator)


def _plain(value: Any) -> Any:
    """numpy scalars and arrays to plain Python (checkpoints load with weights_only=True)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
