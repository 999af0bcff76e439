"""Test-time horizontal-flip averaging as a module, so that whatever evaluates, counts, compresses or exports the
model sees it: in eval mode the logits are the mean of the image's and its mirror's (two passes: the MACs ptflops
counts, and so the score, double); in train mode one pass, so training costs what it did."""

from __future__ import annotations

import torch
from torch import nn


class FlipAverage(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.model(x)
        return (self.model(x) + self.model(torch.flip(x, dims=(3,)))) / 2
