"""Loading any of our policy checkpoints as the class that wrote it.

A Lightning checkpoint holds weights and hyper-parameters but, by itself, not the class to rebuild. Guessing
the class from the hyper-parameter names breaks as soon as two methods take the same names, so
:class:`lit_imit.modules.base.PolicyModule` records ``checkpoint["policy_class"] = "module.path.ClassName"``
when it is saved, and :func:`policy_class_for` imports that class. Checkpoints written before then fall back
to the class path the LightningCLI kept in the hyper-parameters (``_class_path``), and last to the old guess
among :data:`KNOWN_POLICIES`; when nothing fits, the error names the file.

The file is read with ``torch.load(weights_only=True)`` (:mod:`lit_imit.checkpoints`): no code from it runs.
A class named *by the file* must be a ``PolicyModule``, so a crafted checkpoint cannot make the loader call
some other importable callable with its hyper-parameters.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any, Mapping

from lit_imit.checkpoints import CheckpointError, load_checkpoint
from lit_imit.modules.base import PolicyModule, policy_class_path

#: classes tried in order, by their constructor's parameters, when a checkpoint records no class
KNOWN_POLICIES = ("lit_imit.modules.act:ACTModule", "lit_imit.modules.diffusion:DiffusionModule")

#: constructor arguments that would fetch pretrained weights; a checkpoint already holds the trained ones
_PRETRAINED_KEYS = ("pretrained_backbone", "clip_pretrained")

__all__ = ["KNOWN_POLICIES", "PolicyLoadError", "import_class", "load_policy", "policy_cameras", "policy_class_for",
           "policy_snapshot", "policy_from_snapshot"]


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
    if not name:
        return None
    try:
        cls = import_class(str(name))
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
    for key in _PRETRAINED_KEYS:
        if key in params:
            kwargs[key] = None  # the checkpoint holds the trained weights; read (and ask for) no other file
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise PolicyLoadError(f"cannot build {cls.__name__} from the checkpoint's hyper-parameters: {e}") from e


def load_policy(path: str | Path, device: str = "cpu", policy_class: str | None = None,
                overrides: Mapping[str, Any] | None = None) -> Any:
    """Rebuild a policy module from a Lightning checkpoint (weights_only load), in eval mode on ``device``.

    The class is ``policy_class`` when given (``"module:Class"``), else the one the checkpoint records (see
    the module docstring). ``overrides`` replace hyper-parameters before the module is built (e.g. ACT's
    ``temporal_ensemble_coeff`` and ``n_action_steps``); an override the class does not take is an error.
    """
    path = Path(path)
    checkpoint = _read(path)
    cls = policy_class_for(checkpoint, path, policy_class)
    module = _build(cls, dict(checkpoint.get("hyper_parameters") or {}), overrides)
    missing, unexpected = module.load_state_dict(checkpoint["state_dict"], strict=False)
    if missing or unexpected:
        raise PolicyLoadError(f"{path} does not match {cls.__name__}: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    if getattr(module, "normalized_keys", ()) and not bool(module.stats_initialized):
        raise PolicyLoadError(f"{path} has no normalisation statistics: it was never set up with data")
    return module.to(device).eval()


def policy_snapshot(module: Any) -> dict[str, Any]:
    """A picklable copy of a policy module as it is now: its class, hyper-parameters and weights as numpy arrays
    (normalisation buffers included). What a worker process needs to act as this policy
    (:func:`policy_from_snapshot`); numpy rather than tensors so that pickling never goes through torch's
    shared-memory file descriptors."""
    return {"policy_class": policy_class_path(type(module)),
            "hyper_parameters": dict(getattr(module, "hparams", {}) or {}),
            "state_dict": {key: value.detach().cpu().numpy().copy() for key, value in module.state_dict().items()}}


def policy_from_snapshot(snapshot: Mapping[str, Any], device: str = "cpu") -> Any:
    """The module of a :func:`policy_snapshot`, in eval mode: the same weights give the same actions."""
    import torch

    cls = import_class(snapshot["policy_class"])
    if not (isinstance(cls, type) and issubclass(cls, PolicyModule)):
        raise PolicyLoadError(f"{snapshot['policy_class']!r} is not a PolicyModule")
    module = _build(cls, snapshot["hyper_parameters"], None)
    module.load_state_dict({key: torch.from_numpy(value) for key, value in snapshot["state_dict"].items()})
    return module.to(device).eval()


def policy_cameras(module: Any) -> list[str]:
    """The cameras a policy reads (``images/<cam>``), from its attribute or its hyper-parameters."""
    cameras = getattr(module, "cameras", None)
    if cameras is None:
        cameras = getattr(module, "hparams", {}).get("cameras", [])
    return list(cameras)
