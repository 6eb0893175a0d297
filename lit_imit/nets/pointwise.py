"""Strided 1x1 convolutions as a subsample then a stride-1 1x1 convolution: the same numbers, another CPU kernel.

On the CPU, the oneDNN of torch 2.14.1 (as installed here) kills the process ("double free or corruption", a
segfault) in the backward pass of a 1x1 convolution with stride 2 in channels-last layout when it has 2-15 input
channels. Measured on the 2-core AMD EPYC box: 8 -> 16 channels at 128x96 crashes, 16 -> 32 does not, nor does
the same layer at stride 1 or in the default layout. Narrow ResNets (Diffusion's ``vision_width`` below 16, the
CPU-sized CLIPort's width 8) have exactly such layers, the downsample shortcut of a stage, so channels-last could
not be used with them.

A 1x1 kernel without padding reads every s-th pixel only, so taking those pixels first and convolving at stride 1
gives the same output and the same gradients, through the plain pointwise kernel. The swap keeps the layer's
parameters and state-dict keys, so checkpoints load either way.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class SubsampledPointwiseConv2d(nn.Conv2d):
    """A strided 1x1 ``nn.Conv2d`` computed as ``conv2d(x[:, :, ::sh, ::sw], stride=1)``."""

    def forward(self, x: Tensor) -> Tensor:
        sh, sw = self.stride
        return F.conv2d(x[:, :, ::sh, ::sw], self.weight, self.bias, 1, 0, 1, self.groups)


#: strided 1x1 layers with fewer input channels than this are swapped: the crash was measured with 2, 4, 8, 9 and
#: 12, not with 1, 16, 17, 24 or 40; wider layers keep oneDNN's strided kernel (no extra copy of the subsample)
NARROW_CHANNELS = 16


def is_narrow_strided_pointwise(layer: nn.Module) -> bool:
    """A plain Conv2d with a 1x1 kernel, a stride above 1, no padding or dilation, and < 16 input channels."""
    return (type(layer) is nn.Conv2d and layer.kernel_size == (1, 1) and layer.stride != (1, 1)
            and layer.padding in ((0, 0), "valid") and layer.dilation == (1, 1) and layer.padding_mode == "zeros"
            and layer.in_channels < NARROW_CHANNELS)


def subsample_strided_pointwise_convs(module: nn.Module) -> int:
    """Make every narrow strided 1x1 convolution of ``module`` a :class:`SubsampledPointwiseConv2d`, in place
    (same parameters); returns how many were changed."""
    layers = [layer for layer in module.modules() if is_narrow_strided_pointwise(layer)]
    for layer in layers:
        layer.__class__ = SubsampledPointwiseConv2d
    return len(layers)
