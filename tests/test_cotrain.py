"""Co-training over several stores (``extra_stores`` + ``WeightedStoreSampler``) and mid-epoch resume of the
train loader (``EpochDataLoader.state_dict``), for one store and for several."""

from __future__ import annotations

import io

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from lit_imit.data import EpisodeDataModule, EpisodeError, EpisodeStore, SeededSampler, WeightedStoreSampler
from lit_imit.data.datasets import compute_stats
from tests.conftest import make_episode_arrays

#: the second store's qpos/actions are shifted by this much: a sample's value says which store it came from
SHIFT = 100.0


def _store(root, n_episodes=4, seed=50, shift=SHIFT, dim=14, hw=(24, 32), cameras=("top",)) -> EpisodeStore:
    store = EpisodeStore(root)
    for i in range(n_episodes):
        arrays = make_episode_arrays(20 + i, dim=dim, hw=hw, cameras=cameras, seed=seed + i)
        arrays["observations/qpos"] += shift
        arrays["action"] += shift
        store.add(arrays, {"task": "transfer_cube", "source": "robot", "seed": i})
    return store


def _cotrain_dm(main, extra, *, weights=(0.5, 0.5), **kw) -> EpisodeDataModule:
    kw.setdefault("num_workers", 0)
    kw.setdefault("chunk_size", 5)
    kw.setdefault("batch_size", 4)
    kw.setdefault("cameras", [])
    dm = EpisodeDataModule(str(main.root), extra_stores=[{"path": str(extra.root), "weight": weights[1]}],
                           data_weight=weights[0], **kw)
    dm.setup("fit")
    return dm


# ---- the sampler --------------------------------------------------------------------------------------
def test_store_frequencies_follow_the_weights_and_stores_are_uniform_inside():
    """20000 seeded draws over stores of 100, 10 and 50 samples weighted 5:3:2 (a weight-0 fourth store is
    never drawn): a chi-square test per store (2 degrees of freedom, 13.8 is p = 0.001), and inside a store
    every sample comes equally often (fresh permutations: counts differ by at most one)."""
    sizes, weights, n = [100, 10, 50, 7], [5.0, 3.0, 2.0, 0.0], 20000
    sampler = WeightedStoreSampler(sizes, weights, num_samples=n, seed=4)
    drawn = np.array(list(sampler))
    store = np.searchsorted(np.cumsum(sizes), drawn, side="right")
    observed = np.bincount(store, minlength=4)
    expected = n * np.array(weights) / sum(weights)
    assert observed[3] == 0
    chi2 = (((observed - expected)[:3]) ** 2 / expected[:3]).sum()
    assert chi2 < 13.8, (observed, expected)
    for s, (offset, size) in enumerate(zip(np.cumsum([0, *sizes[:-1]]), sizes[:3])):
        per_sample = np.bincount(drawn[store == s] - offset, minlength=size)
        assert per_sample.max() - per_sample.min() <= 1, s


def test_weighted_draw_is_seeded_by_epoch_and_ranks_get_equal_disjoint_shares():
    def draw(rank, world, epoch=2, seed=7):
        sampler = WeightedStoreSampler([30, 11], [1.0, 3.0], num_samples=101, seed=seed, rank=rank, world_size=world)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert draw(0, 1) == draw(0, 1) and draw(0, 1) != draw(0, 1, epoch=3) and draw(0, 1) != draw(0, 1, seed=8)
    shards = [draw(r, 3) for r in range(3)]
    assert [len(s) for s in shards] == [34, 34, 34]  # ceil(101 / 3), the draw padded with its first index
    interleaved = [shards[r][i] for i in range(34) for r in range(3)]
    assert interleaved[:101] == draw(0, 1) and interleaved[101] == draw(0, 1)[0]


def test_bad_store_weights_are_refused():
    with pytest.raises(ValueError, match="one weight per store"):
        WeightedStoreSampler([3, 4], [1.0])
    with pytest.raises(ValueError, match="not all zero"):
        WeightedStoreSampler([3, 4], [0.0, 0.0])
    with pytest.raises(ValueError, match=r"stores \[1\] have a weight but no samples"):
        WeightedStoreSampler([3, 0], [1.0, 1.0])


@pytest.mark.parametrize("make", [
    lambda: SeededSampler(23, seed=5, rank=1, world_size=2),
    lambda: SeededSampler(10, num_samples=40, probabilities=np.linspace(0.1, 1, 10), seed=5),
    lambda: WeightedStoreSampler([12, 5], [0.3, 0.7], num_samples=30, seed=5, rank=0, world_size=2),
])
def test_resume_mid_epoch_serves_exactly_the_rest_of_the_draw(make):
    full = make()
    full.set_epoch(3)
    whole = list(full)
    resumed = make()
    resumed.set_epoch(3)
    resumed.resume(3, 6)
    assert list(resumed) == whole[6:] and len(resumed) == len(whole)  # the epoch's length is unchanged
    resumed.set_epoch(3)  # Lightning sets the same epoch again after loading the state: still resumed
    assert list(resumed) == whole[6:]
    resumed.set_epoch(4)  # the next epoch starts from its beginning
    assert len(list(resumed)) == len(whole)


def test_uniform_draw_is_unchanged_by_the_refactoring():
    """The single-store uniform draw is the one runs so far were trained with: permutations end to end."""
    sampler = SeededSampler(10, num_samples=25, seed=2)
    sampler.set_epoch(1)
    gen = torch.Generator().manual_seed(2 * 1_000_003 + 1)
    expected = torch.cat([torch.randperm(10, generator=gen) for _ in range(3)])[:25].tolist()
    assert list(sampler) == expected


# ---- the DataModule -----------------------------------------------------------------------------------
def test_cotraining_batches_splits_and_union_statistics(episode_store, tmp_path):
    extra = _store(tmp_path / "robot")
    dm = _cotrain_dm(episode_store, extra, weights=(0.25, 0.75), val_episodes=1, samples_per_epoch=400,
                     cameras=["top"])
    robot = dm.co_stores[0]
    assert len(dm.val_ids) == 1 and len(robot.val_ids) == 1 and len(robot.train_ids) == 3
    assert not set(robot.train_ids) & set(robot.val_ids)
    # the statistics are those of both stores' training episodes together, every step counting once
    main_low = [low for low in dm.train_set.parts[0].lowdim]
    robot_low = [low for low in dm.train_set.parts[1].lowdim]
    assert dm.stats == compute_stats(main_low + robot_low, ["qpos", "action"])
    assert min(dm.stats["qpos"]["min"]) < SHIFT / 2 < max(dm.stats["qpos"]["max"])
    from_robot = []
    for batch in dm.train_dataloader():
        assert batch["images/top"].shape[1:] == (24, 32, 3)
        from_robot.append(batch["qpos"][:, 0] > SHIFT / 2)
    from_robot = torch.cat(from_robot)
    assert len(from_robot) == 400 and 0.65 < from_robot.float().mean() < 0.85  # weight 0.75 (sd 0.02)
    val_from_robot = torch.cat([b["qpos"][:, 0] > SHIFT / 2 for b in dm.val_dataloader()])
    assert val_from_robot.any() and not val_from_robot.all()  # both stores' held-out episodes are scored


def test_state_only_cotraining_batches_keep_the_sampler_order(episode_store, tmp_path):
    """Without cameras each store gathers its rows at once; the batch must still be in the sampler's order."""
    dm = _cotrain_dm(episode_store, _store(tmp_path / "robot"), val_episodes=0)
    loader = dm.train_dataloader()
    indices = list(loader.sampler)[: dm.batch_size]
    batch = next(iter(loader))
    expected = [dm.train_set[i] for i in indices]
    for key in ("qpos", "action", "action_is_pad", "frame_index", "episode_index", "weight"):
        torch.testing.assert_close(batch[key], torch.stack([s[key] for s in expected]), rtol=0, atol=0)


@pytest.mark.parametrize("problem, pattern", [
    ({"dim": 12}, r"store .*robot: key 'observations/qpos' has per-step shape \(12,\), but .*store has \(14,\)"),
    ({"hw": (16, 20)}, r"store .*robot: key 'observations/images/top' has per-step shape \(16, 20, 3\)"),
    ({"cameras": ()}, r"co-training store .*robot: .*missing camera key 'observations/images/top'"),
])
def test_stores_that_disagree_on_a_key_are_an_error_naming_store_and_key(episode_store, tmp_path, problem, pattern):
    extra = _store(tmp_path / "robot", **problem)
    with pytest.raises(EpisodeError, match=pattern):
        _cotrain_dm(episode_store, extra, cameras=["top"], val_episodes=0)


def test_what_cotraining_does_not_combine_with_is_refused(episode_store, tmp_path):
    extra = {"path": str(tmp_path / "robot"), "weight": 1.0}
    with pytest.raises(ValueError, match="prioritized"):
        EpisodeDataModule(str(episode_store.root), extra_stores=[extra], sampling="prioritized")
    with pytest.raises(ValueError, match="allow_empty"):
        EpisodeDataModule(str(episode_store.root), extra_stores=[extra], allow_empty=True)
    with pytest.raises(ValueError, match=r"\{path: <store>, weight: <float>\}"):
        EpisodeDataModule(str(episode_store.root), extra_stores=[{"dir": "x"}])
    with pytest.raises(ValueError, match="weight of store x"):
        EpisodeDataModule(str(episode_store.root), extra_stores=[{"path": "x", "weight": -1}])
    missing = EpisodeDataModule(str(episode_store.root), extra_stores=[extra], cameras=[])
    with pytest.raises(FileNotFoundError, match=r"co-training store .*robot .*does not exist"):
        missing.setup("fit")
    dm = _cotrain_dm(episode_store, _store(tmp_path / "robot"))
    with pytest.raises(RuntimeError, match="interactive rounds"):
        dm.add_episodes([0])


def test_cotraining_state_restores_every_store_split(episode_store, tmp_path):
    extra = _store(tmp_path / "robot")
    dm = _cotrain_dm(episode_store, extra, val_episodes=1)
    buffer = io.BytesIO()
    torch.save({"dm": dm.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["dm"]
    _store(tmp_path / "robot", n_episodes=1, seed=90)  # written after the checkpoint: must stay unused
    fresh = EpisodeDataModule(str(episode_store.root), num_workers=0, chunk_size=5, cameras=[], val_episodes=1,
                              extra_stores=[{"path": str(extra.root), "weight": 0.5}], data_weight=0.5)
    fresh.load_state_dict(state)
    assert fresh.co_stores[0].train_ids == dm.co_stores[0].train_ids
    assert fresh.co_stores[0].val_ids == dm.co_stores[0].val_ids and fresh.stats == dm.stats
    assert len(fresh.train_set) == len(dm.train_set)
    alone = EpisodeDataModule(str(episode_store.root), num_workers=0, chunk_size=5, cameras=[])
    with pytest.raises(ValueError, match="trained on 1 extra stores"):
        alone.load_state_dict(state)


# ---- mid-epoch resume through the loader and through Lightning --------------------------------------------
def test_loader_state_resumes_the_epoch_where_it_stopped(episode_store, tmp_path):
    extra = _store(tmp_path / "robot")
    dm = _cotrain_dm(episode_store, extra, val_episodes=0, samples_per_epoch=40)
    loader = dm.train_dataloader()
    iterator = iter(loader)
    for _ in range(3):
        next(iterator)
    state = loader.state_dict()
    assert state == {"epoch": 0, "samples_served": 12}
    rest = list(iterator)
    resumed_loader = _cotrain_dm(episode_store, extra, val_episodes=0, samples_per_epoch=40).train_dataloader()
    resumed_loader.load_state_dict(state)
    resumed = list(resumed_loader)
    assert len(resumed_loader) == 10 and len(resumed) == len(rest) == 7
    for a, b in zip(rest, resumed):
        torch.testing.assert_close(a["qpos"], b["qpos"], rtol=0, atol=0)
    stale = dm.train_dataloader()
    stale.load_state_dict({"epoch": 5, "samples_served": 12})  # another epoch's state: a full epoch
    assert len(list(stale)) == 10


class _Recorder(pl.LightningModule):
    """A one-layer model that records the first qpos value of every sample it trains on."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(14, 14)
        self.seen: list[float] = []

    def training_step(self, batch, batch_idx):
        self.seen.extend(batch["qpos"][:, 0].tolist())
        return torch.nn.functional.mse_loss(self.layer(batch["qpos"]), batch["action"][:, 0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


class _SaveAt(pl.Callback):
    def __init__(self, step: int, path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


def _fit(dm_factory, ckpt=None, save=None) -> list[float]:
    model = _Recorder()
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, use_distributed_sampler=False,
                         reload_dataloaders_every_n_epochs=1, callbacks=[save] if save else [])
    trainer.fit(model, datamodule=dm_factory(), ckpt_path=ckpt)
    return model.seen


@pytest.mark.parametrize("cotrain, workers", [(False, 0), (True, 0), (True, 1)])
def test_lightning_resume_mid_epoch_trains_on_the_identical_remaining_samples(episode_store, tmp_path, cotrain,
                                                                               workers):
    """Checkpointed after 3 of an epoch's 8 batches and resumed, a run trains on exactly the samples the
    uninterrupted run trained on after its third batch, that epoch and the next (a loader worker prefetching
    ahead changes nothing: the loader counts the batches it hands to the training loop)."""
    extra = _store(tmp_path / "robot") if cotrain else None

    def dm_factory():
        kw = dict(num_workers=workers, chunk_size=5, batch_size=4, cameras=[], val_episodes=0, samples_per_epoch=32)
        if cotrain:
            kw.update(extra_stores=[{"path": str(extra.root), "weight": 0.5}], data_weight=0.5)
        return EpisodeDataModule(str(episode_store.root), **kw)

    ckpt = tmp_path / "mid.ckpt"
    straight = _fit(dm_factory, save=_SaveAt(3, ckpt))
    resumed = _fit(dm_factory, ckpt=str(ckpt))
    assert len(straight) == 64 and resumed == straight[12:]
    if cotrain:
        assert any(v > SHIFT / 2 for v in straight) and any(v < SHIFT / 2 for v in straight)
