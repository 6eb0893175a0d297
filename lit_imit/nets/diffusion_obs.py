"""Observation encoder of Diffusion Policy: per-camera GroupNorm ResNet-18 + spatial-softmax keypoints.

Follows the "hybrid CNN" setting of Chi et al. (REFERENCE §4.2): each camera has its own ResNet-18 trunk
(no pretrained weights needed) whose BatchNorm layers are replaced by GroupNorm — BatchNorm statistics do
not survive weight averaging (EMA) and small batches — followed by a spatial-softmax head (32 keypoints)
and a linear layer to a per-camera feature vector. Images are randomly cropped in training and centre
cropped in evaluation, the only augmentation the paper uses. Features of all cameras and the (already
normalised) low-dim state are concatenated per frame, and the frames of the observation history are
flattened into the U-Net's global conditioning vector. With no cameras it is the state-only variant.

Images arrive as uint8 (N, H, W, 3), the batch layout of ``modules/base.py``; cropping happens on the
uint8 tensor (4x less memory traffic than float) and the float conversion keeps the channels-last layout
for free, which the convolutions can use directly.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torchvision
from torch import Tensor, nn

from lit_imit.nets.spatial_softmax import SpatialSoftmax


def replace_batchnorm_with_groupnorm(module: nn.Module, channels_per_group: int = 16) -> nn.Module:
    """Swap every BatchNorm2d for GroupNorm(C // channels_per_group, C), in place; returns the module."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            groups = max(1, child.num_features // channels_per_group)
            setattr(module, name, nn.GroupNorm(groups, child.num_features))
        else:
            replace_batchnorm_with_groupnorm(child, channels_per_group)
    return module


def resnet18_groupnorm_trunk() -> nn.Sequential:
    """torchvision ResNet-18 up to layer4 (stride 32, 512 channels), randomly initialised, GroupNorm."""
    net = torchvision.models.resnet18(weights=None)
    trunk = nn.Sequential(*list(net.children())[:-2])  # drop avgpool and fc: keep the spatial map
    return replace_batchnorm_with_groupnorm(trunk)


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


def uint8_hwc_to_float_chw(images: Tensor, channels_last: bool) -> Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1]; the permuted view is already channels-last."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class CameraKeypointEncoder(nn.Module):
    """One camera: ResNet-18 (GroupNorm) -> spatial softmax (K keypoints) -> Linear(2K -> feature_dim)."""

    def __init__(self, num_keypoints: int = 32, feature_dim: int = 64) -> None:
        super().__init__()
        self.trunk = resnet18_groupnorm_trunk()
        self.keypoints = SpatialSoftmax(512, num_keypoints)
        self.project = nn.Linear(2 * num_keypoints, feature_dim)
        self.feature_dim = feature_dim

    def forward(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) float -> (N, feature_dim)."""
        return self.project(self.keypoints(self.trunk(images)).flatten(1))


class DiffusionObsEncoder(nn.Module):
    """Observation history -> flat global conditioning vector for the U-Net.

    Args:
        cameras: camera names (``batch["images/<cam>"]``); empty for the state-only variant.
        state_dim: size of the low-dim state (qpos) appended to every frame.
        crop_shape: (h, w) of the crop; takes precedence over ``crop_ratio``.
        crop_ratio: crop to this fraction of each image side when ``crop_shape`` is None; None = no crop.
        num_keypoints: spatial-softmax keypoints per camera.
        feature_dim: per-camera feature size after the keypoint projection.
        channels_last: run the ResNets in channels-last layout (faster convolutions on CPU and GPU).
    """

    def __init__(
        self,
        cameras: Sequence[str],
        state_dim: int,
        crop_shape: Sequence[int] | None = None,
        crop_ratio: float | None = None,
        num_keypoints: int = 32,
        feature_dim: int = 64,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.cameras = list(cameras)
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"camera names must be unique, got {self.cameras}")
        self.state_dim = state_dim
        self.crop_shape = None if crop_shape is None else (int(crop_shape[0]), int(crop_shape[1]))
        self.crop_ratio = crop_ratio
        self.channels_last = channels_last
        # ModuleDict keys may not contain '.', camera names could
        self.encoders = nn.ModuleDict(
            {_module_key(c): CameraKeypointEncoder(num_keypoints, feature_dim) for c in self.cameras}
        )
        if channels_last:
            self.encoders.to(memory_format=torch.channels_last)
        self.step_dim = state_dim + feature_dim * len(self.cameras)

    def global_cond_dim(self, n_obs_steps: int) -> int:
        """Length of the flattened conditioning vector for a history of ``n_obs_steps`` frames."""
        return self.step_dim * n_obs_steps

    def forward(self, state: Tensor, images: Mapping[str, Tensor]) -> Tensor:
        """state (B, To, D) normalised, images {cam: (B, To, H, W, 3) uint8} -> (B, To * step_dim)."""
        b, t = state.shape[:2]
        parts = [state]
        for cam in self.cameras:
            if cam not in images:
                raise KeyError(f"the batch has no images for camera {cam!r} (expected key 'images/{cam}')")
            frames = images[cam]
            if frames.dim() != 5 or frames.shape[:2] != (b, t):
                raise ValueError(f"images/{cam} must be (B, To, H, W, 3) = ({b}, {t}, ...), got {tuple(frames.shape)}")
            flat = frames.reshape(b * t, *frames.shape[2:])
            size = crop_size(*flat.shape[1:3], self.crop_shape, self.crop_ratio)
            flat = crop_images(flat, size, random=self.training)
            features = self.encoders[_module_key(cam)](uint8_hwc_to_float_chw(flat, self.channels_last))
            parts.append(features.reshape(b, t, -1).to(state.dtype))
        return torch.cat(parts, dim=-1).flatten(1)


def _module_key(camera: str) -> str:
    return camera.replace(".", "_")
