"""CIFAR DenseNet-BC (Huang et al. 2017).

Defaults are DenseNet-BC-100 with k = 12: three dense blocks of 16 bottleneck layers, bottleneck width 4k,
compression 0.5, a 3×3 stem of 2k channels, about 0.77 M parameters. Seed 003's much smaller grouped DenseNet is
reached through ``growth_rate``, ``blocks`` and ``groups``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from search.errors import ConfigError
from search.models.layers import Act, BlockConvs, check_positive_int, check_width, scale_channels
from search.models.registry import register_model


class DenseLayer(nn.Module):
    """BN-ReLU-[1×1 conv to bn_size·k, BN-ReLU]-3×3 conv to k; output is the input with k channels appended."""

    def __init__(self, name: str, in_ch: int, growth: int, bottleneck: bool, bn_size: int, convs: BlockConvs):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.act1 = Act()
        mid = in_ch
        self.bottleneck = bottleneck
        if bottleneck:
            mid = bn_size * growth
            self.conv1 = nn.Conv2d(in_ch, mid, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(mid)
            self.act2 = Act()
        self.conv2 = convs(f"{name}.conv2", mid, growth)

    def forward(self, x):
        out = self.act1(self.bn1(x))
        if self.bottleneck:
            out = self.act2(self.bn2(self.conv1(out)))
        return torch.cat([x, self.conv2(out)], 1)


class Transition(nn.Module):
    """BN-ReLU-1×1 conv (compression) then 2×2 average pooling."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_ch)
        self.act = Act()
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x):
        # Functional pooling: parameter-free ops stay out of the MAC count (see layers.Act).
        return F.avg_pool2d(self.conv(self.act(self.bn(x))), 2)


class DenseNet(nn.Module):
    def __init__(self, growth: int, blocks: Sequence[int], bottleneck: bool, bn_size: int, compression: float,
                 num_classes: int, convs: BlockConvs):
        super().__init__()
        ch = 2 * growth
        self.conv1 = nn.Conv2d(3, ch, 3, 1, 1, bias=False)
        stages = []
        for i, n in enumerate(blocks, start=1):
            layers = []
            for j in range(n):
                layers.append(DenseLayer(f"block{i}.{j}", ch, growth, bottleneck, bn_size, convs))
                ch += growth
            stages.append(nn.Sequential(*layers))
            if i < len(blocks):
                out = max(1, int(math.floor(ch * compression)))
                stages.append(Transition(ch, out))
                ch = out
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(ch)
        self.act = Act()
        self.fc = nn.Linear(ch, num_classes)

    def forward(self, x):
        x = self.act(self.bn(self.features(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register_model
def densenet(num_classes: int = 10, width: float = 1.0, groups: int = 1, depthwise: bool = False,
             growth_rate: int = 12, blocks: Sequence[int] = (16, 16, 16), bottleneck: bool = True,
             bn_size: int = 4, compression: float = 0.5) -> DenseNet:
    """DenseNet-BC for 32×32 inputs; ``width`` scales the growth rate (and so every channel count)."""
    arch = "densenet"
    check_positive_int(arch, "num_classes", num_classes)
    width = check_width(arch, width)
    check_positive_int(arch, "growth_rate", growth_rate)
    check_positive_int(arch, "bn_size", bn_size)
    if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence) or not blocks:
        raise ConfigError(f"{arch}: blocks must be a non-empty list of layer counts, e.g. [16, 16, 16], got {blocks!r}")
    for n in blocks:
        check_positive_int(arch, "each entry of blocks", n)
    if not isinstance(bottleneck, bool):
        raise ConfigError(f"{arch}: bottleneck must be true or false, got {bottleneck!r}")
    if isinstance(compression, bool) or not isinstance(compression, (int, float)) or not 0 < compression <= 1:
        raise ConfigError(f"{arch}: compression must be in (0, 1], got {compression!r}")
    convs = BlockConvs(arch, groups, depthwise)
    model = DenseNet(scale_channels(growth_rate, width), list(blocks), bottleneck, bn_size, float(compression),
                     num_classes, convs)
    convs.check()
    return model
