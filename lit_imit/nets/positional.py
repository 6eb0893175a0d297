"""Fixed (non-learned) positional encodings used by ACT.

* :func:`sinusoid_table` gives the 1-D "Attention is all you need" table that ACT's CVAE encoder adds to its
  [CLS, qpos, a_1..a_k] tokens.
* :class:`SinePositionEncoding2d` gives DETR's 2-D sine encoding for a feature map: half of the channels
  encode the row, half the column, each coordinate normalised to (0, 2*pi] so that the encoding does not
  depend on the image resolution.

Neither has parameters or persistent buffers, so they never appear in a checkpoint.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _inverse_frequencies(dim: int, temperature: float, device: torch.device | None = None) -> Tensor:
    """Frequencies 1 / T^(2*floor(j/2)/dim) for j in [0, dim): channel pairs (2i, 2i+1) share one frequency."""
    j = torch.arange(dim, dtype=torch.float64, device=device)
    return 1.0 / temperature ** (2.0 * torch.div(j, 2, rounding_mode="floor") / dim)


def _interleave_sin_cos(angles: Tensor) -> Tensor:
    """sin on even channels, cos on odd channels of the last dimension (angles already per channel)."""
    out = torch.empty_like(angles)
    out[..., 0::2] = torch.sin(angles[..., 0::2])
    out[..., 1::2] = torch.cos(angles[..., 1::2])
    return out


def sinusoid_table(n_positions: int, dim: int, temperature: float = 10000.0) -> Tensor:
    """(n_positions, dim) float32 table: entry (p, j) = sin/cos(p / T^(2*floor(j/2)/dim)).

    Computed in float64 and cast once, so long tables are as exact as float32 allows.
    """
    if n_positions <= 0 or dim <= 0:
        raise ValueError(f"sinusoid_table needs positive sizes, got n_positions={n_positions}, dim={dim}")
    positions = torch.arange(n_positions, dtype=torch.float64)[:, None]
    angles = positions * _inverse_frequencies(dim, temperature)[None, :]
    return _interleave_sin_cos(angles).float()


class SinePositionEncoding2d(nn.Module):
    """DETR-style 2-D sine encoding of a (.., H, W) feature map, returned as (1, dim, H, W).

    The first ``dim // 2`` channels encode the row index and the last ``dim // 2`` the column index.
    Coordinates run 1..H (1..W) and are scaled so that the last row/column maps to ``scale`` (2*pi), which is
    what ``normalize=True`` does in DETR/ACT. The result only depends on (H, W), so it is cached per shape
    and device: the encoding costs nothing after the first call at a given resolution.
    """

    def __init__(self, dim: int, temperature: float = 10000.0, scale: float = 2 * math.pi, eps: float = 1e-6) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"2-D sine encoding needs an even number of channels, got {dim}")
        self.dim = dim
        self.temperature = temperature
        self.scale = scale
        self.eps = eps
        self._cache: dict[tuple[int, int, str, torch.dtype], Tensor] = {}

    def _axis(self, n: int, device: torch.device) -> Tensor:
        """(n, dim//2) encoding of one axis with coordinates 1..n normalised to (0, scale]."""
        coords = torch.arange(1, n + 1, dtype=torch.float64, device=device)
        coords = coords / (n + self.eps) * self.scale
        angles = coords[:, None] * _inverse_frequencies(self.dim // 2, self.temperature, device)[None, :]
        return _interleave_sin_cos(angles)

    def encoding(self, height: int, width: int, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
        """(1, dim, height, width) encoding, cached per (height, width, device, dtype)."""
        key = (height, width, str(device), dtype)
        cached = self._cache.get(key)
        if cached is None:
            # built outside inference mode so that a table first made during a rollout can serve training too
            with torch.inference_mode(False):
                cached = self._build(height, width, device, dtype)
            self._cache[key] = cached
        return cached

    def _build(self, height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Row encoding in the first dim//2 channels, column encoding in the last dim//2."""
        rows = self._axis(height, device)[:, None, :].expand(height, width, self.dim // 2)
        cols = self._axis(width, device)[None, :, :].expand(height, width, self.dim // 2)
        pos = torch.cat([rows, cols], dim=-1).permute(2, 0, 1).unsqueeze(0)
        return pos.to(dtype).contiguous()

    def forward(self, feature_map: Tensor) -> Tensor:
        """Encoding for ``feature_map``'s spatial size (its values are not used)."""
        height, width = feature_map.shape[-2:]
        return self.encoding(int(height), int(width), feature_map.device)
