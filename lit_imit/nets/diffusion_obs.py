"""Observation encoder of Diffusion Policy: per-camera GroupNorm ResNet-18 + spatial-softmax keypoints.

Follows the "hybrid CNN" setting of Chi et al. (RSS 2023; diffusion_policy): each camera has its own ResNet-18 trunk
(no pretrained weights needed) whose BatchNorm layers are replaced by GroupNorm — BatchNorm statistics do
not survive weight averaging (EMA) and small batches — followed by a spatial-softmax head (32 keypoints)
and a linear layer + ReLU to a per-camera feature vector (LeRobot's ``DiffusionRgbEncoder``:
``relu(Linear(keypoints))``). Images are randomly cropped in training and centre cropped in evaluation, the
only augmentation the paper and LeRobot use; act-plus-plus's augmentation (crop resized back, rotation,
colour jitter) is the ``augmentation="act_plus_plus"`` option (``lit_imit.nets.augment``). Differences from
LeRobot: one encoder per camera (Chi et al.'s default; LeRobot shares one unless
``use_separate_rgb_encoder_per_camera``), crop windows drawn per image (LeRobot's ``RandomCrop`` draws one
window per batch) and pixels in [0, 1] (LeRobot normalises images with dataset mean/std).

Features of all cameras and the (already normalised) low-dim state are concatenated per frame, and the
frames of the observation history are flattened into the U-Net's global conditioning vector. With no
cameras it is the state-only variant.

Images arrive as uint8 (N, H, W, 3), the batch layout of ``modules/base.py``; cropping happens on the
uint8 tensor (4x less memory traffic than float) and the float conversion keeps the channels-last layout
for free, which the convolutions can use directly.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torchvision
from torch import Tensor, nn

from lit_imit.nets.augment import AUGMENTATIONS, augment_images, crop_images, crop_size  # noqa: F401 - re-exported
from lit_imit.nets.backbones import replace_batchnorm_with_groupnorm
from lit_imit.nets.pointwise import subsample_strided_pointwise_convs
from lit_imit.nets.spatial_softmax import SpatialSoftmax


#: the first stage's channels in torchvision's ResNet-18 (its later stages double it: 128, 256, 512)
RESNET18_WIDTH = 64


def resnet18_groupnorm_trunk(width: int = RESNET18_WIDTH) -> nn.Sequential:
    """ResNet-18 up to layer4 (stride 32, ``8 * width`` channels), randomly initialised, GroupNorm.

    ``width`` 64 is torchvision's ResNet-18. A narrower one (e.g. 32: stages of 32/64/128/256 channels, a
    quarter of the multiply-adds) has the same layers, names and initialisation, for CPU budgets.
    """
    if width == RESNET18_WIDTH:
        net = torchvision.models.resnet18(weights=None)
        trunk = nn.Sequential(*list(net.children())[:-2])  # drop avgpool and fc: keep the spatial map
    else:
        trunk = narrow_resnet18_trunk(width)
    return replace_batchnorm_with_groupnorm(trunk)


def narrow_resnet18_trunk(width: int) -> nn.Sequential:
    """torchvision's ResNet-18 trunk (stem, max-pool, four stages of two basic blocks) with stages of
    ``width * 2**i`` channels; the same module indices and torchvision's initialisation (Kaiming-normal
    convolutions, batch norm at 1 and 0)."""
    from torchvision.models.resnet import BasicBlock, conv1x1

    if width < 1:
        raise ValueError(f"the ResNet width must be >= 1, got {width}")
    layers: list[nn.Module] = [nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False),
                               nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                               nn.MaxPool2d(kernel_size=3, stride=2, padding=1)]
    inplanes = width
    for stage in range(4):
        planes, stride = width * 2 ** stage, 1 if stage == 0 else 2
        downsample = None
        if stride != 1 or inplanes != planes:
            downsample = nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))
        layers.append(nn.Sequential(BasicBlock(inplanes, planes, stride, downsample), BasicBlock(planes, planes)))
        inplanes = planes
    trunk = nn.Sequential(*layers)
    for m in trunk.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    return trunk


def uint8_hwc_to_float_chw(images: Tensor, channels_last: bool) -> Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1]; the permuted view is already channels-last."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class CameraKeypointEncoder(nn.Module):
    """One camera: ResNet-18 (GroupNorm) -> spatial softmax (K keypoints) -> Linear(2K -> feature_dim) -> ReLU.

    The ReLU after the projection is LeRobot's ``DiffusionRgbEncoder`` (``relu(out(keypoints))``); it has no
    parameters, so state dicts are the same with or without it. ``relu=False`` is the plain linear projection
    (act-plus-plus, and this project's encoder before the ReLU was added).
    """

    def __init__(self, num_keypoints: int = 32, feature_dim: int = 64, relu: bool = True,
                 width: int = RESNET18_WIDTH) -> None:
        super().__init__()
        self.trunk = resnet18_groupnorm_trunk(width)
        self.keypoints = SpatialSoftmax(8 * width, num_keypoints)
        self.project = nn.Linear(2 * num_keypoints, feature_dim)
        self.feature_dim = feature_dim
        self.relu = bool(relu)

    def forward(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) float -> (N, feature_dim), >= 0 with the ReLU."""
        return self.encode(images)[1]

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 3, H, W) float -> the keypoints (N, 2K) and the features (N, feature_dim) made from them."""
        keypoints = self.keypoints(self.trunk(images)).flatten(1)
        features = self.project(keypoints)
        return keypoints, torch.relu(features) if self.relu else features


class DiffusionObsEncoder(nn.Module):
    """Observation history -> flat global conditioning vector for the U-Net.

    Args:
        cameras: camera names (``batch["images/<cam>"]``); empty for the state-only variant.
        state_dim: size of the low-dim state (qpos) appended to every frame.
        crop_shape: (h, w) of the crop; takes precedence over ``crop_ratio``.
        crop_ratio: crop to this fraction of each image side when ``crop_shape`` is None; None = no crop.
        num_keypoints: spatial-softmax keypoints per camera.
        feature_dim: per-camera feature size after the keypoint projection.
        vision_width: channels of the ResNet-18's first stage (64: the standard ResNet-18; the stages double it).
        channels_last: run the ResNets in channels-last layout (faster convolutions on CPU and GPU).
        augmentation: ``crop`` (random crop in training, centre crop in eval: Chi et al., LeRobot),
            ``act_plus_plus`` (crop resized back to the input size + ±5° rotation + colour jitter in training,
            centre crop resized back in eval: act-plus-plus) or ``none`` (centre crop always); the crop size
            comes from ``crop_shape`` / ``crop_ratio`` in every mode (see ``lit_imit.nets.augment``).
        keypoint_relu: ReLU after the keypoint projection (LeRobot); False = linear features (act-plus-plus).
        aux_dim: size of an auxiliary state estimate (0: none, as in every reference). An MLP reads all cameras'
            keypoints of a frame and estimates e.g. the object poses; :meth:`encode` returns the estimate for
            its loss, and it joins the frame's conditioning, detached (``DiffusionModule``'s ``aux_state_keys``).
        aux_hidden: width of that MLP's hidden layer.
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
        augmentation: str = "crop",
        keypoint_relu: bool = True,
        vision_width: int = RESNET18_WIDTH,
        aux_dim: int = 0,
        aux_hidden: int = 128,
    ) -> None:
        super().__init__()
        if augmentation not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {augmentation!r}; choose one of {list(AUGMENTATIONS)}")
        self.augmentation = augmentation
        self.cameras = list(cameras)
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"camera names must be unique, got {self.cameras}")
        self.state_dim = state_dim
        self.crop_shape = None if crop_shape is None else (int(crop_shape[0]), int(crop_shape[1]))
        self.crop_ratio = crop_ratio
        self.channels_last = channels_last
        # ModuleDict keys may not contain '.', camera names could
        self.encoders = nn.ModuleDict(
            {_module_key(c): CameraKeypointEncoder(num_keypoints, feature_dim, keypoint_relu, vision_width)
             for c in self.cameras}
        )
        if channels_last:  # the narrow ResNets' strided 1x1 shortcuts crash oneDNN in that layout (nets.pointwise)
            subsample_strided_pointwise_convs(self.encoders)
            self.encoders.to(memory_format=torch.channels_last)
        if aux_dim < 0 or (aux_dim and not self.cameras):
            raise ValueError(f"aux_dim must be >= 0 and needs cameras (its estimate reads their keypoints), got "
                             f"aux_dim={aux_dim} with cameras {self.cameras}")
        self.aux_dim = int(aux_dim)
        self.aux_head: nn.Module | None = None
        if self.aux_dim:
            self.aux_head = nn.Sequential(nn.Linear(2 * num_keypoints * len(self.cameras), aux_hidden), nn.ReLU(),
                                          nn.Linear(aux_hidden, self.aux_dim))
        self.step_dim = state_dim + feature_dim * len(self.cameras) + self.aux_dim

    def global_cond_dim(self, n_obs_steps: int) -> int:
        """Length of the flattened conditioning vector for a history of ``n_obs_steps`` frames."""
        return self.step_dim * n_obs_steps

    def forward(self, state: Tensor, images: Mapping[str, Tensor]) -> Tensor:
        """state (B, To, D) normalised, images {cam: (B, To, H, W, 3) uint8} -> (B, To * step_dim)."""
        return self.encode(state, images)[0]

    def encode(self, state: Tensor, images: Mapping[str, Tensor],
               aux_value: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The conditioning (B, To * step_dim) and, with ``aux_dim``, the auxiliary estimate (B, To, aux_dim).

        The estimate enters the conditioning detached: the denoising loss does not train the head, so it stays
        an estimate of its target, which the policy reads the way a state policy reads the true object pose.
        ``aux_value`` (B, To, aux_dim) takes its place in the conditioning (teacher forcing in training).
        """
        b, t = state.shape[:2]
        parts, keypoints = [state], []
        for cam in self.cameras:
            if cam not in images:
                raise KeyError(f"the batch has no images for camera {cam!r} (expected key 'images/{cam}')")
            frames = images[cam]
            if frames.dim() != 5 or frames.shape[:2] != (b, t):
                raise ValueError(f"images/{cam} must be (B, To, H, W, 3) = ({b}, {t}, ...), got {tuple(frames.shape)}")
            flat = frames.reshape(b * t, *frames.shape[2:])
            size = crop_size(*flat.shape[1:3], self.crop_shape, self.crop_ratio)
            flat = augment_images(flat, self.augmentation, size, training=self.training)
            points, features = self.encoders[_module_key(cam)].encode(uint8_hwc_to_float_chw(flat, self.channels_last))
            parts.append(features.reshape(b, t, -1).to(state.dtype))
            keypoints.append(points)
        estimate = None
        if self.aux_head is not None:
            estimate = self.aux_head(torch.cat(keypoints, dim=-1)).reshape(b, t, self.aux_dim).float()
            parts.append((estimate.detach() if aux_value is None else aux_value).to(state.dtype))
        return torch.cat(parts, dim=-1).flatten(1), estimate


def _module_key(camera: str) -> str:
    return camera.replace(".", "_")
