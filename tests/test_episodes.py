"""The on-disk episode format and the EpisodeStore: atomic writes, ids, verification, clear errors."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from lit_imit.data import EpisodeError, EpisodeStore, read_episode, write_episode
from lit_imit.data.episodes import check_episode
from tests.conftest import make_episode_arrays, write_act_original


def test_round_trip_keeps_arrays_attrs_and_layout(tmp_path):
    arrays = make_episode_arrays(15)
    write_episode(tmp_path / "e.hdf5", arrays, {"task": "transfer_cube", "success": True, "instructions": ["a", "b"]})
    episode = read_episode(tmp_path / "e.hdf5")
    assert len(episode) == 15
    for key, value in arrays.items():
        np.testing.assert_array_equal(episode.arrays[key], value)
    assert episode.attrs["task"] == "transfer_cube" and episode.attrs["success"] is True
    assert episode.attrs["instructions"] == ["a", "b"]
    with h5py.File(tmp_path / "e.hdf5") as f:  # images: one frame per chunk, compressed
        assert f["observations/images/top"].chunks == (1, 24, 32, 3)
        assert f["observations/images/top"].compression is not None


def test_mismatched_lengths_are_rejected_naming_keys(tmp_path):
    arrays = make_episode_arrays(10)
    arrays["action"] = arrays["action"][:-1]
    with pytest.raises(EpisodeError, match="action"):
        write_episode(tmp_path / "e.hdf5", arrays, {})
    assert not os.listdir(tmp_path)  # nothing half-written


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", explode)
    with pytest.raises(KeyboardInterrupt):
        write_episode(tmp_path / "episode_000000.hdf5", make_episode_arrays(5), {})
    assert os.listdir(tmp_path) == []


def test_store_ids_are_never_reused(episode_store):
    assert episode_store.ids() == [0, 1, 2, 3, 4]
    os.unlink(episode_store.path(4))  # a user deletes the newest episode by hand
    new_id = episode_store.add(make_episode_arrays(5), {"source": "teacher"})
    assert new_id == 5
    reopened = EpisodeStore(episode_store.root)
    assert reopened.add(make_episode_arrays(5), {"source": "novice"}) == 6


def test_store_rejects_unknown_source(episode_store):
    with pytest.raises(ValueError, match="source"):
        episode_store.add(make_episode_arrays(5), {"source": "oracle?"})


def test_verify_names_truncated_and_corrupt_files(episode_store):
    assert episode_store.verify() == []
    truncated = episode_store.path(1)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    corrupt = episode_store.path(3)
    corrupt.write_bytes(b"not an hdf5 file at all" * 10)
    problems = episode_store.verify()
    assert len(problems) == 2
    assert str(truncated) in problems[0] and str(corrupt) in problems[1]
    with pytest.raises(EpisodeError, match="episode_000003"):
        episode_store.read(3)
    # the intact episodes are untouched
    assert len(episode_store.read(0)) == 20 and len(episode_store.read(4)) == 28


def test_missing_key_error_names_file_and_key(tmp_path):
    arrays = make_episode_arrays(6)
    del arrays["action"]
    write_episode(tmp_path / "e.hdf5", arrays, {})
    with pytest.raises(EpisodeError, match=r"e\.hdf5.*'action'"):
        check_episode(tmp_path / "e.hdf5")
    with pytest.raises(EpisodeError, match="observations/images/left"):
        read_episode(tmp_path / "e.hdf5", keys=["images/left"])


def test_original_act_layout_loads_unchanged(tmp_path):
    store = EpisodeStore(tmp_path)
    write_act_original(store.path(0))
    assert store.ids() == [0] and store.verify() == []
    episode = store.read(0)
    assert episode.obs("images/top").shape == (12, 16, 20, 3)
    assert episode.obs("qpos").shape == (12, 14) and episode.arrays["action"].shape == (12, 14)
    assert episode.attrs["sim"] is True


def test_per_step_text_round_trips(tmp_path):
    arrays = make_episode_arrays(3, cameras=())
    arrays["observations/instruction"] = np.array(["put the red block in the green bowl", "done", "ünïcode"])
    write_episode(tmp_path / "e.hdf5", arrays, {})
    episode = read_episode(tmp_path / "e.hdf5")
    assert list(episode.obs("instruction")) == ["put the red block in the green bowl", "done", "ünïcode"]
