"""What a trial does between two epochs of its training (:mod:`search.trial.pipeline`): report the epoch, stop it
(the early stopper, the time cap), write resume checkpoints. The seconds spent here are bookkeeping, not training:
they go to ``TrialContext.bookkeeping_s`` and out of the time the cap projects."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from search import optuna_compat as compat
from search.training.trainer import EpochResult
from search.trial import record
from search.trial.context import TrialContext
from search.trial.decisions import projected_too_long, prune
from search.trial.stopping import EarlyStopper, Finished


class EpochWatch:
    """The callbacks of one training run (``run_candidate``'s ``on_epoch`` and ``on_state``).

    ``rivals()`` lists the trials the stopper compares with (read only if it looks); ``save(epoch, state)`` writes a
    resume checkpoint; ``on_epoch(trial number, result)`` is the progress display. ``config``: the StudyConfig
    (``max_trial_seconds``, ``checkpoint_every``, ``checkpoint_min_seconds``). ``clock`` times the bookkeeping and
    the training, ``wall`` the checkpoint cadence.
    """

    def __init__(self, run: TrialContext, stopper: EarlyStopper, config, rivals: Callable[[], list[Finished]],
                 save: Callable[[int, dict], None], on_epoch=None, clock=time.perf_counter, wall=time.monotonic):
        self.run, self.stopper, self.config = run, stopper, config
        self.rivals, self.save, self.progress = rivals, save, on_epoch
        self.clock, self.wall = clock, wall
        run.last_saved = wall()

    def on_epoch(self, result: EpochResult) -> None:
        t0 = self.clock()
        try:
            self._epoch(result)
        finally:
            self.run.bookkeeping_s += self.clock() - t0

    def _epoch(self, result: EpochResult) -> None:
        run, trial = self.run, self.run.trial
        # Trial.report refuses multi-objective studies; the storage call is what it would do, so the dashboard draws
        # learning curves from these intermediate values.
        trial.storage.set_trial_intermediate_value(compat.trial_id(trial), result.epoch, result.val_accuracy)
        if self.progress is not None:
            self.progress(trial.number, result)
        why = None
        # No decision after the last epoch (stopping saves nothing and would lose the result), nor at an epoch
        # replayed from a reused base (images_per_s 0): it cost nothing, and its accuracy is the shared dense
        # network's, the same for every candidate on that base, so a rung there would rank siblings by score
        # alone and stop the lightly compressed ones before they show what they do.
        if result.epoch < result.epochs and result.images_per_s > 0:
            why = self.stopper.should_stop(result.epoch, result.val_accuracy, run.costs, _Lazy(self.rivals),
                                           run.candidate.dense_epochs)
        if result.images_per_s > 0:  # trained here, not replayed from a reused base
            run.epochs_trained += 1
            why = why or projected_too_long(self.config.max_trial_seconds, result, run.epochs_trained,
                                            self.clock() - run.trained_since - run.bookkeeping_s)
        elif run.epochs_trained == 0:
            run.trained_since = self.clock()  # the replay of a reused base costs nothing: the clock starts after
        if why:
            record.write(trial, wall_s=self.clock() - run.start, epochs_run=result.epoch)
            prune(trial, why)

    def on_state(self, epoch: int, get_state: Callable[[], dict]) -> None:
        # Losing a few seconds of training to a killed worker costs less than a checkpoint after every short epoch
        # (on the quickstart, checkpoints every epoch took 1 % of the trial time).
        run, every, t0 = self.run, self.config.checkpoint_every, self.wall()
        if every and epoch % every == 0 and epoch < run.candidate.train.epochs \
                and t0 - run.last_saved >= self.config.checkpoint_min_seconds:
            self.save(epoch, get_state())
            run.last_saved = self.wall()
            run.bookkeeping_s += run.last_saved - t0


class _Lazy(Sequence):
    """The rivals, read from the storage only if the stopper looks at them (not before its warm-up, never with the
    stopper off): one query per epoch saved."""

    def __init__(self, load):
        self._load, self._items = load, None

    def _get(self) -> list:
        if self._items is None:
            self._items = self._load()
        return self._items

    def __getitem__(self, i):
        return self._get()[i]

    def __len__(self) -> int:
        return len(self._get())
