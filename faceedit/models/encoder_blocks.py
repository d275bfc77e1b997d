"""Building blocks of the pSp/e4e encoders: the IR-SE bottleneck (the ArcFace IR-SE50 unit), SE, map2style."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceedit.errors import InvalidInputError


class EqualLinear(nn.Module):
    """Linear layer with the weight scaled by ``lr_mul / sqrt(in)`` at run time (no activation)."""

    def __init__(self, in_dim: int, out_dim: int, lr_mul: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.lr_mul = lr_mul
        self.scale = lr_mul / math.sqrt(in_dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class SEModule(nn.Module):
    """Squeeze-and-excitation: global mean -> 1x1 conv -> ReLU -> 1x1 conv -> sigmoid -> scale."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)  # [B, C, 1, 1]
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s


class BottleneckIRSE(nn.Module):
    """IR-SE unit: ``shortcut(x) + res(x)``; the stride sits on the residual's second conv."""

    def __init__(self, in_channels: int, depth: int, stride: int, se_reduction: int):
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)  # plain subsampling, no keys
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(depth),
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, kernel_size=3, stride=1, padding=1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, kernel_size=3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth, se_reduction),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut_layer(x) + self.res_layer(x)  # [B, depth, H/stride, W/stride]


class GradualStyleBlock(nn.Module):
    """map2style: ``log2(spatial)`` x [stride-2 Conv3x3 + LeakyReLU(0.01)] to 1x1, then EqualLinear."""

    def __init__(self, in_channels: int, out_dim: int, spatial: int):
        super().__init__()
        if spatial < 2 or spatial & (spatial - 1):
            raise InvalidInputError("spatial", f"must be a power of two >= 2, got {spatial}")
        self.out_dim = out_dim
        self.spatial = spatial
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(channels, out_dim, kernel_size=3, stride=2, padding=1), nn.LeakyReLU(0.01)]
            channels = out_dim
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_dim, out_dim, lr_mul=1.0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.convs(x)  # [B, out_dim, 1, 1]
        # Upstream uses view(-1, out_c), which silently folds a larger map into the batch; the
        # encoder checks the input size so the map is always 1x1 here.
        x = x.flatten(1)  # [B, out_dim]
        return self.linear(x)


def upsample_add(x: Tensor, y: Tensor) -> Tensor:
    """FPN merge: bilinear (align_corners=True) resize of ``x`` to ``y``'s size, plus ``y``."""
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y
