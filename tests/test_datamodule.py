"""Chunk windows, statistics, seeded/prioritized sampling, growth and weights-only state of the DataModule."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from lit_imit.data import ChunkDataset, EpisodeDataModule, EpisodeError, SeededSampler, compute_stats
from tests.conftest import make_episode_arrays


def test_chunk_window_values_and_padding(episode_store):
    ds = ChunkDataset(episode_store, [0], chunk_size=8)
    episode = episode_store.read(0)
    last = len(ds) - 3  # t = 17 in a 20-step episode: 3 valid actions, 5 padded
    sample = ds[last]
    t = int(sample["frame_index"])
    assert t == 17
    np.testing.assert_array_equal(sample["qpos"].numpy(), episode.obs("qpos")[t])
    np.testing.assert_array_equal(sample["images/top"].numpy(), episode.obs("images/top")[t])
    np.testing.assert_array_equal(sample["action"][:3].numpy(), episode.arrays["action"][17:20])
    assert sample["action_is_pad"].tolist() == [False] * 3 + [True] * 5
    assert sample["images/top"].dtype == torch.uint8 and sample["weight"].item() == 1.0


def test_worker_processes_read_frames_through_their_own_handles(episode_store):
    """Frames are read lazily through per-process HDF5 handles: a pickled dataset (what a DataLoader worker
    gets) starts without the parent's open files, and 2 workers deliver exactly what 0 workers do."""
    import pickle

    ds = ChunkDataset(episode_store, [0, 1, 2], chunk_size=4)
    first = ds[3]
    assert ds._files._files  # the parent opened a file
    copy = pickle.loads(pickle.dumps(ds))
    assert copy._files._files == {}
    torch.testing.assert_close(copy[3]["images/top"], first["images/top"])

    def frames(workers: int) -> torch.Tensor:
        loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=workers, shuffle=False)
        return torch.cat([batch["images/top"] for batch in loader])

    torch.testing.assert_close(frames(2), frames(0))


def test_observation_history_repeats_first_frame_and_action_offset(episode_store):
    ds = ChunkDataset(episode_store, [1], chunk_size=4, n_obs_steps=2, action_offset=-1)
    episode = episode_store.read(1)
    first = ds[0]
    assert first["qpos"].shape == (2, 14) and first["images/top"].shape == (2, 24, 32, 3)
    np.testing.assert_array_equal(first["qpos"][0].numpy(), first["qpos"][1].numpy())
    np.testing.assert_array_equal(first["action"][0].numpy(), episode.arrays["action"][0])  # clamped at start
    later = ds[5]
    np.testing.assert_array_equal(later["qpos"].numpy(), episode.obs("qpos")[4:6])
    np.testing.assert_array_equal(later["action"].numpy(), episode.arrays["action"][4:8])


def test_missing_camera_and_wrong_action_dim_name_the_file(episode_store):
    with pytest.raises(EpisodeError, match=r"episode_000000\.hdf5.*observations/images/left_wrist.*\['top'\]"):
        ChunkDataset(episode_store, [0], camera_keys=["left_wrist"])
    with pytest.raises(EpisodeError, match=r"episode_000000\.hdf5.*action dimension is 14.*expects 16"):
        ChunkDataset(episode_store, [0], action_dim=16)


def test_stats_floor_std_and_are_plain_lists():
    low = [{"qpos": np.stack([np.arange(5.0), np.full(5, 3.0)], 1)}]
    stats = compute_stats(low, ["qpos"])
    assert stats["qpos"]["mean"] == [2.0, 3.0]
    assert stats["qpos"]["std"][1] == pytest.approx(0.01)  # constant dim: floored
    assert stats["qpos"]["min"] == [0.0, 3.0] and stats["qpos"]["max"] == [4.0, 3.0]
    assert all(type(v) is float for v in stats["qpos"]["std"])


def test_sampler_is_seeded_by_epoch_and_sharded_without_overlap():
    a = SeededSampler(50, seed=3, rank=0, world_size=2)
    b = SeededSampler(50, seed=3, rank=1, world_size=2)
    a.set_epoch(4), b.set_epoch(4)
    ia, ib = list(a), list(b)
    assert len(ia) == len(a) == 25 and not set(ia) & set(ib) and sorted(ia + ib) == list(range(50))
    again = SeededSampler(50, seed=3, rank=0, world_size=2)
    again.set_epoch(4)
    assert list(again) == ia
    again.set_epoch(5)
    assert list(again) != ia


@pytest.mark.parametrize("num_samples,world_size", [(51, 2), (50, 3), (1, 4), (7, 7)])
def test_every_rank_draws_the_same_number_of_indices(num_samples, world_size):
    """Uneven shards would leave one rank in a gradient all-reduce that the others never enter (a DDP hang)."""
    shards = [list(SeededSampler(num_samples, seed=1, rank=r, world_size=world_size)) for r in range(world_size)]
    per_rank = -(-num_samples // world_size)
    assert [len(s) for s in shards] == [per_rank] * world_size
    assert all(len(SeededSampler(num_samples, rank=r, world_size=world_size)) == per_rank for r in range(world_size))
    drawn = [i for s in shards for i in s]
    assert set(drawn) == set(range(num_samples))  # padding repeats indices, never invents or drops one
    assert len(drawn) - num_samples == per_rank * world_size - num_samples


def test_prioritized_sampler_follows_probabilities():
    probs = np.array([0.7, 0.1, 0.1, 0.1])
    sampler = SeededSampler(4, num_samples=20000, probabilities=probs, seed=0)
    counts = np.bincount(list(sampler), minlength=4) / 20000
    np.testing.assert_allclose(counts, probs, atol=0.02)
    with pytest.raises(ValueError, match="probabilities"):
        SeededSampler(4, probabilities=[1.0, float("nan"), 0.0, 0.0])


def _dm(store, **kw):
    kw.setdefault("num_workers", 0)
    kw.setdefault("chunk_size", 5)
    kw.setdefault("batch_size", 4)
    dm = EpisodeDataModule(str(store.root), **kw)
    dm.setup("fit")
    return dm


def test_split_by_episode_and_batches(episode_store):
    dm = _dm(episode_store, val_episodes=0.4)
    assert len(dm.val_ids) == 2 and not set(dm.train_ids) & set(dm.val_ids)
    assert sorted(dm.train_ids + dm.val_ids) == [0, 1, 2, 3, 4]
    batch = next(iter(dm.train_dataloader()))
    assert batch["qpos"].shape == (4, 14) and batch["images/top"].shape == (4, 24, 32, 3)
    assert batch["action"].shape == (4, 5, 14) and batch["action_is_pad"].dtype == torch.bool
    assert set(dm.stats) == {"qpos", "action"}


def test_prioritized_sampling_puts_importance_weights_in_batches(episode_store):
    dm = _dm(episode_store, val_episodes=0, sampling="prioritized", samples_per_epoch=64, priority_alpha=1.0)
    dm.set_priorities({0: 10.0, 1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}, beta=1.0)
    loader = dm.train_dataloader()
    weights, episodes = [], []
    for batch in loader:
        weights.append(batch["weight"])
        episodes.append(batch["episode_index"])
    weights, episodes = torch.cat(weights), torch.cat(episodes)
    assert len(weights) == 64
    assert (episodes == 0).float().mean() > 0.4  # 10x priority: ~0.7 of draws
    assert torch.all(weights[episodes == 0] < weights[episodes != 0].min())  # frequent samples weigh less
    assert weights.max() <= 1.0 + 1e-6



def test_mean_normalized_weights_reach_the_batches_and_the_datamodule_state(episode_store):
    """The callback's ``weight_normalization`` scales the batches' weights to mean 1 over the draws (same
    ratios as the reference's max 1) and travels in the DataModule's checkpoint state."""
    priorities = {0: 10.0, 1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}
    ref = _dm(episode_store, val_episodes=0, sampling="prioritized", priority_alpha=1.0)
    ref.set_priorities(priorities, beta=1.0)
    dm = _dm(episode_store, val_episodes=0, sampling="prioritized", priority_alpha=1.0)
    dm.set_priorities(priorities, beta=1.0, weight_normalization="mean")
    (p_ref, w_ref), (p, w) = ref.sampling_distribution(), dm.sampling_distribution()
    np.testing.assert_array_equal(p, p_ref)
    np.testing.assert_allclose(w / w_ref, (w / w_ref)[0], rtol=1e-6)
    assert float(np.sum(p * w)) == pytest.approx(1.0, rel=1e-5) and w_ref.max() == pytest.approx(1.0)
    fresh = _dm(episode_store, val_episodes=0, sampling="prioritized", priority_alpha=1.0)
    fresh.load_state_dict(dm.state_dict())
    assert fresh.weight_normalization == "mean"
    np.testing.assert_array_equal(fresh.sampling_distribution()[1], w)
    older = {k: v for k, v in dm.state_dict().items() if k != "weight_normalization"}
    fresh.load_state_dict(older)
    assert fresh.weight_normalization == "max"
    with pytest.raises(ValueError, match="weight_normalization must be one of"):
        dm.set_priorities(priorities, beta=1.0, weight_normalization="batch")

def test_prioritized_sampling_is_pier_with_the_episodes_step_counts(episode_store):
    """Every step carries its episode's priority: P = p^alpha / sum_j n_j p_j^alpha, w = (N P)^-beta / max w;
    an episode of priority 0 is never drawn and weighs 0."""
    from lit_imit.interactive import PIER

    dm = _dm(episode_store, val_episodes=0, sampling="prioritized", priority_alpha=1.5)
    assert np.allclose(dm.sampling_distribution()[0], 1 / len(dm.train_set))  # no round yet: uniform
    priorities = {0: 2.0, 1: 1.0, 2: 0.5, 3: 0.0, 4: 1.0}
    dm.set_priorities(priorities, beta=0.7)
    probs, weights = dm.sampling_distribution()
    counts = dm.episode_step_counts()
    assert counts == [int((dm.train_set.index[:, 0] == e).sum()) for e in range(5)] and sum(counts) == len(probs)
    p = np.array([priorities[i] for i in dm.train_ids]) ** 1.5
    rows = dm.train_set.index[:, 0]
    np.testing.assert_allclose(probs, (p / np.dot(counts, p))[rows], rtol=1e-12)
    expected_w = PIER(alpha=1.5).importance_weights(p / np.dot(counts, p), 0.7, counts)[rows]
    np.testing.assert_allclose(weights, expected_w, rtol=1e-6)
    assert probs.sum() == pytest.approx(1.0) and weights.max() == pytest.approx(1.0)
    assert np.all(probs[rows == 3] == 0) and np.all(weights[rows == 3] == 0)


def test_add_demos_writes_in_order_and_grows_the_training_split(episode_store):
    dm = _dm(episode_store, val_episodes=0)
    assert dm.collected_episode_ids() == []
    demos = [(make_episode_arrays(6 + k, seed=20 + k), {"source": "teacher", "interactive_episode": 3}) for k in range(2)]
    ids = dm.add_demos(demos, [{"label": -1, "version": 1}, {"label": 1, "version": 1}])
    assert ids == [5, 6] and dm.train_ids[-2:] == ids and dm.collected_episode_ids() == ids
    assert dm.episode_meta[6] == {"label": 1, "version": 1}
    assert dm.episode_step_counts()[-2:] == [len(dm.train_set.index[dm.train_set.index[:, 0] == e]) for e in (5, 6)]
    assert dm.staging_path("x.hdf5").parent.name == ".interactive_staging"


def test_add_episodes_and_state_dict_loads_weights_only(episode_store):
    dm = _dm(episode_store, val_episodes=1)
    new_id = episode_store.add(make_episode_arrays(9, seed=9), {"source": "novice", "round": 1})
    dm.add_episodes([new_id], [{"uncertainty": np.float32(0.5), "label": -1, "round": np.int64(1)}])
    dm.set_priorities({new_id: 2.0}, beta=0.6)
    assert new_id in dm.train_ids and dm.train_set.episode_ids[-1] == new_id
    buffer = io.BytesIO()
    torch.save({"dm": dm.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["dm"]
    # a later episode on disk must not leak into the restored run
    episode_store.add(make_episode_arrays(7, seed=11), {"source": "novice"})
    fresh = EpisodeDataModule(str(episode_store.root), num_workers=0, chunk_size=5, val_episodes=1)
    fresh.setup("fit")
    fresh.load_state_dict(state)
    assert fresh.train_ids == dm.train_ids and fresh.val_ids == dm.val_ids
    assert fresh.episode_meta[new_id]["uncertainty"] == 0.5 and fresh.importance_beta == 0.6
    assert fresh.stats == dm.stats and len(fresh.train_set) == len(dm.train_set)


def test_unknown_task_and_empty_store_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'transfer-cubez'.*transfer_cube"):
        EpisodeDataModule(str(tmp_path), task="transfer-cubez")
    dm = EpisodeDataModule(str(tmp_path / "empty"))
    dm.prepare_data()
    with pytest.raises(FileNotFoundError, match="no episodes"):
        dm.setup("fit")


def test_non_finite_training_data_is_refused_naming_file_and_key(episode_store):
    """NaN in an episode used to give NaN statistics, then a NaN loss and NaN weights with exit status 0."""
    from lit_imit.data import write_episode

    arrays = make_episode_arrays(20, seed=9)
    arrays["action"][3, 2] = np.nan
    write_episode(episode_store.path(5), arrays, {"task": "transfer_cube"})  # behind the store's back
    with pytest.raises(EpisodeError, match=r"episode_000005\.hdf5: key 'action' has non-finite values: 1 NaN"):
        ChunkDataset(episode_store, [0, 5], camera_keys=[])
    with pytest.raises(EpisodeError, match=r"episode_000005\.hdf5: key 'action'"):
        _dm(episode_store, val_episodes=0)
    good = ChunkDataset(episode_store, [0, 1], camera_keys=[])
    low = [dict(d) for d in good.lowdim]
    low[1]["qpos"] = low[1]["qpos"].copy()
    low[1]["qpos"][0, 0] = np.inf
    with pytest.raises(EpisodeError, match=r"episode_000001\.hdf5: key 'observations/qpos' has non-finite .* 1 inf"):
        compute_stats(low, ["qpos", "action"], paths=good.paths)
    with pytest.raises(EpisodeError, match=r"episode #1 of the split: key 'observations/qpos'"):
        compute_stats(low, ["qpos"])


@pytest.mark.parametrize("n_obs_steps, action_offset", [(1, 0), (2, -1)])
def test_state_only_batches_are_gathered_at_once_and_equal_the_collated_samples(episode_store, n_obs_steps,
                                                                                  action_offset):
    """The batched path (no cameras) gives exactly the tensors of collating the samples one by one, padding,
    clipped history, weights and indices included."""
    from torch.utils.data import default_collate

    from lit_imit.data.datasets import CollatedBatch, collate

    ds = ChunkDataset(episode_store, episode_store.ids(), state_keys=["qpos", "qvel"], camera_keys=[], chunk_size=6,
                      n_obs_steps=n_obs_steps, action_offset=action_offset)
    ds.weights = np.linspace(0.5, 1.5, len(ds)).astype(np.float32)
    indices = [0, 1, len(ds) - 1, 19, 20, 5, len(ds) - 3]  # episode starts and ends, two episodes
    batch = ds.__getitems__(indices)
    assert isinstance(batch, CollatedBatch)
    expected = default_collate([ds[i] for i in indices])
    got = collate(batch)
    assert set(got) == set(expected)
    for key in expected:
        assert got[key].dtype == expected[key].dtype, key
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)
    assert bool(got["action_is_pad"].any())  # the window past an episode end is padded
    with_camera = ChunkDataset(episode_store, episode_store.ids(), camera_keys=["top"], chunk_size=6)
    assert isinstance(with_camera.__getitems__([0, 1]), list)  # frames are read one sample at a time


# ---- the observation said once: the data takes what the config leaves out from the model -----------------
def test_left_out_settings_come_from_the_model_and_given_ones_stay(tmp_path):
    from lit_imit.modules.act import ACTModule
    from lit_imit.modules.diffusion import DiffusionModule

    act = ACTModule(cameras=[], state_keys=["qpos", "env_state"], state_dim=[14, 7], chunk_size=20,
                    n_action_steps=20, dim_model=16, n_heads=2, dim_feedforward=16, n_encoder_layers=1,
                    n_vae_encoder_layers=1)
    dm = EpisodeDataModule(str(tmp_path), task="transfer_cube", chunk_size=30)
    assert (dm.cameras, dm.state_keys, dm.chunk_size, dm.action_dim) == (["top"], ["qpos"], 30, None)  # standalone
    dm.adopt_model_settings(act)
    assert dm.cameras == [] and dm.state_keys == ["qpos", "env_state"] and dm.action_dim == 14
    assert dm.chunk_size == 30  # given: kept (and checked >= 20 when the two meet)
    assert dm.recording_env_kwargs() == {"env_state": True}

    diffusion = DiffusionModule(cameras=[], state_keys=["qpos"], state_dim=14, n_obs_steps=3, horizon=16,
                                n_action_steps=8, down_dims=[16, 32])
    dm = EpisodeDataModule(str(tmp_path), task="transfer_cube")
    dm.adopt_model_settings(diffusion)
    assert (dm.chunk_size, dm.n_obs_steps, dm.action_offset) == (16, 3, -2)
    diffusion.check_data_compatibility(dm)
    wrong = EpisodeDataModule(str(tmp_path), task="transfer_cube", action_offset=0)
    wrong.adopt_model_settings(diffusion)
    with pytest.raises(ValueError, match=r"model.init_args.n_obs_steps=3 needs data.init_args.action_offset to be -2"):
        diffusion.check_data_compatibility(wrong)


def test_rollout_callback_takes_task_from_the_data_and_observation_from_the_policy():
    from types import SimpleNamespace

    from callbacks.rollout import RolloutEvaluation
    from lit_imit.modules.bc import BCModule

    policy = BCModule(state_keys=["qpos", "env_state"], state_dim=[14, 7], chunk_size=1, hidden_dims=[8])
    callback = RolloutEvaluation(env_kwargs={"render_mode": "rgb_array"})
    callback.setup(SimpleNamespace(datamodule=SimpleNamespace(task="insertion")), policy, "fit")
    assert callback.task == "insertion"
    assert callback.env_kwargs == {"render_mode": "rgb_array", "cameras": [], "env_state": True}
    assert callback.video_camera is None  # no camera: the video comes from env.render()
    told = RolloutEvaluation(task="transfer_cube", env_kwargs={"cameras": ["top"]})
    told.setup(SimpleNamespace(datamodule=None), policy, "fit")
    assert told.env_kwargs["cameras"] == ["top"] and told.video_camera == "top"  # what the config says wins
    with pytest.raises(ValueError, match="has no task"):
        RolloutEvaluation().setup(SimpleNamespace(datamodule=None), policy, "fit")


def test_demos_are_recorded_once_per_job_not_once_per_node(tmp_path):
    """Lightning runs ``prepare_data`` on global rank 0 only when ``prepare_data_per_node`` is False; with it
    True, each node's local rank 0 would record into the one shared store."""
    assert EpisodeDataModule(data_dir=str(tmp_path)).prepare_data_per_node is False
