"""CIFAR ResNets: ResNet20 (He et al. 2016, projection shortcuts) and the CIFAR ResNet-18 used by the seeds.

Both take 32×32 inputs with a 3×3 stem and no max-pool. Shortcuts that change shape are 1×1 conv + BN
(option B); the rest are identities.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from search.models.layers import Act, BlockConvs, check_positive_int, check_width, scale_channels
from search.models.registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, name: str, in_ch: int, out_ch: int, stride: int, convs: BlockConvs):
        super().__init__()
        self.conv1 = convs(f"{name}.conv1", in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.act1 = Act()
        self.conv2 = convs(f"{name}.conv2", out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )
        self.act2 = Act()

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, stage_channels: list[int], stage_blocks: list[int], num_classes: int, convs: BlockConvs):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stage_channels[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stage_channels[0])
        self.act1 = Act()
        in_ch = stage_channels[0]
        for s, (out_ch, n) in enumerate(zip(stage_channels, stage_blocks, strict=True), start=1):
            blocks = []
            for b in range(n):
                stride = 2 if s > 1 and b == 0 else 1
                blocks.append(BasicBlock(f"layer{s}.{b}", in_ch, out_ch, stride, convs))
                in_ch = out_ch
            self.add_module(f"layer{s}", nn.Sequential(*blocks))
        self.num_stages = len(stage_channels)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        for s in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{s}")(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _resnet(arch, channels, blocks, num_classes, width, groups, depthwise) -> CifarResNet:
    check_positive_int(arch, "num_classes", num_classes)
    width = check_width(arch, width)
    convs = BlockConvs(arch, groups, depthwise)
    model = CifarResNet([scale_channels(c, width) for c in channels], blocks, num_classes, convs)
    convs.check()
    return model


@register_model
def resnet20(num_classes: int = 10, width: float = 1.0, groups: int = 1, depthwise: bool = False) -> CifarResNet:
    """ResNet20: 3 stages × 3 basic blocks, 16/32/64 channels; 272,474 parameters at width 1."""
    return _resnet("resnet20", [16, 32, 64], [3, 3, 3], num_classes, width, groups, depthwise)


@register_model
def resnet18(num_classes: int = 10, width: float = 1.0, groups: int = 1, depthwise: bool = False) -> CifarResNet:
    """CIFAR ResNet-18: 4 stages × 2 basic blocks, 64-512 channels; 11,173,962 parameters at width 1."""
    return _resnet("resnet18", [64, 128, 256, 512], [2, 2, 2, 2], num_classes, width, groups, depthwise)
