"""robomimic HDF5 datasets into an episode store.

robomimic (and robosuite, MimicGen, LIBERO after conversion) keep every demonstration of a dataset in one file:

```
data                      attrs: total, env_args (JSON: env_name, env_type, env_kwargs)
data/demo_<n>/actions     (N, A)
data/demo_<n>/obs/<key>   (N, ...)      low-dim (robot0_eef_pos, object, ...) or images (agentview_image: N,H,W,3 uint8)
data/demo_<n>/states      (N, S)        flattened MuJoCo state (optional)
data/demo_<n>/rewards     (N,)          (optional)
data/demo_<n>/dones       (N,)          (optional)
data/demo_<n>/next_obs/...              (optional; the next step's obs, not imported)
mask/<filter>             demo names    (optional train/valid splits)
```

Each demo becomes one episode of ours: RGB images (uint8, ``(N, H, W, 3)``) go to ``images/<cam>`` (the key less
its ``_image`` suffix, so ``agentview_image`` is camera ``agentview``), the ``state_keys`` low-dim observations are
concatenated into ``qpos`` (the state the policies train on; the attr ``qpos_keys`` records the parts and widths;
by default every (N,) or (N, d) observation but ``env_state_key``, sorted),
``env_state_key`` (``object``, the object poses) becomes ``env_state``, every other observation keeps its name,
``states`` becomes ``sim_state`` (for replay in the simulator), ``rewards`` / ``dones`` become ``/reward`` and
``/done``. The episode attrs carry ``task`` (the env name, unless given), ``imported_from``
(``<file>:data/demo_<n>``), ``robomimic_demo`` and the names of the ``mask`` filters that list the demo.

Float arrays must be finite, as everywhere in a store: a NaN is an error naming the file and the key. Every demo's
keys, lengths and non-image values are checked before the first episode is written (images are uint8, which
holds no NaN; they are read once, when their demo is added). The source file is opened read-only.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from lit_imit.data.episodes import EpisodeError, EpisodeStore, nonfinite_summary

_DEMO_RE = re.compile(r"^demo_(\d+)$")


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except FileNotFoundError as err:
        raise EpisodeError(f"{path}: file not found") from err
    except OSError as err:
        raise EpisodeError(f"{path}: not a readable HDF5 file: {err}") from err


def demo_names(f: h5py.File, path: Path) -> list[str]:
    """The ``data/demo_<n>`` groups in numeric order (``demo_10`` after ``demo_2``, as robomimic sorts them)."""
    if "data" not in f or not isinstance(f["data"], h5py.Group):
        raise EpisodeError(f"{path}: missing group 'data' (a robomimic file has data/demo_<n>/{{obs,actions}})")
    names = [name for name in f["data"] if _DEMO_RE.match(name)]
    if not names:
        raise EpisodeError(f"{path}: no data/demo_<n> groups (data has {sorted(f['data'])})")
    return sorted(names, key=lambda name: int(_DEMO_RE.match(name).group(1)))


def _env_name(f: h5py.File) -> str | None:
    raw = f["data"].attrs.get("env_args")
    if raw is None:
        return None
    try:
        name = json.loads(raw.decode() if isinstance(raw, bytes) else raw).get("env_name")
    except (json.JSONDecodeError, AttributeError):
        return None
    return str(name) if name else None


def _filters(f: h5py.File) -> dict[str, list[str]]:
    """Demo name -> the ``mask/<filter>`` lists that name it (robomimic's train/valid splits)."""
    found: dict[str, list[str]] = {}
    if "mask" not in f:
        return found
    for filter_key in sorted(f["mask"]):
        for name in f["mask"][filter_key][()]:
            found.setdefault(name.decode() if isinstance(name, bytes) else str(name), []).append(filter_key)
    return found


def is_rgb(arr: h5py.Dataset | np.ndarray) -> bool:
    return arr.dtype == np.uint8 and arr.ndim == 4 and arr.shape[-1] == 3


def camera_name(key: str) -> str:
    """``agentview_image`` -> ``agentview``; a key without the suffix keeps its name."""
    return key[: -len("_image")] if key.endswith("_image") and len(key) > len("_image") else key


def _read(group: h5py.Group, key: str, where: str, load_images: bool = True) -> np.ndarray:
    """A dataset of the demo, checked finite. ``load_images=False`` gives RGB images as a zero-cost stand-in of
    their shape (uint8 cannot hold a NaN, so the checking pass need not read them)."""
    if key not in group or not isinstance(group[key], h5py.Dataset):
        raise EpisodeError(f"{where}: missing key {group.name.lstrip('/') + '/' + key!r} "
                           f"(has {sorted(group)})")
    dataset = group[key]
    if not load_images and is_rgb(dataset):
        return np.broadcast_to(np.zeros((), np.uint8), dataset.shape)
    try:
        arr = dataset[()]
    except OSError as err:
        raise EpisodeError(f"{where}: key {group[key].name.lstrip('/')!r} cannot be read: {err}") from err
    problem = nonfinite_summary(np.asarray(arr))
    if problem is not None:
        raise EpisodeError(f"{where}: key {group[key].name.lstrip('/')!r} has non-finite values: {problem}")
    return np.asarray(arr)


def _as_columns(arr: np.ndarray, key: str, where: str) -> np.ndarray:
    """A low-dim observation as (N, d) float32: scalars per step become one column."""
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise EpisodeError(f"{where}: key {key!r} has shape {arr.shape}; state keys must be (N, d)")
    return arr.astype(np.float32)


def demo_episode(f: h5py.File, name: str, path: Path, state_keys: Sequence[str] | None,
                 env_state_key: str | None, load_images: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One demo as (arrays in our layout, attrs); errors name the file and the key."""
    demo = f["data"][name]
    where = str(path)
    if "obs" not in demo or not isinstance(demo["obs"], h5py.Group):
        raise EpisodeError(f"{where}: missing group 'data/{name}/obs' (has {sorted(demo)})")
    action = _read(demo, "actions", where)
    if action.ndim != 2:
        raise EpisodeError(f"{where}: key 'data/{name}/actions' has shape {action.shape}, expected (N, action_dim)")
    obs = {key: _read(demo["obs"], key, where, load_images) for key in sorted(demo["obs"])}
    low_dim = [key for key in obs if obs[key].ndim <= 2]  # vectors (depth maps and the like keep their names)
    env_key = env_state_key if env_state_key in obs else None
    parts = list(state_keys) if state_keys is not None else [k for k in low_dim if k != env_key]
    for key in parts:
        if key not in obs:
            raise EpisodeError(f"{where}: missing key 'data/{name}/obs/{key}' (obs has {sorted(obs)})")
        if is_rgb(obs[key]):
            raise EpisodeError(f"{where}: key 'data/{name}/obs/{key}' is an image, not a state key")
    arrays: dict[str, np.ndarray] = {"action": action.astype(np.float32)}
    widths = []
    if parts:
        columns = [_as_columns(obs[key], f"data/{name}/obs/{key}", where) for key in parts]
        arrays["observations/qpos"] = np.concatenate(columns, axis=1)
        widths = [int(c.shape[1]) for c in columns]
    if env_key is not None:
        arrays["observations/env_state"] = _as_columns(obs[env_key], f"data/{name}/obs/{env_key}", where)
    for key, arr in obs.items():
        if key in parts or key == env_key:
            continue
        arrays[f"observations/images/{camera_name(key)}" if is_rgb(arr) else f"observations/{key}"] = arr
    for source, target in (("states", "observations/sim_state"), ("rewards", "reward"), ("dones", "done")):
        if source in demo:
            arrays[target] = _read(demo, source, where)
    lengths = {key: int(arr.shape[0]) for key, arr in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise EpisodeError(f"{where}: data/{name}: arrays disagree on the episode length: {lengths}")
    declared = demo.attrs.get("num_samples")
    if declared is not None and int(declared) != lengths["action"]:
        raise EpisodeError(f"{where}: data/{name} says num_samples={int(declared)} but has {lengths['action']} actions")
    attrs = {"qpos_keys": [[key, width] for key, width in zip(parts, widths)], "robomimic_demo": name}
    return arrays, attrs


def import_robomimic(hdf5_path: str | os.PathLike, store: EpisodeStore, state_keys: Sequence[str] | None = None,
                     env_state_key: str | None = "object", task: str | None = None,
                     attrs: Mapping[str, Any] | None = None) -> list[int]:
    """Copy every ``data/demo_<n>`` of a robomimic HDF5 file into ``store`` under fresh ids; returns the ids.

    ``state_keys``: the low-dim observations concatenated into ``qpos``, in this order (default: every low-dim
    key but ``env_state_key``, sorted). Every demo is checked (keys, lengths, finite values) before the first
    episode is added, so a bad file adds nothing; each episode is then added atomically by the store. The file
    is only read.
    """
    path = Path(hdf5_path)
    store.require_writable()
    with _open(path) as f:
        names = demo_names(f, path)
        env_name = _env_name(f)
        filters = _filters(f)
        for name in names:  # check everything first: a bad demo 40 must not leave demos 0-39 imported
            demo_episode(f, name, path, state_keys, env_state_key, load_images=False)
        ids = []
        for name in names:
            arrays, extra = demo_episode(f, name, path, state_keys, env_state_key)
            episode_attrs = {"task": task or env_name, **extra, "robomimic_filters": filters.get(name, []),
                             "imported_from": f"{path.resolve()}:data/{name}", **(attrs or {})}
            ids.append(store.add(arrays, episode_attrs))
    return ids
