"""One candidate of the search: build → (train dense) → compress → train on (with distillation) → measure.

Follows seed 000's recipe: train, prune (structured ``ps``, then global unstructured ``pu``), switch on
quantization-aware training (``qw``, ``qa``), and train on with the distillation loss while the pruned weights stay
removed; masks are made permanent at the end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from search.complexity import CIFAR_INPUT, Complexity, count_nonzero_params, measure
from search.compress import steps, weight_sparsity
from search.compress.compression import Compression
from search.config import from_mapping, to_mapping
from search.data import Splits
from search.errors import ConfigError
from search.models import build_model
from search.models.flip import FlipAverage
from search.score import Score, ScoreReference, compute_score
from search.train import Distillation, EpochCallback, EpochReport, TrainConfig, Trainer, evaluate


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
class Costs:
    """What a candidate costs, known before any training."""

    dense: Complexity
    compressed: Complexity
    score: Score             # the seeds' formula on the dense counts with the candidate's ps, pu, qw, qa
    measured_score: Score    # the formula on the measured compressed counts (pruning already in them)


def costs(candidate: Candidate, num_classes: int, reference: ScoreReference = ScoreReference(),
          input_size: tuple[int, ...] = CIFAR_INPUT) -> Costs:
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
    return _costs(candidate.compression, _DENSE[key], compressed, reference)


_DENSE: dict[str, Complexity] = {}


def _costs(c: Compression, dense: Complexity, compressed: Complexity, reference: ScoreReference) -> Costs:
    score = compute_score(dense.params, dense.macs, c, reference)
    measured = compute_score(compressed.nonzero_params, compressed.macs, Compression(qw=c.qw, qa=c.qa), reference)
    return Costs(dense, compressed, score, measured)


@dataclass
class CandidateResult:
    candidate: Candidate
    costs: Costs
    val_accuracy: float
    test_accuracy: float | None
    sparsity: float
    epochs_run: int
    wall_s: float
    train_images_per_s: float
    history: list[EpochReport]
    model: nn.Module
    base_reused: bool | None = None  # None: no shared base (see search.bases); else whether it was loaded
    epochs_saved: int = 0            # dense epochs not trained here thanks to a reused base

    def summary(self) -> dict:
        c = self.costs
        return {
            "val_accuracy": self.val_accuracy, "test_accuracy": self.test_accuracy,
            "params": c.dense.params, "macs": c.dense.macs, "dense_nonzero_params": c.dense.nonzero_params,
            "compressed_params": c.compressed.params, "compressed_macs": c.compressed.macs,
            "nonzero_params": c.compressed.nonzero_params, "sparsity": self.sparsity,
            "score": c.score.total, "param_term": c.score.param_term,
            "macs_term": c.score.macs_term, "measured_score": c.measured_score.total,
            "epochs_run": self.epochs_run, "wall_s": self.wall_s, "train_images_per_s": self.train_images_per_s,
        }


StateCallback = Callable[[int, Callable[[], dict]], None]


def run_candidate(candidate: Candidate, data: Splits, teacher: nn.Module | None = None,
                  on_epoch: EpochCallback | None = None, test: bool = False,
                  reference: ScoreReference = ScoreReference(), resume: dict | None = None,
                  on_state: StateCallback | None = None, known: Costs | None = None, base=None) -> CandidateResult:
    """Train and compress ``candidate`` on ``data``; validation accuracy is the objective.

    ``test=True`` also measures test accuracy (verification and the ``train`` command only, never the search).
    ``on_state(epoch, get_state)`` is called after every epoch; ``get_state()`` builds a resumable state, and
    ``resume=`` such a state continues the run where it was taken, with the same result as an uninterrupted run.
    ``known``: the candidate's :func:`costs`, when already measured: skips counting MACs again (ptflops; MACs do not
    depend on the weights), only the non-zero parameters of the trained model are counted.
    ``base``: a :class:`search.bases.Base`; unless resuming, the dense phase comes from it: trained here (and
    stored) by the first trial that needs it, loaded by the others, whose curve then replays its epochs.
    """
    start = time.perf_counter()
    torch.manual_seed(candidate.train.seed)
    model = candidate.build(data.num_classes).to(data.device)
    input_size = tuple(data.x_train.shape[1:])  # the MACs of this data's image size
    dense = known.dense if known is not None else measure(model, input_size)
    phase = "dense"
    if resume is not None and resume["phase"] == "compressed":
        # the saved weights have the compressed structure; pruning an untrained copy gives the same shapes
        model, phase = compress(model, candidate.compression), "compressed"

    def epoch_done(report: EpochReport) -> None:
        if on_epoch is not None:
            on_epoch(report)
        if on_state is not None:
            on_state(report.epoch, lambda: {**trainer.state_dict(), "phase": phase})

    trainer = Trainer(model, data, candidate.train, teacher, candidate.distillation, epoch_done)
    base_reused = None
    if resume is not None:
        trainer.load_state_dict(resume)
    elif base is not None and 0 < candidate.dense_epochs < candidate.train.epochs:
        base_reused = _dense_from_base(base, trainer, candidate.dense_epochs, on_epoch)
    if phase == "dense":
        trainer.run(max(0, candidate.dense_epochs - trainer.epoch))
    if candidate.dense_epochs < candidate.train.epochs:
        if phase == "dense":
            trainer.adopt_average()  # with ema, the averaged dense weights are the ones compressed
            trainer.model = model = compress(model, candidate.compression)
            trainer.reset_optimizer()
            phase = "compressed"
        trainer.run()
        trainer.adopt_average()
        steps.finish(model, candidate.compression)
    else:
        trainer.adopt_average()  # the model kept is the average
    if known is not None:
        compressed = Complexity(known.compressed.params, count_nonzero_params(model), known.compressed.macs)
    else:
        compressed = measure(model, input_size)
    val = trainer.history[-1].val_accuracy if trainer.history else evaluate(
        model, data.x_val, data.y_val, data.mean, data.std)
    test_acc = trainer.evaluate(data.x_test, data.y_test) if test else None
    return CandidateResult(
        candidate, _costs(candidate.compression, dense, compressed, reference), val, test_acc,
        weight_sparsity(model), trainer.epoch, time.perf_counter() - start, trainer.images_per_s,
        list(trainer.history), model, base_reused, candidate.dense_epochs if base_reused else 0,
    )


def _dense_from_base(base, trainer: Trainer, dense_epochs: int, on_epoch: EpochCallback | None) -> bool:
    """Bring ``trainer`` to the end of the dense phase through ``base``; whether the base was reused."""

    def train() -> dict:
        trainer.run(dense_epochs)
        return {**trainer.state_dict(), "phase": "dense"}

    state, reused = base.get_or_train(train)
    if reused:
        # the state holds everything the run goes on from (optimizer, step, RNG): the rest is as if trained here
        trainer.load_state_dict(state)
        for report in trainer.history:  # the trial's learning curve (and its early stopping) sees these epochs
            if on_epoch is not None:
                on_epoch(replace(report, images_per_s=0.0))  # 0 images/s: replayed, not trained here
    return reused
