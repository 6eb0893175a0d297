"""What happens when a config asks for pretrained weights that are not on this machine: it stops.

Nothing in this package downloads: ACT's ImageNet ResNet-18 and CLIPort's CLIP are read from the local
caches of torchvision / open_clip or from a file named in the config. A run that quietly trained from random
init where the paper starts from pretrained weights would report numbers that are not the paper's, so a
missing file is an error (``PretrainedWeightsUnavailable``) that says how to provide it. A config that
means to run without the weights (a CPU smoke run) says ``allow_random_init: true``; it then gets one loud
warning and random init.
"""

from __future__ import annotations

import logging
import warnings

log = logging.getLogger(__name__)



class PretrainedWeightsUnavailable(RuntimeError):
    """Pretrained weights were asked for, they are not on this machine, and random init was not allowed."""


def unavailable(what: str, how_to_provide: str, allow_random_init: bool, option: str) -> None:
    """Stop with ``PretrainedWeightsUnavailable``, or, when ``allow_random_init``, warn loudly and return.

    Args:
        what: the weights and why they are missing, e.g. "ImageNet ResNet-18 weights (...): X does not exist".
        how_to_provide: where the file can be put, and the config key that names a local file instead.
        allow_random_init: the config opted into random init.
        option: the config key that asks for the weights (``pretrained_backbone``, ``clip_pretrained``).
    """
    if not allow_random_init:
        raise PretrainedWeightsUnavailable(
            f"{what}. Nothing is downloaded. {how_to_provide}; or set `allow_random_init: true` in the model's "
            f"init_args to start from random weights instead (not the paper's setting). To only load a trained "
            f"checkpoint (it holds every weight), set `{option}: null`."
        )
    message = (f"{what}; allow_random_init is set, so these weights start from RANDOM INIT, which is not the "
               f"paper's setting. {how_to_provide}.")
    warnings.warn(message, stacklevel=3)
    log.warning(message)


def missing_file(path: object, option: str) -> FileNotFoundError:
    """The error for a weights file named in the config that does not exist (a typo: never random init)."""
    return FileNotFoundError(f"weights file {str(path)!r} does not exist ({option})")
