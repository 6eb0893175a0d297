"""LeRobotDataset v3.0 in and out, without the ``lerobot`` package (it pins its own torch and Python).

pyarrow writes and reads the parquet files; the ffmpeg binary that ``imageio-ffmpeg`` ships encodes and decodes
the videos. The layout, as LeRobot 0.4.4 (``lerobot/datasets/lerobot_dataset.py``, ``utils.py``) writes and
reads it::

    meta/info.json                               codebase_version "v3.0", fps, features, path templates, totals
    meta/stats.json                              per feature: min, max, mean, std, count, q01 q10 q50 q90 q99
    meta/tasks.parquet                           task strings (the pandas index) -> task_index
    meta/episodes/chunk-000/file-000.parquet     one row per episode: length, tasks, where its rows and frames are
    data/chunk-000/file-000.parquet              one row per frame, many episodes per file
    videos/<key>/chunk-000/file-000.mp4          one video per camera and file, episodes one after another

A frame row has the feature columns (``observation.state``, ``action``, ...) and ``timestamp`` (frame_index / fps),
``frame_index``, ``episode_index``, ``index`` (over the whole dataset) and ``task_index``. An episode's video
frames start at ``videos/<key>/from_timestamp`` in its file; LeRobot decodes the frame at from_timestamp +
timestamp and refuses one more than 1e-4 s away, so every frame is written at exactly n / fps.

Our keys and LeRobot's (store HDF5 path -> LeRobot feature)::

    observations/qpos            observation.state
    observations/env_state       observation.environment_state
    observations/images/<cam>    observation.images.<cam>   (a video)
    observations/<a>/<b>         observation.<a>.<b>
    action                       action
    reward, done                 next.reward, next.done
    task of each frame           observations/instruction (per step), else attr instruction, else attr task

Float arrays must be finite in both directions (our store's rule: a NaN reaches the normalisation statistics and
then every weight); a NaN is an error naming the file and the key. Imports never write into the source and add
each episode under a fresh id with the store's atomic ``add``; everything but the video frames is read and
checked before the first episode is added. An export is written into a temporary directory next to ``root``
and renamed into place when complete, and refuses an existing ``root``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lit_imit.data.episodes import EpisodeError, EpisodeStore, nonfinite_summary, read_episode

CODEBASE_VERSION = "v3.0"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
#: an extra meta/episodes column: an episode's own attrs (seed, success, teacher, source...) as JSON, so that an
#: export imported back keeps them; LeRobot reads the column along with the others and does not use it
ATTRS_COLUMN = "lit_imit/attrs"
INFO_PATH, STATS_PATH, TASKS_PATH = "meta/info.json", "meta/stats.json", "meta/tasks.parquet"
# LeRobot adds these to every dataset's features (DEFAULT_FEATURES in lerobot/datasets/utils.py)
INDEX_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
# LeRobot's ``vcodec`` names -> (ffmpeg encoder, codec name in the file); ffmpeg encoder names are accepted too
VCODECS = {"libsvtav1": ("libsvtav1", "av1"), "h264": ("libx264", "h264"), "libx264": ("libx264", "h264"),
           "hevc": ("libx265", "hevc"), "libx265": ("libx265", "hevc"), "libaom-av1": ("libaom-av1", "av1")}
INSTRUCTION_PATH = "observations/instruction"
_RENAMES = {"observations/qpos": "observation.state", "observations/env_state": "observation.environment_state",
            "reward": "next.reward", "done": "next.done"}


class LeRobotFormatError(EpisodeError):
    """A LeRobot dataset (or a store to export) that cannot be converted; the message names the file and key."""


# ---- keys ----------------------------------------------------------------------------------------------
def lerobot_key(path: str) -> str:
    """The LeRobot feature of one of our array paths (see the module table)."""
    if path in _RENAMES:
        return _RENAMES[path]
    if path.startswith("observations/images/"):
        return "observation.images." + path[len("observations/images/"):].replace("/", ".")
    if path.startswith("observations/"):
        return "observation." + path[len("observations/"):].replace("/", ".")
    return path.replace("/", ".")


def store_path(key: str, visual: bool) -> str:
    """Our array path of a LeRobot feature: the inverse of :func:`lerobot_key`. A camera outside
    ``observation.images.`` (``observation.image`` in PushT) becomes ``images/<name>``."""
    inverse = {v: k for k, v in _RENAMES.items()}
    if key in inverse:
        return inverse[key]
    if key.startswith("observation.images."):
        return "observations/images/" + key[len("observation.images."):].replace(".", "_")
    if visual:
        return "observations/images/" + key.removeprefix("observation.").replace(".", "_")
    if key.startswith("observation."):
        return "observations/" + key[len("observation."):].replace(".", "/")
    return key.replace(".", "/")


def _is_image_path(path: str) -> bool:
    return path.startswith("observations/images/")


# ---- small file helpers -------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise LeRobotFormatError(f"{path}: missing (not a LeRobot dataset?)") from err
    except (json.JSONDecodeError, OSError) as err:
        raise LeRobotFormatError(f"{path}: not readable JSON: {err}") from err


def _read_table(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    try:
        return pq.read_table(path, columns=list(columns) if columns is not None else None)
    except FileNotFoundError as err:
        raise LeRobotFormatError(f"{path}: missing") from err
    except (pa.ArrowException, OSError) as err:
        raise LeRobotFormatError(f"{path}: not a readable parquet file: {err}") from err


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4, ensure_ascii=False))


def _next_file(chunk: int, file: int, chunks_size: int) -> tuple[int, int]:
    """The (chunk, file) after this one: ``chunks_size`` files per chunk directory, as LeRobot counts."""
    return (chunk + 1, 0) if file == chunks_size - 1 else (chunk, file + 1)


# ---- videos ---------------------------------------------------------------------------------------------
def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _run_ffmpeg(args: Sequence[str], where: Path, stdin: bytes | None = None) -> None:
    done = subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", *args], input=stdin, capture_output=True)
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip()
        raise LeRobotFormatError(f"{where}: ffmpeg failed (exit {done.returncode}): {message[-2000:]}")


def encode_clip(frames: np.ndarray, path: Path, fps: int, vcodec: str, pix_fmt: str, crf: int | None,
                g: int | None) -> None:
    """(T, H, W, 3) uint8 frames as an mp4 whose frame n is at exactly n / fps."""
    height, width = frames.shape[1:3]
    args = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-", "-an",
            "-c:v", VCODECS.get(vcodec, (vcodec,))[0], "-pix_fmt", pix_fmt]
    if g is not None:
        args += ["-g", str(g)]
    if crf is not None:
        args += ["-crf", str(crf)]
    if VCODECS.get(vcodec, (vcodec,))[0] == "libsvtav1":
        args += ["-preset", "12"]  # LeRobot's default preset
    _run_ffmpeg([*args, str(path)], path, np.ascontiguousarray(frames, dtype=np.uint8).tobytes())


class VideoFiles:
    """The video files of one camera, filled episode by episode as LeRobot fills them: each episode is encoded
    on its own, a file takes episodes until the next one would reach ``size_mb`` (so sizes are exact, not
    guessed from a running encoder), and a full file is the episodes' clips joined without re-encoding."""

    def __init__(self, root: Path, key: str, fps: int, settings: Mapping[str, Any], size_mb: float,
                 chunks_size: int) -> None:
        self.root, self.key, self.fps, self.settings = root, key, fps, settings
        self.size_mb, self.chunks_size = size_mb, chunks_size
        self.clips_dir = root / ".clips" / key
        self.clips_dir.mkdir(parents=True, exist_ok=True)
        self.file = (0, 0)
        self.clips: list[Path] = []
        self.bytes = 0
        self.frames = 0

    def add(self, frames: np.ndarray, episode_index: int) -> dict[str, Any]:
        clip = self.clips_dir / f"episode_{episode_index:06d}.mp4"
        encode_clip(frames, clip, self.fps, **self.settings)
        size = clip.stat().st_size
        if self.clips and (self.bytes + size) / 2**20 >= self.size_mb:
            self.close()
            self.file = _next_file(*self.file, self.chunks_size)
        start = self.frames
        self.clips.append(clip)
        self.bytes += size
        self.frames += len(frames)
        return {f"videos/{self.key}/chunk_index": self.file[0], f"videos/{self.key}/file_index": self.file[1],
                f"videos/{self.key}/from_timestamp": start / self.fps,
                f"videos/{self.key}/to_timestamp": self.frames / self.fps}

    def close(self) -> None:
        """Join the clips of the current file into it (ffmpeg's concat demuxer, stream copy)."""
        if not self.clips:
            return
        path = self.root / VIDEO_PATH.format(video_key=self.key, chunk_index=self.file[0], file_index=self.file[1])
        path.parent.mkdir(parents=True, exist_ok=True)
        if len(self.clips) == 1:
            os.replace(self.clips[0], path)
        else:
            listing = self.clips_dir / "concat.txt"
            listing.write_text("".join(f"file '{clip.name}'\n" for clip in self.clips))
            _run_ffmpeg(["-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(path)], path)
            for clip in [*self.clips, listing]:
                clip.unlink()
        self.clips, self.bytes, self.frames = [], 0, 0


def read_video_frames(path: Path, size_hw: tuple[int, int]) -> Iterator[np.ndarray]:
    """Every frame of ``path`` in order, as (H, W, 3) uint8 (ffmpeg decodes: AV1, H.264, HEVC, ...).

    ``passthrough`` keeps ffmpeg from duplicating or dropping frames to reach a constant output rate, so frame n
    of the iterator is frame n of the file.
    """
    import imageio_ffmpeg

    if not path.exists():
        raise LeRobotFormatError(f"{path}: video file missing")
    height, width = size_hw
    frames = imageio_ffmpeg.read_frames(str(path), output_params=["-map", "0:v:0", "-fps_mode", "passthrough"])
    try:
        meta = next(frames)
    except (OSError, RuntimeError, StopIteration) as err:
        raise LeRobotFormatError(f"{path}: not a readable video: {err}") from err
    if tuple(meta["size"]) != (width, height):
        frames.close()
        raise LeRobotFormatError(f"{path}: frames are {meta['size'][0]}x{meta['size'][1]} (WxH), info.json says "
                                 f"{width}x{height}")
    try:
        for raw in frames:
            yield np.frombuffer(raw, np.uint8).reshape(height, width, 3)
    except RuntimeError as err:
        raise LeRobotFormatError(f"{path}: video cannot be decoded: {err}") from err
    finally:
        frames.close()


class VideoCursor:
    """Reads the frames of consecutive episodes from the files of one camera, decoding each file once when
    episodes come in file order (they do in datasets LeRobot writes), reopening it otherwise."""

    def __init__(self, size_hw: tuple[int, int]) -> None:
        self.size_hw = size_hw
        self.path: Path | None = None
        self.position = 0
        self._frames: Iterator[np.ndarray] | None = None

    def read(self, path: Path, start: int, count: int) -> np.ndarray:
        if path != self.path or start < self.position:
            self.close()
            self.path, self.position, self._frames = path, 0, read_video_frames(path, self.size_hw)
        out = []
        for frame in self._frames:
            self.position += 1
            if self.position > start:
                out.append(frame)
                if len(out) == count:
                    return np.stack(out)
        raise LeRobotFormatError(f"{path}: video ends at frame {self.position}, episode needs frames "
                                 f"{start}..{start + count - 1}")

    def close(self) -> None:
        if self._frames is not None:
            self._frames.close()
            self._frames = None
        self.path = None


# ---- statistics (meta/stats.json and the stats/ columns of meta/episodes) ----------------------------------
def vector_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """min, max, mean, std, count and the quantiles LeRobot keeps, per column of (T, D) or of (T,)."""
    data = values.astype(np.float64).reshape(len(values), -1)
    stats = {"min": data.min(0), "max": data.max(0), "mean": data.mean(0), "std": data.std(0),
             "count": np.array([len(values)])}
    for q, value in zip(QUANTILES, np.quantile(data, QUANTILES, axis=0)):
        stats[f"q{round(q * 100):02d}"] = value
    return stats


def image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel statistics of (T, H, W, 3) frames scaled to [0, 1], shape (3, 1, 1), sampled as LeRobot's
    ``compute_episode_stats`` samples them: about T**0.75 evenly spaced frames (all of them up to 100, at most
    10000), every k-th pixel for images of 300 px or more (k = size // 150); ``count`` is the frames sampled."""
    length = len(frames)
    samples = max(min(100, length), min(int(length ** 0.75), 10_000))
    picked = frames[np.round(np.linspace(0, length - 1, samples)).astype(int)]
    height, width = picked.shape[1:3]
    if max(height, width) >= 300:
        step = int(width / 150) if width > height else int(height / 150)
        picked = picked[:, ::step, ::step]
    stats = vector_stats(picked.reshape(-1, 3).astype(np.float64) / 255.0)
    stats = {k: v.reshape(3, 1, 1) for k, v in stats.items() if k != "count"}
    stats["count"] = np.array([len(picked)])
    return stats


def aggregate_stats(per_episode: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Dataset statistics from episode statistics, combined the way LeRobot's ``aggregate_stats`` does
    (count-weighted means, pooled variance, count-weighted quantiles)."""
    counts = np.array([float(s["count"][0]) for s in per_episode])
    total = counts.sum()

    def weights(value: np.ndarray) -> np.ndarray:
        return counts.reshape(-1, *([1] * value.ndim))

    means = np.stack([s["mean"] for s in per_episode])
    mean = (means * weights(means[0])).sum(0) / total
    variance = ((np.stack([s["std"] for s in per_episode]) ** 2 + (means - mean) ** 2) * weights(means[0])).sum(0)
    out = {"min": np.min(np.stack([s["min"] for s in per_episode]), 0),
           "max": np.max(np.stack([s["max"] for s in per_episode]), 0),
           "mean": mean, "std": np.sqrt(variance / total), "count": np.array([int(total)])}
    for key in per_episode[0]:
        if re.fullmatch(r"q\d\d", key):
            values = np.stack([s[key] for s in per_episode])
            out[key] = (values * weights(values[0])).sum(0) / total
    return out


def _jsonable(stats: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    return {key: {name: np.asarray(value).tolist() for name, value in ft.items()} for key, ft in stats.items()}


# ---- export ---------------------------------------------------------------------------------------------
@dataclass
class _Layout:
    """What every exported episode must share: its features, in our paths and LeRobot's."""

    features: dict[str, dict[str, Any]]  # LeRobot key -> info.json feature
    paths: dict[str, str]  # LeRobot key -> our array path
    videos: list[str] = field(default_factory=list)

    @property
    def vectors(self) -> list[str]:
        return [k for k in self.paths if k not in self.videos]


def _feature_of(path: str, arr: np.ndarray, where: str) -> dict[str, Any]:
    short = path.rsplit("/", 1)[-1]
    if _is_image_path(path):
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
            raise LeRobotFormatError(f"{where}: key {path!r} has shape {arr.shape} {arr.dtype}; cameras are exported "
                                     "as (T, H, W, 3) uint8")
        return {"dtype": "video", "shape": list(arr.shape[1:]), "names": ["height", "width", "channels"]}
    if arr.dtype.kind not in "fiub" or arr.ndim not in (1, 2):
        raise LeRobotFormatError(f"{where}: key {path!r} has shape {arr.shape} {arr.dtype}; only (T,) or (T, D) "
                                 "numbers (and cameras) can be exported")
    dtype = "bool" if arr.dtype.kind == "b" else ("float32" if arr.dtype.kind == "f" else str(arr.dtype))
    width = 1 if arr.ndim == 1 else int(arr.shape[1])
    return {"dtype": dtype, "shape": [width], "names": [f"{short}_{i}" for i in range(width)] if arr.ndim == 2
            else None}


def _layout(arrays: Mapping[str, np.ndarray], where: str) -> _Layout:
    features, paths, videos = {}, {}, []
    for path in sorted(arrays):
        if path == INSTRUCTION_PATH:
            continue  # the frames' tasks
        if path.startswith("action/"):
            raise LeRobotFormatError(f"{where}: key {path!r}: grouped actions (pick-and-place) have no LeRobot "
                                     "equivalent; only a single /action array can be exported")
        if "." in path:
            raise LeRobotFormatError(f"{where}: key {path!r} has a '.', which LeRobot uses to separate names")
        key = lerobot_key(path)
        features[key] = _feature_of(path, arrays[path], where)
        paths[key] = path
        if features[key]["dtype"] == "video":
            videos.append(key)
    if "action" not in paths:
        raise LeRobotFormatError(f"{where}: missing key 'action'")
    ordered = {k: features[k] for k in sorted(features, key=lambda k: (k != "observation.state", k != "action", k))}
    return _Layout(ordered, paths, videos)


def _check_same_layout(layout: _Layout, arrays: Mapping[str, np.ndarray], where: str) -> None:
    other = _layout(arrays, where)
    if set(other.features) != set(layout.features):
        raise LeRobotFormatError(f"{where}: keys {sorted(other.paths.values())} differ from the first episode's "
                                 f"{sorted(layout.paths.values())}; a LeRobot dataset has one set of features")
    for key, feature in other.features.items():
        if (feature["dtype"], feature["shape"]) != (layout.features[key]["dtype"], layout.features[key]["shape"]):
            raise LeRobotFormatError(f"{where}: key {layout.paths[key]!r} is {feature['dtype']} {feature['shape']} "
                                     f"per step, the first episode's is {layout.features[key]['dtype']} "
                                     f"{layout.features[key]['shape']}")


def _frame_tasks(episode_arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any], length: int,
                 default_task: str | None) -> list[str]:
    """The task text of every frame: per-step instructions, else the episode's instruction, else its task."""
    if INSTRUCTION_PATH in episode_arrays:
        return [str(t) for t in episode_arrays[INSTRUCTION_PATH]]
    instruction = attrs.get("instruction")
    if isinstance(instruction, list) and len(instruction) == length:
        return [str(t) for t in instruction]
    for text in (instruction, attrs.get("task"), default_task):
        if isinstance(text, str) and text:
            return [text] * length
    return [""] * length


def _arrow_column(values: np.ndarray, feature: Mapping[str, Any]) -> pa.Array:
    """A feature column as LeRobot's ``datasets`` features read it: a scalar for shape (1,), else a fixed-size
    list (``datasets.Sequence(length=D)``)."""
    kind = pa.from_numpy_dtype(np.dtype(feature["dtype"]))
    flat = values.astype(feature["dtype"]).reshape(len(values), -1)
    if feature["shape"] == [1]:
        return pa.array(flat[:, 0], type=kind)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), type=kind), int(feature["shape"][0]))


def _data_schema(features: Mapping[str, Mapping[str, Any]]) -> pa.Schema:
    fields = []
    for key, feature in features.items():
        if feature["dtype"] == "video":
            continue
        kind = pa.from_numpy_dtype(np.dtype(feature["dtype"]))
        fields.append(pa.field(key, kind if feature["shape"] == [1] else pa.list_(kind, int(feature["shape"][0]))))
    return pa.schema(fields)


def tasks_table(tasks: Sequence[str]) -> pa.Table:
    """``meta/tasks.parquet`` as pandas writes LeRobot's tasks DataFrame (task strings as the index, one
    ``task_index`` column): LeRobot reads it with ``pandas.read_parquet`` and looks tasks up by the index, which
    pandas restores from the ``pandas`` schema metadata written here."""
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()),
                      "__index_level_0__": pa.array(list(tasks), pa.string())})
    pandas_meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
             "metadata": None},
            {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode", "numpy_type": "object",
             "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


class _Exporter:
    """Writes episodes one at a time: frame rows into rolling parquet files, camera frames into rolling mp4s."""

    def __init__(self, root: Path, layout: _Layout, fps: int, video: Mapping[str, Any], chunks_size: int,
                 data_mb: float, video_mb: float) -> None:
        self.root, self.layout, self.fps, self.video = root, layout, fps, video
        self.chunks_size, self.data_mb, self.video_mb = chunks_size, data_mb, video_mb
        self.schema = _data_schema({**layout.features, **INDEX_FEATURES})
        self.data_file = (0, 0)
        self.data_writer: pq.ParquetWriter | None = None
        self.data_bytes = 0
        self.videos = {key: VideoFiles(root, key, fps, video, video_mb, chunks_size) for key in layout.videos}
        self.tasks: dict[str, int] = {}
        self.episodes: list[dict[str, Any]] = []
        self.stats: list[dict[str, dict[str, np.ndarray]]] = []
        self.frames = 0

    def add(self, arrays: Mapping[str, np.ndarray], tasks: list[str], attrs: Mapping[str, Any] | None = None) -> None:
        length = len(tasks)
        episode_index = len(self.episodes)
        task_index = np.array([self.tasks.setdefault(t, len(self.tasks)) for t in tasks], np.int64)
        frame_index = np.arange(length, dtype=np.int64)
        index_columns = {"timestamp": (frame_index / self.fps).astype(np.float32), "frame_index": frame_index,
                         "episode_index": np.full(length, episode_index, np.int64),
                         "index": np.arange(self.frames, self.frames + length, dtype=np.int64),
                         "task_index": task_index}
        columns = {key: arrays[self.layout.paths[key]] for key in self.layout.vectors} | index_columns
        row = {"episode_index": episode_index, "tasks": sorted(set(tasks), key=tasks.index), "length": length,
               **self._write_rows(columns, length)}
        for key, files in self.videos.items():
            row.update(files.add(arrays[self.layout.paths[key]], episode_index))
        row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = 0, 0
        own = {k: v for k, v in (attrs or {}).items() if k != "schema_version"}  # the file's layout, not the episode's
        row[ATTRS_COLUMN] = json.dumps(own, sort_keys=True, default=_json_scalar)
        stats = {key: vector_stats(values) for key, values in columns.items()}
        stats.update({key: image_stats(arrays[self.layout.paths[key]]) for key in self.layout.videos})
        self.episodes.append(row)
        self.stats.append(stats)
        self.frames += length

    def _write_rows(self, columns: Mapping[str, np.ndarray], length: int) -> dict[str, int]:
        features = {**self.layout.features, **INDEX_FEATURES}
        table = pa.Table.from_arrays([_arrow_column(columns[f.name], features[f.name]) for f in self.schema],
                                     schema=self.schema)
        if self.data_writer is not None and self.data_bytes + table.nbytes >= self.data_mb * 2**20:
            self.data_writer.close()
            self.data_writer, self.data_bytes = None, 0
            self.data_file = _next_file(*self.data_file, self.chunks_size)
        if self.data_writer is None:
            path = self.root / DATA_PATH.format(chunk_index=self.data_file[0], file_index=self.data_file[1])
            path.parent.mkdir(parents=True, exist_ok=True)
            self.data_writer = pq.ParquetWriter(path, self.schema, compression="snappy")
        self.data_writer.write_table(table)
        self.data_bytes += table.nbytes
        return {"data/chunk_index": self.data_file[0], "data/file_index": self.data_file[1],
                "dataset_from_index": self.frames, "dataset_to_index": self.frames + length}

    def close(self) -> None:
        if self.data_writer is not None:
            self.data_writer.close()
            self.data_writer = None
        for files in self.videos.values():
            files.close()
        shutil.rmtree(self.root / ".clips", ignore_errors=True)

    def write_meta(self, robot_type: str | None) -> None:
        rows = []
        for row, stats in zip(self.episodes, self.stats):
            rows.append({**row, **{f"stats/{key}/{name}": np.asarray(value).tolist()
                                   for key, ft in stats.items() for name, value in ft.items()}})
        path = self.root / EPISODES_PATH.format(chunk_index=0, file_index=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), path, compression="snappy")
        pq.write_table(tasks_table(list(self.tasks)), self.root / TASKS_PATH)
        keys = self.stats[0].keys()
        _write_json(self.root / STATS_PATH, _jsonable({k: aggregate_stats([s[k] for s in self.stats]) for k in keys}))
        features = {**self.layout.features, **INDEX_FEATURES}
        encoder, codec = VCODECS.get(self.video["vcodec"], (self.video["vcodec"], self.video["vcodec"]))
        for key in self.layout.videos:
            height, width, _ = features[key]["shape"]
            features[key] = {**features[key], "info": {
                "video.height": height, "video.width": width, "video.codec": codec,
                "video.pix_fmt": self.video["pix_fmt"], "video.is_depth_map": False, "video.fps": self.fps,
                "video.channels": 3, "has_audio": False}}
        info = {"codebase_version": CODEBASE_VERSION, "robot_type": robot_type,
                "total_episodes": len(self.episodes), "total_frames": self.frames, "total_tasks": len(self.tasks),
                "chunks_size": self.chunks_size, "data_files_size_in_mb": self.data_mb,
                "video_files_size_in_mb": self.video_mb, "fps": self.fps,
                "splits": {"train": f"0:{len(self.episodes)}"}, "data_path": DATA_PATH,
                "video_path": VIDEO_PATH if self.layout.videos else None, "features": features}
        _write_json(self.root / INFO_PATH, info)


def _export_fps(store: EpisodeStore, ids: Sequence[int], fps: int | None) -> int:
    """The given fps, else the episodes' recorded ``fps`` attr when they all agree; LeRobot needs an integer."""
    if fps is None:
        recorded = {store.info(i)["attrs"].get("fps") for i in ids}
        if len(recorded) != 1 or None in recorded:
            raise LeRobotFormatError(f"{store.root}: the episodes record no common fps ({sorted(map(str, recorded))}); "
                                     "give the control rate (e.g. --fps 50)")
        fps = recorded.pop()
    if float(fps) != int(fps) or int(fps) <= 0:
        raise LeRobotFormatError(f"fps must be a positive integer for LeRobot, got {fps}")
    return int(fps)


def _check_video_settings(layout: _Layout, arrays: Mapping[str, np.ndarray], vcodec: str, pix_fmt: str) -> None:
    if vcodec not in VCODECS:
        raise LeRobotFormatError(f"unknown vcodec {vcodec!r}; one of {sorted(VCODECS)}")
    if VCODECS[vcodec][1] in ("av1", "hevc") and pix_fmt != "yuv420p":
        raise LeRobotFormatError(f"vcodec {vcodec} is used with yuv420p only (as LeRobot does); for near-lossless "
                                 "frames use --vcodec h264 --pix-fmt yuv444p --crf 0")
    for key in layout.videos:
        height, width = arrays[layout.paths[key]].shape[1:3]
        if pix_fmt == "yuv420p" and (height % 2 or width % 2):
            raise LeRobotFormatError(f"camera {layout.paths[key]!r} is {height}x{width}; yuv420p video needs even "
                                     "sizes (use --vcodec h264 --pix-fmt yuv444p)")


def export_lerobot(store: EpisodeStore | str | os.PathLike, root: str | os.PathLike, repo_id: str,
                   fps: int | None = None, episode_ids: Sequence[int] | None = None, vcodec: str = "libsvtav1",
                   pix_fmt: str = "yuv420p", crf: int | None = 30, g: int | None = 2, robot_type: str | None = None,
                   task: str | None = None, chunks_size: int = 1000, data_files_size_in_mb: float = 100,
                   video_files_size_in_mb: float = 200) -> Path:
    """Write the episodes of ``store`` (all, or ``episode_ids``, in that order) as a LeRobotDataset v3.0 at
    ``root``, which must not exist; returns ``root``. Load it with ``LeRobotDataset(repo_id, root=root)``.

    Videos default to LeRobot's own encoding (AV1 with libsvtav1, yuv420p, crf 30, a keyframe every 2 frames,
    which keeps random access cheap); ``vcodec="h264", pix_fmt="yuv444p", crf=0`` is near-lossless (every pixel
    within 2 levels). ``task`` is the task text of episodes with neither an instruction nor a task attr.
    ``repo_id`` is only recorded in the dataset's README (LeRobot takes it as an argument, not from the files).
    The store is only read.
    """
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise LeRobotFormatError(f"repo_id {repo_id!r} must look like 'owner/name'")
    store = store if isinstance(store, EpisodeStore) else EpisodeStore(store, create=False)
    ids = list(store.ids() if episode_ids is None else episode_ids)
    if not ids:
        raise LeRobotFormatError(f"{store.root}: no episodes to export")
    fps = _export_fps(store, ids, fps)
    root = Path(root)
    if root.exists():
        raise LeRobotFormatError(f"{root} exists; export into a new directory")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()  # not mkdtemp: its 0700 would stay on the dataset; mkdir gives a new directory's usual mode
    exporter = None
    try:
        for episode_id in ids:
            path = store.path(episode_id)
            episode = read_episode(path)
            _check_finite(episode.arrays, str(path))
            if exporter is None:
                layout = _layout(episode.arrays, str(path))
                _check_video_settings(layout, episode.arrays, vcodec, pix_fmt)
                video = {"vcodec": vcodec, "pix_fmt": pix_fmt, "crf": crf, "g": g}
                exporter = _Exporter(tmp, layout, fps, video, chunks_size, data_files_size_in_mb,
                                     video_files_size_in_mb)
            else:
                _check_same_layout(exporter.layout, episode.arrays, str(path))
            exporter.add(episode.arrays, _frame_tasks(episode.arrays, episode.attrs, len(episode), task), episode.attrs)
        exporter.close()
        exporter.write_meta(robot_type)
        (tmp / "README.md").write_text(
            f"# {repo_id}\n\nLeRobotDataset {CODEBASE_VERSION} exported by lit_imit from {store.root.resolve()} "
            f"({len(ids)} episodes, {fps} fps).\n\n```python\nfrom lerobot.datasets.lerobot_dataset import "
            f"LeRobotDataset\ndataset = LeRobotDataset({repo_id!r}, root=...)\n```\n")
        os.rename(tmp, root)
    except BaseException:
        if exporter is not None and exporter.data_writer is not None:
            exporter.data_writer.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _check_finite(arrays: Mapping[str, np.ndarray], where: str) -> None:
    for key, arr in arrays.items():
        problem = nonfinite_summary(np.asarray(arr))
        if problem is not None:
            raise LeRobotFormatError(f"{where}: key {key!r} has non-finite values: {problem}")


# ---- import ---------------------------------------------------------------------------------------------
@dataclass
class LeRobotInfo:
    """``meta/info.json`` of a dataset, checked."""

    root: Path
    fps: int
    features: dict[str, dict[str, Any]]
    data_path: str
    video_path: str | None

    @property
    def cameras(self) -> list[str]:
        return [k for k, f in self.features.items() if f["dtype"] in ("video", "image")]

    @property
    def vectors(self) -> list[str]:
        return [k for k, f in self.features.items() if f["dtype"] not in ("video", "image", "string")
                and k not in INDEX_FEATURES]


def read_info(root: Path) -> LeRobotInfo:
    path = root / INFO_PATH
    info = _read_json(path)
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3."):
        raise LeRobotFormatError(f"{path}: codebase_version {version or 'missing'!r}; only LeRobotDataset v3.x is "
                                 "read (LeRobot converts v2.1 with lerobot.datasets.v30.convert_dataset_v21_to_v30)")
    for key in ("fps", "features", "data_path"):
        if key not in info:
            raise LeRobotFormatError(f"{path}: missing key {key!r}")
    for key, feature in info["features"].items():
        if "dtype" not in feature or "shape" not in feature:
            raise LeRobotFormatError(f"{path}: feature {key!r} has no dtype or shape")
    if "action" not in info["features"]:
        raise LeRobotFormatError(f"{path}: missing feature 'action'")
    cameras = [k for k, f in info["features"].items() if f["dtype"] == "video"]
    if cameras and not info.get("video_path"):
        raise LeRobotFormatError(f"{path}: video features {cameras} but no video_path")
    fps = info["fps"]
    if not isinstance(fps, (int, float)) or fps <= 0:
        raise LeRobotFormatError(f"{path}: fps {fps!r} is not a positive number")
    return LeRobotInfo(root, fps, info["features"], info["data_path"], info.get("video_path"))


def read_episodes_meta(root: Path) -> list[dict[str, Any]]:
    """The rows of ``meta/episodes/*/*.parquet`` in episode order (stats columns left out)."""
    files = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
    if not files:
        raise LeRobotFormatError(f"{root / 'meta' / 'episodes'}: no episode metadata (chunk-*/file-*.parquet)")
    rows = []
    for path in files:
        schema = pq.read_schema(path)
        table = _read_table(path, [name for name in schema.names if not name.startswith("stats/")])
        for row in table.to_pylist():
            rows.append({**row, "_file": path})
    for required in ("episode_index", "length", "data/chunk_index", "data/file_index"):
        missing = [r["_file"] for r in rows if r.get(required) is None]
        if missing:
            raise LeRobotFormatError(f"{missing[0]}: missing column {required!r}")
    return sorted(rows, key=lambda r: r["episode_index"])


def read_tasks(root: Path) -> dict[int, str]:
    """task_index -> task text from ``meta/tasks.parquet`` (task strings are the pandas index or a ``task``
    column)."""
    path = root / TASKS_PATH
    table = _read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(b"pandas", b"{}"))
    text_columns = [c for c in meta.get("index_columns", []) if isinstance(c, str)] + ["task"]
    text = next((c for c in text_columns if c in table.column_names), None)
    if text is None or "task_index" not in table.column_names:
        raise LeRobotFormatError(f"{path}: expected task strings and a 'task_index' column, has {table.column_names}")
    return dict(zip(table.column("task_index").to_pylist(), map(str, table.column(text).to_pylist())))


def _column_array(table: pa.Table, key: str, feature: Mapping[str, Any], where: str) -> np.ndarray:
    """A feature column as (T, *shape), checked against info.json; shape (1,) gives (T,) outside
    ``observation.*`` and ``action`` (``next.reward``, ``next.done``: one number per step)."""
    if key not in table.column_names:
        raise LeRobotFormatError(f"{where}: missing column {key!r} (has {table.column_names})")
    column = table.column(key).combine_chunks()
    if column.null_count:
        raise LeRobotFormatError(f"{where}: column {key!r} has {column.null_count} missing values")
    shape = tuple(int(s) for s in feature["shape"])
    flat = column
    while pa.types.is_list(flat.type) or pa.types.is_fixed_size_list(flat.type) or pa.types.is_large_list(flat.type):
        flat = flat.flatten()
    if not (pa.types.is_integer(flat.type) or pa.types.is_floating(flat.type) or pa.types.is_boolean(flat.type)):
        raise LeRobotFormatError(f"{where}: column {key!r} holds {flat.type}, not numbers")
    values = flat.to_numpy(zero_copy_only=False)
    if len(values) != len(column) * int(np.prod(shape)):
        raise LeRobotFormatError(f"{where}: column {key!r} has {len(values) // max(len(column), 1)} values per frame, "
                                 f"info.json says shape {list(shape)}")
    values = values.reshape(len(column), *shape)
    if shape == (1,) and not key.startswith(("observation.", "action")):
        values = values[:, 0]
    return values.astype(np.float32) if values.dtype.kind == "f" else values


@dataclass
class _EpisodeRows:
    arrays: dict[str, np.ndarray]
    tasks: list[str]
    table: pa.Table
    where: str


class _DataFiles:
    """Frame rows of an episode, one data file in memory at a time."""

    def __init__(self, info: LeRobotInfo, tasks: Mapping[int, str]) -> None:
        self.info, self.tasks = info, tasks
        self.path: Path | None = None
        self.table: pa.Table | None = None
        self.episode_column: np.ndarray | None = None

    def _load(self, path: Path) -> None:
        if path != self.path:
            self.path, self.table = path, _read_table(path)
            for required in ("episode_index", "frame_index", "task_index"):
                if required not in self.table.column_names:
                    raise LeRobotFormatError(f"{path}: missing column {required!r}")
            self.episode_column = self.table.column("episode_index").to_numpy()

    def episode(self, row: Mapping[str, Any]) -> _EpisodeRows:
        """An episode's frame rows in frame order, its numeric features (finite) and the task of each frame."""
        path = self.info.root / self.info.data_path.format(chunk_index=row["data/chunk_index"],
                                                           file_index=row["data/file_index"])
        self._load(path)
        where = f"{path} (episode {row['episode_index']})"
        rows = np.flatnonzero(self.episode_column == row["episode_index"])
        if len(rows) != row["length"]:
            raise LeRobotFormatError(f"{where}: {len(rows)} frames, meta/episodes says length {row['length']}")
        table = self.table.take(pa.array(rows))
        table = table.take(pa.array(np.argsort(table.column("frame_index").to_numpy(), kind="stable")))
        arrays = {}
        for key in self.info.vectors:
            values = _column_array(table, key, self.info.features[key], where)
            problem = nonfinite_summary(values)
            if problem is not None:
                raise LeRobotFormatError(f"{where}: key {key!r} has non-finite values: {problem}")
            arrays[store_path(key, visual=False)] = values
        task_index = table.column("task_index").to_pylist()
        unknown = sorted(set(task_index) - set(self.tasks))
        if unknown:
            raise LeRobotFormatError(f"{where}: task_index {unknown} not in {self.info.root / TASKS_PATH}")
        return _EpisodeRows(arrays, [self.tasks[i] for i in task_index], table, where)

    def images(self, rows: _EpisodeRows, key: str) -> np.ndarray:
        """An ``image`` feature (PNG bytes in the data file), decoded by one ffmpeg process per episode."""
        if key not in rows.table.column_names:
            raise LeRobotFormatError(f"{rows.where}: missing column {key!r}")
        values = rows.table.column(key).to_pylist()
        blobs = [v.get("bytes") if isinstance(v, dict) else v for v in values]
        if any(not isinstance(b, bytes) for b in blobs):
            raise LeRobotFormatError(f"{rows.where}: column {key!r}: images stored by path, not bytes, are not read")
        height, width, _ = _hwc(self.info.features[key], key, self.info.root)
        return _decode_images(blobs, (height, width), f"{rows.where}: column {key!r}")


def _decode_images(blobs: Sequence[bytes], size_hw: tuple[int, int], where: str) -> np.ndarray:
    height, width = size_hw
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-f", "image2pipe", "-i", "-", "-f", "rawvideo",
           "-pix_fmt", "rgb24", "-fps_mode", "passthrough", "-"]
    done = subprocess.run(cmd, input=b"".join(blobs), capture_output=True)
    frame_bytes = height * width * 3
    if done.returncode != 0 or len(done.stdout) != frame_bytes * len(blobs):
        raise LeRobotFormatError(f"{where}: {len(blobs)} images of {height}x{width} could not be decoded: "
                                 f"{done.stderr.decode(errors='replace')[-500:]}")
    return np.frombuffer(done.stdout, np.uint8).reshape(len(blobs), height, width, 3)


def _hwc(feature: Mapping[str, Any], key: str, root: Path) -> tuple[int, int, int]:
    shape = [int(s) for s in feature["shape"]]
    names = feature.get("names") or ["height", "width", "channels"]
    if len(shape) != 3:
        raise LeRobotFormatError(f"{root / INFO_PATH}: camera {key!r} has shape {shape}, expected 3 dimensions")
    if names[0] in ("channel", "channels"):  # (C, H, W)
        shape = [shape[1], shape[2], shape[0]]
    if shape[2] != 3:
        raise LeRobotFormatError(f"{root / INFO_PATH}: camera {key!r} has {shape[2]} channels; RGB is read")
    return shape[0], shape[1], shape[2]


def _video_location(info: LeRobotInfo, row: Mapping[str, Any], key: str) -> tuple[Path, int]:
    """The video file of an episode's camera and the number of its first frame there."""
    names = [f"videos/{key}/chunk_index", f"videos/{key}/file_index", f"videos/{key}/from_timestamp"]
    missing = [n for n in names if row.get(n) is None]
    if missing:
        raise LeRobotFormatError(f"{row['_file']}: missing column {missing[0]!r} (episode {row['episode_index']})")
    path = info.root / info.video_path.format(video_key=key, chunk_index=row[names[0]], file_index=row[names[1]])
    start = row[names[2]] * info.fps
    if abs(start - round(start)) > 1e-3:
        raise LeRobotFormatError(f"{row['_file']}: episode {row['episode_index']} starts at {row[names[2]]} s in "
                                 f"{path}, not on a frame of {info.fps} fps")
    return path, int(round(start))


def _json_scalar(value: Any) -> Any:
    """numpy scalars as Python numbers in the attrs column; anything else JSON cannot hold as its text."""
    return value.item() if isinstance(value, np.generic) else str(value)


def _carried_attrs(row: Mapping[str, Any]) -> dict[str, Any]:
    """The attrs an export of ours carried in ``ATTRS_COLUMN`` ({} for datasets written by others)."""
    text = row.get(ATTRS_COLUMN)
    if not text:
        return {}
    try:
        carried = json.loads(text)
    except json.JSONDecodeError as err:
        raise LeRobotFormatError(f"{row['_file']}: episode {row['episode_index']}: column {ATTRS_COLUMN!r} is not "
                                 f"JSON ({err})") from err
    if not isinstance(carried, dict):
        raise LeRobotFormatError(f"{row['_file']}: episode {row['episode_index']}: column {ATTRS_COLUMN!r} is not "
                                 "a JSON object")
    return carried


def _episode_attrs(info: LeRobotInfo, row: Mapping[str, Any], tasks: Sequence[str], task: str | None,
                   attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    """LeRobot's facts (instruction, fps), then the attrs our own export carried (seed, success, task...), then
    where this copy came from; an explicit ``task`` and ``attrs`` win over all of them."""
    distinct = sorted(set(tasks), key=tasks.index)
    text = distinct[0] if len(distinct) == 1 else None
    out = {"task": text, "instruction": text, "fps": info.fps, **_carried_attrs(row),
           "imported_from": f"{info.root.resolve()}:episode_{row['episode_index']}",
           "lerobot_episode_index": int(row["episode_index"])}
    if task:
        out["task"] = task
    return {**out, **(attrs or {})}


def import_lerobot(root: str | os.PathLike, store: EpisodeStore, task: str | None = None,
                   attrs: Mapping[str, Any] | None = None) -> list[int]:
    """Copy every episode of the LeRobotDataset v3 at ``root`` into ``store`` under fresh ids; returns the ids.

    Frames are read from the data parquet files, camera frames decoded from the videos (ffmpeg) or from PNG
    bytes (``image`` features). Each episode records ``imported_from``, ``lerobot_episode_index``, ``fps`` and
    its task text as ``instruction`` (and as ``task`` unless ``task`` is given), and the attrs an export of ours
    carried (``ATTRS_COLUMN``: seed, source, success, task...); an episode with several tasks
    keeps them per step in ``observations/instruction``. All metadata and frame rows are checked before the
    first episode is added; ``root`` is only read.
    """
    root = Path(root)
    if not root.is_dir():
        raise LeRobotFormatError(f"{root}: not a directory")
    store.require_writable()
    info = read_info(root)
    tasks = read_tasks(root)
    episodes = read_episodes_meta(root)
    cameras = {key: _hwc(info.features[key], key, root) for key in info.cameras}
    data = _DataFiles(info, tasks)
    for row in episodes:  # everything but the video frames, before anything is written
        data.episode(row)
        _carried_attrs(row)
        for key in cameras:
            if info.features[key]["dtype"] == "video":
                path, _ = _video_location(info, row, key)
                if not path.exists():
                    raise LeRobotFormatError(f"{path}: video file missing (episode {row['episode_index']})")
    cursors = {key: VideoCursor(hwc[:2]) for key, hwc in cameras.items()}
    ids = []
    try:
        for row in episodes:
            rows = data.episode(row)
            arrays = dict(rows.arrays)
            for key, cursor in cursors.items():
                if info.features[key]["dtype"] == "video":
                    path, start = _video_location(info, row, key)
                    frames = cursor.read(path, start, row["length"])
                else:
                    frames = data.images(rows, key)
                arrays[store_path(key, visual=True)] = frames
            if len(set(rows.tasks)) > 1:
                arrays[INSTRUCTION_PATH] = np.array(rows.tasks, dtype=object)
            ids.append(store.add(arrays, _episode_attrs(info, row, rows.tasks, task, attrs)))
    except LeRobotFormatError as err:
        if ids:
            raise LeRobotFormatError(f"{err} (episodes imported before the error: ids {ids[0]}-{ids[-1]})") from err
        raise
    finally:
        for cursor in cursors.values():
            cursor.close()
    return ids
