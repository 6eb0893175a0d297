"""BYOL (Grill et al., 2020): self-supervised image features, the representation VINN looks up neighbours in.

Two random views of the same frame go through an *online* network (encoder -> projector -> predictor) and a
*target* network (encoder -> projector). The online prediction of one view regresses the target projection of
the other: loss = 2 - 2 cos(p, z) per pair (the squared distance of the two unit vectors), symmetrised over
the two views. The target is never trained by gradients: it is an exponential moving average of the online
weights, target <- tau * target + (1 - tau) * online, with tau raised from ``tau_base`` to 1 on a cosine
schedule as in the paper (BYOL's bootstrapping: the slow target keeps the online network from collapsing to a
constant without negative pairs).

The encoder is a torchvision ResNet-18 with ordinary (trainable) batch norm and its classifier removed: one
512-d global-average-pooled feature per image, as act-plus-plus's VINN caches per camera. ACT's frozen batch
norm is not used here: from random init it would leave the network without any normalisation, which BYOL
relies on.

The augmentations of a view are BYOL's minus the horizontal flip (a mirrored bimanual scene swaps the arms
and so changes what the right action is): a random resized crop, colour jitter (brightness, contrast,
saturation; no hue) and random grayscale. All random draws come from torch's global generator on the images'
device, per image, in one batched pass.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from lit_imit.nets.augment import color_jitter
from lit_imit.nets.backbones import IMAGENET_MEAN, IMAGENET_STD, load_pretrained_state

log = logging.getLogger(__name__)

RESNET18_FEATURES = 512
_LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601-2, as torchvision's rgb_to_grayscale


# ---- the loss and the moving average ------------------------------------------------------------------
def regression_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """BYOL's per-pair loss (B,): 2 - 2 cos(prediction, target), the squared distance of the unit vectors.

    0 for vectors pointing the same way, 4 for opposite ones; the vectors' lengths do not matter.
    """
    p = F.normalize(prediction.float(), dim=-1)
    z = F.normalize(target.float(), dim=-1)
    return 2.0 - 2.0 * (p * z).sum(dim=-1)


def symmetric_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """Both directions (B,): view 1's prediction against view 2's target and the reverse, summed (0..8)."""
    return regression_loss(p1, z2.detach()) + regression_loss(p2, z1.detach())


@torch.no_grad()
def ema_update(target: Iterable[Tensor], online: Iterable[Tensor], tau: float) -> None:
    """target <- tau * target + (1 - tau) * online, in place, tensor by tensor."""
    for t, o in zip(target, online, strict=True):
        t.mul_(tau).add_(o.detach().to(t.dtype), alpha=1.0 - tau)


def cosine_tau(tau_base: float, step: int, total_steps: int) -> float:
    """BYOL's schedule: 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2, from tau_base at k = 0 to 1 at k = K."""
    if total_steps <= 0:
        return tau_base
    k = min(max(step, 0), total_steps)
    return 1.0 - (1.0 - tau_base) * (math.cos(math.pi * k / total_steps) + 1.0) / 2.0


# ---- the networks ------------------------------------------------------------------------------------
def mlp_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """BYOL's projector and predictor: Linear -> BatchNorm -> ReLU -> Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, out_dim))


class ResNet18Encoder(nn.Module):
    """(B, 3, H, W) float pixels in [0, 1] -> (B, 512) global-average-pooled ResNet-18 features.

    ``pretrained``: None (random init), ``"imagenet"`` (torchvision's cached file; nothing is downloaded) or a
    path to a torchvision ``resnet18`` state dict, resolved by :func:`lit_imit.nets.backbones.load_pretrained_state`.
    """

    def __init__(self, pretrained: str | None = None, allow_random_init: bool = False) -> None:
        super().__init__()
        net = torchvision.models.resnet18(weights=None)
        net.fc = nn.Identity()
        state, self.weights_source = load_pretrained_state(pretrained, allow_random_init)
        if state is not None:
            missing, unexpected = net.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.endswith("num_batches_tracked")]
            if missing or unexpected:
                raise ValueError(f"{self.weights_source} is not a ResNet-18 state dict: missing {missing[:5]}, "
                                 f"unexpected {list(unexpected)[:5]}")
        log.info("BYOL ResNet-18 encoder: %s", self.weights_source)
        self.net = net
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: Tensor) -> Tensor:
        return self.net((pixels - self.pixel_mean) / self.pixel_std)


class BYOL(nn.Module):
    """Online encoder + projector + predictor and their slow-moving target copy (encoder + projector)."""

    def __init__(self, encoder: nn.Module, feature_dim: int = RESNET18_FEATURES, projection_dim: int = 256,
                 hidden_dim: int = 4096) -> None:
        super().__init__()
        self.online_encoder = encoder
        self.online_projector = mlp_head(feature_dim, hidden_dim, projection_dim)
        self.predictor = mlp_head(projection_dim, hidden_dim, projection_dim)
        self.target_encoder = copy.deepcopy(encoder)
        self.target_projector = copy.deepcopy(self.online_projector)
        for p in self.target_parameters():
            p.requires_grad_(False)

    def online_parameters(self) -> Iterator[nn.Parameter]:
        """What the optimiser trains: the online encoder, projector and predictor."""
        for part in (self.online_encoder, self.online_projector, self.predictor):
            yield from part.parameters()

    def target_parameters(self) -> Iterator[nn.Parameter]:
        for part in (self.target_encoder, self.target_projector):
            yield from part.parameters()

    def update_target(self, tau: float) -> None:
        """One moving-average step of the target towards the online encoder and projector."""
        online = [*self.online_encoder.parameters(), *self.online_projector.parameters()]
        ema_update(list(self.target_parameters()), online, tau)

    def features(self, pixels: Tensor) -> Tensor:
        """The representation used downstream: the online encoder's (B, 512) features."""
        return self.online_encoder(pixels)

    def forward(self, view1: Tensor, view2: Tensor) -> Tensor:
        """Per-sample symmetric loss (B,) of two views (B, 3, H, W). Both views go through each network in one
        batch, so batch norm sees both."""
        n = view1.shape[0]
        both = torch.cat([view1, view2])
        p = self.predictor(self.online_projector(self.online_encoder(both)))
        with torch.no_grad():
            z = self.target_projector(self.target_encoder(both))
        return symmetric_loss(p[:n], p[n:], z[:n], z[n:])


# ---- the augmentations -------------------------------------------------------------------------------
def pixels_from_uint8(images: Tensor) -> Tensor:
    """uint8 (B, H, W, 3) frames -> float (B, 3, H, W) in [0, 1]."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected (B, H, W, 3) images, got shape {tuple(images.shape)}")
    return images.permute(0, 3, 1, 2).float().div(255.0)


def random_resized_crop(pixels: Tensor, scale: Sequence[float] = (0.08, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3)) -> Tensor:
    """A random window per image, resized (bilinear) back to the input size: (B, 3, H, W) -> the same shape.

    The window covers a fraction of the area uniform in ``scale`` with a log-uniform aspect ``ratio``
    (relative to the frame's own aspect), clipped to the frame, at a uniform position inside it.
    """
    n = pixels.shape[0]
    device = pixels.device
    area = torch.empty(n, device=device).uniform_(float(scale[0]), float(scale[1]))
    log_ratio = torch.empty(n, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    width = torch.sqrt(area * log_ratio.exp()).clamp(max=1.0)  # fractions of the frame's width / height
    height = torch.sqrt(area / log_ratio.exp()).clamp(max=1.0)
    centre_x = (1.0 - width) * torch.rand(n, device=device) + width / 2  # in [w/2, 1 - w/2]
    centre_y = (1.0 - height) * torch.rand(n, device=device) + height / 2
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2] = width, 2 * centre_x - 1
    theta[:, 1, 1], theta[:, 1, 2] = height, 2 * centre_y - 1
    grid = F.affine_grid(theta.to(pixels.dtype), list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_grayscale(pixels: Tensor, p: float) -> Tensor:
    """Each image replaced by its grey version (on all 3 channels) with probability ``p``."""
    if p <= 0:
        return pixels
    r, g, b = pixels.unbind(dim=1)
    grey = (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1).expand_as(pixels)
    chosen = (torch.rand(pixels.shape[0], device=pixels.device) < p).view(-1, 1, 1, 1)
    return torch.where(chosen, grey, pixels)


def byol_view(pixels: Tensor, crop_scale: Sequence[float] = (0.08, 1.0), brightness: float = 0.4,
              contrast: float = 0.4, saturation: float = 0.2, jitter_prob: float = 0.8,
              grayscale_prob: float = 0.2) -> Tensor:
    """One random view of each image (B, 3, H, W) in [0, 1]: crop, colour jitter with probability
    ``jitter_prob``, grayscale with probability ``grayscale_prob``. No horizontal flip (module docstring)."""
    x = random_resized_crop(pixels, crop_scale)
    if jitter_prob > 0:
        jittered = color_jitter(x, brightness, contrast, saturation)
        chosen = (torch.rand(x.shape[0], device=x.device) < jitter_prob).view(-1, 1, 1, 1)
        x = torch.where(chosen, jittered, x)
    return random_grayscale(x, grayscale_prob)
