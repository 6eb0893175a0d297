"""Loading any of our policies as the class that wrote it, from a checkpoint or a policy directory.

A Lightning checkpoint holds weights and hyper-parameters but, by itself, not the class to rebuild. Guessing
the class from the hyper-parameter names breaks as soon as two methods take the same names, so
:class:`lit_imit.modules.base.PolicyModule` records ``checkpoint["policy_class"] = "module.path.ClassName"``
when it is saved, and :func:`policy_class_for` imports that class. Checkpoints written before then fall back
to the class path the LightningCLI kept in the hyper-parameters (``_class_path``), and last to the old guess
among :data:`KNOWN_POLICIES`; when nothing fits, the error names the file.

The file is read with ``torch.load(weights_only=True)`` (:mod:`lit_imit.checkpoints`): no code from it runs.
A class named *by the file* must be a ``PolicyModule``, so a crafted checkpoint cannot make the loader call
some other importable callable with its hyper-parameters.

A **policy directory** is what a trained policy is shared as (:func:`save_policy`, :func:`export_policy`,
``scripts/export_policy.py``): ``config.json`` (the class path, its init args and the training record),
``model.safetensors`` (every weight and buffer, normalisation statistics included; no optimiser state, no
pickle) and ``README.md`` (a card: the training data and, when known, the held-out result). It is loaded by
the same :func:`load_policy` as a checkpoint, into the same module with the same weights, so its actions
equal the checkpoint's bit for bit.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from lit_imit.checkpoints import CheckpointError, load_checkpoint
from lit_imit.modules.base import PolicyModule, policy_class_path

#: classes tried in order, by their constructor's parameters, when a checkpoint records no class
KNOWN_POLICIES = ("lit_imit.modules.act:ACTModule", "lit_imit.modules.diffusion:DiffusionModule")

#: hyper-parameters that name weight files read at construction (pretrained weights, an earlier training
#: stage's checkpoint): a module rebuilt from its own checkpoint has those weights already
_WEIGHT_FILE_KEYS = ("pretrained_backbone", "clip_pretrained", "init_from")

#: the files of a policy directory
POLICY_CONFIG, POLICY_WEIGHTS, POLICY_CARD = "config.json", "model.safetensors", "README.md"
POLICY_FORMAT, POLICY_FORMAT_VERSION = "lit_imit.policy", 1

__all__ = ["KNOWN_POLICIES", "PolicyLoadError", "build_policy", "export_policy", "import_class", "is_policy_dir",
           "load_policy", "policy_cameras", "policy_class_for", "policy_from_snapshot", "policy_snapshot",
           "policy_spec", "save_policy"]


class PolicyLoadError(RuntimeError):
    """A checkpoint cannot be turned into a policy module; the message names the file where one is involved."""


def import_class(path: str) -> type:
    """The class at ``"module.path.ClassName"`` or ``"module.path:ClassName"``."""
    module, _, name = path.replace(":", ".").rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise PolicyLoadError(f"cannot import policy class {path!r}: {e}") from e


def _recorded_class(checkpoint: Mapping[str, Any], path: Path) -> type | None:
    """The class the checkpoint names: ours (``policy_class``), else the LightningCLI's (``_class_path``)."""
    hparams = checkpoint.get("hyper_parameters") or {}
    name = checkpoint.get("policy_class") or hparams.get("_class_path")
    return _policy_class_named(str(name), path) if name else None


def _policy_class_named(name: str, path: Path) -> type:
    """The ``PolicyModule`` class a file (checkpoint or ``config.json``) names; anything else is an error."""
    try:
        cls = import_class(name)
    except PolicyLoadError as e:
        raise PolicyLoadError(f"{path} was saved by policy class {name!r}, which cannot be imported here "
                              f"({e.__cause__}); install the package that defines it, or name a class") from e

    if not (isinstance(cls, type) and issubclass(cls, PolicyModule)):
        raise PolicyLoadError(f"{path} names {name!r} as its policy class, which is not a PolicyModule")
    return cls


def _guessed_class(hparams: Mapping[str, Any], path: Path) -> type:
    """For checkpoints that name no class: the known class whose constructor takes all the hyper-parameters
    with the fewest left over."""
    keys = {k for k in hparams if not k.startswith("_")}
    fits = []
    for known in KNOWN_POLICIES:
        try:
            cls = import_class(known)
        except PolicyLoadError:
            continue
        params = set(inspect.signature(cls.__init__).parameters) - {"self"}
        if keys <= params:
            fits.append((len(params - keys), cls))
    if not fits:
        raise PolicyLoadError(f"{path} names no policy class and no known policy class takes its hyper-parameters "
                              f"{sorted(keys)}; name it with --policy-class module:Class")
    return min(fits, key=lambda f: f[0])[1]


def policy_class_for(checkpoint: Mapping[str, Any], path: str | Path, explicit: str | None = None) -> type:
    """The LightningModule class of a loaded checkpoint: ``explicit``, recorded in the file, or the known fit."""
    if explicit:
        return import_class(explicit)
    path = Path(path)
    return _recorded_class(checkpoint, path) or _guessed_class(dict(checkpoint.get("hyper_parameters") or {}), path)


def _read(path: Path) -> dict[str, Any]:
    """The checkpoint dict (weights-only); damage or a foreign file is one line naming the file."""

    if not path.is_file():
        raise PolicyLoadError(f"checkpoint {path} does not exist")
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as e:  # empty, truncated, corrupt, not a checkpoint, disallowed objects: one line
        raise PolicyLoadError(str(e)) from e
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise PolicyLoadError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    return checkpoint


def _build(cls: type, hparams: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> Any:
    """``cls`` from the hyper-parameters it takes, with ``overrides`` applied and no pretrained download."""
    params = set(inspect.signature(cls.__init__).parameters)
    kwargs = {k: v for k, v in hparams.items() if not k.startswith("_") and k in params}
    for key, value in (overrides or {}).items():
        if key not in params:
            raise PolicyLoadError(f"{cls.__name__} has no hyper-parameter {key!r} to override")
        kwargs[key] = value
    for key in _WEIGHT_FILE_KEYS:
        if key in params:
            kwargs[key] = None  # the checkpoint holds the trained weights; read (and ask for) no other file
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise PolicyLoadError(f"cannot build {cls.__name__} from the checkpoint's hyper-parameters: {e}") from e


def load_policy(path: str | Path, device: str = "cpu", policy_class: str | None = None,
                overrides: Mapping[str, Any] | None = None) -> Any:
    """Rebuild a policy module from a Lightning checkpoint (weights_only load) or a policy directory
    (:func:`save_policy`), in eval mode on ``device``.

    The class is ``policy_class`` when given (``"module:Class"``), else the one the file records (see the
    module docstring). ``overrides`` replace hyper-parameters before the module is built (e.g. ACT's
    ``temporal_ensemble_coeff`` and ``n_action_steps``); an override the class does not take is an error.
    ``module.trained_steps`` is the step the weights were saved at.
    """
    path = Path(path)
    if path.is_dir():
        module = _module_from_directory(path, policy_class, overrides)
    else:
        module = _module_from_checkpoint(_read(path), path, policy_class, overrides)
    _require_stats(module, path)
    return module.to(device).eval()


def _module_from_checkpoint(checkpoint: Mapping[str, Any], path: Path, policy_class: str | None,
                            overrides: Mapping[str, Any] | None) -> Any:
    cls = policy_class_for(checkpoint, path, policy_class)
    module = _build(cls, dict(checkpoint.get("hyper_parameters") or {}), overrides)
    missing, unexpected = module.load_state_dict(checkpoint["state_dict"], strict=False)
    _require_matching(path, cls, missing, unexpected)
    module.trained_steps = int(checkpoint.get("global_step", 0))
    return module


def _require_matching(path: Path, cls: type, missing: Any, unexpected: Any) -> None:
    if missing or unexpected:
        raise PolicyLoadError(f"{path} does not match {cls.__name__}: missing {list(missing)[:5]}, "
                              f"unexpected {list(unexpected)[:5]}")


def _require_stats(module: Any, path: Path) -> None:
    """A policy without dataset statistics would act on unnormalised inputs: refuse it, naming the file."""
    if getattr(module, "normalized_keys", ()) and not bool(module.stats_initialized):
        raise PolicyLoadError(f"{path} has no normalisation statistics: it was never set up with data")


# ---- policy directories ------------------------------------------------------------------------------------
def is_policy_dir(path: str | Path) -> bool:
    """Whether ``path`` is a policy directory (it holds a ``config.json``)."""
    return (Path(path) / POLICY_CONFIG).is_file()


def _read_policy_config(path: Path) -> dict[str, Any]:
    """``config.json`` of a policy directory; anything else is one line naming the file."""
    config_path = path / POLICY_CONFIG
    if not config_path.is_file():
        raise PolicyLoadError(f"{path} is a directory without {POLICY_CONFIG}: not a policy directory (pass a "
                              "checkpoint file, or a directory written by save_policy / scripts/export_policy.py)")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PolicyLoadError(f"cannot read {config_path}: {e}") from e
    if not isinstance(config, dict) or config.get("format") != POLICY_FORMAT or "policy_class" not in config:
        raise PolicyLoadError(f"{config_path} is not a lit_imit policy config (format {POLICY_FORMAT!r} with a "
                              "policy_class)")
    if int(config.get("format_version", 0)) > POLICY_FORMAT_VERSION:
        raise PolicyLoadError(f"{config_path} has format version {config['format_version']}; this lit_imit reads "
                              f"up to {POLICY_FORMAT_VERSION}: update lit_imit")
    return config


def _module_from_directory(path: Path, policy_class: str | None, overrides: Mapping[str, Any] | None) -> Any:
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    config = _read_policy_config(path)
    cls = import_class(policy_class) if policy_class else _policy_class_named(str(config["policy_class"]), path)
    module = _build(cls, dict(config.get("init_args") or {}), overrides)
    weights = path / POLICY_WEIGHTS
    if not weights.is_file():
        raise PolicyLoadError(f"{weights} does not exist: the policy directory has no weights")
    try:
        missing, unexpected = load_model(module, weights, strict=False)
    except (SafetensorError, OSError, RuntimeError) as e:  # truncated, corrupt, or tensors of the wrong shape
        raise PolicyLoadError(f"cannot read {weights}: {e}") from e
    _require_matching(weights, cls, missing, unexpected)
    module.trained_steps = (config.get("training") or {}).get("global_step")
    return module


def save_policy(module: Any, directory: str | Path, *, training: Mapping[str, Any] | None = None,
                results: Mapping[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write ``module`` (a ``PolicyModule`` with its statistics) as a policy directory; returns its path.

    ``training`` is the training record (default: from the module's trainer when attached, see
    :func:`lit_imit.policy_card.training_from_module`); ``results`` a row of ``results/results.jsonl`` for these
    weights. The directory is written next to ``directory`` and renamed into place, so a reader never sees
    half of one. An existing ``directory`` must be empty, or a policy directory and ``overwrite`` true: nothing
    else is ever removed.
    """
    from safetensors.torch import save_model

    from lit_imit.policy_card import render_card, training_from_module

    directory = Path(directory)
    if not isinstance(module, PolicyModule):
        raise TypeError(f"save_policy takes a PolicyModule, got {type(module).__name__}")
    _require_stats(module, Path(f"<{type(module).__name__} in memory>"))
    _require_replaceable(directory, overwrite)
    config = {
        "format": POLICY_FORMAT, "format_version": POLICY_FORMAT_VERSION,
        "policy_class": policy_class_path(type(module)), "init_args": _json_init_args(module),
        "training": dict(training) if training is not None else training_from_module(module),
        "results": dict(results) if results is not None else None,
    }
    staging = directory.parent / f".{directory.name}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        (staging / POLICY_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        save_model(module, str(staging / POLICY_WEIGHTS), metadata={"policy_class": config["policy_class"]})
        (staging / POLICY_CARD).write_text(render_card(config, directory.name))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def _require_replaceable(directory: Path, overwrite: bool) -> None:
    if not directory.exists():
        return
    if not directory.is_dir():
        raise FileExistsError(f"{directory} exists and is not a directory")
    if any(directory.iterdir()) and not (overwrite and is_policy_dir(directory)):
        what = "a policy directory (pass overwrite=True / --overwrite to replace it)" if is_policy_dir(directory) \
            else "not empty and not a policy directory"
        raise FileExistsError(f"{directory} is {what}")


def _json_init_args(module: Any) -> dict[str, Any]:
    """The module's init args (its saved hyper-parameters) as JSON; one that JSON cannot hold is named."""
    args = {k: v for k, v in dict(getattr(module, "hparams", {})).items() if not k.startswith("_")}
    for key, value in args.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{type(module).__name__} init arg {key!r} = {value!r} cannot be written to "
                             f"{POLICY_CONFIG}: {e}") from e
    return args


def export_policy(checkpoint: str | Path, directory: str | Path, *, results_path: str | Path | None = None,
                  policy_class: str | None = None, overwrite: bool = False) -> Path:
    """A policy directory from a checkpoint (its weights: EMA ones where EMA ran), with its training record
    and the latest row of ``results_path`` that tested this checkpoint."""
    from lit_imit.policy_card import training_from_checkpoint
    from lit_imit.results import row_for_checkpoint

    checkpoint = Path(checkpoint)
    state = _read(checkpoint)
    module = _module_from_checkpoint(state, checkpoint, policy_class, None)
    _require_stats(module, checkpoint)
    training = training_from_checkpoint(state, checkpoint)
    results = row_for_checkpoint(results_path, checkpoint) if results_path is not None else None
    return save_policy(module, directory, training=training, results=results, overwrite=overwrite)


def policy_spec(module: Any) -> dict[str, Any]:
    """What rebuilds ``module``'s architecture without its file: ``{"class_path", "hparams"}`` in plain Python
    types, so a weights-only checkpoint of a module that embeds this policy (residual RL's frozen base) can
    hold it and :func:`build_policy` can rebuild it; the weights travel separately, in that module's state."""
    return {"class_path": policy_class_path(type(module)), "hparams": _plain(dict(module.hparams))}


def build_policy(spec: Mapping[str, Any]) -> Any:
    """A freshly initialised policy from a :func:`policy_spec` (its weights are loaded afterwards)."""
    return _build(_policy_class_named(str(spec["class_path"]), Path("a policy spec")), dict(spec["hparams"]), None)


def policy_snapshot(module: Any) -> dict[str, Any]:
    """A picklable copy of a policy module as it is now: its :func:`policy_spec` and its weights as numpy arrays
    (normalisation buffers included). What a worker process needs to act as this policy
    (:func:`policy_from_snapshot`); numpy rather than tensors so that pickling never goes through torch's
    shared-memory file descriptors."""
    return {**policy_spec(module),
            "state_dict": {key: value.detach().cpu().numpy().copy() for key, value in module.state_dict().items()}}


def policy_from_snapshot(snapshot: Mapping[str, Any], device: str = "cpu") -> Any:
    """The module of a :func:`policy_snapshot`, in eval mode: the same weights give the same actions."""
    import torch

    module = build_policy(snapshot)
    module.load_state_dict({key: torch.from_numpy(value) for key, value in snapshot["state_dict"].items()})
    return module.to(device).eval()


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively (hyper-parameters as a config file would give them)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if not str(k).startswith("_")}
    return value


def policy_cameras(module: Any) -> list[str]:
    """The cameras a policy reads (``images/<cam>``), from its attribute or its hyper-parameters."""
    cameras = getattr(module, "cameras", None)
    if cameras is None:
        cameras = getattr(module, "hparams", {}).get("cameras", [])
    return list(cameras)
