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
temporary file that is renamed into place, ids are never reused (``.next_id`` remembers the largest id ever
handed out), several processes may write into one store at once, and nothing here ever deletes an
episode. Float arrays must be finite: a NaN that gets in ends up in the normalisation statistics and then
in every weight of a model trained on them.

Reading never writes. A directory written by another tool (the original ACT recorder names its files
``episode_0.hdf5``, ``episode_1.hdf5``...; ours are ``episode_000000.hdf5``) is read as it is, and nothing is
ever written into it: :func:`import_episodes` copies such episodes into a store of ours.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import h5py
import numpy as np

SCHEMA_VERSION = 1
SOURCES = ("teacher", "validated", "relabeled", "novice", "robot")
_EPISODE_RE = re.compile(r"^episode_(\d+)\.hdf5$")
# temporary files: .<final name>.<host>.<pid>.<random>.tmp (the writer's host and pid tell leftovers from writes)
_TMP_RE = re.compile(r"^\.(?P<target>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")


class EpisodeError(RuntimeError):
    """An episode file is missing, unreadable or inconsistent; the message names the file and the key."""


class ForeignStoreError(EpisodeError):
    """A write into a directory of another tool's episodes, refused so that a dataset we did not write is never
    changed; the message says how to import it into a store of ours."""


def episode_file_name(episode_id: int) -> str:
    """The name this package gives an episode (``episode_000042.hdf5``). Other tools pad differently or not at
    all (``episode_42.hdf5``); the store reads any of them and writes only this one."""
    return f"episode_{int(episode_id):06d}.hdf5"


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


def nonfinite_summary(arr: np.ndarray) -> str | None:
    """None for a finite (or non-float) array, else what is wrong: "2 NaN, 1 inf (first at step 5)"."""
    if arr.dtype.kind not in "fc":
        return None
    bad = ~np.isfinite(arr)
    if not bad.any():
        return None
    nan = int(np.isnan(arr).sum())
    first = int(np.argwhere(bad)[0][0]) if arr.ndim else 0
    return f"{nan} NaN, {int(bad.sum()) - nan} inf (first at step {first})"


def check_finite(arrays: Mapping[str, np.ndarray], where: str) -> None:
    """Refuse NaN / inf in float arrays, naming the key: caught here, not as a NaN loss hours later."""
    for key, arr in arrays.items():
        problem = nonfinite_summary(np.asarray(arr))
        if problem is not None:
            raise ValueError(f"{where}: key {key!r} has non-finite values: {problem}")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "localhost"


def _tmp_prefix(name: str) -> str:
    """Temporary files carry their writer's host and pid, so a dead writer's leftover can be told from a write
    in progress (``EpisodeStore.clean_stale_tmp``)."""
    return f".{name}.{_host()}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0666 less the process umask (0644 under 0022). Temporary files are
    made 0600, which a store shared with the group that trains on it must not keep."""
    return 0o666 & ~_process_umask()


def _process_umask() -> int:
    """The umask, read without changing it where Linux says it (``/proc/self/status``): setting it to 0 and back,
    the portable way, would give a file another thread creates in between mode 0666."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temporary_file(path: Path) -> tuple[int, str]:
    """A temporary file next to ``path`` (renamed into place when complete), with the mode of a new file."""
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path.name), suffix=".tmp", dir=path.parent)
    os.fchmod(fd, new_file_mode())
    return fd, tmp


def _atomic_write_text(path: Path, text: str) -> None:
    """Small files (index, counters): write a temporary file, fsync, rename over the old one."""
    fd, tmp = _temporary_file(path)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _place(tmp: str, path: Path, overwrite: bool) -> None:
    """Rename a finished temporary file into place; without ``overwrite`` an existing file is never replaced
    (a hard link fails on an existing name, atomically, even where locks do not work)."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as err:  # file systems without hard links: check, then rename (not atomic, but rare)
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
            raise
        if path.exists():
            raise FileExistsError(errno.EEXIST, "episode file exists", str(path)) from err
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _jsonable_attr(value: Any) -> Any:
    """HDF5 attrs accept scalars and strings; lists of strings become JSON."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_episode(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any],
                  overwrite: bool = True) -> None:
    """Write one episode atomically: a temporary file in the same directory, fsync, then rename.

    An interrupted write therefore never leaves a half-written ``episode_*.hdf5`` behind. With
    ``overwrite=False`` an existing file is never replaced (``FileExistsError``), whoever wrote it.
    """
    path = Path(path)
    where = str(path)
    arrays = {k.lstrip("/"): np.asarray(v) for k, v in arrays.items()}
    episode_length(arrays, where)
    fd, tmp = _temporary_file(path)
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
            for key, value in attrs.items():
                if value is not None:
                    f.attrs[key] = _jsonable_attr(value)
            f.attrs["schema_version"] = SCHEMA_VERSION  # the writer's layout, whatever attrs copied from elsewhere say
            f.flush()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        _place(tmp, path, overwrite)
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


def check_episode(path: str | os.PathLike, required: Sequence[str] = ("observations/qpos",),
                  finite: bool = False) -> int:
    """Open an episode, check required keys and consistent lengths, read every chunk; return its length.

    ``finite=True`` also reads every float array whole and refuses NaN / inf, naming the key.
    """
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
                problem = nonfinite_summary(ds[()]) if finite and ds.dtype.kind in "fc" else None
            except (OSError, ValueError) as err:
                raise EpisodeError(f"{path}: key {key!r} cannot be read (truncated or corrupt?): {err}") from err
            if problem is not None:
                raise EpisodeError(f"{path}: key {key!r} has non-finite values: {problem}")
    return length


def _tmp_state(name: str) -> tuple[str, str]:
    """("live" | "stale" | "foreign", why) for a temporary file, from the writer named in it.

    "live": its writer still runs on this machine (a write in progress); "stale": the writer is gone, or the
    name predates writer names, so nothing will ever finish it; "foreign": written on another host, whose
    processes cannot be checked from here.
    """
    match = _TMP_RE.match(name)
    if match is None:
        return "stale", "leftover temporary file of an interrupted write (unknown writer)"
    host, pid = match["host"], int(match["pid"])
    if host != _host():
        return "foreign", f"temporary file of a writer on host {host} (pid {pid}); cannot tell from here if it runs"
    if _pid_alive(pid):
        return "live", f"being written by process {pid}"
    return "stale", f"leftover temporary file of an interrupted write (writer process {pid} is gone)"


class EpisodeStore:
    """A directory of episodes with atomic writes, never-reused ids and a small JSON index.

    The index caches per-episode length and attributes so that building a dataset does not open every
    file; ``refresh()`` rebuilds it from the files, which stay the source of truth.

    **Several writers.** Recorders, an interactive run and deployments may add to one store at the same
    time. On one machine (a local file system) the store guarantees:

    * ``add`` gives every episode an id that no other writer gets, and no id is handed out twice, even
      after ``index.json`` and the newest episodes are deleted: ids come from the ``.next_id`` high-water
      mark, advanced under an exclusive ``flock`` of ``.lock`` before the episode is written;
    * an existing episode file is never replaced: the finished file is hard-linked into place, which fails
      on a name that exists (the writer then takes the next id), and an interrupted write leaves at most a
      ``.episode_<id>.hdf5.<host>.<pid>.<random>.tmp`` file, never a half-written episode;
    * ``reserve_seed`` hands out env seeds from ``.next_seed`` under the same lock, so two recorders never
      record the same seed (the recorder reserves one per attempt);
    * index updates are merged with the other writers' (read, merge and atomic rename under the lock);
    * ``verify()`` reports temporary files whose writer died and ``clean_stale_tmp()`` removes them
      (a write in progress is neither reported nor removed).

    On a shared network file system (NFS, SMB, sshfs...) ``flock`` is **not reliable**: depending on client,
    server and mount options it locks only on the local machine, or not at all. Writers on different
    machines may then be handed the same id; the hard link still keeps every episode that was written
    (the loser of the race retries with the next id, where the file system supports hard links), but
    seeds can repeat and the index may lose entries (``refresh()`` rebuilds it), and ``verify`` cannot
    tell whether another host's temporary file is a write in progress. Record on one machine per store,
    or into per-machine stores that are merged afterwards.

    **Reading writes nothing.** Ids, paths, ``info``, ``read`` and ``verify`` only read: entries the index
    lacks are kept in memory (``index.json`` is written by ``add`` and ``refresh``, which hold the lock), so a
    training run leaves the directory as it found it. Episode files are found by their id whatever the zero
    padding of their names (``episode_7.hdf5``, ``episode_000007.hdf5``). A directory whose files are named in
    another tool's way (the original ACT datasets) is read as it is and refuses every write
    (:class:`ForeignStoreError`): :func:`import_episodes` copies it into a store of ours.
    """

    INDEX = "index.json"
    LOCK = ".lock"  # flock'ed around id / seed allocation and index updates
    NEXT_ID = ".next_id"  # one past the largest id ever handed out
    NEXT_SEED = ".next_seed"  # one past the largest seed ever handed out or recorded
    _ID_TRIES = 1000

    def __init__(self, root: str | os.PathLike, create: bool = True) -> None:
        self.root = Path(root)
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise FileNotFoundError(f"episode store {self.root} does not exist")
        self._thread_lock = threading.RLock()
        self._lock_depth = 0
        self._files: dict[int, str] = {}  # episode id -> file name on disk, from the last listing
        self._index = self._load_index()

    def __getstate__(self) -> dict[str, Any]:  # datasets holding a store go to DataLoader workers
        state = dict(self.__dict__)
        state.pop("_thread_lock")
        state["_lock_depth"] = 0
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.RLock()

    # ---- the store lock and its counters ----------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the store's exclusive lock (``flock`` of ``.lock``); re-entrant within this object."""
        with self._thread_lock:
            if self._lock_depth:
                self._lock_depth += 1
                try:
                    yield
                finally:
                    self._lock_depth -= 1
                return
            fd = os.open(self.root / self.LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._lock_depth = 1
                try:
                    yield
                finally:
                    self._lock_depth = 0
            finally:
                os.close(fd)  # closing the descriptor releases the lock

    def _read_counter(self, name: str) -> int | None:
        try:
            return int((self.root / name).read_text().strip())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # damaged: the files and the index still give a usable value
            return None

    def _write_counter(self, name: str, value: int) -> None:
        _atomic_write_text(self.root / name, f"{int(value)}\n")

    # ---- ids and paths ----------------------------------------------------------------------------
    def path(self, episode_id: int) -> Path:
        """The file of an episode: its name on disk, however padded (``episode_7.hdf5``), else the name a new
        episode with this id gets (:func:`episode_file_name`)."""
        episode_id = int(episode_id)
        name = self._files.get(episode_id) or self._list_files().get(episode_id)
        return self.root / (name or episode_file_name(episode_id))

    def _list_files(self) -> dict[int, str]:
        """Episode id -> file name, from the directory listing. Two files with one id (``episode_1.hdf5`` and
        ``episode_001.hdf5``) are an error naming both: which one a dataset reads must not be left to chance."""
        files: dict[int, str] = {}
        names = sorted(os.listdir(self.root)) if self.root.is_dir() else []
        for name in names:
            match = _EPISODE_RE.match(name)
            if match is None:
                continue
            episode_id = int(match.group(1))
            if episode_id in files:
                raise EpisodeError(f"{self.root}: {files[episode_id]} and {name} are both episode {episode_id}; "
                                   "keep one of them")
            files[episode_id] = name
        self._files = files
        return files

    def ids_on_disk(self) -> list[int]:
        return sorted(self._list_files())

    def foreign_files(self) -> list[str]:
        """Episode files not named the way this package names them: another tool wrote the directory."""
        return [name for episode_id, name in sorted(self._list_files().items())
                if name != episode_file_name(episode_id)]

    def require_writable(self) -> None:
        """Refuse to write into another tool's directory of episodes (see the class docstring)."""
        foreign = self.foreign_files()
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise ForeignStoreError(
                f"{self.root} holds episodes named by another tool ({shown}); lit_imit reads them as they are "
                f"and writes nothing there. To add episodes, import these into a store of ours first: "
                f"python scripts/import_episodes.py {self.root} NEW_DIR"
            )

    def ids(self) -> list[int]:
        return self.ids_on_disk()

    def __len__(self) -> int:
        return len(self.ids_on_disk())

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids_on_disk())

    def next_id(self) -> int:
        """The id the next ``add`` gets unless another writer comes first: past the high-water mark, the
        index's record and every file on disk."""
        marks = [self._read_counter(self.NEXT_ID) or 0, self._index["next_id"], self._load_index()["next_id"]]
        return max([*marks, *(i + 1 for i in self.ids_on_disk())])

    def _allocate_id(self) -> int:
        """Hand out a fresh id: the high-water mark moves under the lock, before anything is written, so a
        crash mid-write or a concurrent writer can never get it again."""
        with self._locked():
            episode_id = self.next_id()
            self._write_counter(self.NEXT_ID, episode_id + 1)
        self._index["next_id"] = max(self._index["next_id"], episode_id + 1)
        return episode_id

    # ---- seeds ------------------------------------------------------------------------------------
    def reserve_seed(self, base: int = 0) -> int:
        """An env seed no writer of this store has used or will get: one past the largest seed handed out
        or recorded so far, or ``base`` in a store without seeds. Taken under the store lock, so recorders
        writing into one store at once never record the same seed, and re-runs append new episodes."""
        self.require_writable()
        with self._locked():
            mark = self._seed_mark()
            seed = int(base) if mark is None else mark
            self._write_counter(self.NEXT_SEED, seed + 1)
        return seed

    def _seed_mark(self) -> int | None:
        """One past the largest seed handed out or recorded, None when there is none (call under the lock)."""
        mark = self._read_counter(self.NEXT_SEED)
        if mark is None:  # a store written before .next_seed existed: its recorded seeds tell
            seeds = [_int_seed(self.info(i)["attrs"].get("seed")) for i in self.ids_on_disk()]
            seeds = [s for s in seeds if s is not None]
            mark = max(seeds) + 1 if seeds else None
        return mark

    def _note_seed(self, seed: Any) -> None:
        """An episode was recorded with ``seed`` (possibly not reserved here): later seeds come after it."""
        seed = _int_seed(seed)
        if seed is None:
            return
        with self._locked():
            mark = self._seed_mark()
            if mark is None or seed + 1 > mark:
                self._write_counter(self.NEXT_SEED, seed + 1)

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

    def _save_index(self, updates: Mapping[str, Any] | None = None, replace: bool = False) -> None:
        """Merge ``updates`` (id -> entry) into the index on disk, under the lock.

        The other writers' entries are kept, entries of files that are gone are dropped, and the file is
        replaced atomically, so a reader never sees a half-written index.
        """
        with self._locked():
            index = {"next_id": 0, "episodes": {}} if replace else self._load_index()
            index["episodes"].update(updates or {})
            on_disk = {str(i) for i in self.ids_on_disk()}
            index["episodes"] = {k: v for k, v in index["episodes"].items() if k in on_disk}
            index["next_id"] = max([index["next_id"], self._index["next_id"], self._read_counter(self.NEXT_ID) or 0,
                                    *(int(k) + 1 for k in index["episodes"])])
            _atomic_write_text(self.root / self.INDEX, json.dumps(index))
        self._index = index

    @staticmethod
    def _entry(path: Path, mtime: float | None) -> dict[str, Any]:
        length = check_episode(path, required=())  # layouts differ (pick-place has no qpos)
        return {"length": length, "mtime": mtime, "attrs": read_attrs(path)}

    def info(self, episode_id: int) -> dict[str, Any]:
        """Length and attributes of an episode, from the index; an entry it lacks (or an outdated one) is read
        from the file and kept in memory only, so reading never writes into the directory."""
        key = str(int(episode_id))
        entry = self._index["episodes"].get(key)
        path = self.path(episode_id)
        mtime = path.stat().st_mtime if path.exists() else None
        if entry is None or entry.get("mtime") != mtime:
            entry = self._index["episodes"][key] = self._entry(path, mtime)
        return entry

    def length(self, episode_id: int) -> int:
        return int(self.info(episode_id)["length"])

    def refresh(self) -> None:
        """Forget cached entries and rebuild ``index.json`` from the files on disk (a store of ours only)."""
        self.require_writable()
        entries = {}
        for episode_id in self.ids_on_disk():
            path = self.path(episode_id)
            entries[str(episode_id)] = self._entry(path, path.stat().st_mtime)
        self._save_index(entries, replace=True)

    # ---- reading and writing ----------------------------------------------------------------------
    def add(self, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> int:
        """Write a new episode under a fresh id and return the id (ids are never reused).

        Float arrays must be finite: NaN / inf is a ValueError naming the key, and nothing is written.
        Safe with other writers adding to the same store (see the class docstring).
        """
        attrs = dict(attrs)
        source = attrs.get("source")
        if source is not None and source not in SOURCES:
            raise ValueError(f"episode source {source!r} is not one of {SOURCES}")
        check_finite(arrays, where=f"{self.root}: new episode")
        self.require_writable()
        for _ in range(self._ID_TRIES):
            episode_id = self._allocate_id()
            path = self.root / episode_file_name(episode_id)
            try:
                write_episode(path, arrays, attrs, overwrite=False)
            except FileExistsError:  # a writer the lock did not hold back (another host on NFS) took it
                continue
            self._note_seed(attrs.get("seed"))
            self._save_index({str(episode_id): self._entry(path, path.stat().st_mtime)})
            return episode_id
        raise EpisodeError(f"{self.root}: no free episode id in {self._ID_TRIES} tries (is {self.NEXT_ID} writable?)")

    def read(self, episode_id: int, keys: Sequence[str] | None = None) -> Episode:
        return read_episode(self.path(episode_id), keys)

    def verify(self, required: Sequence[str] = ()) -> list[str]:
        """Check every episode file; return one message per problem, naming the file (empty = fine).

        Every episode needs an action; pass ``required`` for more (pick-and-place episodes have no qpos).
        Float arrays must be finite (the message names the key). Temporary files of writers that died are
        reported (``clean_stale_tmp()`` removes them); a write in progress on this machine is not.
        """
        problems = []
        for episode_id in self.ids_on_disk():
            try:
                check_episode(self.path(episode_id), required, finite=True)
            except EpisodeError as err:
                problems.append(str(err))
        for path, state, why in self._tmp_files():
            if state != "live":
                hint = "; clean_stale_tmp() removes it" if state == "stale" else ""
                problems.append(f"{path}: {why}{hint}")
        return problems

    def _tmp_files(self) -> list[tuple[Path, str, str]]:
        names = sorted(name for name in os.listdir(self.root) if name.endswith(".tmp"))
        return [(self.root / name, *_tmp_state(name)) for name in names]

    def clean_stale_tmp(self) -> list[Path]:
        """Remove temporary files whose writer died on this machine (or that name no writer); return them.

        Writes in progress and files of writers on other hosts are left alone. (A dead writer's pid that the
        system has reused for another process keeps its file until that process ends too.)
        """
        self.require_writable()
        removed = []
        for path, state, _ in self._tmp_files():
            if state == "stale":
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
        return removed


def import_episodes(source: str | os.PathLike, store: EpisodeStore,
                    attrs: Mapping[str, Any] | None = None) -> list[int]:
    """Copy every episode of ``source`` (any ``episode_<n>.hdf5`` naming, e.g. an original ACT dataset) into
    ``store`` under fresh ids, in id order; returns the new ids. ``source`` is only read.

    This is the one way episodes of another tool's directory get into a store of ours, which can then grow
    (recording, interactive rounds). Each copy keeps the file's attributes and adds ``imported_from`` (the
    source file) and ``attrs``; arrays are written in this package's layout (images lzf-compressed, one frame
    per chunk). Episodes are read whole, one at a time.
    """
    origin = EpisodeStore(source, create=False)
    ids = []
    for episode_id in origin.ids():
        path = origin.path(episode_id)
        episode = read_episode(path)
        ids.append(store.add(episode.arrays, {**episode.attrs, "imported_from": str(path.resolve()), **(attrs or {})}))
    return ids


def _int_seed(value: Any) -> int | None:
    """A recorded ``seed`` attribute as an int (None when absent or not a whole number)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        return None
    return int(value)
