"""Spatial soft-argmax keypoints (Finn et al., "Deep Spatial Autoencoders", 2016; robomimic's pooling).

A conv feature map (B, C, H, W) becomes K keypoints (B, K, 2): each of K channels (after a 1x1 conv from C)
is turned into a probability map by a softmax over its H*W cells, and the keypoint is the expected (x, y)
position under that map, in [-1, 1] image coordinates. Unlike global average pooling this keeps *where*
things are, which is what a manipulation policy needs, and it has no parameters that depend on H or W:
the same module serves any image size (the coordinate grid is built for the size it sees).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SpatialSoftmax(nn.Module):
    """(B, C, H, W) feature map -> (B, K, 2) expected keypoint coordinates (x along W, y along H).

    Args:
        in_channels: C of the incoming feature map.
        num_keypoints: K; a 1x1 conv maps C -> K first. ``None`` keeps K = C without a conv.
        temperature: softmax temperature (lower = sharper maps).
        learnable_temperature: make the temperature a trained parameter.
    """

    def __init__(
        self, in_channels: int, num_keypoints: int | None = 32, temperature: float = 1.0,
        learnable_temperature: bool = False,
    ) -> None:
        super().__init__()
        if num_keypoints is None:
            self.keypoint_conv: nn.Module = nn.Identity()
            self.num_keypoints = in_channels
        else:
            self.keypoint_conv = nn.Conv2d(in_channels, num_keypoints, kernel_size=1)
            self.num_keypoints = num_keypoints
        log_t = torch.log(torch.tensor(float(temperature)))
        if learnable_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)

    @staticmethod
    def coordinate_grid(height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """(H*W, 2) cell-centre coordinates spanning [-1, 1] in x (width) and y (height)."""
        ys = torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype)
        xs = torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=-1)

    def forward(self, features: Tensor) -> Tensor:
        maps = self.keypoint_conv(features)
        b, k, h, w = maps.shape
        # softmax in float32: a bf16 softmax over thousands of cells loses the keypoint's sub-cell precision
        logits = maps.reshape(b, k, h * w).float() / self.log_temperature.float().exp()
        attention = torch.softmax(logits, dim=-1)
        grid = self.coordinate_grid(h, w, attention.device, attention.dtype)
        return attention @ grid  # (B, K, 2)
