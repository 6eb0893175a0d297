"""Conditional 1-D temporal U-Net: the noise-prediction network of Diffusion Policy (Chi et al., 2023).

The network denoises an action sequence (B, T, A). Actions are treated as channels and time as the
convolution axis, so the receptive field covers neighbouring steps of the chunk; this is what gives
Diffusion Policy its temporally smooth chunks. Every residual block is conditioned by FiLM (a per-channel
scale and bias) on one vector: the embedding of the diffusion step concatenated with the flattened
observation features ("global conditioning"). Layout as in diffusion_policy's ConditionalUnet1D: two conditional residual
blocks per level, stride-2 down-sampling between levels, two blocks in the middle, a mirrored up path
fed by skip connections, and a final conv block + 1x1 projection back to the action dimension.

Pure ``nn.Module``; knows nothing of Lightning or normalisation.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn


class SinusoidalStepEmbedding(nn.Module):
    """Transformer-style sin/cos embedding of the (integer) diffusion step, so nearby steps embed nearby."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2 or dim < 4:
            raise ValueError(f"the step embedding dimension must be even and >= 4, got {dim}")
        self.dim = dim

    def forward(self, steps: Tensor) -> Tensor:
        half = self.dim // 2
        freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=steps.device) / (half - 1))
        angles = steps.float()[:, None] * freq[None, :]
        return torch.cat((angles.sin(), angles.cos()), dim=-1)


class GemmConv1d(nn.Conv1d):
    """nn.Conv1d (same parameters, same state_dict) that runs as im2col + one matrix product on CPU.

    The U-Net convolves very short sequences (horizon 16 halved twice) with very wide kernels (2048 x 2048
    x 5): one skinny GEMM per layer. oneDNN's direct convolution handles that shape poorly on CPU; the
    explicit GEMM is ~1.5-2x faster forward+backward (bf16 autocast most of all). GPUs keep cuDNN's kernel.
    """

    def forward(self, x: Tensor) -> Tensor:
        plain = self.groups == 1 and self.stride == (1,) and self.dilation == (1,) and self.padding_mode == "zeros"
        if x.device.type != "cpu" or not plain or isinstance(self.padding, str):
            return super().forward(x)
        b, c, _ = x.shape
        k, pad = self.kernel_size[0], self.padding[0]
        cols = nn.functional.pad(x, (pad, pad)).unfold(2, k, 1)  # (B, C, L, K) view
        length = cols.shape[2]
        cols = cols.transpose(1, 2).reshape(b * length, c * k)  # C-major, K-minor: the weight's own order
        out = nn.functional.linear(cols, self.weight.reshape(self.out_channels, c * k), self.bias)
        return out.reshape(b, length, self.out_channels).transpose(1, 2)


class Conv1dBlock(nn.Sequential):
    """Conv1d ('same' padding) -> GroupNorm -> Mish: the unit every residual block is built from."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int) -> None:
        super().__init__(
            GemmConv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_channels),
            nn.Mish(),
        )


class ConditionalResidualBlock1d(nn.Module):
    """Two conv blocks with FiLM between them, plus a (1x1 when the width changes) residual path.

    FiLM maps the conditioning vector to a per-channel scale and bias applied to the first block's output
    (``film_scale=False`` keeps only the bias, the original paper's low-dim variant).
    """

    def __init__(
        self, in_channels: int, out_channels: int, cond_dim: int, kernel_size: int, n_groups: int,
        film_scale: bool = True,
    ) -> None:
        super().__init__()
        self.first = Conv1dBlock(in_channels, out_channels, kernel_size, n_groups)
        self.second = Conv1dBlock(out_channels, out_channels, kernel_size, n_groups)
        self.film_scale = film_scale
        self.out_channels = out_channels
        film_out = 2 * out_channels if film_scale else out_channels
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, film_out))
        self.residual = (
            nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h = self.first(x)
        film = self.film(cond).unsqueeze(-1)  # (B, C or 2C, 1): broadcast over time
        if self.film_scale:
            scale, bias = film.chunk(2, dim=1)
            h = scale * h + bias
        else:
            h = h + film
        return self.second(h) + self.residual(x)


class ConditionalUnet1d(nn.Module):
    """Noise predictor eps(a_k, k, obs) over action sequences.

    Args:
        action_dim: channels of the denoised sequence.
        global_cond_dim: length of the flattened observation features (0 for an unconditional model).
        down_dims: widths of the U-Net levels; ``len(down_dims) - 1`` stride-2 down-samplings follow, so the
            horizon must be divisible by ``2 ** (len(down_dims) - 1)`` (see :meth:`check_horizon`).
        kernel_size: temporal kernel of every conv block (odd, so the length is preserved).
        n_groups: GroupNorm groups; every width in ``down_dims`` must be divisible by it.
        diffusion_step_embed_dim: size of the sinusoidal step embedding and its MLP output.
        film_scale: FiLM with scale and bias (True, the image configs) or bias only.
    """

    def __init__(
        self,
        action_dim: int,
        global_cond_dim: int,
        down_dims: Sequence[int] = (256, 512, 1024),
        kernel_size: int = 5,
        n_groups: int = 8,
        diffusion_step_embed_dim: int = 128,
        film_scale: bool = True,
    ) -> None:
        super().__init__()
        down_dims = [int(d) for d in down_dims]
        _check_widths(down_dims, n_groups, kernel_size)
        self.down_dims = down_dims
        dsed = diffusion_step_embed_dim
        self.step_encoder = nn.Sequential(
            SinusoidalStepEmbedding(dsed), nn.Linear(dsed, 4 * dsed), nn.Mish(), nn.Linear(4 * dsed, dsed)
        )
        cond_dim = dsed + global_cond_dim

        def block(cin: int, cout: int) -> ConditionalResidualBlock1d:
            return ConditionalResidualBlock1d(cin, cout, cond_dim, kernel_size, n_groups, film_scale)

        widths = [action_dim] + down_dims
        self.down = nn.ModuleList()
        for level, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            last = level == len(down_dims) - 1
            resample = nn.Identity() if last else nn.Conv1d(cout, cout, 3, stride=2, padding=1)
            self.down.append(nn.ModuleList([block(cin, cout), block(cout, cout), resample]))

        self.mid = nn.ModuleList([block(down_dims[-1], down_dims[-1]), block(down_dims[-1], down_dims[-1])])

        # Up path mirrors the down path: it consumes the skip of level i (width down_dims[i]) and returns to
        # width down_dims[i-1]; the top level is not up-sampled because it was not down-sampled.
        self.up = nn.ModuleList()
        for i in range(len(down_dims) - 1, 0, -1):
            cout, cskip = down_dims[i - 1], down_dims[i]
            resample = nn.ConvTranspose1d(cout, cout, 4, stride=2, padding=1)
            self.up.append(nn.ModuleList([block(2 * cskip, cout), block(cout, cout), resample]))

        self.final = nn.Sequential(
            Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups), nn.Conv1d(down_dims[0], action_dim, 1)
        )

    @property
    def horizon_multiple(self) -> int:
        """The horizon must be a multiple of this so the skip connections line up after down-sampling."""
        return 2 ** (len(self.down_dims) - 1)

    def check_horizon(self, horizon: int) -> None:
        """Raise a clear error for a horizon the down/up-sampling path cannot round-trip."""
        check_horizon(horizon, self.down_dims)

    def forward(self, sample: Tensor, timestep: Tensor | int, global_cond: Tensor | None = None) -> Tensor:
        """sample (B, T, A), timestep (B,) or scalar, global_cond (B, G) -> predicted noise (B, T, A)."""
        self.check_horizon(sample.shape[1])
        batch = sample.shape[0]
        steps = torch.as_tensor(timestep, device=sample.device)
        steps = steps.expand(batch) if steps.dim() == 0 else steps
        cond = self.step_encoder(steps)
        if global_cond is not None:
            cond = torch.cat((cond, global_cond.to(cond.dtype)), dim=-1)

        x = sample.transpose(1, 2)  # (B, A, T): actions are channels, time is the conv axis
        skips = []
        for first, second, downsample in self.down:
            x = second(first(x, cond), cond)
            skips.append(x)
            x = downsample(x)
        for blk in self.mid:
            x = blk(x, cond)
        for first, second, upsample in self.up:
            x = torch.cat((x, skips.pop()), dim=1)
            x = upsample(second(first(x, cond), cond))
        return self.final(x).transpose(1, 2)


def check_horizon(horizon: int, down_dims: Sequence[int]) -> None:
    """Raise ValueError unless ``horizon`` is divisible by 2 ** (len(down_dims) - 1)."""
    multiple = 2 ** (len(down_dims) - 1)
    if horizon <= 0 or horizon % multiple:
        raise ValueError(
            f"horizon {horizon} is not a positive multiple of {multiple}: a U-Net with {len(down_dims)} levels "
            f"(down_dims={list(down_dims)}) halves the sequence {len(down_dims) - 1} times and the skip "
            f"connections only line up when the halving is exact; pick horizon = k * {multiple} or fewer levels"
        )


def _check_widths(down_dims: list[int], n_groups: int, kernel_size: int) -> None:
    """Fail at construction, not at the first forward, on widths GroupNorm or 'same' padding cannot take."""
    if not down_dims:
        raise ValueError("down_dims must name at least one level")
    bad = [d for d in down_dims if d <= 0 or d % n_groups]
    if bad:
        raise ValueError(f"every width in down_dims must be a positive multiple of n_groups={n_groups}; got {bad}")
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd so convolutions keep the sequence length, got {kernel_size}")
