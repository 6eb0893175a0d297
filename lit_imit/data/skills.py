"""Skill sub-sequences (SPiRL / FIST / SkiLD) and the DataModule that serves them.

A sample is a window of H+1 consecutive states and the H actions between them, from one episode:

* ``state`` (H+1, S) float32: s_t .. s_{t+H} (SPiRL's subsequence of length H+1; the last state is FIST's
  goal s_{t+H} and the positive of the contrastive model);
* ``action`` (H, A) float32: a_t .. a_{t+H-1};
* ``label`` () float32: 1 for a window from the demonstration store, 0 for task-agnostic play data
  (SkiLD's discriminator targets);
* ``weight`` () float32 (ones), ``episode_index``, ``frame_index``.

Windows lie entirely inside their episode (no padding). States and actions are loaded into RAM once.

:class:`SkillDataModule` extends :class:`~lit_imit.data.datamodule.EpisodeDataModule` (splits, seeded
sampling, exact resume) with an optional second store of demonstrations mixed into every epoch at a fixed
fraction (SkiLD's discriminator, FIST's contrastive fine-tuning); the normalisation statistics come from
the play data's training split.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lit_imit.data.datamodule import EpisodeDataModule
from lit_imit.data.episodes import EpisodeError, EpisodeStore, obs_path, open_episode
from lit_imit.data.recording import record_teacher_episodes
from lit_imit.data.samplers import SeededSampler
from lit_imit.envs import task_spec

log = logging.getLogger(__name__)

#: H when the DataModule is used without a model (SPiRL, FIST and SkiLD all use 10)
STANDALONE_HORIZON = 10
#: the state observation key when the DataModule is used without a model
STANDALONE_STATE_KEY = "state"

#: play statistics' std floor (ACT's and LeRobot's): a dimension the play data never moves gets this std
STD_FLOOR = 1e-2


def load_states_actions(path: str, state_key: str, action_dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One episode's (T, S) states and (T, A) actions as float32; a missing key is an error naming the file."""
    with open_episode(path) as f:
        for key in (obs_path(state_key), "action"):
            if key not in f:
                have = sorted(f["observations"]) if "observations" in f else []
                raise EpisodeError(f"{path}: missing key {key!r} (its observations: {have}; a store recorded "
                                   "before an env offered the key lacks it: set state_key to one it has, or "
                                   "record the store again)")
        states = np.asarray(f[obs_path(state_key)][()], dtype=np.float32)
        actions = np.asarray(f["action"][()], dtype=np.float32)
    if len(states) != len(actions):
        raise EpisodeError(f"{path}: {len(states)} states but {len(actions)} actions")
    if states.ndim != 2 or actions.ndim != 2:
        raise EpisodeError(f"{path}: skills need flat states and actions, got {states.shape} and {actions.shape}")
    if action_dim is not None and actions.shape[1] != action_dim:
        raise EpisodeError(f"{path}: action dimension is {actions.shape[1]}, the config expects {action_dim}")
    return states, actions


class SkillWindowDataset(Dataset):
    """Windows of H+1 states / H actions over episodes of one or more stores.

    Args:
        sources: (store, episode ids, label) triples; the label (0 play, 1 demonstration) goes into every
            sample of that source.
        horizon: H, the number of actions per skill.
        state_key: observation key of the flat state vector.
    """

    def __init__(self, sources: Sequence[tuple[EpisodeStore, Sequence[int], float]], horizon: int = 10,
                 state_key: str = "state", action_dim: int | None = None) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.horizon = horizon
        self.states: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.labels: list[float] = []
        self.episode_ids: list[int] = []
        rows = []
        for store, ids, label in sources:
            for episode_id in ids:
                states, actions = load_states_actions(str(store.path(episode_id)), state_key, action_dim)
                e = len(self.states)
                self.states.append(states)
                self.actions.append(actions)
                self.labels.append(float(label))
                self.episode_ids.append(int(episode_id))
                n = len(states) - horizon  # window t uses states t..t+H, actions t..t+H-1
                if n > 0:
                    rows.append(np.stack([np.full(n, e), np.arange(n)], axis=1))
        self.index = np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 2), np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def is_labelled(self, index: int) -> bool:
        return self.labels[int(self.index[index, 0])] > 0.5

    def __getitem__(self, index: int) -> dict[str, Any]:
        e, t = (int(x) for x in self.index[index])
        h = self.horizon
        return {
            "state": torch.from_numpy(self.states[e][t : t + h + 1]),
            "action": torch.from_numpy(self.actions[e][t : t + h]),
            "label": torch.tensor(self.labels[e]),
            "weight": torch.tensor(1.0),
            "episode_index": torch.tensor(self.episode_ids[e]),
            "frame_index": torch.tensor(t),
        }


class FixedShuffleSampler(SeededSampler):
    """A seeded permutation that ignores ``set_epoch``: validation sees the same windows every time."""

    def set_epoch(self, epoch: int) -> None:
        return None


class SkillDataModule(EpisodeDataModule):
    """Skill windows from a play store, optionally mixed with a demonstration store.

    Args:
        data_dir: the main store (task-agnostic play data; or the demonstrations for FIST fine-tuning and
            SkiLD's posterior).
        task: the play task whose teacher fills an empty ``data_dir`` (``generate_if_missing`` episodes).
        horizon: H, actions per skill; default: the model's (10 in SPiRL, FIST and SkiLD, and alone).
        state_key: the flat state observation key; default: the model's ``state_key`` ("state" when the
            DataModule is used alone). Batches and statistics call it "state" whatever the file's key.
        demo_dir: an optional second store of demonstrations (labelled 1).
        demo_task / demo_generate_if_missing: record demonstrations into an empty ``demo_dir``.
        demo_action_noise: DART noise of those recorded demonstrations (``record_teacher_episodes``'
            ``action_noise``): the env executes the teacher's action plus N(0, noise^2) and the file keeps the
            teacher's correcting label. 0 (the default) records the teacher's clean demonstrations, as the
            papers' human demonstrations are used as they are; > 0 gives a few demonstrations of a skill the
            play data lacks the off-path states a closed-loop decoder drifts into.
        demo_fraction: share of each epoch's samples drawn from the demonstrations (with replacement); None
            pools both stores uniformly.
        demo_val_episodes: demonstration episodes held out for validation (a fraction or a count).
        Other arguments as :class:`EpisodeDataModule` (split, batch size, seed, workers...).
    """

    def __init__(
        self,
        data_dir: str,
        task: str | None = None,
        horizon: int | None = None,
        state_key: str | None = None,
        action_dim: int | None = None,
        demo_dir: str | None = None,
        demo_task: str | None = None,
        demo_fraction: float | None = None,
        demo_val_episodes: float = 0.0,
        demo_generate_if_missing: int = 0,
        demo_action_noise: float = 0.0,
        batch_size: int = 128,
        num_workers: int = 0,
        val_episodes: float = 0.1,
        samples_per_epoch: int | None = None,
        seed: int = 0,
        generate_if_missing: int = 0,
        pin_memory: bool = True,
        test_loss: bool = False,
    ) -> None:
        super().__init__(
            data_dir=data_dir, task=task, cameras=[], state_keys=[state_key] if state_key else None,
            chunk_size=horizon,
            action_dim=action_dim, batch_size=batch_size, num_workers=num_workers, val_episodes=val_episodes,
            sampling="uniform", samples_per_epoch=samples_per_epoch, seed=seed,
            generate_if_missing=generate_if_missing, pin_memory=pin_memory, test_loss=test_loss,
        )
        if horizon is not None and horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if horizon is None:  # the model's (adopt_model_settings); 10 when the DataModule is used alone
            self.chunk_size = STANDALONE_HORIZON
            self._from_model = (self._from_model - {"chunk_size"}) | {"horizon"}
        if state_key is None:  # the model's (adopt_model_settings); "state" when the DataModule is used alone
            self.state_keys = [STANDALONE_STATE_KEY]
            self._from_model = (self._from_model - {"state_keys"}) | {"state_key"}
        if demo_fraction is not None and not 0.0 < demo_fraction < 1.0:
            raise ValueError(f"demo_fraction must be in (0, 1) or None, got {demo_fraction}")
        if demo_fraction is not None and demo_dir is None:
            raise ValueError("demo_fraction needs a demo_dir to draw demonstrations from")
        if not demo_action_noise >= 0:
            raise ValueError(f"demo_action_noise must be >= 0, got {demo_action_noise}")
        if demo_task is not None:
            task_spec(demo_task)
        self.demo_dir = demo_dir
        self.demo_task = demo_task
        self.demo_fraction = demo_fraction
        self.demo_val_episodes = demo_val_episodes
        self.demo_generate_if_missing = demo_generate_if_missing
        self.demo_action_noise = float(demo_action_noise)
        self.demo_store: EpisodeStore | None = None
        self.demo_train_ids: list[int] = []
        self.demo_val_ids: list[int] = []

    @property
    def state_key(self) -> str:
        """The observation key the windows' states are read from (the parent's one ``state_keys`` entry)."""
        return self.state_keys[0]

    @state_key.setter
    def state_key(self, value: str) -> None:
        self.state_keys = [value]

    @property
    def horizon(self) -> int:
        """H, the actions per skill window: the parent's ``chunk_size`` under the skill papers' name."""
        return int(self.chunk_size)

    @horizon.setter
    def horizon(self, value: int) -> None:
        self.chunk_size = int(value)

    # ---- data generation --------------------------------------------------------------------------
    def prepare_data(self) -> None:
        super().prepare_data()
        if self.demo_dir is None or self.demo_generate_if_missing <= 0:
            return
        store = EpisodeStore(self.demo_dir)
        if len(store) == 0:
            if self.demo_task is None:
                raise ValueError(f"{self.demo_dir} is empty and no demo_task is configured to record demos for")

            log.info("recording %d %s demonstrations into %s", self.demo_generate_if_missing, self.demo_task,
                     self.demo_dir)
            record_teacher_episodes(self.demo_task, self.demo_generate_if_missing, store, cameras=[], seed=self.seed,
                                    action_noise=self.demo_action_noise)

    # ---- splits and datasets ----------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.store is not None:
            return
        if self.demo_dir is not None:
            self.demo_store = EpisodeStore(self.demo_dir, create=False)
            ids = self.demo_store.ids()
            if not ids:
                raise FileNotFoundError(f"no demonstrations in {self.demo_dir}: record some with "
                                        f"scripts/record_demos.py or set data.demo_generate_if_missing")
            self.demo_train_ids, self.demo_val_ids = self._split_demos(ids)
        super().setup(stage)

    def _split_demos(self, ids: Sequence[int]) -> tuple[list[int], list[int]]:
        n = len(ids)
        frac = self.demo_val_episodes
        n_val = int(round(frac * n)) if frac < 1 else int(frac)
        n_val = min(max(n_val, 0), n - 1)
        perm = np.random.default_rng(self.seed + 1).permutation(n)
        return sorted(int(ids[i]) for i in perm[n_val:]), sorted(int(ids[i]) for i in perm[:n_val])

    def make_dataset(self, ids: Sequence[int], demo_ids: Sequence[int] = ()) -> SkillWindowDataset:
        sources: list[tuple[EpisodeStore, Sequence[int], float]] = [(self.store, ids, 0.0)]
        if demo_ids:
            sources.append((self.demo_store, demo_ids, 1.0))
        return SkillWindowDataset(sources, self.horizon, self.state_key, self.action_dim)

    def _build(self) -> None:
        self.train_set = self.make_dataset(self.train_ids, self.demo_train_ids)
        if self.val_ids or self.demo_val_ids:
            self.val_set = self.make_dataset(self.val_ids, self.demo_val_ids)
        else:
            self.val_set = None
        if len(self.train_set) == 0:
            raise ValueError(f"no episode of {self.data_dir} is longer than the horizon ({self.horizon} actions)")
        if self.stats is None:
            self.stats = self._play_stats()

    def _play_stats(self) -> dict[str, dict[str, list[float]]]:
        """Mean/std/min/max of states and actions over the play training episodes (plain lists)."""
        ds = self.train_set
        play = [i for i, label in enumerate(ds.labels) if label < 0.5] or list(range(len(ds.labels)))
        stats = {}
        for key, arrays in (("state", ds.states), ("action", ds.actions)):
            values = np.concatenate([arrays[i] for i in play]).astype(np.float64)
            stats[key] = {"mean": values.mean(0).tolist(), "std": np.maximum(values.std(0), STD_FLOOR).tolist(),
                          "min": values.min(0).tolist(), "max": values.max(0).tolist()}
        return stats

    def add_episodes(self, episode_ids: Sequence[int], meta: Sequence[dict[str, Any]] | None = None) -> None:
        super().add_episodes(episode_ids, meta)
        self.train_set = self.make_dataset(self.train_ids, self.demo_train_ids)

    # ---- loaders ----------------------------------------------------------------------------------
    def sample_probabilities(self) -> np.ndarray | None:
        """Demonstration windows share ``demo_fraction`` of the probability mass, play windows the rest."""
        if self.demo_fraction is None or self.train_set is None:
            return None
        ds = self.train_set
        is_demo = np.array([ds.labels[int(e)] > 0.5 for e in ds.index[:, 0]])
        n_demo, n_play = int(is_demo.sum()), int((~is_demo).sum())
        if n_demo == 0 or n_play == 0:
            raise ValueError(f"demo_fraction needs windows from both stores (play {n_play}, demo {n_demo})")
        return np.where(is_demo, self.demo_fraction / n_demo, (1.0 - self.demo_fraction) / n_play)

    def train_dataloader(self) -> DataLoader:
        """Seeded (seed, epoch) draws; the demo mixing is a deliberate re-balancing, so no importance weights."""
        ds = self.train_set
        sampler = SeededSampler(len(ds), self.samples_per_epoch, self.sample_probabilities(), seed=self.seed,
                                shuffle=True)
        return self._loader(ds, sampler)

    def val_dataloader(self) -> DataLoader | list:
        """A fixed shuffle (same seed every epoch): ``limit_val_batches`` then sees play and demo windows alike
        instead of the first episodes only, and every evaluation sees the same windows."""
        if self.val_set is None or len(self.val_set) == 0:
            return []
        return self._loader(self.val_set, FixedShuffleSampler(len(self.val_set), seed=self.seed + 12345))

    # ---- checkpointing ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["demo_train_ids"] = list(self.demo_train_ids)
        state["demo_val_ids"] = list(self.demo_val_ids)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.demo_dir is not None:
            if self.demo_store is None:
                self.demo_store = EpisodeStore(self.demo_dir, create=False)
            ids = [*state.get("demo_train_ids", []), *state.get("demo_val_ids", [])]
            missing = [i for i in ids if not self.demo_store.path(i).exists()]
            if missing:
                raise FileNotFoundError(f"the checkpoint trains on demonstrations missing from {self.demo_dir}: "
                                        f"{missing}")
            self.demo_train_ids = [int(i) for i in state.get("demo_train_ids", [])]
            self.demo_val_ids = [int(i) for i in state.get("demo_val_ids", [])]
        super().load_state_dict(state)
