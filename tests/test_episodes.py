"""The on-disk episode format and the EpisodeStore: atomic writes, ids, verification, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from lit_imit.data import EpisodeError, EpisodeStore, episodes, read_episode, write_episode
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


def test_attrs_copied_from_another_file_do_not_override_the_writers_schema_version(tmp_path):
    write_episode(tmp_path / "e.hdf5", make_episode_arrays(5), {"task": "transfer_cube", "schema_version": -7})
    assert read_episode(tmp_path / "e.hdf5").attrs["schema_version"] == episodes.SCHEMA_VERSION


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


# ---------------------------------------------------------------------------------------------- non-finite data
def test_add_refuses_non_finite_arrays_naming_the_key(episode_store):
    arrays = make_episode_arrays(6)
    arrays["action"][2, 1] = np.nan
    with pytest.raises(ValueError, match=r"'action' has non-finite values: 1 NaN, 0 inf \(first at step 2\)"):
        episode_store.add(arrays, {"source": "teacher"})
    arrays = make_episode_arrays(6)
    arrays["observations/qpos"][4, 0] = -np.inf
    with pytest.raises(ValueError, match=r"'observations/qpos' has non-finite values: 0 NaN, 1 inf"):
        episode_store.add(arrays, {"source": "teacher"})
    assert episode_store.ids() == [0, 1, 2, 3, 4] and episode_store.verify() == []


def test_verify_names_file_and_key_of_non_finite_data(episode_store):
    arrays = make_episode_arrays(6)
    arrays["action"][3] = np.nan
    write_episode(episode_store.path(5), arrays, {})  # written behind the store's back
    with h5py.File(episode_store.path(2), "r+") as f:  # or edited in place
        f["observations/qpos"][5, 0] = np.inf
    problems = episode_store.verify()
    assert len(problems) == 2, problems
    assert "episode_000002.hdf5: key 'observations/qpos' has non-finite values: 0 NaN, 1 inf" in problems[0]
    assert "episode_000005.hdf5: key 'action' has non-finite values: 14 NaN" in problems[1]


# ---------------------------------------------------------------------------------------------- several writers
def test_ids_survive_deleting_the_index_and_the_newest_episodes(episode_store):
    os.unlink(episode_store.path(4))
    os.unlink(episode_store.path(3))
    os.unlink(episode_store.root / "index.json")
    assert EpisodeStore(episode_store.root).add(make_episode_arrays(5), {"source": "teacher"}) == 5


def test_an_existing_episode_file_is_never_replaced(episode_store, monkeypatch):
    """A writer handed an id that exists (another host's writer on NFS, where flock does not hold) takes the next."""
    handed_out = iter([2, 5])
    monkeypatch.setattr(EpisodeStore, "_allocate_id", lambda self: next(handed_out))
    assert episode_store.add(make_episode_arrays(5, seed=7), {"source": "teacher"}) == 5
    assert len(episode_store.read(2)) == 24 and len(episode_store.read(5)) == 5


def test_temporary_files_name_their_writer(tmp_path, monkeypatch):
    names = []

    def die_before_rename(tmp, path, overwrite):
        names.append(os.path.basename(tmp))
        raise KeyboardInterrupt

    monkeypatch.setattr(episodes, "_place", die_before_rename)
    with pytest.raises(KeyboardInterrupt):
        write_episode(tmp_path / "episode_000003.hdf5", make_episode_arrays(4), {})
    assert names[0].startswith(f".episode_000003.hdf5.{episodes._host()}.{os.getpid()}.")
    assert os.listdir(tmp_path) == []


def test_stale_temporary_files_are_reported_and_cleaned(episode_store):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = episodes._host()
    stale = episode_store.root / f".episode_000009.hdf5.{host}.{dead.pid}.abcd1234.tmp"
    live = episode_store.root / f".episode_000010.hdf5.{host}.{os.getpid()}.abcd1234.tmp"  # a write in progress
    legacy = episode_store.root / ".episode_000011.hdf5.k2j3h4g5.tmp"  # named before writers were named
    for path in (stale, live, legacy):
        path.write_bytes(b"half an episode")
    problems = episode_store.verify()
    assert len(problems) == 2, problems
    by_file = {problem.split(": ")[0]: problem for problem in problems}
    assert f"writer process {dead.pid} is gone" in by_file[str(stale)]
    assert "unknown writer" in by_file[str(legacy)] and "clean_stale_tmp()" in by_file[str(legacy)]
    assert sorted(episode_store.clean_stale_tmp()) == sorted([stale, legacy])
    assert live.exists() and episode_store.verify() == []


def _slow_writer(root: str, n: int, results) -> None:
    """Adds ``n`` episodes whose writes take a while (cameras, a slow disk), so two writers overlap."""
    import time

    import lit_imit.data.episodes as episodes_module

    write = episodes_module.write_episode

    def slow_write(*args, **kwargs):
        time.sleep(0.3)
        return write(*args, **kwargs)

    episodes_module.write_episode = slow_write
    store = episodes_module.EpisodeStore(root)
    arrays = make_episode_arrays(4, cameras=(), seed=os.getpid())
    results.put([store.add(arrays, {"source": "teacher", "seed": store.reserve_seed()}) for _ in range(n)])


def _recorder(root: str, n: int, results) -> None:
    from lit_imit.data.recording import record_teacher_episodes

    results.put(record_teacher_episodes("transfer_cube", n, EpisodeStore(root), cameras=[]).ids)


def _run_writers(target, root, n: int, timeout: float) -> list[list[int]]:
    """Two real processes (spawned, as separate recorders would be) writing into one store."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(str(root), n, results)) for _ in range(2)]
    for proc in procs:
        proc.start()
    try:
        reported = [results.get(timeout=timeout) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.exitcode is None:
                proc.kill()
    assert [proc.exitcode for proc in procs] == [0, 0]
    return reported


def _check_consistent(root, episodes_expected: int, reported: list[list[int]]) -> EpisodeStore:
    store = EpisodeStore(root)
    ids = sorted(i for part in reported for i in part)
    assert len(list(root.glob("episode_*.hdf5"))) == episodes_expected
    assert ids == store.ids() and len(set(ids)) == episodes_expected
    seeds = [store.info(i)["attrs"]["seed"] for i in ids]
    assert len(set(seeds)) == episodes_expected, seeds
    index = json.loads((root / "index.json").read_text())
    assert sorted(index["episodes"], key=int) == [str(i) for i in ids]
    for i in ids:
        assert index["episodes"][str(i)]["length"] == len(store.read(i, ["action"]))
    assert index["next_id"] >= ids[-1] + 1 and store.verify() == []
    return store


def test_two_processes_adding_at_once_never_share_an_id_or_a_seed(tmp_path):
    root = tmp_path / "store"
    reported = _run_writers(_slow_writer, root, 3, timeout=300)
    _check_consistent(root, 6, reported)


@pytest.mark.slow
def test_two_recorders_in_one_store_write_distinct_ids_and_seeds(tmp_path):
    """Two record_teacher_episodes processes, 5 state-only transfer_cube episodes each, one store."""
    root = tmp_path / "store"
    reported = _run_writers(_recorder, root, 5, timeout=900)
    store = _check_consistent(root, 10, reported)
    assert all(len(store.read(i, ["qpos"])) > 0 for i in store.ids())


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_store_files_get_the_users_umask_not_mkstemps_0600(tmp_path, umask):
    before = os.umask(umask)
    try:
        store = EpisodeStore(tmp_path / "store")
        episode_id = store.add(make_episode_arrays(5, seed=1), {"source": "teacher"})
        write_episode(tmp_path / "single.hdf5", make_episode_arrays(5, seed=2), {})
    finally:
        os.umask(before)
    expected = 0o666 & ~umask
    for path in (store.path(episode_id), store.root / EpisodeStore.INDEX, tmp_path / "single.hdf5"):
        assert os.stat(path).st_mode & 0o777 == expected, path
