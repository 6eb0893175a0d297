"""Episodes on disk: one HDF5 file per episode, in the layout of the original ACT datasets.

```
/observations/qpos            (T, D)        float32
/observations/qvel            (T, D)        float32   (optional)
/observations/images/<cam>    (T, H, W, 3)  uint8, one frame per chunk, compressed
/observations/<other>         (T, ...)
/action                       (T, A)        float32   (or a group: /action/pick, /action/place)
attrs: sim, task, instruction(s), success, source, round, schema_version
```

Arrays are addressed by their path below the root without the leading slash ("observations/qpos",
"action", "action/pick"). Samples and env observations use the path below ``observations/`` ("qpos",
"images/top"), so a dataset key maps to a file path by prefixing ``observations/``.

An ``EpisodeStore`` is a directory of ``episode_<id>.hdf5`` files plus ``index.json``. Writes go to a
temporary file that is renamed into place, ids are never reused (the index remembers the largest id ever
handed out), and nothing here ever deletes an episode.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import h5py
import numpy as np

SCHEMA_VERSION = 1
SOURCES = ("teacher", "validated", "relabeled", "novice", "robot")
_EPISODE_RE = re.compile(r"^episode_(\d+)\.hdf5$")


class EpisodeError(RuntimeError):
    """An episode file is missing, unreadable or inconsistent; the message names the file and the key."""


def obs_path(key: str) -> str:
    """File path of an observation key ("qpos" -> "observations/qpos")."""
    return key if key.startswith(("observations/", "action")) else f"observations/{key}"


@dataclass
class Episode:
    """An episode in memory: arrays by file path plus attributes."""

    arrays: dict[str, np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return episode_length(self.arrays, where="<in-memory episode>")

    def obs(self, key: str) -> np.ndarray:
        return self.arrays[obs_path(key)]


def episode_length(arrays: Mapping[str, Any], where: str) -> int:
    """Common first dimension of every array; a mismatch is an error naming the keys."""
    lengths = {key: int(arr.shape[0]) for key, arr in arrays.items()}
    if not lengths:
        raise EpisodeError(f"{where}: episode has no arrays")
    distinct = set(lengths.values())
    if len(distinct) != 1:
        raise EpisodeError(f"{where}: arrays disagree on the episode length: {lengths}")
    return distinct.pop()


def _is_image_key(path: str) -> bool:
    return "/images/" in path


def _jsonable_attr(value: Any) -> Any:
    """HDF5 attrs accept scalars and strings; lists of strings become JSON."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_episode(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> None:
    """Write one episode atomically: a temporary file in the same directory, fsync, then rename.

    An interrupted write therefore never leaves a half-written ``episode_*.hdf5`` behind.
    """
    path = Path(path)
    where = str(path)
    arrays = {k.lstrip("/"): np.asarray(v) for k, v in arrays.items()}
    episode_length(arrays, where)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            for key, arr in arrays.items():
                if arr.dtype.kind in "UO":  # text per step (e.g. language instructions): UTF-8 strings
                    f.create_dataset(key, data=arr.astype(object), dtype=h5py.string_dtype())
                elif _is_image_key(key):
                    f.create_dataset(key, data=arr, chunks=(1, *arr.shape[1:]), compression="lzf")
                else:
                    f.create_dataset(key, data=arr)
            f.attrs["schema_version"] = SCHEMA_VERSION
            for key, value in attrs.items():
                if value is not None:
                    f.attrs[key] = _jsonable_attr(value)
            f.flush()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _collect_datasets(f: h5py.File) -> dict[str, h5py.Dataset]:
    found: dict[str, h5py.Dataset] = {}
    f.visititems(lambda name, obj: found.__setitem__(name, obj) if isinstance(obj, h5py.Dataset) else None)
    return found


def _decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def open_episode(path: str | os.PathLike) -> h5py.File:
    """Open an episode for reading; an unreadable file raises EpisodeError naming it."""
    try:
        return h5py.File(path, "r")
    except FileNotFoundError as err:
        raise EpisodeError(f"{path}: episode file not found") from err
    except OSError as err:
        raise EpisodeError(f"{path}: not a readable HDF5 episode (truncated or corrupt?): {err}") from err


class LazyEpisodeFiles:
    """Episode files opened on first use and kept open, once per process.

    Datasets read frames per sample; reopening an HDF5 file per sample costs more than the read. DataLoader
    workers must not inherit the parent's open handles (HDF5 handles are not fork-safe), so the handles
    belong to the process that opened them and a pickled copy starts empty.
    """

    def __init__(self) -> None:
        self._files: dict[str, h5py.File] = {}
        self._pid = -1

    def get(self, path: str) -> h5py.File:
        pid = os.getpid()
        if pid != self._pid:  # a fresh worker process: never reuse the parent's handles
            self._files, self._pid = {}, pid
        handle = self._files.get(path)
        if handle is None:
            handle = self._files[path] = open_episode(path)
        return handle

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    with open_episode(path) as f:
        return {k: _decode_attr(v) for k, v in f.attrs.items()}


def read_episode(path: str | os.PathLike, keys: Sequence[str] | None = None) -> Episode:
    """Read arrays (all, or the given file paths / observation keys) and attributes of one episode."""
    with open_episode(path) as f:
        datasets = _collect_datasets(f)
        wanted = list(datasets) if keys is None else [obs_path(k) for k in keys]
        arrays = {}
        for key in wanted:
            if key not in datasets:
                raise EpisodeError(f"{path}: missing key {key!r} (file has {sorted(datasets)})")
            try:
                ds = datasets[key]
                arrays[key] = ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]
            except OSError as err:
                raise EpisodeError(f"{path}: key {key!r} cannot be read (corrupt data?): {err}") from err
        attrs = {k: _decode_attr(v) for k, v in f.attrs.items()}
    episode_length(arrays, str(path))
    return Episode(arrays, attrs)


def check_episode(path: str | os.PathLike, required: Sequence[str] = ("observations/qpos",)) -> int:
    """Open an episode, check required keys and consistent lengths, read every chunk; return its length."""
    with open_episode(path) as f:
        datasets = _collect_datasets(f)
        for key in required:
            if key not in datasets:
                raise EpisodeError(f"{path}: missing key {key!r} (file has {sorted(datasets)})")
        if not any(k == "action" or k.startswith("action/") for k in datasets):
            raise EpisodeError(f"{path}: missing key 'action' (file has {sorted(datasets)})")
        length = episode_length(datasets, str(path))
        for key, ds in datasets.items():
            try:
                ds[-1]  # the last chunk is the first casualty of a truncated file
                if _is_image_key(key):
                    ds[0]
            except (OSError, ValueError) as err:
                raise EpisodeError(f"{path}: key {key!r} cannot be read (truncated or corrupt?): {err}") from err
    return length


class EpisodeStore:
    """A directory of episodes with atomic writes, never-reused ids and a small JSON index.

    The index caches per-episode length and attributes so that building a dataset does not open every
    file; ``refresh()`` rebuilds it from the files, which stay the source of truth.
    """

    INDEX = "index.json"

    def __init__(self, root: str | os.PathLike, create: bool = True) -> None:
        self.root = Path(root)
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise FileNotFoundError(f"episode store {self.root} does not exist")
        self._index = self._load_index()

    # ---- ids and paths ----------------------------------------------------------------------------
    def path(self, episode_id: int) -> Path:
        return self.root / f"episode_{int(episode_id):06d}.hdf5"

    def ids_on_disk(self) -> list[int]:
        if not self.root.is_dir():
            return []
        ids = []
        for name in os.listdir(self.root):
            match = _EPISODE_RE.match(name)
            if match:
                ids.append(int(match.group(1)))
        return sorted(ids)

    def ids(self) -> list[int]:
        return self.ids_on_disk()

    def __len__(self) -> int:
        return len(self.ids_on_disk())

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids_on_disk())

    def next_id(self) -> int:
        on_disk = self.ids_on_disk()
        return max([self._index["next_id"], *(i + 1 for i in on_disk)])

    # ---- index ------------------------------------------------------------------------------------
    def _load_index(self) -> dict[str, Any]:
        path = self.root / self.INDEX
        if path.exists():
            try:
                index = json.loads(path.read_text())
                if isinstance(index, dict) and "next_id" in index and "episodes" in index:
                    return index
            except (json.JSONDecodeError, OSError):
                pass  # a damaged index is only a cache: rebuilt from the files below
        return {"next_id": 0, "episodes": {}}

    def _save_index(self) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".index.", suffix=".tmp", dir=self.root)
        with os.fdopen(fd, "w") as fh:
            json.dump(self._index, fh)
        os.replace(tmp, self.root / self.INDEX)

    def info(self, episode_id: int) -> dict[str, Any]:
        """Length and attributes of an episode, from the index (read from the file when not cached)."""
        key = str(int(episode_id))
        entry = self._index["episodes"].get(key)
        path = self.path(episode_id)
        mtime = path.stat().st_mtime if path.exists() else None
        if entry is None or entry.get("mtime") != mtime:
            length = check_episode(path, required=())  # layouts differ (pick-place has no qpos)
            entry = {"length": length, "mtime": mtime, "attrs": read_attrs(path)}
            self._index["episodes"][key] = entry
            self._save_index()
        return entry

    def length(self, episode_id: int) -> int:
        return int(self.info(episode_id)["length"])

    def refresh(self) -> None:
        """Forget cached entries and rebuild the index from the files on disk."""
        self._index = {"next_id": self.next_id(), "episodes": {}}
        for episode_id in self.ids_on_disk():
            self.info(episode_id)
        self._save_index()

    # ---- reading and writing ----------------------------------------------------------------------
    def add(self, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> int:
        """Write a new episode under a fresh id and return the id (ids are never reused)."""
        attrs = dict(attrs)
        source = attrs.get("source")
        if source is not None and source not in SOURCES:
            raise ValueError(f"episode source {source!r} is not one of {SOURCES}")
        episode_id = self.next_id()
        self._index["next_id"] = episode_id + 1
        self._save_index()  # reserve the id before writing, so a crash mid-write cannot hand it out twice
        write_episode(self.path(episode_id), arrays, attrs)
        self.info(episode_id)
        return episode_id

    def read(self, episode_id: int, keys: Sequence[str] | None = None) -> Episode:
        return read_episode(self.path(episode_id), keys)

    def verify(self, required: Sequence[str] = ()) -> list[str]:
        """Check every episode file; return one message per unreadable or inconsistent file (empty = fine).

        Every episode needs an action; pass ``required`` for more (pick-and-place episodes have no qpos).
        """
        problems = []
        for episode_id in self.ids_on_disk():
            try:
                check_episode(self.path(episode_id), required)
            except EpisodeError as err:
                problems.append(str(err))
        for name in os.listdir(self.root):
            if name.endswith(".tmp"):
                problems.append(f"{self.root / name}: leftover temporary file of an interrupted write")
        return problems
