"""BCModule (MLP behaviour cloning): loss values, chunk execution, learning, and the parallel teacher recorder."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from lit_imit.modules.bc import BCModule


def _identity_stats(module: BCModule, dims: dict[str, int]) -> None:
    module.load_stats({k: {"mean": np.zeros(d), "std": np.ones(d), "min": -np.ones(d), "max": np.ones(d)}
                       for k, d in dims.items()})


def test_loss_is_the_mean_error_over_all_entries_with_padding_zeroed():
    torch.manual_seed(0)
    module = BCModule(state_keys=["qpos"], state_dim=2, action_dim=1, chunk_size=2, n_action_steps=2,
                      hidden_dims=[4], loss="l1")
    _identity_stats(module, {"qpos": 2, "action": 1})
    batch = {"qpos": torch.randn(2, 2), "action": torch.tensor([[[1.0], [2.0]], [[3.0], [4.0]]]),
             "action_is_pad": torch.tensor([[False, True], [False, False]])}
    pred = module.model(batch["qpos"]).detach()
    err = (pred - batch["action"]).abs()
    err[0, 1] = 0.0  # padded step
    expected = err.mean()
    assert module.compute_loss(batch)["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    module.hparams.loss = "l2"
    sq = (pred - batch["action"]).pow(2)
    sq[0, 1] = 0.0
    assert module.compute_loss(batch)["loss"].item() == pytest.approx(sq.mean().item(), rel=1e-6)
    weighted = module.compute_loss({**batch, "weight": torch.tensor([1.0, 0.0])})["loss"]
    assert weighted.item() == pytest.approx(sq[0].mean().item() / 2, rel=1e-6)  # batch mean of w_i * l_i


def test_defaults_follow_robomimic_bc():
    module = BCModule()
    hp = module.hparams
    assert (list(hp.hidden_dims), hp.loss, hp.lr, hp.weight_decay, hp.chunk_size) == ([1024, 1024], "l2", 1e-4, 0.0, 1)
    assert type(module.configure_optimizers()) is torch.optim.Adam
    with pytest.raises(ValueError, match="loss must be one of"):
        BCModule(loss="huber")
    with pytest.raises(ValueError, match="one size per state key"):
        BCModule(state_keys=["qpos", "env_state"], state_dim=14)


def test_chunks_are_executed_open_loop_and_queried_every_n_action_steps():
    torch.manual_seed(0)
    module = BCModule(state_keys=["qpos", "env_state"], state_dim=[3, 2], action_dim=2, chunk_size=5,
                      n_action_steps=3, hidden_dims=[8])
    _identity_stats(module, {"qpos": 3, "env_state": 2, "action": 2})
    calls = []
    forward = module.model.forward
    module.model.forward = lambda x: calls.append(len(x)) or forward(x)
    rng = np.random.default_rng(0)
    first = {"qpos": rng.normal(size=(2, 3)).astype(np.float32), "env_state": rng.normal(size=(2, 2)).astype(np.float32)}
    chunk = module.predict_chunk(first)
    calls.clear()
    module.reset()
    actions = [module.select_action(first if t == 0 else
                                    {"qpos": rng.normal(size=(2, 3)).astype(np.float32),
                                     "env_state": rng.normal(size=(2, 2)).astype(np.float32)})
               for t in range(7)]
    assert calls == [2, 2, 2]  # steps 0, 3 and 6
    torch.testing.assert_close(torch.stack(actions[:3], dim=1), chunk[:, :3])
    module.reset(env_ids=[1])  # only env 1 re-queries at the next step
    module.select_action(first)
    assert calls[-1] == 1


def test_bc_learns_the_teacher_chunks(tmp_path):
    """A few hundred steps on two teacher episodes cut the L1 loss several times over (it learns)."""
    import lightning.pytorch as pl

    from lit_imit.data.datamodule import EpisodeDataModule

    dm = EpisodeDataModule(str(tmp_path / "d"), task="transfer_cube", generate_if_missing=2, cameras=[],
                           state_keys=["qpos", "env_state"], chunk_size=10, action_dim=14, batch_size=64,
                           num_workers=0, val_episodes=0)
    module = BCModule(state_keys=["qpos", "env_state"], state_dim=[14, 7], chunk_size=10, n_action_steps=5,
                      hidden_dims=[128, 128], loss="l1", lr=1e-3)
    dm.prepare_data()
    dm.setup("fit")
    module.load_stats(dm.stats)
    before = np.mean([module.compute_loss(b)["loss"].item() for b, _ in zip(dm.train_dataloader(), range(4))])
    trainer = pl.Trainer(max_steps=300, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    module.eval()
    with torch.no_grad():
        after = np.mean([module.compute_loss(b)["loss"].item() for b, _ in zip(dm.train_dataloader(), range(4))])
    assert after < before / 4, (before, after)


def test_parallel_recording_writes_the_same_seeds_under_the_same_ids(tmp_path):
    from lit_imit.data.episodes import EpisodeStore
    from lit_imit.data.recording import record_teacher_episodes

    stores = {}
    for workers in (1, 2):
        store = EpisodeStore(tmp_path / f"w{workers}", create=True)
        report = record_teacher_episodes("transfer_cube", 3, store, cameras=[], env_kwargs={"env_state": True},
                                         workers=workers)
        assert report.ids == [0, 1, 2] and report.successes == 3
        stores[workers] = store
    for episode_id in stores[1].ids():
        with h5py.File(stores[1].path(episode_id)) as a, h5py.File(stores[2].path(episode_id)) as b:
            assert a.attrs["seed"] == b.attrs["seed"] == episode_id
            for key in ("action", "observations/qpos", "observations/env_state"):
                np.testing.assert_array_equal(a[key][()], b[key][()])
    with pytest.raises(ValueError, match="workers must be >= 1"):
        record_teacher_episodes("transfer_cube", 1, stores[1], workers=0)


def test_dart_recording_executes_noisy_actions_and_records_the_teachers_clean_ones(tmp_path):
    """Replay a DART episode: at every recorded state the teacher gives the recorded action, and stepping with it
    plus the episode's own noise stream reaches the next recorded state exactly; a clean recording differs."""
    import gymnasium as gym

    from lit_imit.data.episodes import EpisodeStore
    from lit_imit.data.recording import dart_noise, record_teacher_episodes
    from lit_imit.envs import make_env, make_teacher

    noisy_store = EpisodeStore(tmp_path / "dart", create=True)
    record_teacher_episodes("transfer_cube", 1, noisy_store, cameras=[], action_noise=0.05)
    clean_store = EpisodeStore(tmp_path / "clean", create=True)
    record_teacher_episodes("transfer_cube", 1, clean_store, cameras=[])
    with h5py.File(noisy_store.path(0)) as f, h5py.File(clean_store.path(0)) as g:
        assert f.attrs["action_noise"] == 0.05 and g.attrs["action_noise"] == 0.0
        actions, qpos, seed = f["action"][()], f["observations/qpos"][()], int(f.attrs["seed"])
        assert np.abs(qpos - g["observations/qpos"][()]).max() > 0.01
    env = make_env("transfer_cube", cameras=[])
    teacher = make_teacher("transfer_cube", env)
    perturb = dart_noise(env, 0.05, seed)
    obs, _ = env.reset(seed=seed)
    for t in range(len(actions)):
        np.testing.assert_array_equal(obs["qpos"], qpos[t])
        np.testing.assert_array_equal(teacher.act(obs), actions[t])
        obs, *_ = env.step(perturb(actions[t]))
    with pytest.raises(ValueError, match="action_noise"):
        record_teacher_episodes("transfer_cube", 1, clean_store, action_noise=-1.0)
    dict_actions = type("PickPlaceLike", (), {"action_space": gym.spaces.Dict({"pose": gym.spaces.Box(0, 1, (3,))})})
    with pytest.raises(ValueError, match="continuous"):
        dart_noise(dict_actions(), 0.01, 0)
