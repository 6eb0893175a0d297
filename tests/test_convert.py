"""LeRobotDataset v3.0 both ways and robomimic HDF5 in (``lit-imit-convert``, ``scripts/convert.py``), without the lerobot package.

The layout assertions are the fields LeRobot 0.4.4 writes and reads (``lerobot/datasets/lerobot_dataset.py``,
``utils.py``, ``compute_stats.py``, ``video_utils.py``). That an export loads in LeRobot itself, and that a dataset
LeRobot writes imports with its values, is checked by ``scripts/check_lerobot_roundtrip.py`` in a venv with
lerobot (it pins another torch, so it is not part of this suite).

Video tolerance: H.264 yuv444p crf 0 (near-lossless) keeps every pixel within 2 levels, even of noise (the
RGB <-> YUV conversion rounds); LeRobot's default AV1 yuv420p crf 30 is lossy: on smooth images the mean error
stays under 3 levels.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lit_imit.data import EpisodeStore
from lit_imit.data.episodes import EpisodeError
from lit_imit.data.lerobot_format import (
    LeRobotFormatError,
    export_lerobot,
    import_lerobot,
    lerobot_key,
    read_tasks,
    store_path,
)
from lit_imit.data.robomimic_format import import_robomimic
from tests.conftest import make_episode_arrays

LOSSLESS = dict(vcodec="h264", pix_fmt="yuv444p", crf=0)
HW = (24, 32)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry below ``root`` (hidden ones too) and ``root`` itself: (size, mtime in ns)."""
    entries = [root, *sorted(root.rglob("*"))] if root.is_dir() else [root]
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in entries}


def smooth_frames(length: int, hw=HW, seed: int = 0) -> np.ndarray:
    """Gradients that drift per frame: what a camera sees more than noise does, and what a lossy codec keeps."""
    yy, xx = np.mgrid[0:hw[0], 0:hw[1]]
    base = np.stack([xx * 255 / hw[1], yy * 255 / hw[0], (xx + yy) * 255 / sum(hw)], -1)
    return np.stack([np.clip(base + 4 * t + 10 * seed, 0, 255) for t in range(length)]).astype(np.uint8)


def make_store(root: Path, lengths=(12, 9, 15), smooth: bool = False, instructions=None) -> EpisodeStore:
    store = EpisodeStore(root)
    for i, length in enumerate(lengths):
        arrays = make_episode_arrays(length, cameras=("top", "wrist"), hw=HW, seed=i)
        if smooth:
            arrays["observations/images/top"] = smooth_frames(length, seed=i)
            arrays["observations/images/wrist"] = smooth_frames(length, seed=i + 3)
        arrays["observations/env_state"] = np.random.default_rng(i).normal(size=(length, 7)).astype(np.float32)
        instruction = instructions[i] if instructions else None
        store.add(arrays, {"task": "transfer_cube", "instruction": instruction, "source": "teacher", "seed": i})
    return store


def assert_same_episodes(src: EpisodeStore, src_ids, dst: EpisodeStore, dst_ids, image_atol: int) -> list[float]:
    errors = []
    for a, b in zip(src_ids, dst_ids, strict=True):
        x, y = src.read(a), dst.read(b)
        assert sorted(x.arrays) == sorted(y.arrays)
        for key, value in x.arrays.items():
            if "/images/" in key:
                diff = np.abs(value.astype(int) - y.arrays[key].astype(int))
                assert value.shape == y.arrays[key].shape and diff.max() <= image_atol, (key, diff.max())
                errors.append(float(diff.mean()))
            else:
                assert y.arrays[key].dtype == value.dtype and np.array_equal(y.arrays[key], value), key
    return errors


# ---- LeRobot: round trips ---------------------------------------------------------------------------------
def test_export_then_import_round_trips_values_and_tasks(tmp_path):
    store = make_store(tmp_path / "store", instructions=["pick up the cube", None, "pick up the cube"])
    out = export_lerobot(store, tmp_path / "lerobot", "lit-imit/transfer_cube", fps=50, **LOSSLESS)
    dst = EpisodeStore(tmp_path / "dst")
    ids = import_lerobot(out, dst)
    assert ids == [0, 1, 2]
    assert_same_episodes(store, store.ids(), dst, ids, image_atol=2)
    attrs = [dst.info(i)["attrs"] for i in ids]
    # the instruction is the task text when there is one, else the task name
    assert [a["instruction"] for a in attrs] == ["pick up the cube", "transfer_cube", "pick up the cube"]
    # the episodes' own attrs came along (an extra meta/episodes column): task, source and seed as recorded
    assert [(a["task"], a["source"], a["seed"]) for a in attrs] == [("transfer_cube", "teacher", i) for i in range(3)]
    carried = json.loads(pq.read_table(next((out / "meta" / "episodes").glob("*/*.parquet")))["lit_imit/attrs"][0].as_py())
    assert carried == {"instruction": "pick up the cube", "seed": 0, "source": "teacher", "task": "transfer_cube"}
    assert all(a["fps"] == 50 for a in attrs) and [a["lerobot_episode_index"] for a in attrs] == [0, 1, 2]
    assert attrs[1]["imported_from"] == f"{out.resolve()}:episode_1"
    assert read_tasks(out) == {0: "pick up the cube", 1: "transfer_cube"}


def test_carried_attrs_give_way_to_an_explicit_task_and_a_bad_column_is_named(tmp_path):
    store = make_store(tmp_path / "store", lengths=(6, 7))
    out = export_lerobot(store, tmp_path / "lerobot", "lit-imit/t", fps=50, **LOSSLESS)
    dst = EpisodeStore(tmp_path / "dst")
    ids = import_lerobot(out, dst, task="insertion", attrs={"operator": "me"})
    assert [(dst.info(i)["attrs"]["task"], dst.info(i)["attrs"]["seed"], dst.info(i)["attrs"]["operator"])
            for i in ids] == [("insertion", 0, "me"), ("insertion", 1, "me")]
    meta = next((out / "meta" / "episodes").glob("*/*.parquet"))
    table = pq.read_table(meta)
    column = table.schema.get_field_index("lit_imit/attrs")
    pq.write_table(table.set_column(column, "lit_imit/attrs", pa.array(["{}", "{not json"])), meta)
    with pytest.raises(LeRobotFormatError, match="episode 1: column 'lit_imit/attrs' is not JSON"):
        import_lerobot(out, EpisodeStore(tmp_path / "dst2"))
    assert EpisodeStore(tmp_path / "dst2").ids() == []  # checked before the first episode is added


def test_lerobots_default_av1_video_stays_within_codec_tolerance(tmp_path):
    store = make_store(tmp_path / "store", lengths=(10, 8), smooth=True)
    out = export_lerobot(store, tmp_path / "lerobot", "lit-imit/smooth", fps=30)
    info = json.loads((out / "meta/info.json").read_text())
    assert info["features"]["observation.images.top"]["info"]["video.codec"] == "av1"
    dst = EpisodeStore(tmp_path / "dst")
    errors = assert_same_episodes(store, store.ids(), dst, import_lerobot(out, dst), image_atol=40)
    assert max(errors) < 3.0


def test_per_step_instructions_become_frame_tasks_and_back(tmp_path):
    store = EpisodeStore(tmp_path / "store")
    arrays = make_episode_arrays(6, cameras=("top",), hw=HW)
    arrays["observations/instruction"] = np.array(["open"] * 3 + ["close"] * 3, dtype=object)
    store.add(arrays, {"task": "drawer"})
    out = export_lerobot(store, tmp_path / "lerobot", "lit-imit/drawer", fps=10, **LOSSLESS)
    assert pq.read_table(out / "data/chunk-000/file-000.parquet").column("task_index").to_pylist() == [0] * 3 + [1] * 3
    assert pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").column("tasks").to_pylist() == [
        ["open", "close"]]
    dst = EpisodeStore(tmp_path / "dst")
    (episode_id,) = import_lerobot(out, dst, task="drawer")
    episode = dst.read(episode_id)
    assert list(episode.arrays["observations/instruction"]) == ["open"] * 3 + ["close"] * 3
    assert episode.attrs["task"] == "drawer" and "instruction" not in episode.attrs


def test_files_roll_over_by_size_and_chunk_and_still_import(tmp_path):
    store = make_store(tmp_path / "store", lengths=(5, 6, 7))
    out = export_lerobot(store, tmp_path / "lerobot", "lit-imit/rolled", fps=20, chunks_size=2,
                         data_files_size_in_mb=1e-6, video_files_size_in_mb=1e-6, **LOSSLESS)
    rows = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [(r["data/chunk_index"], r["data/file_index"]) for r in rows] == [(0, 0), (0, 1), (1, 0)]
    assert [(r["videos/observation.images.top/chunk_index"], r["videos/observation.images.top/file_index"],
             r["videos/observation.images.top/from_timestamp"]) for r in rows] == [(0, 0, 0.0), (0, 1, 0.0),
                                                                                  (1, 0, 0.0)]
    assert (out / "videos/observation.images.wrist/chunk-001/file-000.mp4").exists()
    dst = EpisodeStore(tmp_path / "dst")
    assert_same_episodes(store, store.ids(), dst, import_lerobot(out, dst), image_atol=2)


def test_exported_layout_is_what_lerobot_0_4_4_reads(tmp_path):
    store = make_store(tmp_path / "store", lengths=(4, 3))
    out = export_lerobot(store, tmp_path / "lerobot", "lit-imit/layout", fps=50, robot_type="aloha", **LOSSLESS)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "README.md", "data/chunk-000/file-000.parquet", "meta/episodes/chunk-000/file-000.parquet",
        "meta/info.json", "meta/stats.json", "meta/tasks.parquet",
        "videos/observation.images.top/chunk-000/file-000.mp4",
        "videos/observation.images.wrist/chunk-000/file-000.mp4"]
    info = json.loads((out / "meta/info.json").read_text())
    assert {k: info[k] for k in info if k != "features"} == {
        "codebase_version": "v3.0", "robot_type": "aloha", "total_episodes": 2, "total_frames": 7, "total_tasks": 1,
        "chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 200, "fps": 50,
        "splits": {"train": "0:2"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"}
    features = info["features"]
    assert set(features) == {"observation.state", "observation.qvel", "observation.environment_state",
                             "observation.images.top", "observation.images.wrist", "action", "timestamp",
                             "frame_index", "episode_index", "index", "task_index"}
    assert features["observation.state"] == {"dtype": "float32", "shape": [14],
                                             "names": [f"qpos_{i}" for i in range(14)]}
    assert features["observation.environment_state"]["shape"] == [7] and features["action"]["shape"] == [14]
    for key, dtype in [("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                       ("index", "int64"), ("task_index", "int64")]:
        assert features[key] == {"dtype": dtype, "shape": [1], "names": None}
    assert features["observation.images.top"] == {
        "dtype": "video", "shape": [24, 32, 3], "names": ["height", "width", "channels"],
        "info": {"video.height": 24, "video.width": 32, "video.codec": "h264", "video.pix_fmt": "yuv444p",
                 "video.is_depth_map": False, "video.fps": 50, "video.channels": 3, "has_audio": False}}

    data = pq.read_table(out / "data/chunk-000/file-000.parquet")
    schema = {f.name: f.type for f in data.schema}
    assert schema["observation.state"] == pa.list_(pa.float32(), 14)  # datasets.Sequence(length=14, float32)
    assert schema["timestamp"] == pa.float32() and schema["index"] == pa.int64()
    assert "observation.images.top" not in schema  # videos live in the mp4s only
    assert data.column("index").to_pylist() == list(range(7))
    assert data.column("episode_index").to_pylist() == [0] * 4 + [1] * 3
    assert data.column("frame_index").to_pylist() == [0, 1, 2, 3, 0, 1, 2]
    assert np.allclose(data.column("timestamp").to_numpy(), np.array([0, 1, 2, 3, 0, 1, 2]) / 50)

    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [(e["episode_index"], e["length"], e["tasks"], e["dataset_from_index"], e["dataset_to_index"])
            for e in episodes] == [(0, 4, ["transfer_cube"], 0, 4), (1, 3, ["transfer_cube"], 4, 7)]
    first, second = episodes
    for key in ("observation.images.top", "observation.images.wrist"):  # episodes follow each other in one mp4
        assert (first[f"videos/{key}/from_timestamp"], first[f"videos/{key}/to_timestamp"]) == (0.0, 4 / 50)
        assert (second[f"videos/{key}/from_timestamp"], second[f"videos/{key}/to_timestamp"]) == (4 / 50, 7 / 50)
    assert (first["meta/episodes/chunk_index"], first["meta/episodes/file_index"]) == (0, 0)
    assert np.array(first["stats/observation.images.top/mean"]).shape == (3, 1, 1)

    tasks = pq.read_table(out / "meta/tasks.parquet")  # pandas.read_parquet gives the tasks as the index
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["__index_level_0__"]
    assert tasks.column("__index_level_0__").to_pylist() == ["transfer_cube"]

    stats = json.loads((out / "meta/stats.json").read_text())
    assert set(stats) == set(features)
    assert set(stats["action"]) == {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}
    assert stats["action"]["count"] == [7] and len(stats["action"]["mean"]) == 14
    actions = np.concatenate([store.read(i).arrays["action"] for i in store.ids()])
    assert np.allclose(stats["action"]["mean"], actions.mean(0)) and np.allclose(stats["action"]["std"], actions.std(0))
    assert np.array(stats["observation.images.top"]["mean"]).shape == (3, 1, 1)
    assert 0 <= np.min(stats["observation.images.top"]["min"]) <= np.max(stats["observation.images.top"]["max"]) <= 1


def test_keys_map_both_ways():
    pairs = {"observations/qpos": "observation.state", "observations/env_state": "observation.environment_state",
             "observations/images/top": "observation.images.top", "observations/qvel": "observation.qvel",
             "action": "action", "reward": "next.reward", "done": "next.done"}
    for path, key in pairs.items():
        assert lerobot_key(path) == key
        assert store_path(key, visual=path.startswith("observations/images/")) == path
    assert store_path("observation.image", visual=True) == "observations/images/image"  # PushT's camera


def test_image_features_stored_as_png_bytes_import(tmp_path):
    """LeRobot datasets recorded without videos keep PNG bytes in the data files (``datasets.Image``)."""
    frames = np.random.default_rng(0).integers(0, 255, (3, 5, 6, 3), dtype=np.uint8)
    root = write_lerobot_by_hand(tmp_path / "lerobot", frames)
    dst = EpisodeStore(tmp_path / "dst")
    (episode_id,) = import_lerobot(root, dst)
    episode = dst.read(episode_id)
    assert np.array_equal(episode.arrays["observations/images/cam"], frames)  # PNG is lossless
    assert episode.arrays["reward"].shape == (3,) and episode.arrays["done"].dtype == bool
    assert episode.attrs["instruction"] == "push"


# ---- LeRobot: bad input -----------------------------------------------------------------------------------
def png(frame: np.ndarray) -> bytes:
    """A minimal RGB PNG (no pillow here)."""
    height, width, _ = frame.shape
    raw = b"".join(b"\x00" + frame[row].tobytes() for row in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def write_lerobot_by_hand(root: Path, frames: np.ndarray, state: np.ndarray | None = None) -> Path:
    """A one-episode v3.0 dataset with an ``image`` camera, written field by field as LeRobot does."""
    from lit_imit.data.lerobot_format import tasks_table

    length = len(frames)
    state = np.arange(length * 2, dtype=np.float32).reshape(length, 2) if state is None else state
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    (root / "data/chunk-000").mkdir(parents=True)
    features = {"observation.state": {"dtype": "float32", "shape": [2], "names": ["a", "b"]},
                "observation.images.cam": {"dtype": "image", "shape": list(frames.shape[1:]),
                                           "names": ["height", "width", "channels"]},
                "action": {"dtype": "float32", "shape": [2], "names": ["a", "b"]},
                "next.reward": {"dtype": "float32", "shape": [1], "names": None},
                "next.done": {"dtype": "bool", "shape": [1], "names": None},
                "timestamp": {"dtype": "float32", "shape": [1], "names": None},
                "frame_index": {"dtype": "int64", "shape": [1], "names": None},
                "episode_index": {"dtype": "int64", "shape": [1], "names": None},
                "index": {"dtype": "int64", "shape": [1], "names": None},
                "task_index": {"dtype": "int64", "shape": [1], "names": None}}
    info = {"codebase_version": "v3.0", "fps": 10, "features": features, "total_episodes": 1,
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet", "video_path": None}
    (root / "meta/info.json").write_text(json.dumps(info))
    pq.write_table(tasks_table(["push"]), root / "meta/tasks.parquet")
    pq.write_table(pa.Table.from_pylist([{"episode_index": 0, "tasks": ["push"], "length": length,
                                          "data/chunk_index": 0, "data/file_index": 0, "dataset_from_index": 0,
                                          "dataset_to_index": length}]),
                   root / "meta/episodes/chunk-000/file-000.parquet")
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    data = pa.table({
        "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(state.reshape(-1)), 2),
        "observation.images.cam": pa.array([{"bytes": png(f), "path": None} for f in frames], image_type),
        "action": pa.FixedSizeListArray.from_arrays(pa.array(state.reshape(-1)), 2),
        "next.reward": pa.array(np.linspace(0, 1, length, dtype=np.float32)),
        "next.done": pa.array([False] * (length - 1) + [True]),
        "timestamp": pa.array(np.arange(length, dtype=np.float32) / 10),
        "frame_index": pa.array(np.arange(length)), "episode_index": pa.array(np.zeros(length, np.int64)),
        "index": pa.array(np.arange(length)), "task_index": pa.array(np.zeros(length, np.int64))})
    pq.write_table(data, root / "data/chunk-000/file-000.parquet")
    return root


def _rewrite_data(root: Path, column: str, values: pa.Array) -> None:
    path = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    pq.write_table(table.set_column(table.column_names.index(column), column, values), path)


def _drop_data_column(root: Path, column: str) -> None:
    path = root / "data/chunk-000/file-000.parquet"
    pq.write_table(pq.read_table(path).drop_columns([column]), path)


@pytest.mark.parametrize("damage, message", [
    (lambda root: (root / "meta/info.json").unlink(), "meta/info.json: missing"),
    (lambda root: (root / "meta/info.json").write_text(json.dumps(
        {**json.loads((root / "meta/info.json").read_text()), "codebase_version": "v2.1"})),
     "meta/info.json: codebase_version 'v2.1'"),
    (lambda root: _drop_data_column(root, "action"), "file-000.parquet (episode 0): missing column 'action'"),
    (lambda root: _rewrite_data(root, "observation.state", pa.FixedSizeListArray.from_arrays(
        pa.array(np.zeros(9, np.float32)), 3)),
     "file-000.parquet (episode 0): column 'observation.state' has 3 values per frame, info.json says shape [2]"),
    (lambda root: _rewrite_data(root, "observation.state", pa.FixedSizeListArray.from_arrays(
        pa.array(np.array([0, 1, 2, np.nan, 4, 5], np.float32)), 2)),
     "file-000.parquet (episode 0): key 'observation.state' has non-finite values: 1 NaN, 0 inf (first at step 1)"),
    (lambda root: (root / "meta/tasks.parquet").unlink(), "meta/tasks.parquet: missing"),
], ids=["no_info", "v2.1", "no_action_column", "wrong_shape", "nan", "no_tasks"])
def test_bad_lerobot_input_is_an_error_naming_file_and_key_and_adds_nothing(tmp_path, damage, message):
    root = write_lerobot_by_hand(tmp_path / "lerobot", np.zeros((3, 4, 4, 3), np.uint8))
    damage(root)
    dst = EpisodeStore(tmp_path / "dst")
    with pytest.raises(LeRobotFormatError, match="^" + str(root).replace(".", r"\.")) as info:
        import_lerobot(root, dst)
    assert message in str(info.value)
    assert dst.ids() == []


def test_a_missing_video_file_is_named_before_anything_is_imported(tmp_path):
    store = make_store(tmp_path / "store", lengths=(3, 3))
    out = export_lerobot(store, tmp_path / "lerobot", "lit-imit/x", fps=10, data_files_size_in_mb=1e-6,
                         video_files_size_in_mb=1e-6, **LOSSLESS)
    missing = out / "videos/observation.images.wrist/chunk-000/file-001.mp4"
    missing.unlink()
    dst = EpisodeStore(tmp_path / "dst")
    with pytest.raises(LeRobotFormatError, match=f"{missing}: video file missing .episode 1."):
        import_lerobot(out, dst)
    assert dst.ids() == []


def test_a_short_video_stops_the_import_at_that_episode_and_says_what_was_added(tmp_path):
    """Video frames are decoded as episodes are added (not checked beforehand: that would decode every video
    twice), so a video cut short is found at its episode; the ones before it stay, each complete."""
    from lit_imit.data.lerobot_format import encode_clip

    store = make_store(tmp_path / "store", lengths=(4, 5))
    out = export_lerobot(store, tmp_path / "lerobot", "lit-imit/x", fps=10, **LOSSLESS)
    video = out / "videos/observation.images.top/chunk-000/file-000.mp4"
    encode_clip(store.read(0).arrays["observations/images/top"], video, 10, **LOSSLESS, g=2)  # episode 0 only
    dst = EpisodeStore(tmp_path / "dst")
    with pytest.raises(LeRobotFormatError, match=rf"{video}: video ends at frame 4, episode needs frames 4\.\.8 "
                                                 r"\(episodes imported before the error: ids 0-0\)"):
        import_lerobot(out, dst)
    assert dst.ids() == [0] and dst.verify() == []


def test_import_and_export_leave_their_source_untouched(tmp_path):
    store = make_store(tmp_path / "store", lengths=(4, 5))
    before = snapshot(store.root)
    out = export_lerobot(str(store.root), tmp_path / "lerobot", "lit-imit/x", fps=10, **LOSSLESS)
    assert snapshot(store.root) == before
    exported = snapshot(out)
    import_lerobot(out, EpisodeStore(tmp_path / "dst"))
    assert snapshot(out) == exported


def test_export_refusals_name_what_is_wrong(tmp_path):
    store = make_store(tmp_path / "store", lengths=(3,))
    (tmp_path / "taken").mkdir()
    with pytest.raises(LeRobotFormatError, match="taken exists; export into a new directory"):
        export_lerobot(store, tmp_path / "taken", "a/b", fps=10)
    with pytest.raises(LeRobotFormatError, match="record no common fps"):
        export_lerobot(store, tmp_path / "out", "a/b")
    with pytest.raises(LeRobotFormatError, match="repo_id 'nameonly' must look like 'owner/name'"):
        export_lerobot(store, tmp_path / "out", "nameonly", fps=10)
    pick_place = EpisodeStore(tmp_path / "pick_place")
    pick_place.add({"observations/qpos": np.zeros((2, 3), np.float32), "action/pick": np.zeros((2, 3), np.float32),
                    "action/place": np.zeros((2, 3), np.float32)}, {})
    with pytest.raises(LeRobotFormatError, match=r"episode_000000\.hdf5: key 'action/pick': grouped actions"):
        export_lerobot(pick_place, tmp_path / "out", "a/b", fps=10)
    odd = EpisodeStore(tmp_path / "odd")
    odd.add({"observations/images/top": np.zeros((2, 5, 6, 3), np.uint8), "action": np.zeros((2, 1), np.float32)}, {})
    with pytest.raises(LeRobotFormatError, match="camera 'observations/images/top' is 5x6; yuv420p video needs even"):
        export_lerobot(odd, tmp_path / "out", "a/b", fps=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd", "pick_place", "store", "taken"]  # no leftovers


# ---- robomimic --------------------------------------------------------------------------------------------
def write_robomimic(path: Path, lengths=(5, 4, 6), names=("demo_0", "demo_10", "demo_2"), nan_in=None) -> Path:
    """A file in robomimic's layout (data/demo_N/{obs,actions,states,rewards,dones}, env_args, masks)."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["total"] = sum(lengths)
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "env_type": 1, "env_kwargs": {}})
        for name, length in zip(names, lengths):
            demo = data.create_group(name)
            demo.attrs["num_samples"] = length
            number = int(name.split("_")[1])
            demo.create_dataset("actions", data=np.full((length, 7), number, np.float64) + rng.normal(size=(length, 7)))
            demo.create_dataset("states", data=rng.normal(size=(length, 32)))
            demo.create_dataset("rewards", data=np.r_[np.zeros(length - 1), 1.0])
            demo.create_dataset("dones", data=np.r_[np.zeros(length - 1), 1].astype(np.int64))
            obs = demo.create_group("obs")
            obs.create_dataset("robot0_eef_pos", data=rng.normal(size=(length, 3)))
            obs.create_dataset("robot0_gripper_qpos", data=rng.normal(size=(length, 2)))
            obs.create_dataset("object", data=rng.normal(size=(length, 10)))
            obs.create_dataset("agentview_image", data=rng.integers(0, 255, (length, 8, 8, 3), dtype=np.uint8))
            if name == nan_in:
                obs["object"][1, 2] = np.nan
            next_obs = demo.create_group("next_obs")
            next_obs.create_dataset("object", data=rng.normal(size=(length, 10)))
        mask = f.create_group("mask")
        mask.create_dataset("train", data=np.array([b"demo_0", b"demo_10"]))
        mask.create_dataset("valid", data=np.array([b"demo_2"]))
    return path


def test_robomimic_demos_import_in_numeric_order_with_their_keys_mapped(tmp_path):
    source = write_robomimic(tmp_path / "lift.hdf5")
    before = snapshot(source)
    store = EpisodeStore(tmp_path / "store")
    ids = import_robomimic(source, store)
    assert snapshot(source) == before
    assert ids == [0, 1, 2]
    with h5py.File(source, "r") as f:
        for episode_id, name in zip(ids, ["demo_0", "demo_2", "demo_10"]):  # demo_10 after demo_2
            episode = store.read(episode_id)
            demo = f["data"][name]
            obs = demo["obs"]
            assert sorted(episode.arrays) == ["action", "done", "observations/env_state",
                                              "observations/images/agentview", "observations/qpos",
                                              "observations/sim_state", "reward"]
            assert np.array_equal(episode.arrays["action"], demo["actions"][()].astype(np.float32))
            assert np.array_equal(episode.arrays["observations/qpos"], np.concatenate(
                [obs["robot0_eef_pos"][()], obs["robot0_gripper_qpos"][()]], 1).astype(np.float32))
            assert np.array_equal(episode.arrays["observations/env_state"], obs["object"][()].astype(np.float32))
            assert np.array_equal(episode.arrays["observations/images/agentview"], obs["agentview_image"][()])
            assert np.array_equal(episode.arrays["observations/sim_state"], demo["states"][()])
            assert np.array_equal(episode.arrays["done"], demo["dones"][()])
            attrs = episode.attrs
            assert attrs["task"] == "Lift" and attrs["robomimic_demo"] == name
            assert attrs["qpos_keys"] == [["robot0_eef_pos", 3], ["robot0_gripper_qpos", 2]]
            assert attrs["robomimic_filters"] == (["valid"] if name == "demo_2" else ["train"])
            assert attrs["imported_from"] == f"{source.resolve()}:data/{name}"
    assert store.verify() == []


def test_robomimic_state_keys_choose_and_order_qpos(tmp_path):
    source = write_robomimic(tmp_path / "lift.hdf5", lengths=(3,), names=("demo_0",))
    store = EpisodeStore(tmp_path / "store")
    (episode_id,) = import_robomimic(source, store, state_keys=["robot0_gripper_qpos"], env_state_key=None,
                                     task="lift_ph")
    episode = store.read(episode_id)
    assert episode.arrays["observations/qpos"].shape == (3, 2) and episode.attrs["task"] == "lift_ph"
    assert episode.arrays["observations/object"].shape == (3, 10)  # not env_state: kept under its own name
    assert episode.arrays["observations/robot0_eef_pos"].shape == (3, 3)


@pytest.mark.parametrize("damage, message", [
    ("nan", "key 'data/demo_2/obs/object' has non-finite values: 1 NaN, 0 inf (first at step 1)"),
    ("no_actions", "missing key 'data/demo_10/actions'"),
    ("no_data", "missing group 'data'"),
    ("length", "data/demo_10: arrays disagree on the episode length"),
    ("state_key", "missing key 'data/demo_0/obs/joint_pos'"),
], ids=["nan", "no_actions", "no_data", "length", "state_key"])
def test_bad_robomimic_input_names_file_and_key_and_adds_nothing(tmp_path, damage, message):
    source = write_robomimic(tmp_path / "lift.hdf5", nan_in="demo_2" if damage == "nan" else None)
    with h5py.File(source, "a") as f:
        if damage == "no_actions":
            del f["data/demo_10/actions"]
        elif damage == "no_data":
            del f["data"]
        elif damage == "length":
            del f["data/demo_10/obs/object"]
            f["data/demo_10/obs"].create_dataset("object", data=np.zeros((2, 10)))
    store = EpisodeStore(tmp_path / "store")
    with pytest.raises(EpisodeError) as info:
        import_robomimic(source, store, state_keys=["joint_pos"] if damage == "state_key" else None)
    assert str(info.value).startswith(str(source)) and message in str(info.value)
    assert store.ids() == []


# ---- the script -------------------------------------------------------------------------------------------
def test_convert_script_round_trip_and_errors(tmp_path, capsys):
    from lit_imit.tools import convert

    store = make_store(tmp_path / "store", lengths=(3, 4))
    out = tmp_path / "lerobot"
    assert convert.main(["lerobot-export", str(store.root), str(out), "--repo-id", "me/cube", "--fps", "25",
                         "--vcodec", "h264", "--pix-fmt", "yuv444p", "--crf", "0", "--episodes", "1"]) == 0
    assert "LeRobotDataset('me/cube'" in capsys.readouterr().out
    assert convert.main(["lerobot-import", str(out), str(tmp_path / "back")]) == 0
    assert "imported 1 episodes" in capsys.readouterr().out
    assert EpisodeStore(tmp_path / "back").length(0) == 4
    assert convert.main(["robomimic-import", str(write_robomimic(tmp_path / "lift.hdf5")), str(tmp_path / "rm")]) == 0
    assert "imported 3 demos" in capsys.readouterr().out

    assert convert.main(["lerobot-import", str(tmp_path / "nowhere"), str(tmp_path / "back")]) == 1
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'nowhere'}: not a directory")
    assert convert.main(["lerobot-export", str(store.root), str(out), "--repo-id", "me/cube", "--fps", "25"]) == 1
    assert capsys.readouterr().err.startswith(f"error: {out} exists")
    assert convert.main(["robomimic-import", str(tmp_path / "none.hdf5"), str(tmp_path / "rm")]) == 1
    assert "error: " in capsys.readouterr().err and EpisodeStore(tmp_path / "rm").ids() == [0, 1, 2]
