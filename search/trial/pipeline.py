"""What one trial does: sample → candidate → score before training → train with early stopping → record."""

from __future__ import annotations

import io
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from search import optuna_compat as compat
from search.candidate.candidate import Candidate, costs
from search.errors import ConfigError
from search.study.locks import study_lock
from search.study.study_file import LoadedStudy, candidate_from
from search.training.bases import Base, BaseStore, base_key, data_identity, model_digest
from search.training.checkpoint import save_candidate_checkpoint
from search.training.data import Splits
from search.training.run import run_candidate
from search.training.trainer import EpochReport, NonFiniteLossError
from search.trial import record
from search.trial.objectives import Objectives, Subject
from search.trial.record import TrialRecord
from search.trial.stopping import EarlyStopper, Finished

ACCURACY_FLOOR = "accuracy_floor"


class Objective:
    """The study's objective: returns the values of the study's objectives (:mod:`search.trial.objectives`; validation
    accuracy and score by default) or raises ``optuna.TrialPruned``."""

    def __init__(self, loaded: LoadedStudy, data: Splits, teacher: torch.nn.Module | None,
                 artifact_store, stopper: EarlyStopper, on_epoch=None, on_start=None, worker: str | None = None):
        self.loaded, self.config, self.space = loaded, loaded.config, loaded.space
        self.objectives = loaded.config.objective_list
        self.data, self.teacher, self.artifact_store, self.stopper = data, teacher, artifact_store, stopper
        self.on_epoch = on_epoch  # progress display: (trial number, EpochReport)
        self.on_start = on_start  # called once the trial is sampled and checked for twins (releases the claim)
        self.worker = worker
        self.current_trial_id: int | None = None
        self._bases: BaseStore | None = None   # reuse_bases: built at the first trial that needs one
        self._identities: dict[str, str] = {}  # the data's and the teacher's, for base keys: computed once

    def __call__(self, trial: optuna.Trial):
        self.current_trial_id = compat.trial_id(trial)
        try:
            values = self._run(trial)
        except Exception:  # finished one way or another (pruned, failed): its resume checkpoint is no use now
            self._drop_resume(trial)
            raise
        # KeyboardInterrupt (Ctrl-C, SIGTERM) passes by: the trial is queued again and resumes from the checkpoint
        self._drop_resume(trial)
        return values

    def _run(self, trial: optuna.Trial):
        start = time.perf_counter()
        try:
            values = self.space.sample(trial)
            if self.worker:
                record.write(trial, worker=self.worker)
            # Still under the runner's claim: every trial started before this one has all its parameters, so
            # two workers that draw the same candidate at once see each other here.
            duplicate = _duplicate_of(trial)
        finally:
            if self.on_start is not None:
                self.on_start()
        sample_s = time.perf_counter() - start  # the sampler's share of the orchestration
        if duplicate:
            _prune(trial, duplicate)
        try:
            candidate = candidate_from(values, self.config)
            if candidate.distillation is not None and self.teacher is None:
                raise ConfigError("distillation sampled but the study has no teacher")
            cost = costs(candidate, self.data.num_classes, self.config.reference, tuple(self.data.x_train.shape[1:]))
            subject = Subject(candidate, cost, self.data.num_classes, tuple(self.data.x_train.shape[1:]),
                              device=self.data.device)
            before = {m.name: m.compute(subject) for m in self.objectives.before}
        except ConfigError as e:
            _prune(trial, f"cannot build this candidate: {e}")
        rank_costs = self.objectives.stop_costs(before)
        record.write(trial, candidate=candidate.to_dict())
        record.write(
            trial,
            dense_params=cost.dense.params, dense_macs=cost.dense.macs,
            compressed_params=cost.compressed.params, compressed_macs=cost.compressed.macs,
            nonzero_params=cost.compressed.nonzero_params, score=cost.score.total,
            measured_score=cost.measured_score.total, device=str(self.data.device),
            dense_epochs=candidate.dense_epochs, before_values=before,
        )
        reason = self._dominated_before_training(trial, rank_costs) or self._predicted_too_long(trial, candidate, cost)
        if reason:
            _prune(trial, reason)

        storage, trial_id = trial.storage, compat.trial_id(trial)
        spent = [0.0]  # seconds in the per-epoch bookkeeping below: orchestration, not training
        trained = [0, time.perf_counter()]  # epochs this trial trained itself (not a reused base's), since when

        def on_epoch(report: EpochReport) -> None:
            t0 = time.perf_counter()
            try:
                _on_epoch(report)
            finally:
                spent[0] += time.perf_counter() - t0

        def _on_epoch(report: EpochReport) -> None:
            # Trial.report refuses multi-objective studies; the storage call is what it would do, so the
            # dashboard draws learning curves from these intermediate values.
            storage.set_trial_intermediate_value(trial_id, report.epoch, report.val_accuracy)
            if self.on_epoch is not None:
                self.on_epoch(trial.number, report)
            why = None
            # No decision after the last epoch (stopping saves nothing and would lose the result), nor at an epoch
            # replayed from a reused base (images_per_s 0): it cost nothing, and its accuracy is the shared dense
            # network's, the same for every candidate on that base, so a rung there would rank siblings by score
            # alone and stop the lightly compressed ones before they show what they do.
            if report.epoch < report.epochs and report.images_per_s > 0:
                why = self.stopper.should_stop(report.epoch, report.val_accuracy, rank_costs,
                                               _Lazy(lambda: self._finished(trial)), candidate.dense_epochs)
            if report.images_per_s > 0:  # trained here, not replayed from a reused base
                trained[0] += 1
                why = why or self._projected_too_long(report, trained[0], time.perf_counter() - trained[1] - spent[0])
            elif trained[0] == 0:
                trained[1] = time.perf_counter()  # the replay of a reused base costs nothing: the clock starts after
            if why:
                record.write(trial, wall_s=time.perf_counter() - start, epochs_run=report.epoch)
                _prune(trial, why)

        last_saved = [time.monotonic()]

        def on_state(epoch: int, get_state) -> None:
            # Losing a few seconds of training to a killed worker costs less than a checkpoint after every short
            # epoch (on the quickstart, checkpoints every epoch took 1 % of the trial time).
            every, t0 = self.config.checkpoint_every, time.monotonic()
            if every and epoch % every == 0 and epoch < candidate.train.epochs \
                    and t0 - last_saved[0] >= self.config.checkpoint_min_seconds:
                self._save_resume(trial, candidate, epoch, get_state())
                last_saved[0] = time.monotonic()
                spent[0] += last_saved[0] - t0

        resume = self._resume_state(trial, candidate)
        base = None if resume is not None else self._base(trial, candidate)  # a resumed run is past its base
        try:
            result = run_candidate(candidate, self.data, self.teacher, on_epoch=on_epoch,
                                   reference=self.config.reference, resume=resume, on_state=on_state, known=cost,
                                   base=base)
        except NonFiniteLossError as e:
            _prune(trial, str(e))
        record.write(
            trial,
            epochs_run=result.epochs_run, wall_s=time.perf_counter() - start,
            train_s=result.wall_s - spent[0], bookkeeping_s=spent[0], sample_s=sample_s,
            images_per_s=result.train_images_per_s, sparsity=result.sparsity,
            threads=torch.get_num_threads(),  # this worker's share of its host's cores when the trial ended
            nonzero_params=result.costs.compressed.nonzero_params,
            measured_score=result.costs.measured_score.total,
        )
        if self.config.accuracy_floor is not None:
            trial.set_constraint(ACCURACY_FLOOR, self.config.accuracy_floor - result.val_accuracy)
        values = self._values(trial, result, before, replace(subject, model=result.model))
        self._save_checkpoint(trial, candidate, result)
        return values

    def _values(self, trial, result, before: dict[str, float], subject: Subject) -> tuple[float, ...]:
        """The trial's values in the order of the study's objectives; measured ones are timed now and recorded with
        their target and hardware."""
        values = []
        for m in self.objectives:
            if m.when == "training":
                values.append(result.val_accuracy)
            elif m.when == "before":
                values.append(before[m.name])
            else:
                value, extra = m.record(subject)
                record.write(trial, **extra)
                values.append(value)
        return tuple(values)

    def _base(self, trial, candidate: Candidate) -> Base | None:
        """With ``reuse_bases``, the shared dense phase of ``candidate`` (:mod:`search.training.bases`); records
        ``base_key``, then ``base_reused`` and ``epochs_saved`` once the base is loaded or trained."""
        if not self.config.reuse_bases:
            return None
        ids = self._identities
        if "data" not in ids:
            ids["data"] = data_identity(self.config.data, self.data)
        if candidate.distillation is not None and "teacher" not in ids:
            ids["teacher"] = f"{self.config.teacher.key(self.config.data)}-{model_digest(self.teacher)}"
        key = base_key(candidate, ids["data"], ids.get("teacher"), self.data.device.type)
        record.write(trial, base_key=key, base_reused=False, epochs_saved=0)
        if key is None:
            return None
        if self._bases is None:
            url, name = self.loaded.storage_url, self.config.name
            self._bases = BaseStore(self.artifact_store, lambda k: study_lock(url, f"{name}:base:{k}"))

        def ready(reused: bool) -> None:
            record.write(trial, base_reused=reused, epochs_saved=candidate.dense_epochs if reused else 0)

        return Base(self._bases, key, ready)

    def _save_resume(self, trial, candidate: Candidate, epoch: int, state: dict) -> None:
        """Write the trial's state after ``epoch`` to the artifact store, then point the trial at it: a worker killed
        while writing leaves the previous checkpoint in charge."""
        buffer = io.BytesIO()
        torch.save({**state, "candidate": candidate.to_dict()}, buffer)
        buffer.seek(0)
        artifact_id = f"resume-{uuid.uuid4().hex}"
        self.artifact_store.write(artifact_id, buffer)
        previous = TrialRecord.of(trial).resume
        record.write(trial, resume={"artifact_id": artifact_id, "epoch": epoch})
        if previous:
            self._remove(previous["artifact_id"])

    def _resume_state(self, trial, candidate: Candidate) -> dict | None:
        """The last epoch checkpoint of the trial this one retries, if there is one and it can be read."""
        pointer = TrialRecord.of(trial).resume  # copied from the failed trial by the retry callback
        if not pointer or trial.storage.get_trial_system_attrs(compat.trial_id(trial)).get("failed_trial") is None:
            return None
        try:
            with self.artifact_store.open_reader(pointer["artifact_id"]) as f:
                state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
        except Exception as e:  # missing or torn file: start again from epoch 0
            record.write(trial, resume_error=f"{type(e).__name__}: {e}"[:200])
            return None
        if state.get("candidate") != candidate.to_dict():
            return None
        record.write(trial, resumed_from_epoch=pointer["epoch"])
        return state

    def _drop_resume(self, trial) -> None:
        pointer = TrialRecord.of(trial).resume
        if pointer:
            self._remove(pointer["artifact_id"])
            record.write(trial, resume=None)

    def _remove(self, artifact_id: str) -> None:
        try:
            self.artifact_store.remove(artifact_id)
        except Exception:
            pass  # already gone (another retry of the same trial removed it)

    def _finished(self, trial) -> list[Finished]:
        """The rivals the stopper compares ``trial`` with: the complete trials, or for a stopper that sees "all"
        every other trial with a learning curve (complete, stopped early, running)."""
        states = (TrialState.COMPLETE,) if self.stopper.sees != "all" else (
            TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        out = []
        for t in trial.study.get_trials(deepcopy=False, states=states):
            if t.number == trial.number or (self.stopper.sees == "all" and not t.intermediate_values):
                continue
            costs = self.objectives.stop_costs(known_before(self.objectives, t))
            if costs is not None:
                out.append(Finished(costs, dict(t.intermediate_values), TrialRecord.of(t).dense_epochs))
        return out

    def _predicted_too_long(self, trial, candidate: Candidate, cost) -> str | None:
        """With ``max_trial_seconds``: the reason not to start a candidate whose training time, predicted from its
        MACs and the training throughput (MACs × images per second) of the trials finished so far, is over the cap.
        Until three trials have finished nothing is predicted; the per-epoch projection still bounds the first."""
        cap = self.config.max_trial_seconds
        if cap is None:
            return None
        rates = []
        for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            r = TrialRecord.of(t)
            epochs = (r.epochs_run or 0) - (r.epochs_saved or 0)
            if r.train_s and r.dense_macs and epochs > 0:
                rates.append(r.dense_macs * len(self.data.y_train) * epochs / r.train_s)
        if len(rates) < 3:
            return None
        epochs = candidate.train.epochs
        predicted = cost.dense.macs * len(self.data.y_train) * epochs / float(np.median(rates))
        if predicted <= cap:
            return None
        record.write(trial, predicted_train_s=predicted)
        return (f"predicted to train for {predicted:.0f} s ({epochs} epochs at the median MAC throughput of "
                f"{len(rates)} finished trials), over max_trial_seconds {cap:g}")

    def _projected_too_long(self, report: EpochReport, trained: int, seconds: float) -> str | None:
        """With ``max_trial_seconds``: the reason to stop a trial whose epochs so far project past the cap."""
        cap = self.config.max_trial_seconds
        if cap is None or report.epoch >= report.epochs:  # the last epoch is spent already: stopping saves nothing
            return None
        projected = seconds + seconds / trained * (report.epochs - report.epoch)
        if projected <= cap:
            return None
        return (f"projected to train for {projected:.0f} s ({seconds:.0f} s for its first {trained} epoch(s) of "
                f"{report.epochs}), over max_trial_seconds {cap:g}")

    def _dominated_before_training(self, trial, costs: tuple[float, ...] | None) -> str | None:
        """Why a candidate cannot enter the front before it trains: a finished trial has every cost no worse and at
        least ``skip_accuracy``. Only when every cost is known before training (a measured latency may still win)."""
        stopper = self.config.stopper
        if not stopper.skip_dominated or costs is None or any(m.when != "before" for m in self.objectives.costs):
            return None
        for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            theirs = self.objectives.stop_costs(known_before(self.objectives, t))
            accuracy = self.objectives.accuracy(t)
            if all(x <= y for x, y in zip(theirs, costs, strict=True)) and accuracy >= stopper.skip_accuracy:
                shown = ", ".join(f"{m.name} {a:.4g} <= {b:.4g}" for m, a, b in zip(self.objectives.before, theirs,
                                                                                     costs, strict=True))
                return (f"cannot enter the front: trial {t.number} has {shown} and accuracy {accuracy:.4f} >= "
                        f"{stopper.skip_accuracy:g}")
        return None

    def _save_checkpoint(self, trial, candidate: Candidate, result) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"trial-{trial.number}.pt"
            save_candidate_checkpoint(path, candidate, result.model, self.data, self.config.data,
                                      result.val_accuracy)
            artifact_id = optuna.artifacts.upload_artifact(artifact_store=self.artifact_store, file_path=str(path),
                                                           study_or_trial=trial, mimetype="application/octet-stream")
        record.write(trial, checkpoint_artifact_id=artifact_id)


def known_before(objectives: Objectives, t) -> dict[str, float]:
    """A trial's before-training values: from its values when complete, else from its record."""
    if t.state == TrialState.COMPLETE:
        return {m.name: objectives.value(t, m.name) for m in objectives.before}
    r = TrialRecord.of(t)
    return objectives.before_values(r.before_values, r.score)


def _duplicate_of(trial) -> str | None:
    """Why ``trial`` need not be trained: a finished trial, or a running one that started first, has its parameters.

    Called under the study's claim lock, after sampling: the trials that started earlier have all their
    parameters. Of two running twins only the later defers, so a candidate is trained once, never zero times. A
    retry of a failed trial (``failed_trial``) is the one legitimate repeat: its original is FAIL, a state not
    looked at here.
    """
    if trial.storage.get_trial_system_attrs(compat.trial_id(trial)).get("failed_trial") is not None:
        return None
    params = trial.params
    for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                            TrialState.RUNNING)):
        if t.number == trial.number or t.params != params:
            continue
        if t.state == TrialState.RUNNING:
            if t.number < trial.number:
                return f"same parameters as trial {t.number}, running"
        else:
            return f"same parameters as trial {t.number}, already {t.state.name.lower()}"
    return None


class _Lazy(Sequence):
    """The finished trials, read from the storage only if the stopper looks at them (not before its warm-up, never
    with the stopper off): one query per epoch saved."""

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


def _prune(trial, reason: str):
    record.write(trial, pruned_reason=reason)
    raise optuna.TrialPruned(reason)
