"""Skill windows and SkillDataModule: window contents, demo mixing, splits and checkpoint state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_imit.data.episodes import EpisodeError, EpisodeStore
from lit_imit.data.skills import SkillDataModule, SkillWindowDataset

@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small models on a shared CPU: one intra-op thread avoids oversubscription stalls (10x slower otherwise)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



def skill_episode(length: int, state_dim: int = 4, action_dim: int = 2, seed: int = 0, offset: float = 0.0):
    """States a smooth random walk; the action at t is a fixed function of s_t (learnable by pi(a | s, z))."""
    rng = np.random.default_rng(seed)
    states = offset + np.cumsum(rng.normal(0, 0.1, size=(length, state_dim)), axis=0)
    actions = np.tanh(states[:, :action_dim] - states[:, action_dim : 2 * action_dim])
    return {"observations/state": states.astype(np.float32), "observations/qpos": states[:, :2].astype(np.float32),
            "action": actions.astype(np.float32)}


def make_store(root, episodes: int = 4, length: int = 40, offset: float = 0.0, seed: int = 0) -> EpisodeStore:
    store = EpisodeStore(root)
    for i in range(episodes):
        store.add(skill_episode(length, seed=seed + i, offset=offset), {"task": "synthetic", "source": "teacher"})
    return store


def test_windows_hold_h_plus_one_states_and_h_actions(tmp_path):
    store = make_store(tmp_path / "play", episodes=2, length=15)
    ds = SkillWindowDataset([(store, store.ids(), 0.0)], horizon=10)
    assert len(ds) == 2 * (15 - 10)
    sample = ds[3]
    episode = store.read(store.ids()[0])
    assert sample["state"].shape == (11, 4) and sample["action"].shape == (10, 2)
    assert torch.equal(sample["state"], torch.from_numpy(episode.obs("state")[3:14]))
    assert torch.equal(sample["action"], torch.from_numpy(episode.arrays["action"][3:13]))
    assert float(sample["label"]) == 0.0 and int(sample["frame_index"]) == 3


def test_short_episodes_give_no_windows_and_bad_files_are_named(tmp_path):
    store = make_store(tmp_path / "short", episodes=1, length=8)
    assert len(SkillWindowDataset([(store, store.ids(), 0.0)], horizon=10)) == 0
    with pytest.raises(EpisodeError, match="missing key 'observations/pose'"):
        SkillWindowDataset([(store, store.ids(), 0.0)], horizon=2, state_key="pose")
    with pytest.raises(EpisodeError, match="action dimension"):
        SkillWindowDataset([(store, store.ids(), 0.0)], horizon=2, action_dim=9)


def test_datamodule_mixes_demonstrations_at_the_requested_fraction(tmp_path):
    make_store(tmp_path / "play", episodes=6, length=60)
    make_store(tmp_path / "demo", episodes=2, length=30, offset=5.0, seed=100)
    dm = SkillDataModule(str(tmp_path / "play"), demo_dir=str(tmp_path / "demo"), demo_fraction=0.5,
                         batch_size=64, val_episodes=1, samples_per_epoch=2000, num_workers=0)
    dm.setup("fit")
    labels = torch.cat([b["label"] for b in dm.train_dataloader()])
    assert len(labels) == 2000
    assert abs(float(labels.mean()) - 0.5) < 0.05  # demos are ~13% of the windows but half of the draws
    assert all(float(b["weight"].min()) == 1.0 for b in dm.train_dataloader())
    # statistics come from the play data only (the demos sit at an offset of 5)
    play_mean = np.mean(np.concatenate([dm.train_set.states[i] for i, l in enumerate(dm.train_set.labels) if l == 0]),
                        axis=0)
    assert np.allclose(dm.stats["state"]["mean"], play_mean, atol=1e-5)


def test_datamodule_draws_are_seeded_and_state_round_trips(tmp_path):
    make_store(tmp_path / "play", episodes=5, length=40)
    make_store(tmp_path / "demo", episodes=3, length=30, seed=50)
    kwargs = dict(demo_dir=str(tmp_path / "demo"), demo_fraction=0.3, demo_val_episodes=1, batch_size=16,
                  val_episodes=1, num_workers=0)
    a = SkillDataModule(str(tmp_path / "play"), **kwargs)
    a.setup("fit")
    first = next(iter(a.train_dataloader()))["frame_index"]
    state = a.state_dict()
    assert len(state["demo_train_ids"]) == 2 and len(state["demo_val_ids"]) == 1
    torch.save(state, tmp_path / "dm.pt")
    restored = torch.load(tmp_path / "dm.pt", weights_only=True)  # plain types only
    make_store(tmp_path / "demo", episodes=1, length=30, seed=99)  # written "after the checkpoint"
    b = SkillDataModule(str(tmp_path / "play"), **kwargs)
    b.setup("fit")
    b.load_state_dict(restored)
    assert b.demo_train_ids == a.demo_train_ids and b.train_ids == a.train_ids and b.stats == a.stats
    assert torch.equal(next(iter(b.train_dataloader()))["frame_index"], first)


def test_datamodule_records_dart_demonstrations_when_asked(tmp_path):
    """demo_action_noise reaches the recorder: the demo file says its noise, and its states leave the clean path
    the same seed takes without noise (the kitchen's target task, whose unseen sub-task is why the option exists)."""
    import h5py

    make_store(tmp_path / "play", episodes=2, length=20)
    stores = {}
    for name, noise in (("dart", 0.05), ("clean", 0.0)):
        dm = SkillDataModule(str(tmp_path / "play"), demo_dir=str(tmp_path / name), demo_task="kitchen-mktl",
                             demo_generate_if_missing=1, demo_action_noise=noise)
        dm.prepare_data()
        stores[name] = EpisodeStore(tmp_path / name, create=False)
    with h5py.File(stores["dart"].path(0)) as f, h5py.File(stores["clean"].path(0)) as g:
        assert f.attrs["action_noise"] == 0.05 and g.attrs["action_noise"] == 0.0
        assert f.attrs["seed"] == g.attrs["seed"]
        assert np.abs(f["observations/qpos"][:50] - g["observations/qpos"][:50]).max() > 1e-3


def test_datamodule_reads_the_models_state_key(tmp_path):
    """Without a state_key of its own the DataModule reads the model's (kitchen's ``positions``), its batches and
    statistics still calling it "state"; a state_key that disagrees with the model's is an error naming both."""
    from lit_imit.modules.skill_prior import SkillPriorModule

    store = EpisodeStore(tmp_path / "play")
    for i in range(3):
        episode = skill_episode(30, seed=i)
        episode["observations/positions"] = 2 * episode["observations/state"][:, :3]
        store.add(episode, {"task": "synthetic", "source": "teacher"})
    model = SkillPriorModule(stage="skill_prior", state_dim=3, action_dim=2, state_key="positions", hidden_dim=16,
                             n_layers=2, encoder_hidden=16, prior_hidden=16, prior_layers=2)
    dm = SkillDataModule(str(tmp_path / "play"), val_episodes=0)
    assert dm.state_key == "state"  # used alone
    dm.adopt_model_settings(model)
    dm.setup("fit")
    assert dm.state_key == "positions"
    window = dm.train_set[0]
    first = store.read(dm.train_ids[0]).obs("positions")
    assert torch.equal(window["state"], torch.from_numpy(first[: dm.horizon + 1]))
    assert set(dm.stats) == {"state", "action"} and len(dm.stats["state"]["mean"]) == 3
    model.load_stats(dm.stats)
    model.eval()
    model.reset()
    action = model.select_action({"positions": torch.from_numpy(first[:1])})
    assert action.shape == (1, 2)
    with pytest.raises(KeyError, match="'positions'"):
        model.select_action({"state": torch.zeros(1, 4)})
    with pytest.raises(ValueError, match="state_key=positions needs data.init_args.state_key to be positions"):
        model.check_data_compatibility(SkillDataModule(str(tmp_path / "play"), state_key="state"))


def test_datamodule_rejects_bad_settings(tmp_path):
    make_store(tmp_path / "play", episodes=2, length=20)
    with pytest.raises(ValueError, match="demo_fraction"):
        SkillDataModule(str(tmp_path / "play"), demo_dir=str(tmp_path / "play"), demo_fraction=1.5)
    with pytest.raises(ValueError, match="needs a demo_dir"):
        SkillDataModule(str(tmp_path / "play"), demo_fraction=0.5)
    with pytest.raises(ValueError, match="unknown task"):
        SkillDataModule(str(tmp_path / "play"), demo_task="no-such-task")
    with pytest.raises(ValueError, match="demo_action_noise"):
        SkillDataModule(str(tmp_path / "play"), demo_action_noise=-0.1)
    dm = SkillDataModule(str(tmp_path / "play"), demo_dir=str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError):
        dm.setup("fit")


def test_validation_batches_mix_both_stores_and_stay_fixed(tmp_path):
    make_store(tmp_path / "play", episodes=6, length=60)
    make_store(tmp_path / "demo", episodes=4, length=60, seed=100)
    dm = SkillDataModule(str(tmp_path / "play"), demo_dir=str(tmp_path / "demo"), demo_val_episodes=2,
                         val_episodes=2, batch_size=32, num_workers=0)
    dm.setup("fit")
    loader = dm.val_dataloader()
    order = list(loader.sampler)
    first = next(iter(loader))
    assert 0.0 < float(first["label"].mean()) < 1.0  # a limited validation still sees both kinds of window
    loader.sampler.set_epoch(3)  # Lightning sets the epoch on every sampler: the order must not move
    assert list(loader.sampler) == order
