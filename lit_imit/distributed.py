"""torch.distributed helpers that are no-ops in a single process.

One home for the rank/world lookup and the object collectives used by the samplers (each rank draws its
share of an epoch), the rollout callbacks (every rank logs the same gathered episodes), the interactive
callback (episodes gathered to rank 0, new episode ids broadcast back) and the RNG callback (every rank's
generator state in the checkpoint). Without an initialised process group they act as a world of one.
"""

from __future__ import annotations

from typing import Any

import torch


def is_distributed() -> bool:
    """True inside an initialised process group (DDP), False in a plain single process."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, number of ranks); (0, 1) without a process group."""
    if is_distributed():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    parts: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, obj)
    return parts


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself in a single process)."""
    if not is_distributed():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]
