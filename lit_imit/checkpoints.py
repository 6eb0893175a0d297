"""Reading checkpoint files, with one clear line when a file is not a usable checkpoint.

``torch.load`` describes a damaged file in its own terms: a truncated archive gives a miniz error about a
"central directory", an empty file an empty ``EOFError``, random bytes an unpickling error that advises
``weights_only=False``. That advice would run code from the file and never repairs a damaged one, so
:func:`load_checkpoint` always loads with ``weights_only=True`` and turns any failure into a
:class:`CheckpointError` that names the file and the likely cause (empty, truncated or corrupt, not a
checkpoint, or holding Python objects a weights-only load refuses).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive (since PyTorch 1.6)
_PICKLE_MAGIC = b"\x80"  # the legacy format starts with a pickle protocol opcode
_GLOBAL_RE = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


class CheckpointError(ValueError):
    """A checkpoint file is missing, empty, truncated, corrupt or not a checkpoint; the message names it."""


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; any failure is a one-line :class:`CheckpointError`."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # zip, pickle and allow-list errors all look different
        # ``from None``: torch's own message advises weights_only=False, which must never be followed here
        raise CheckpointError(f"cannot read checkpoint {path}: {diagnose_checkpoint(path, err)}") from None


def diagnose_checkpoint(path: str | os.PathLike, err: BaseException) -> str:
    """The likely reason ``torch.load`` failed on ``path``, in one line (never "use weights_only=False")."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(len(_ZIP_MAGIC))
    except OSError as os_err:
        return f"the file cannot be read ({os_err.strerror or os_err})"
    if size == 0:
        return "the file is empty (0 bytes): an interrupted save or copy?"
    found = _GLOBAL_RE.search(str(err))
    if found:
        return (f"it holds a Python object ({found.group(1)}) that a weights-only load does not rebuild; save "
                "plain data instead (tensors, numbers, strings, lists, dicts)")
    if head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC):
        return (f"the file ({size} bytes) is truncated or corrupt: it starts like a PyTorch checkpoint but cannot "
                "be read to the end (an interrupted save or copy?)")
    return f"the file ({size} bytes) is not a PyTorch checkpoint (wrong file, or random or foreign data)"
