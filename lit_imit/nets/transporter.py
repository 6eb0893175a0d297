"""Transporter Network building blocks (Zeng et al., CoRL 2020) as CLIPort uses them: plain nn.Modules.

* ``ConvBlock`` / ``IdentityBlock``: the three-convolution residual blocks (1x1, kxk, 1x1) of the Transporter
  ResNets, with optional batch norm (CLIPort trains without it: ``batchnorm: False`` in its config) and a
  choice of activation (``activation_layer``: CLIPort's ReLU or ASkDAgger's LeakyReLU);
* ``SpatialStream``: the "where" stream, a fully convolutional ResNet on the 6-channel heightmap (encoder to
  1/16 resolution, decoder back up to 2x, then resized to the input size) that also returns its decoder
  features for the lateral connections into the semantic stream (CLIPort's ``ResNet45_10s``);
* ``rotated_crops``: square crops of an image around pivot pixels, each rotated by a list of angles, in one
  ``grid_sample`` call (CLIPort rotates the whole padded image 36 times and then crops; sampling only the
  crop pixels gives the same values for a fraction of the work);
* ``correlate``: the transport's cross-correlation of a key feature map with rotated query kernels, as a
  grouped convolution (cliport-batchify) or through FFTs (the same numbers, far fewer operations on a CPU).

Pixel and angle conventions follow ``lit_imit.envs.ravens.geometry``: image rows are world y and columns
world x, so an angle ``theta`` here is a world-frame yaw: rotating an image by +theta turns its content
counter-clockwise from +x towards +y, exactly as a suction tool turning by +theta turns the object it holds.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


#: activations of the trainable streams: CLIPort's ReLU, or ASkDAgger's LeakyReLU
ACTIVATIONS = ("relu", "leaky_relu")
#: LeakyReLU's negative slope: PyTorch's default, which ASkDAgger uses (``nn.LeakyReLU()`` / ``F.leaky_relu``)
LEAKY_RELU_SLOPE = 0.01


def check_activation(activation: str) -> str:
    """``activation`` if it is one of ``ACTIVATIONS``, else a ValueError naming the choices."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return activation


def activation_layer(activation: str = "relu", inplace: bool = False) -> nn.Module:
    """The activation module of a trainable stream: ``nn.ReLU`` or ``nn.LeakyReLU(0.01)``.

    Why a choice: ASkDAgger replaced CLIPort's ReLUs by LeakyReLUs against vanishing gradients in interactive
    training (a few steps per update from a model that must keep learning). Activations hold no parameters,
    so swapping them leaves every state_dict key unchanged and checkpoints load under either choice.
    """
    if check_activation(activation) == "leaky_relu":
        return nn.LeakyReLU(LEAKY_RELU_SLOPE, inplace=inplace)
    return nn.ReLU(inplace=inplace)


def _norm(channels: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batchnorm else nn.Identity()


def _final_activation(final_relu: bool, activation: str) -> nn.Module:
    """The activation after a residual sum, or an identity for the logit heads (``final_relu=False``)."""
    return activation_layer(activation) if final_relu else nn.Identity()


class ConvBlock(nn.Module):
    """Residual block with a projection shortcut: 1x1 -> kxk (stride) -> 1x1, plus 1x1 (stride) shortcut.

    ``activation`` ("relu" or "leaky_relu", see ``activation_layer``) follows the first two convolutions and,
    with ``final_relu``, the residual sum.
    """

    def __init__(self, in_channels: int, filters: Sequence[int], kernel_size: int = 3, stride: int = 1,
                 final_relu: bool = True, batchnorm: bool = False, activation: str = "relu") -> None:
        super().__init__()
        f1, f2, f3 = filters
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, f1, 1, bias=False), _norm(f1, batchnorm), activation_layer(activation, True),
            nn.Conv2d(f1, f2, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
            _norm(f2, batchnorm), activation_layer(activation, True),
            nn.Conv2d(f2, f3, 1, bias=False), _norm(f3, batchnorm),
        )
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, f3, 1, stride=stride, bias=False), _norm(f3, batchnorm))
        self.final_relu = final_relu
        self.out_act = _final_activation(final_relu, activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_act(self.body(x) + self.shortcut(x))


class IdentityBlock(nn.Module):
    """Residual block with an identity shortcut: 1x1 -> kxk -> 1x1 (input and output channels equal); the
    activations are placed as in ``ConvBlock``."""

    def __init__(self, in_channels: int, filters: Sequence[int], kernel_size: int = 3,
                 final_relu: bool = True, batchnorm: bool = False, activation: str = "relu") -> None:
        super().__init__()
        f1, f2, f3 = filters
        if f3 != in_channels:
            raise ValueError(f"an identity block must keep its channels: {in_channels} in, {f3} out")
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, f1, 1, bias=False), _norm(f1, batchnorm), activation_layer(activation, True),
            nn.Conv2d(f1, f2, kernel_size, padding=kernel_size // 2, bias=False), _norm(f2, batchnorm),
            activation_layer(activation, True),
            nn.Conv2d(f2, f3, 1, bias=False), _norm(f3, batchnorm),
        )
        self.final_relu = final_relu
        self.out_act = _final_activation(final_relu, activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_act(self.body(x) + x)


def _stage(in_channels: int, out_channels: int, stride: int = 1, upsample: bool = False,
           batchnorm: bool = False, activation: str = "relu") -> nn.Sequential:
    """A ConvBlock + IdentityBlock pair, optionally followed by a x2 bilinear upsampling."""
    layers: list[nn.Module] = [
        ConvBlock(in_channels, [out_channels] * 3, stride=stride, batchnorm=batchnorm, activation=activation),
        IdentityBlock(out_channels, [out_channels] * 3, batchnorm=batchnorm, activation=activation),
    ]
    if upsample:
        layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True))
    return nn.Sequential(*layers)


class SpatialStream(nn.Module):
    """The "where" stream: CLIPort's ``ResNet45_10s`` with a configurable base width (64 in the paper).

    Encoder: conv (w) -> stages w, 2w, 4w, 8w, 16w (stride 2 from the second), i.e. 1/16 resolution.
    Decoder: stages 8w, 4w, 2w, w, w/2, each followed by x2 upsampling (so the last runs at 2x the input),
    then a head w/4 -> ``out_channels`` without a final ReLU, resized back to the input size.

    ``forward`` returns ``(logits, lateral)``: ``lateral`` holds the six tensors entering the decoder stages
    and the head (16w @1/16, 8w @1/8, 4w @1/4, 2w @1/2, w @1, w/2 @2), which the semantic stream fuses in.
    Inputs must have sides divisible by 16. ``activation``: "relu" (CLIPort) or "leaky_relu" (ASkDAgger).
    """

    def __init__(self, in_channels: int = 6, out_channels: int = 1, width: int = 64, batchnorm: bool = False,
                 activation: str = "relu") -> None:
        super().__init__()
        if width < 4 or width % 4:
            raise ValueError(f"spatial stream width must be a multiple of 4 (>= 4), got {width}")
        w = width
        act = check_activation(activation)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 3, padding=1), _norm(w, batchnorm),
                                  activation_layer(act, True))
        self.encoder = nn.ModuleList([
            _stage(w, w, 1, batchnorm=batchnorm, activation=act),
            _stage(w, 2 * w, 2, batchnorm=batchnorm, activation=act),
            _stage(2 * w, 4 * w, 2, batchnorm=batchnorm, activation=act),
            _stage(4 * w, 8 * w, 2, batchnorm=batchnorm, activation=act),
            _stage(8 * w, 16 * w, 2, batchnorm=batchnorm, activation=act),
        ])
        widths = [16 * w, 8 * w, 4 * w, 2 * w, w, w // 2]
        self.decoder = nn.ModuleList([
            _stage(a, b, upsample=True, batchnorm=batchnorm, activation=act) for a, b in zip(widths[:-1], widths[1:])
        ])
        self.head = nn.Sequential(
            ConvBlock(w // 2, [w // 4, w // 4, out_channels], final_relu=False, batchnorm=batchnorm, activation=act),
            IdentityBlock(out_channels, [w // 4, w // 4, out_channels], final_relu=False, batchnorm=batchnorm,
                          activation=act),
        )
        #: channels of the lateral features, in the order ``forward`` returns them
        self.lateral_channels = tuple(widths)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        size = x.shape[-2:]
        x = self.stem(x)
        for stage in self.encoder:
            x = stage(x)
        lateral = []
        for stage in self.decoder:
            lateral.append(x)
            x = stage(x)
        lateral.append(x)
        x = self.head(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False), lateral


def he_init_(module: nn.Module, activation: str = "relu") -> nn.Module:
    """He (Kaiming-normal) init of every convolution, with the last convolution of each residual body zeroed
    so that every block starts as its shortcut ("zero-gamma"/Fixup style). The gain is that of the streams'
    ``activation``: sqrt(2) for ReLU, sqrt(2 / (1 + 0.01^2)) for the LeakyReLU.

    Why: these streams are ~30 layers deep without normalisation. With PyTorch's default init (the original
    CLIPort's) the signal shrinks by about 6x per layer, and a randomly initialised stream outputs ~1e-5 of
    its input's scale: the first updates then barely reach the early layers. He init keeps the scale through
    plain layers, and identity-initialised residual bodies keep it through the 15 residual blocks.
    """
    if check_activation(activation) == "leaky_relu":
        gain_args = dict(a=LEAKY_RELU_SLOPE, nonlinearity="leaky_relu")
    else:
        gain_args = dict(nonlinearity="relu")
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", **gain_args)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, (ConvBlock, IdentityBlock)):
            last_conv = [layer for layer in m.body if isinstance(layer, nn.Conv2d)][-1]
            nn.init.zeros_(last_conv.weight)
    return module


# ---- rotations -----------------------------------------------------------------------------------------
def rotation_angles(n_rotations: int, device: torch.device | None = None) -> Tensor:
    """The yaw of each rotation bin: bin r is r * 2*pi / n (radians, world frame, counter-clockwise)."""
    return torch.arange(n_rotations, device=device, dtype=torch.float32) * (2 * math.pi / n_rotations)


def yaw_to_bin(theta: Tensor, n_rotations: int) -> Tensor:
    """Nearest rotation bin of yaws (radians, any range), as CLIPort discretises the place rotation."""
    step = 2 * math.pi / n_rotations
    return torch.round(theta / step).long().remainder(n_rotations)


def bin_to_yaw(bins: Tensor, n_rotations: int) -> Tensor:
    """Yaw of rotation bins, wrapped to [-pi, pi)."""
    theta = bins.to(torch.float32) * (2 * math.pi / n_rotations)
    return torch.remainder(theta + math.pi, 2 * math.pi) - math.pi


def rotated_crops(images: Tensor, pivots: Tensor, angles: Tensor, size: int, mode: str = "bilinear") -> Tensor:
    """Square crops around pivot pixels, the content of each rotated by every angle.

    Crop pixel (i, j) lies at offset (i - size/2, j - size/2) rows/cols from the pivot (so the pivot is crop
    pixel (size/2, size/2), CLIPort's convention); the crop rotated by +theta shows the image content turned
    by +theta about the pivot. Pixels that fall outside the image read zero.

    Args:
        images: (B, C, H, W).
        pivots: (B, 2) pivot pixels (row, col), integer or fractional.
        angles: (R,) radians.
        size: crop side.

    Returns:
        (B, R, C, size, size).
    """
    b, c, h, w = images.shape
    r = angles.shape[0]
    dtype, device = images.dtype, images.device
    offsets = torch.arange(size, device=device, dtype=torch.float32) - size // 2
    d_row, d_col = torch.meshgrid(offsets, offsets, indexing="ij")  # (S, S): world y and world x offsets
    cos, sin = torch.cos(angles.float()).view(r, 1, 1), torch.sin(angles.float()).view(r, 1, 1)
    # content turned by +theta: the output at offset d shows the input at R(-theta) d (x = col, y = row)
    src_col = cos * d_col + sin * d_row  # (R, S, S)
    src_row = -sin * d_col + cos * d_row
    pivots = pivots.to(device=device, dtype=torch.float32)
    rows = pivots[:, 0].view(b, 1, 1, 1) + src_row.unsqueeze(0)  # (B, R, S, S)
    cols = pivots[:, 1].view(b, 1, 1, 1) + src_col.unsqueeze(0)
    grid = torch.stack([(2 * cols + 1) / w - 1, (2 * rows + 1) / h - 1], dim=-1)  # align_corners=False
    grid = grid.reshape(b, r * size, size, 2).to(dtype)
    out = F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out.reshape(b, c, r, size, size).permute(0, 2, 1, 3, 4)


def rotate_images(images: Tensor, angles: Tensor, pivots: Tensor | None = None, shifts: Tensor | None = None,
                  mode: str = "nearest") -> Tensor:
    """Rigidly transform whole images (B, C, H, W): rotate by ``angles`` (B,) about ``pivots`` (B, 2) (default
    the image centre), then translate by ``shifts`` (B, 2) pixels (rows, cols). Outside reads zero.

    Used by the SE(2) data augmentation; ``transform_pixels`` maps pixels the same way.
    """
    b, _, h, w = images.shape
    device = images.device
    if pivots is None:
        pivots = torch.tensor([(h - 1) / 2, (w - 1) / 2], device=device).expand(b, 2)
    if shifts is None:
        shifts = torch.zeros(b, 2, device=device)
    rows = torch.arange(h, device=device, dtype=torch.float32).view(1, h, 1)
    cols = torch.arange(w, device=device, dtype=torch.float32).view(1, 1, w)
    cos, sin = torch.cos(angles.float()).view(b, 1, 1), torch.sin(angles.float()).view(b, 1, 1)
    d_row = rows - pivots[:, 0].view(b, 1, 1).float() - shifts[:, 0].view(b, 1, 1).float()
    d_col = cols - pivots[:, 1].view(b, 1, 1).float() - shifts[:, 1].view(b, 1, 1).float()
    src_col = cos * d_col + sin * d_row + pivots[:, 1].view(b, 1, 1)
    src_row = -sin * d_col + cos * d_row + pivots[:, 0].view(b, 1, 1)
    grid = torch.stack([(2 * src_col + 1) / w - 1, (2 * src_row + 1) / h - 1], dim=-1).to(images.dtype)
    return F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)


def transform_pixels(pixels: Tensor, angles: Tensor, pivots: Tensor, shifts: Tensor) -> Tensor:
    """Where pixels (B, 2) (row, col) land under ``rotate_images`` with the same parameters (float)."""
    cos, sin = torch.cos(angles.float()), torch.sin(angles.float())
    d_row = pixels[:, 0].float() - pivots[:, 0].float()
    d_col = pixels[:, 1].float() - pivots[:, 1].float()
    col = cos * d_col - sin * d_row + pivots[:, 1].float() + shifts[:, 1].float()
    row = sin * d_col + cos * d_row + pivots[:, 0].float() + shifts[:, 0].float()
    return torch.stack([row, col], dim=-1)


# ---- the transport's cross-correlation --------------------------------------------------------------------
def correlate(key: Tensor, kernels: Tensor, out_hw: tuple[int, int], method: str = "auto") -> Tensor:
    """Cross-correlate each sample's key map with its rotated query kernels.

    ``key`` (B, C, H + k, W + k) is the key feature map of the input padded by k/2 on every side; ``kernels``
    (B, R, C, k, k) the query features of the R rotated crops. Output (B, R, H, W): entry (r, u, v) is the
    match of kernel r centred (at its pixel (k/2, k/2), the pick pixel) on unpadded pixel (u, v).

    ``method``: "conv" (one grouped convolution over the batch, cliport-batchify), "fft" (circular
    correlation through real FFTs of the key's size; no wrap-around reaches the kept outputs, so it equals
    the convolution up to float round-off at a fraction of the cost for 64x64 kernels), or "auto" (conv on
    CUDA, fft elsewhere).
    """
    b, c, hp, wp = key.shape
    _, r, kc, k, k2 = kernels.shape
    h, w = out_hw
    if kc != c or k != k2 or hp != h + k or wp != w + k:
        raise ValueError(f"key {tuple(key.shape)} and kernels {tuple(kernels.shape)} do not fit an output {out_hw}")
    if method == "auto":
        method = "conv" if key.is_cuda else "fft"
    if method == "conv":
        out = F.conv2d(key.reshape(1, b * c, hp, wp), kernels.reshape(b * r, c, k, k), groups=b)
        return out.reshape(b, r, hp - k + 1, wp - k + 1)[:, :, :h, :w]
    if method == "fft":
        dtype = key.dtype
        key_f = torch.fft.rfft2(key.float(), s=(hp, wp))  # (B, C, Hp, Wp//2+1)
        ker_f = torch.fft.rfft2(kernels.float(), s=(hp, wp))  # (B, R, C, Hp, Wp//2+1), zero-padded kernels
        spectrum = (key_f.unsqueeze(1) * ker_f.conj()).sum(dim=2)
        return torch.fft.irfft2(spectrum, s=(hp, wp))[:, :, :h, :w].to(dtype)
    raise ValueError(f"correlation method must be 'auto', 'conv' or 'fft', got {method!r}")
