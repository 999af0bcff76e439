"""Building blocks shared by the architectures: channel scaling, the block 3×3 conv, the activation."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import nn

from search.errors import ConfigError


class Act(nn.Module):
    """ReLU as a module of our own.

    A module (not ``F.relu`` inline) so that quantization can later swap in a fake-quantized activation; a class
    ptflops does not know (not ``nn.ReLU``) so the MAC count stays conv + batch-norm + linear, the convention of the
    score's published tables.
    """

    def forward(self, x):
        return F.relu(x)


class DepthwiseSeparable(nn.Sequential):
    """A depthwise 3×3 conv followed by a pointwise 1×1 conv (no norm between, as in seed 000's variant)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int):
        super().__init__()
        self.depthwise = nn.Conv2d(in_ch, in_ch, 3, stride, 1, groups=in_ch, bias=False)
        self.pointwise = nn.Conv2d(in_ch, out_ch, 1, bias=False, groups=groups)


def check_width(arch: str, width: float) -> float:
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) or width <= 0:
        raise ConfigError(f"{arch}: width must be a number > 0 (1.0 = the published channel counts), got {width!r}")
    return float(width)


def check_positive_int(arch: str, option: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{arch}: {option} must be an integer >= 1, got {value!r}")
    return value


def scale_channels(channels: int, width: float) -> int:
    """Channel count under the width multiplier, never below one channel."""
    return max(1, int(round(channels * width)))


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


class BlockConvs:
    """Makes every 3×3 conv inside the blocks of one network and checks the ``groups`` setting against all of them.

    ``groups`` applies to every block 3×3 conv; with ``depthwise`` each becomes depthwise 3×3 + pointwise 1×1 and
    ``groups`` applies to the pointwise conv (grouped pointwise, as in ShuffleNet). The stem and 1×1
    shortcut / transition convs are built elsewhere and stay dense. An illegal ``groups`` is reported by
    :meth:`check` once the whole network is known, so the message can list the values legal for all its layers.
    """

    def __init__(self, arch: str, groups: int, depthwise: bool):
        self.arch = arch
        self.groups = check_positive_int(arch, "groups", groups)
        if not isinstance(depthwise, bool):
            raise ConfigError(f"{arch}: depthwise must be true or false, got {depthwise!r}")
        self.depthwise = depthwise
        self.shapes: list[tuple[str, int, int]] = []

    def __call__(self, name: str, in_ch: int, out_ch: int, stride: int = 1) -> nn.Module:
        self.shapes.append((name, in_ch, out_ch))
        # Build something valid even when groups does not fit; check() rejects the network afterwards.
        groups = self.groups if in_ch % self.groups == 0 and out_ch % self.groups == 0 else 1
        if self.depthwise:
            return DepthwiseSeparable(in_ch, out_ch, stride, groups)
        return nn.Conv2d(in_ch, out_ch, 3, stride, 1, groups=groups, bias=False)

    def check(self) -> None:
        g = self.groups
        for name, in_ch, out_ch in self.shapes:
            if in_ch % g or out_ch % g:
                common = math.gcd(*[c for _, i, o in self.shapes for c in (i, o)])
                where = "the pointwise conv of " if self.depthwise else ""
                raise ConfigError(
                    f"{self.arch}: groups={g} does not divide the channels of {where}{name} "
                    f"(in {in_ch}, out {out_ch}); legal groups for this network: "
                    f"{', '.join(map(str, divisors(common)))}"
                )
