"""Image augmentations of the Diffusion Policy observation encoder, on the uint8 (N, H, W, 3) batch layout.

* ``crop_images`` / ``crop_size``: the random crop (training) / centre crop (evaluation) of Chi et al. and
  LeRobot's ``DiffusionRgbEncoder`` — the only augmentation they use.
* ``random_shift``: DrQ's augmentation (Kostrikov et al. 2020; pad 4 with edge pixels, random crop back), used
  by ACT's ``image_shift`` option for image policies trained from scratch on few demos.
* ``act_plus_plus_augment``: the image augmentation of the act-plus-plus repository's Diffusion Policy
  (``utils.EpisodicDataset``: ``RandomCrop(95 %)`` -> ``Resize(original, antialias=True)`` ->
  ``RandomRotation(±5°)`` -> ``ColorJitter(brightness=0.3, contrast=0.4, saturation=0.5)`` in training;
  ``imitate_episodes.get_image(rand_crop_resize=True)``: centre crop of 95 % resized back in evaluation).

All random parameters come from torch's global generator on the images' device (seeded by Lightning's
``seed_everything``) and are drawn independently per image, in one batched pass (no per-image Python loop).
Deviations from act-plus-plus, which transforms each dataset sample (all its cameras with one draw) on uint8
with per-operation rounding: parameters here are per image (per camera and history frame), and the
transforms run in float with a single rounding back to uint8 at the end (differences of at most 1/255).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: ITU-R 601-2 luma weights, as torchvision's ``rgb_to_grayscale``
_LUMA = (0.2989, 0.587, 0.114)


def crop_size(height: int, width: int, crop_shape: Sequence[int] | None, crop_ratio: float | None) -> tuple[int, int]:
    """Resolve the crop for an image size: an explicit (h, w), else a ratio of the size, else no crop."""
    if crop_shape is not None:
        ch, cw = int(crop_shape[0]), int(crop_shape[1])
        if ch > height or cw > width:
            raise ValueError(f"crop_shape {(ch, cw)} is larger than the images {(height, width)}")
        return ch, cw
    if crop_ratio is not None:
        if not 0.0 < crop_ratio <= 1.0:
            raise ValueError(f"crop_ratio must be in (0, 1], got {crop_ratio}")
        return max(1, round(height * crop_ratio)), max(1, round(width * crop_ratio))
    return height, width


def crop_images(images: Tensor, size: tuple[int, int], random: bool) -> Tensor:
    """Crop (N, H, W, C) images to ``size``: an independent random window per image, or the centre one.

    Random windows are drawn from torch's global generator (seeded by Lightning's ``seed_everything``).
    """
    n, h, w = images.shape[:3]
    ch, cw = size
    if (ch, cw) == (h, w):
        return images
    if not random:
        top, left = (h - ch) // 2, (w - cw) // 2
        return images[:, top : top + ch, left : left + cw]
    top = torch.randint(0, h - ch + 1, (n,), device=images.device)
    left = torch.randint(0, w - cw + 1, (n,), device=images.device)
    rows = (top[:, None] + torch.arange(ch, device=images.device))[:, :, None]  # (N, ch, 1)
    cols = (left[:, None] + torch.arange(cw, device=images.device))[:, None, :]  # (N, 1, cw)
    index = torch.arange(n, device=images.device)[:, None, None]
    return images[index, rows, cols]  # advanced indexing gathers one window per image: (N, ch, cw, C)


def random_shift(images: Tensor, pad: int) -> Tensor:
    """Shift each (N, H, W, C) image by its own random (dy, dx) in [-pad, pad]^2, repeating the edge pixels:
    DrQ's "pad by ``pad`` (replicate) and crop a random H x W window", done as one gather with clamped indices.

    Drawn from torch's global generator (seeded by Lightning's ``seed_everything``); ``pad`` 0 returns the images.
    """
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if pad == 0:
        return images
    n, h, w = images.shape[:3]
    device = images.device
    dy = torch.randint(-pad, pad + 1, (n,), device=device)
    dx = torch.randint(-pad, pad + 1, (n,), device=device)
    rows = (dy[:, None] + torch.arange(h, device=device)).clamp_(0, h - 1)[:, :, None]  # (N, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=device)).clamp_(0, w - 1)[:, None, :]  # (N, 1, W)
    return images[torch.arange(n, device=device)[:, None, None], rows, cols]


def rotate_images(images: Tensor, degrees: Tensor) -> Tensor:
    """Rotate float (N, C, H, W) images counter-clockwise by per-image ``degrees`` (N,) about their centre.

    torchvision's ``rotate`` (nearest neighbour, same size, zero fill), batched: the same inverse matrix in
    centred pixel coordinates and the same sampling grid, one ``grid_sample`` for all images.
    """
    n, _, h, w = images.shape
    angle = torch.deg2rad(degrees.to(images.device, torch.float32))
    cos, sin = torch.cos(angle), torch.sin(angle)
    # output pixel (x right, y down, centred) -> input pixel: [[cos, -sin], [sin, cos]]
    matrix = torch.stack((torch.stack((cos, -sin), -1), torch.stack((sin, cos), -1)), dim=1)  # (N, 2, 2)
    xs = torch.arange(w, device=images.device, dtype=torch.float32) - (w - 1) / 2
    ys = torch.arange(h, device=images.device, dtype=torch.float32) - (h - 1) / 2
    base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).view(1, h * w, 2)  # (1, HW, 2) as (x, y)
    source = base @ matrix.transpose(1, 2)  # (N, HW, 2) input pixel coordinates, centred
    grid = (source / torch.tensor([w / 2, h / 2], device=images.device)).view(n, h, w, 2)
    return F.grid_sample(images, grid.to(images.dtype), mode="nearest", padding_mode="zeros", align_corners=False)


def _grayscale(images: Tensor) -> Tensor:
    r, g, b = images.unbind(dim=1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)  # (N, 1, H, W)


def _blend(images: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """torchvision's ``_blend`` with a per-image factor: factor * images + (1 - factor) * other, in [0, 1]."""
    f = factor.view(-1, 1, 1, 1)
    return (f * images + (1.0 - f) * other).clamp_(0.0, 1.0)


def color_jitter(
    images: Tensor, brightness: float = 0.3, contrast: float = 0.4, saturation: float = 0.5
) -> Tensor:
    """torchvision's ``ColorJitter(brightness, contrast, saturation)`` on float (N, 3, H, W) in [0, 1], batched.

    Per image: factors uniform in [1 - x, 1 + x] and the three adjustments in a random order (torchvision's
    ``randperm``). The order is realised by applying, at each of the 3 positions, all three adjustments with
    the factor of the ones not chosen there set to 1 (the identity).
    """
    n = images.shape[0]
    device = images.device
    factors = torch.stack([
        torch.empty(n, device=device).uniform_(max(0.0, 1.0 - x), 1.0 + x) for x in (brightness, contrast, saturation)
    ])  # (3, N)
    order = torch.rand(n, 3, device=device).argsort(dim=1)  # a uniformly random permutation per image
    ones = torch.ones(n, device=device)
    x = images
    for position in range(3):
        chosen = order[:, position]
        f_b, f_c, f_s = (torch.where(chosen == k, factors[k], ones) for k in range(3))
        x = _blend(x, torch.zeros((), device=device), f_b)  # brightness
        x = _blend(x, _grayscale(x).mean(dim=(1, 2, 3), keepdim=True), f_c)  # contrast: towards the mean grey
        x = _blend(x, _grayscale(x), f_s)  # saturation: towards the grey image
    return x


def act_plus_plus_augment(
    images: Tensor,
    size: tuple[int, int],
    training: bool,
    degrees: float = 5.0,
    brightness: float = 0.3,
    contrast: float = 0.4,
    saturation: float = 0.5,
) -> Tensor:
    """act-plus-plus's image augmentation: uint8 (N, H, W, 3) -> uint8 (N, H, W, 3), the same shape.

    Training: a random ``size`` crop per image resized back to (H, W) (bilinear, antialiased), a rotation
    uniform in ±``degrees``, and colour jitter. Evaluation: the centre ``size`` crop resized back (no
    randomness). ``size`` is act-plus-plus's 95 % of each side when built from ``crop_ratio=0.95``.
    """
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3), got {tuple(images.shape)}")
    n, h, w = images.shape[:3]
    if n == 0:
        return images
    crops = crop_images(images, size, random=training)
    x = crops.permute(0, 3, 1, 2).float().div_(255.0)  # (N, 3, ch, cw), channels-last in memory
    if tuple(size) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    if training:
        if degrees > 0:
            x = rotate_images(x, torch.empty(n, device=x.device).uniform_(-degrees, degrees))
        x = color_jitter(x, brightness, contrast, saturation)
    return x.mul_(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8).permute(0, 2, 3, 1)


AUGMENTATIONS = ("crop", "act_plus_plus", "none")


def augment_images(images: Tensor, mode: str, size: tuple[int, int], training: bool) -> Tensor:
    """One of ``AUGMENTATIONS`` on uint8 (N, H, W, 3) images; the result stays uint8 channels-last.

    ``crop``: random ``size`` crop in training, centre crop in evaluation (Chi et al., LeRobot).
    ``act_plus_plus``: ``act_plus_plus_augment`` (the output keeps the input size).
    ``none``: the centre ``size`` crop in training and evaluation alike (no randomness).
    """
    if mode == "crop":
        return crop_images(images, size, random=training)
    if mode == "act_plus_plus":
        return act_plus_plus_augment(images, size, training)
    if mode == "none":
        return crop_images(images, size, random=False)
    raise ValueError(f"unknown augmentation {mode!r}; choose one of {list(AUGMENTATIONS)}")

