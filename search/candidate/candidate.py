"""One candidate of the search: the architecture, its compression and its training recipe, and what it costs
(parameters, MACs, score) before any training. :mod:`search.training.run` trains it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from torch import nn

from search.candidate.complexity import CIFAR_INPUT, Complexity, measure
from search.candidate.recipe import Distillation, TrainConfig
from search.candidate.score import ScoreReference, ScoreTerms, compute_score
from search.compress import steps
from search.compress.compression import Compression
from search.config import from_mapping, to_mapping
from search.errors import ConfigError
from search.models import build_model
from search.models.flip import FlipAverage


@dataclass(frozen=True)
class Candidate:
    """The full configuration of one trial."""

    arch: str = "resnet20"
    width: float = 1.0
    groups: int = 1
    depthwise: bool = False
    arch_options: dict = field(default_factory=dict)  # extra builder options, e.g. densenet growth_rate, blocks
    compression: Compression = field(default_factory=Compression)
    compress_at: float = 0.5   # fraction of the epochs trained dense before compressing (0 = compress at init)
    distillation: Distillation | None = None
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if isinstance(self.compress_at, bool) or not isinstance(self.compress_at, (int, float)) \
                or not 0 <= self.compress_at < 1:
            raise ConfigError(f"compress_at must be in [0, 1), got {self.compress_at!r}")
        if not isinstance(self.arch_options, dict):
            raise ConfigError(f"arch_options must be a mapping, got {self.arch_options!r}")

    def build(self, num_classes: int) -> nn.Module:
        model = build_model(self.arch, num_classes=num_classes, width=self.width, groups=self.groups,
                            depthwise=self.depthwise, **self.arch_options)
        return FlipAverage(model) if self.train.tta_flip else model

    @property
    def dense_epochs(self) -> int:
        """Epochs before compression; all of them when nothing is compressed."""
        if self.compression == Compression():
            return self.train.epochs
        # at least one epoch after compressing, so the compressed model is trained (and measured) at all
        return min(int(round(self.train.epochs * self.compress_at)), self.train.epochs - 1)

    def to_dict(self) -> dict:
        return to_mapping(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "candidate") -> Candidate:
        return from_mapping(cls, data, where)


def compress(model: nn.Module, compression: Compression) -> nn.Module:
    """The compression pipeline (:mod:`search.compress.steps`: structured pruning, unstructured pruning, fake
    quantization); in place where the steps allow."""
    return steps.compress(model, compression)


@dataclass(frozen=True)
class Footprint:
    """What a candidate costs, known before any training."""

    dense: Complexity
    compressed: Complexity
    score: ScoreTerms             # the seeds' formula on the dense counts with the candidate's ps, pu, qw, qa
    measured_score: ScoreTerms    # the formula on the measured compressed counts (pruning already in them)

    @classmethod
    def of(cls, c: Compression, dense: Complexity, compressed: Complexity, reference: ScoreReference) -> Footprint:
        """Both scores from the dense and the compressed counts."""
        score = compute_score(dense.params, dense.macs, c, reference)
        measured = compute_score(compressed.nonzero_params, compressed.macs, Compression(qw=c.qw, qa=c.qa), reference)
        return cls(dense, compressed, score, measured)


def footprint(candidate: Candidate, num_classes: int, reference: ScoreReference = ScoreReference(),
          input_size: tuple[int, ...] = CIFAR_INPUT) -> Footprint:
    """Build and compress an untrained copy to measure both scores before training.

    Structured pruning keeps the same number of channels per layer whatever the weights, and unstructured pruning
    removes exactly ``pu`` of the weights, so the counts do not depend on training.
    """
    model = candidate.build(num_classes)
    key = json.dumps([candidate.arch, candidate.width, candidate.groups, candidate.depthwise, candidate.arch_options,
                      num_classes, list(input_size), candidate.train.tta_flip], sort_keys=True, default=str)
    if key not in _DENSE:  # a search meets the same architecture many times: count its MACs once
        _DENSE[key] = measure(model, input_size)
    compressed = measure(compress(model, candidate.compression), input_size)
    return Footprint.of(candidate.compression, _DENSE[key], compressed, reference)


_DENSE: dict[str, Complexity] = {}
