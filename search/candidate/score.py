"""The MicroNet-style score of the course:

    score = [1-(ps+pu)]·(qw/32)·w/W_ref + (1-ps)·(max(qw,qa)/32)·f/F_ref

w = parameters and f = MACs of the unpruned model, W_ref = 5.6e6 and F_ref = 2.8e8 by default.
"""

from __future__ import annotations

from dataclasses import dataclass

from search.compress.compression import Compression
from search.config import number
from search.errors import ConfigError


@dataclass(frozen=True)
class ScoreReference:
    """The reference model the score divides by (the course's defaults)."""

    params: float = 5.6e6
    macs: float = 2.8e8

    def __post_init__(self):
        for key in ("params", "macs"):
            value = getattr(self, key)
            if not number(value) or value <= 0:
                raise ConfigError(f"reference {key} must be a number > 0, got {value!r}")


@dataclass(frozen=True)
class ScoreTerms:
    param_term: float
    macs_term: float

    @property
    def total(self) -> float:
        return self.param_term + self.macs_term


def compute_score(params: int, macs: int, compression: Compression = Compression(),
                  reference: ScoreReference = ScoreReference()) -> ScoreTerms:
    c = compression
    param_term = (1 - (c.ps + c.pu)) * (c.qw / 32) * params / reference.params
    macs_term = (1 - c.ps) * (max(c.qw, c.qa) / 32) * macs / reference.macs
    return ScoreTerms(param_term, macs_term)


@dataclass(frozen=True)
class ScoredModel:
    """Counts of one model and its score under a compression setting."""

    params: int
    nonzero_params: int
    macs: int
    compression: Compression
    score: ScoreTerms

    def as_dict(self) -> dict:
        c = self.compression
        return {
            "params": self.params, "macs": self.macs, "nonzero_params": self.nonzero_params,
            "ps": c.ps, "pu": c.pu, "qw": c.qw, "qa": c.qa,
            "param_term": self.score.param_term, "macs_term": self.score.macs_term, "score": self.score.total,
        }


def score_model(model, compression: Compression = Compression(), reference: ScoreReference = ScoreReference(),
                input_size: tuple[int, ...] | None = None) -> ScoredModel:
    """Measure ``model`` (see :mod:`search.candidate.complexity`) and score it under ``compression``."""
    from search.candidate.complexity import CIFAR_INPUT, measure

    counts = measure(model, input_size or CIFAR_INPUT)
    return ScoredModel(counts.params, counts.nonzero_params, counts.macs, compression,
                       compute_score(counts.params, counts.macs, compression, reference))
