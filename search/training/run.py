"""Train one candidate: build → train dense (or load its shared base) → compress → train on (with distillation) →
measure. The trial (:mod:`search.trial.pipeline`), the ``train`` command and the benchmarks call it.

Follows seed 000's recipe: train, prune (structured ``ps``, then global unstructured ``pu``), switch on
quantization-aware training (``qw``, ``qa``), and train on with the distillation loss while the pruned weights stay
removed; masks are made permanent at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from search.candidate import Candidate, Footprint, compress
from search.candidate.complexity import Complexity, count_nonzero_params, measure
from search.candidate.score import ScoreReference
from search.compress import steps, weight_sparsity
from search.training.data import Splits
from search.training.trainer import EpochCallback, EpochResult, Trainer, evaluate


@dataclass
class CandidateResult:
    candidate: Candidate
    footprint: Footprint
    val_accuracy: float
    test_accuracy: float | None
    sparsity: float
    epochs_run: int
    wall_s: float
    train_images_per_s: float
    history: list[EpochResult]
    model: nn.Module
    base_reused: bool | None = None  # None: no shared base (see search.bases); else whether it was loaded
    epochs_saved: int = 0            # dense epochs not trained here thanks to a reused base

    def summary(self) -> dict:
        c = self.footprint
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
                  on_state: StateCallback | None = None, known: Footprint | None = None, base=None,
                  initial: dict | None = None) -> CandidateResult:
    """Train and compress ``candidate`` on ``data``; validation accuracy is the objective.

    ``test=True`` also measures test accuracy (verification and the ``train`` command only, never the search).
    ``on_state(epoch, get_state)`` is called after every epoch; ``get_state()`` builds a resumable state, and
    ``resume=`` such a state continues the run where it was taken, with the same result as an uninterrupted run.
    ``known``: the candidate's :func:`footprint`, when already measured: skips counting MACs again (ptflops; MACs do not
    depend on the weights), only the non-zero parameters of the trained model are counted.
    ``base``: a :class:`search.bases.Base`; unless resuming, the dense phase comes from it: trained here (and
    stored) by the first trial that needs it, loaded by the others, whose curve then replays its epochs.
    ``initial``: the weights of a converged base (``base:``; :func:`search.training.bases.train_converged`) the dense
    model starts from; the candidate (``compress_at`` 0) is compressed at once and every epoch is a fine-tune.
    """
    start = time.perf_counter()
    torch.manual_seed(candidate.train.seed)
    model = candidate.build(data.num_classes).to(data.device)
    if initial is not None:
        model.load_state_dict(initial)
    input_size = tuple(data.x_train.shape[1:])  # the MACs of this data's image size
    dense = known.dense if known is not None else measure(model, input_size)
    phase = "dense"
    if resume is not None and resume["phase"] == "compressed":
        # the saved weights have the compressed structure; pruning an untrained copy gives the same shapes
        model, phase = compress(model, candidate.compression), "compressed"

    def epoch_done(epoch_result: EpochResult) -> None:
        if on_epoch is not None:
            on_epoch(epoch_result)
        if on_state is not None:
            on_state(epoch_result.epoch, lambda: {**trainer.state_dict(), "phase": phase})

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
        candidate, Footprint.of(candidate.compression, dense, compressed, reference), val, test_acc,
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
        for past in trainer.history:  # the trial's learning curve (and its early stopping) sees these epochs
            if on_epoch is not None:
                on_epoch(replace(past, images_per_s=0.0))  # 0 images/s: replayed, not trained here
    return reused
