"""Directories of the original ACT recorder load as they are, and nothing is ever written into them.

The files are written here in the original layout (``episode_<n>.hdf5`` without zero padding, attribute
``sim``, ``/observations/{qpos,qvel,env_state,images/<cam>}``, ``/action``). "Nothing written" is checked on
the directory listing: every entry, hidden ones included, with its size and modification time, and the
directory's own modification time (which changes when a file is created, even one removed again).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest

from lit_imit.data import EpisodeDataModule, EpisodeStore, read_episode
from lit_imit.data.episodes import EpisodeError, ForeignStoreError
from tests.conftest import write_act_original

ORIGINAL_IDS = (0, 1, 2, 10)  # episode_10.hdf5 sorts before episode_2.hdf5 by name, after it by id


def write_act_directory(root: Path, env_state: bool = True) -> Path:
    root.mkdir(parents=True)
    for i in ORIGINAL_IDS:
        write_act_original(root / f"episode_{i}.hdf5", length=12 + i, seed=i, env_state_dim=7 if env_state else None)
    return root


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry below ``root`` (hidden ones too) and ``root`` itself: (size, mtime in ns)."""
    entries = [root, *sorted(root.rglob("*"))]
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in entries}


def test_an_original_act_directory_is_read_as_it_is(tmp_path):
    root = write_act_directory(tmp_path / "act")
    before = snapshot(root)
    store = EpisodeStore(root)
    assert store.ids() == list(ORIGINAL_IDS) and len(store) == 4
    assert store.path(10).name == "episode_10.hdf5" and store.path(2).name == "episode_2.hdf5"
    assert store.length(10) == 22 and store.info(1)["attrs"]["sim"] is True
    episode = store.read(10)
    assert episode.obs("env_state").shape == (22, 7) and episode.obs("images/top").shape == (22, 16, 20, 3)
    assert store.verify() == []
    assert snapshot(root) == before


TINY_ACT = dict(cameras=["top"], state_keys=["qpos", "env_state"], state_dim=[14, 7], action_dim=14, chunk_size=5,
                n_action_steps=5, dim_model=16, n_heads=2, dim_feedforward=32, n_encoder_layers=1, n_decoder_layers=1,
                n_vae_encoder_layers=1, latent_dim=4, pretrained_backbone=None)


@pytest.mark.parametrize("index", ["none", "stale index.json"])
def test_training_on_an_original_act_directory_writes_nothing_there(tmp_path, index):
    """A short fit (split, statistics, images read per sample, validation) on the directory as the ACT recorder
    left it, with or without an ``index.json`` (one that an older lit_imit wrote there, now out of date)."""
    from lit_imit.modules.act import ACTModule

    root = write_act_directory(tmp_path / "act")
    if index != "none":
        (root / "index.json").write_text(json.dumps(
            {"next_id": 3, "episodes": {"0": {"length": 99, "mtime": 0.0, "attrs": {}}}}))
    before = snapshot(root)
    dm = EpisodeDataModule(str(root), task="transfer_cube", batch_size=4, num_workers=0, val_episodes=1)
    model = ACTModule(**TINY_ACT)
    trainer = pl.Trainer(max_steps=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         default_root_dir=tmp_path / "run", num_sanity_val_steps=0)
    trainer.fit(model, dm)
    assert trainer.global_step == 2 and bool(model.stats_initialized)
    assert sorted(dm.train_ids + dm.val_ids) == list(ORIGINAL_IDS)
    assert len(dm.train_set) == sum(12 + i for i in dm.train_ids)
    assert snapshot(root) == before


def test_writes_into_an_original_act_directory_are_refused_and_import_copies_it(tmp_path):
    from lit_imit.tools import import_episodes

    root = write_act_directory(tmp_path / "act")
    before = snapshot(root)
    store = EpisodeStore(root)
    new = read_episode(root / "episode_0.hdf5").arrays
    for write in (lambda: store.add(new, {}), store.reserve_seed, store.refresh, store.clean_stale_tmp):
        with pytest.raises(ForeignStoreError) as info:
            write()
        assert str(root) in str(info.value) and "episode_0.hdf5" in str(info.value)
        assert "scripts/import_episodes.py" in str(info.value)
    assert snapshot(root) == before

    dest = tmp_path / "ours"
    assert import_episodes.main([str(root), str(dest)]) == 0
    assert snapshot(root) == before
    ours = EpisodeStore(dest)
    assert ours.ids() == [0, 1, 2, 3] and ours.foreign_files() == [] and ours.verify() == []
    for new_id, old_id in enumerate(ORIGINAL_IDS):
        copy, original = ours.read(new_id), read_episode(root / f"episode_{old_id}.hdf5")
        assert copy.arrays.keys() == original.arrays.keys()
        for key, value in original.arrays.items():
            np.testing.assert_array_equal(copy.arrays[key], value)
        assert copy.attrs["sim"] is True and copy.attrs["imported_from"] == str(root / f"episode_{old_id}.hdf5")
    assert ours.add(new, {"source": "teacher"}) == 4  # a store of ours grows


def test_two_files_with_one_id_are_an_error_naming_both(tmp_path):
    root = write_act_directory(tmp_path / "act")
    write_act_original(root / "episode_000001.hdf5")
    with pytest.raises(EpisodeError, match=r"episode_000001\.hdf5 and episode_1\.hdf5 are both episode 1"):
        EpisodeStore(root).ids()


def test_deploy_refuses_to_log_into_an_original_act_directory_before_it_runs(tmp_path, capsys):
    from lit_imit.policies import save_policy
    from lit_imit.tools import deploy
    from tests.test_policy_dir import tiny_policy

    root = write_act_directory(tmp_path / "act")
    before = snapshot(root)
    save_policy(tiny_policy("bc"), tmp_path / "policy")
    rc = deploy.main(["--policy", str(tmp_path / "policy"), "--robot", "twin", "--out", str(root), "--device", "cpu"])
    assert rc == 2 and f"{root} holds episodes named by another tool" in capsys.readouterr().err
    assert snapshot(root) == before
