"""What one trial does, as a pipeline of steps: sample → refuse twins → cost → decide before training → start
from its base (``base:``) → train with stopping → record (:meth:`TrialPipeline.finish`). The steps share one
:class:`~search.trial.context.TrialContext`; the decisions are in :mod:`search.trial.decisions`, the per-epoch
bookkeeping in :mod:`search.trial.epochs`, the resume checkpoints in :mod:`search.trial.resume`, the bases in
:mod:`search.trial.reuse`."""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import torch

from search import optuna_compat as compat
from search.candidate.candidate import Candidate, footprint
from search.errors import ArtifactStoreError, ConfigError
from search.space.params import candidate_from
from search.training.checkpoint import save_candidate_checkpoint
from search.training.data import Splits
from search.training.run import CandidateResult, run_candidate
from search.training.trainer import NonFiniteLossError
from search.trial import record
from search.trial.context import TrialContext
from search.trial.decisions import (
    dominated_before_training,
    no_budget_for_base,
    predicted_too_long,
    prune,
    rivals,
    twin_of,
)
from search.trial.epochs import EpochWatch
from search.trial.objectives import Objectives, Subject
from search.trial.resume import ResumeCheckpoints
from search.trial.reuse import BaseReuse, ConvergedBases
from search.trial.stopping import EarlyStopper

if TYPE_CHECKING:  # the study runs its trials: the trial reads the loaded study, it does not import the study
    from search.study.study_file import LoadedStudy

ACCURACY_FLOOR = "accuracy_floor"


class TrialPipeline:
    """The study's objective function: runs one trial through its steps and returns the values of the study's
    objectives (:mod:`search.trial.objectives`; validation accuracy and score by default) or raises
    ``optuna.TrialPruned``.

    Over 120 lines because it holds the whole trial in the order it runs: each step is one short method over the
    pieces the worker shares between trials (data, teacher, stores, stopper, bases), tested one by one; the
    decisions, the epoch bookkeeping and the stores are in their own modules."""

    def __init__(self, loaded: LoadedStudy, data: Splits, teacher: torch.nn.Module | None,
                 artifact_store, stopper: EarlyStopper, on_epoch=None, on_start=None, worker: str | None = None,
                 on_base_epoch=None):
        self.loaded, self.config, self.space = loaded, loaded.config, loaded.space
        self.objectives = loaded.config.objective_list
        self.data, self.teacher, self.artifact_store, self.stopper = data, teacher, artifact_store, stopper
        self.on_epoch = on_epoch  # progress display: (trial number, EpochResult)
        self.on_start = on_start  # called once the trial is sampled and checked for twins (releases the claim)
        self.worker = worker
        self.current_trial_id: int | None = None
        self.resumes = ResumeCheckpoints(artifact_store)
        self.bases = BaseReuse(loaded, data, teacher, artifact_store)
        # base: the converged bases candidates are fine-tuned from; on_base_epoch(label, EpochResult): progress
        self.converged = None if self.config.base is None else ConvergedBases(loaded, data, artifact_store,
                                                                              on_base_epoch)
        self.base_teaches = self.config.base is not None and self.config.base.teacher == "base"

    def __call__(self, trial: optuna.Trial):
        self.current_trial_id = compat.trial_id(trial)
        self.store_failed = False
        try:
            values = self._run(trial)
        except ArtifactStoreError:  # queued again by the runner: its retry resumes from the last checkpoint
            self.store_failed = True
            raise
        except Exception:  # finished one way or another (pruned, failed): its resume checkpoint is no use now
            self.resumes.drop(trial)
            raise
        # KeyboardInterrupt (Ctrl-C, SIGTERM) passes by: the trial is queued again and resumes from the checkpoint
        self.resumes.drop(trial)
        return values

    def _run(self, trial: optuna.Trial):
        run = TrialContext(trial, start=time.perf_counter())
        try:
            self.sample(run)
            # Still under the runner's claim: every trial started before this one has all its parameters, so
            # two workers that draw the same candidate at once see each other here.
            twin = twin_of(trial)
        finally:
            if self.on_start is not None:
                self.on_start()
        run.sample_s = time.perf_counter() - run.start
        if twin:
            prune(trial, twin)
        self.cost(run)
        self.decide(run)
        self.start_from_base(run)
        result = self.train(run)
        return self.finish(run, result)

    def sample(self, run: TrialContext) -> None:
        run.values = self.space.sample(run.trial)
        if self.worker:
            record.write(run.trial, worker=self.worker)

    def cost(self, run: TrialContext) -> None:
        """The candidate, its costs and the objectives known before training, recorded; a candidate that cannot be
        built is pruned."""
        trial, shape = run.trial, tuple(self.data.x_train.shape[1:])
        try:
            candidate = candidate_from(run.values, self.config.train, self.config.candidate_compress_at)
            if candidate.distillation is not None and self.teacher is None and not self.base_teaches:
                raise ConfigError("distillation sampled but the study has no teacher")
            fp = footprint(candidate, self.data.num_classes, self.config.reference, shape)
            subject = Subject(candidate, fp, self.data.num_classes, shape, device=self.data.device)
            before = {m.name: m.compute(subject) for m in self.objectives.before}
        except ConfigError as e:
            prune(trial, f"cannot build this candidate: {e}")
        run.candidate, run.footprint, run.subject, run.before = candidate, fp, subject, before
        run.costs = self.objectives.known_costs(before)
        record.write(trial, candidate=candidate.to_dict())
        record.write(
            trial,
            dense_params=fp.dense.params, dense_macs=fp.dense.macs,
            compressed_params=fp.compressed.params, compressed_macs=fp.compressed.macs,
            nonzero_params=fp.compressed.nonzero_params, score=fp.score.total,
            measured_score=fp.measured_score.total, device=str(self.data.device),
            dense_epochs=candidate.dense_epochs, before_values=before,
        )

    def decide(self, run: TrialContext) -> None:
        """Prune, before it trains, a candidate a finished trial dominates, one predicted over the time cap, or one
        whose architecture would need a new base past the bases' budget."""
        reason = dominated_before_training(run.trial, self.objectives, self.config.stopper, run.costs) \
            or predicted_too_long(run.trial, self.config.max_trial_seconds, len(self.data.y_train),
                                  run.candidate.train.epochs, run.footprint.dense.macs)
        if not reason and self.converged is not None:
            key = self.converged.key(run.candidate)
            if self.converged.stored(key) is None:
                reason = no_budget_for_base(run.trial, key, self.config.base, run.footprint.dense.macs,
                                            self.config.timeout, self.config.n_trials, run.candidate.train.epochs)
        if reason:
            prune(run.trial, reason)

    def start_from_base(self, run: TrialContext) -> None:
        """With ``base:``, the converged base of the candidate's architecture: loaded, or trained here first."""
        if self.converged is not None:
            run.base = self.converged.get(run.trial, run.candidate)

    def train(self, run: TrialContext) -> CandidateResult:
        """Train the candidate, from its resume checkpoint or its reused base if it has one; the epoch watch stops it
        early and writes resume checkpoints."""
        trial, candidate = run.trial, run.candidate
        run.trained_since = time.perf_counter()
        watch = EpochWatch(run, self.stopper, self.config, rivals=lambda: rivals(self.stopper, self.objectives, trial),
                           save=lambda epoch, state: self.resumes.save(trial, candidate, epoch, state),
                           on_epoch=self.on_epoch)
        resume = self.resumes.load(trial, candidate)
        teacher = self.teacher
        if run.base is not None:  # fine-tuned from a converged base, which teaches unless the study names a teacher
            base = None
            if self.base_teaches and candidate.distillation is not None:
                teacher = self.converged.teacher(candidate, run.base)
        else:
            base = None if resume is not None else self.bases.base(trial, candidate)  # a resumed run is past it
        try:
            return run_candidate(candidate, self.data, teacher, on_epoch=watch.on_epoch,
                                 reference=self.config.reference, resume=resume, on_state=watch.on_state,
                                 known=run.footprint, base=base,
                                 initial=None if run.base is None else run.base["model"])
        except NonFiniteLossError as e:
            prune(trial, str(e))

    def finish(self, run: TrialContext, result: CandidateResult) -> tuple[float, ...]:
        """Record the training, set the accuracy floor's constraint, measure the values, upload the checkpoint."""
        trial = run.trial
        record.write(
            trial,
            epochs_run=result.epochs_run, wall_s=time.perf_counter() - run.start,
            train_s=result.wall_s - run.bookkeeping_s, bookkeeping_s=run.bookkeeping_s, sample_s=run.sample_s,
            images_per_s=result.train_images_per_s, sparsity=result.sparsity,
            threads=torch.get_num_threads(),  # this worker's share of its host's cores when the trial ended
            nonzero_params=result.footprint.compressed.nonzero_params,
            measured_score=result.footprint.measured_score.total,
        )
        if self.config.accuracy_floor is not None:
            trial.set_constraint(ACCURACY_FLOOR, self.config.accuracy_floor - result.val_accuracy)
        values = objective_values(self.objectives, trial, result, run.before, replace(run.subject, model=result.model))
        upload_checkpoint(trial, run.candidate, result, self.data, self.config.data, self.artifact_store)
        return values


def objective_values(objectives: Objectives, trial, result: CandidateResult, before: dict[str, float],
                     subject: Subject) -> tuple[float, ...]:
    """The trial's values in the order of the study's objectives; measured ones are timed now and recorded with
    their target and hardware."""
    values = []
    for m in objectives:
        if m.when == "training":
            values.append(result.val_accuracy)
        elif m.when == "before":
            values.append(before[m.name])
        else:
            value, extra = m.record(subject)
            record.write(trial, **extra)
            values.append(value)
    return tuple(values)


def upload_checkpoint(trial, candidate: Candidate, result: CandidateResult, data: Splits, data_config,
                      artifact_store) -> None:
    """Save the trained candidate's checkpoint and upload it as the trial's artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"trial-{trial.number}.pt"
        save_candidate_checkpoint(path, candidate, result.model, data, data_config, result.val_accuracy)
        try:
            artifact_id = optuna.artifacts.upload_artifact(artifact_store=artifact_store, file_path=str(path),
                                                           study_or_trial=trial, mimetype="application/octet-stream")
        except OSError as e:
            record.write(trial, store_error=f"{e.strerror or e}"[:200])
            raise ArtifactStoreError(f"trial {trial.number}: cannot write its checkpoint to the artifact store "
                                     f"({e.strerror or e}); it is queued again") from None
    record.write(trial, checkpoint_artifact_id=artifact_id)
