"""ResNet-18 image features with frozen batch norm, as ACT (and DETR before it) uses them.

Batch norm is frozen because ACT trains with small batches (8) where batch statistics are noise: the
ImageNet statistics and affine parameters are kept as buffers, so they are neither trained nor updated.
A frozen batch norm is a per-channel affine map, so it can be folded into the preceding convolution
(``fuse_frozen_bn``): the convolution runs with weight * scale and bias = shift, which saves a full pass
over every large activation in both the forward and the backward pass. The folding happens on the fly
inside the graph, so the convolution weights still get their exact gradients and the state dict keeps
torchvision's key names (ImageNet files load unchanged).

Weights never come from the network: ``pretrained`` is a path to a state dict, or ``"imagenet"`` for the
file torchvision keeps in its hub cache (read only when it is already there), or None for random init.
Asked-for weights that are not there stop the run (``nets.pretrained``) unless ``allow_random_init``.

Training from scratch is where frozen batch norm stops making sense: random-init "statistics" are the
identity, so the ResNet trains with no normalisation at all. ``norm="group"`` swaps every batch norm for a
trainable GroupNorm (16 channels per group), as Diffusion Policy (Chi et al. 2023) does for its from-scratch
vision encoders; it needs no batch statistics, so it works at ACT's batch 8.

Small images give coarse features: at 96x128 the stride-32 map is 3x4 cells, each 32x32 pixels wide, for a
cube three pixels across. ``stride=16`` stops after layer3 (256 channels, a 6x8 map at 96x128), which also
drops layer4, three quarters of the parameters. DETR's answer to the same problem is a dilated layer4 (DC5),
which keeps the parameters and costs the most compute; stopping at layer3 is the CPU-budget choice.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from lit_imit.checkpoints import load_checkpoint
from lit_imit.nets.pretrained import missing_file, unavailable

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNET18_FEATURE_CHANNELS = 512
RESNET18_STRIDE = 32
#: feature stride -> channels: 32 is the whole ResNet-18 (ACT), 16 stops after layer3
RESNET18_CHANNELS_AT_STRIDE = {32: RESNET18_FEATURE_CHANNELS, 16: 256}
#: normalisation layers of the ResNet: ACT's/DETR's frozen batch norm, or Chi et al.'s trainable GroupNorm
BACKBONE_NORMS = ("frozen_batch", "group")
GROUP_NORM_CHANNELS_PER_GROUP = 16


def group_norm(num_channels: int, channels_per_group: int = GROUP_NORM_CHANNELS_PER_GROUP) -> nn.GroupNorm:
    """GroupNorm with ``num_channels // channels_per_group`` groups (at least one), affine and trainable."""
    return nn.GroupNorm(max(1, num_channels // channels_per_group), num_channels)


def replace_batchnorm_with_groupnorm(module: nn.Module,
                                     channels_per_group: int = GROUP_NORM_CHANNELS_PER_GROUP) -> nn.Module:
    """Swap every BatchNorm2d for ``group_norm(C)``, in place; returns the module."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, group_norm(child.num_features, channels_per_group))
        else:
            replace_batchnorm_with_groupnorm(child, channels_per_group)
    return module


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters (all buffers, nothing trains or updates).

    State-dict compatible with ``nn.BatchNorm2d`` (its ``num_batches_tracked`` entry is accepted and dropped).
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def scale_shift(self) -> tuple[Tensor, Tensor]:
        """(scale, shift) such that frozen_bn(x) = x * scale + shift per channel."""
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = self.scale_shift()
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def _conv_frozen_bn(x: Tensor, conv: nn.Conv2d, bn: FrozenBatchNorm2d) -> Tensor:
    """bn(conv(x)) computed as one convolution with the batch norm folded into its weight and bias."""
    scale, shift = bn.scale_shift()
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    return F.conv2d(x, weight, shift, conv.stride, conv.padding, conv.dilation, conv.groups)


def imagenet_weights_cache_path() -> Path:
    """Where torchvision caches ResNet18_Weights.IMAGENET1K_V1 (the file is only read, never fetched)."""
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def imagenet_weights_help(path: Path) -> str:
    """How to provide the ImageNet file without a network (for the error and the warning)."""
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    return (f"Put torchvision's ResNet-18 ImageNet file ({url}) at {path} (torchvision's cache, "
            f"torch.hub.get_dir()/checkpoints, i.e. $TORCH_HOME/hub/checkpoints), or set "
            f"`pretrained_backbone: /path/to/resnet18.pth` to a local .pth file holding a torchvision "
            f"resnet18 state_dict (fc.* entries are ignored)")


def asks_for_weights(pretrained: str | None) -> bool:
    """Whether ``pretrained`` names weights (a path or ``"imagenet"``) rather than random init."""
    return pretrained is not None and pretrained.strip().lower() not in ("", "none", "random")


def load_pretrained_state(
    pretrained: str | None, allow_random_init: bool = False
) -> tuple[dict[str, Tensor] | None, str]:
    """Resolve ``pretrained`` to (state dict or None, a description of where the weights come from).

    ``None``/``"none"``/``""``: random init, as asked. ``"imagenet"``: torchvision's cached file; when it is
    absent, ``PretrainedWeightsUnavailable`` (with ``allow_random_init``: a loud warning and random init).
    The file is checked and read here because ``resnet18(weights=...)`` would try to download a missing one.
    Anything else is a path that must exist, whatever ``allow_random_init`` says (a typo is not a choice).
    """
    if not asks_for_weights(pretrained):
        return None, "random init"
    if pretrained.strip().lower() == "imagenet":
        path = imagenet_weights_cache_path()
        if not path.is_file():
            what = f"ImageNet ResNet-18 weights were asked for (pretrained_backbone: imagenet), but {path} is missing"
            unavailable(what, imagenet_weights_help(path), allow_random_init, "pretrained_backbone")
            return None, "random init (ImageNet file not cached; allow_random_init)"
    else:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise missing_file(path, "pretrained_backbone")
    state = load_checkpoint(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    return state, f"weights from {path}"


class ResNet18Features(nn.Module):
    """ResNet-18 up to layer4: (B, 3, H, W) ImageNet-normalised images -> (B, 512, ceil(H/32), ceil(W/32)).

    Module and state-dict names match torchvision's ``resnet18`` without ``fc``, so ImageNet files load as is.
    ``norm``: ``frozen_batch`` (ACT) or ``group`` (trainable GroupNorm, from random init only: ImageNet
    weights were trained with batch statistics a GroupNorm cannot reproduce).
    ``stride``: 32 (ACT) or 16: up to layer3 only, (B, 256, ceil(H/16), ceil(W/16)); an ImageNet file's
    layer4 entries are then left out.
    """

    def __init__(
        self, pretrained: str | None = None, fuse_frozen_bn: bool = True, allow_random_init: bool = False,
        norm: str = "frozen_batch", stride: int = RESNET18_STRIDE,
    ) -> None:
        super().__init__()
        if stride not in RESNET18_CHANNELS_AT_STRIDE:
            raise ValueError(f"backbone stride must be one of {sorted(RESNET18_CHANNELS_AT_STRIDE)}, got {stride!r}")
        if norm not in BACKBONE_NORMS:
            raise ValueError(f"backbone norm must be one of {BACKBONE_NORMS}, got {norm!r}")
        if norm == "group" and asks_for_weights(pretrained):
            raise ValueError(f"backbone norm 'group' trains the ResNet from scratch; it cannot start from "
                             f"pretrained weights ({pretrained!r}), whose batch-norm statistics it would drop. "
                             f"Use norm 'frozen_batch' with pretrained weights, or unset them.")
        self.allow_random_init = allow_random_init
        self.norm = norm
        norm_layer = FrozenBatchNorm2d if norm == "frozen_batch" else group_norm
        net = torchvision.models.resnet18(weights=None, norm_layer=norm_layer)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        if stride == RESNET18_STRIDE:
            self.layer4 = net.layer4
        self.stride = stride
        self.fuse_frozen_bn = fuse_frozen_bn
        self.num_channels = RESNET18_CHANNELS_AT_STRIDE[stride]
        state, self.weights_source = load_pretrained_state(pretrained, allow_random_init)
        if state is not None:
            if stride != RESNET18_STRIDE:
                state = {k: v for k, v in state.items() if not k.startswith("layer4.")}
            self.load_state_dict(state, strict=True)
        log.info("ResNet-18 backbone: %s", self.weights_source)

    def _conv_bn(self, x: Tensor, conv: nn.Conv2d, bn: nn.Module) -> Tensor:
        if self.fuse_frozen_bn and isinstance(bn, FrozenBatchNorm2d):
            return _conv_frozen_bn(x, conv, bn)
        return bn(conv(x))

    def _block(self, x: Tensor, block: torchvision.models.resnet.BasicBlock) -> Tensor:
        out = F.relu(self._conv_bn(x, block.conv1, block.bn1), inplace=True)
        out = self._conv_bn(out, block.conv2, block.bn2)
        identity = x if block.downsample is None else self._conv_bn(x, block.downsample[0], block.downsample[1])
        return F.relu(out + identity, inplace=True)

    def stages(self) -> list[nn.Sequential]:
        """The residual stages this backbone runs: layer1..layer4, or layer1..layer3 at stride 16."""
        layers = [self.layer1, self.layer2, self.layer3]
        return layers + [self.layer4] if self.stride == RESNET18_STRIDE else layers

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(F.relu(self._conv_bn(x, self.conv1, self.bn1), inplace=True))
        for layer in self.stages():
            for block in layer:
                x = self._block(x, block)
        return x


def images_to_input(images: Tensor, channels_last: bool = False, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 (B, H, W, 3) images -> ImageNet-normalised float (B, 3, H, W).

    Scaling by 1/255 and the ImageNet normalisation are one multiply-add. Permuting a (B, H, W, 3) tensor
    already gives channels-last strides, so ``channels_last=True`` costs no copy.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected (B, H, W, 3) images, got shape {tuple(images.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=dtype).view(1, 3, 1, 1)
    x = images.permute(0, 3, 1, 2).to(dtype)
    if images.dtype == torch.uint8:
        x = torch.addcmul(-mean / std, x, 1.0 / (255.0 * std))
    else:  # already floats in [0, 1]
        x = (x - mean) / std
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=memory_format)
