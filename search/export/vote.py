"""The ensemble module: a majority vote of the members' top-1 predictions."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

VOTE_RULE = ("majority vote of the members' top-1 predictions; ties are broken by the members' summed softmax "
             "probabilities. The output is votes + summed_softmax / (members + 1): the second term is below 1, so "
             "it only orders classes with equal votes, and argmax(output) is the vote")


class MajorityVote(nn.Module):
    """Majority vote of member classifiers, as in seed 000: each member predicts independently (top-1).

    The output is ``votes + summed_softmax / (members + 1)`` per class. Votes are whole numbers and the second term
    lies in [0, 1), so ``argmax`` of the output is the class with the most votes, ties broken by the members'
    summed softmax probabilities (and, if those tie exactly too, by the lower class index).
    """

    def __init__(self, members: Iterable[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        votes = torch.zeros(())
        probs = torch.zeros(())
        for member in self.members:
            logits = member(x)
            votes = votes + torch.zeros_like(logits).scatter(1, logits.argmax(1, keepdim=True), 1.0)
            probs = probs + logits.softmax(1)
        return votes + probs / (len(self.members) + 1)
