"""What one trial does: sample → candidate → score before training → train with early stopping → record."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from search.candidate import Candidate, costs, run_candidate
from search.checkpoint import save_candidate_checkpoint
from search.data import Splits
from search.errors import ConfigError
from search.pruner import EarlyStopper, Finished
from search.study import LoadedStudy, candidate_from
from search.train import EpochReport, NonFiniteLossError

ACCURACY_FLOOR = "accuracy_floor"


class Objective:
    """The study's objective: returns (validation accuracy, score) or raises ``optuna.TrialPruned``."""

    def __init__(self, loaded: LoadedStudy, data: Splits, teacher: torch.nn.Module | None,
                 artifact_store, stopper: EarlyStopper, on_epoch=None):
        self.loaded, self.config, self.space = loaded, loaded.config, loaded.space
        self.data, self.teacher, self.artifact_store, self.stopper = data, teacher, artifact_store, stopper
        self.on_epoch = on_epoch  # progress display: (trial number, EpochReport)

    def __call__(self, trial: optuna.Trial):
        start = time.perf_counter()
        values = self.space.sample(trial)
        try:
            candidate = candidate_from(values, self.config)
            if candidate.distillation is not None and self.teacher is None:
                raise ConfigError("distillation sampled but the study has no teacher")
            cost = costs(candidate, self.data.num_classes, self.config.reference)
        except ConfigError as e:
            _prune(trial, f"cannot build this candidate: {e}")
        score = cost.course_score.total
        trial.set_user_attr("candidate", candidate.to_dict())
        _record(trial, {
            "dense_params": cost.dense.params, "dense_macs": cost.dense.macs,
            "compressed_params": cost.compressed.params, "compressed_macs": cost.compressed.macs,
            "nonzero_params": cost.compressed.nonzero_params, "course_score": score,
            "measured_score": cost.measured_score.total, "device": str(self.data.device),
        })
        reason = self._dominated_before_training(trial, score)
        if reason:
            _prune(trial, reason)

        storage, trial_id = trial.storage, trial._trial_id

        def on_epoch(report: EpochReport) -> None:
            # Trial.report refuses multi-objective studies; the storage call is what it would do, so the
            # dashboard draws learning curves from these intermediate values.
            storage.set_trial_intermediate_value(trial_id, report.epoch, report.val_accuracy)
            trial.set_user_attr("epochs_run", report.epoch)
            if self.on_epoch is not None:
                self.on_epoch(trial.number, report)
            why = self.stopper.should_stop(report.epoch, report.val_accuracy, score, self._finished(trial))
            if why:
                _record(trial, {"wall_s": time.perf_counter() - start})
                _prune(trial, why)

        try:
            result = run_candidate(candidate, self.data, self.teacher, on_epoch=on_epoch,
                                   reference=self.config.reference)
        except NonFiniteLossError as e:
            _prune(trial, str(e))
        _record(trial, {
            "epochs_run": result.epochs_run, "wall_s": time.perf_counter() - start,
            "images_per_s": result.train_images_per_s, "sparsity": result.sparsity,
            "nonzero_params": result.costs.compressed.nonzero_params,
            "measured_score": result.costs.measured_score.total,
        })
        if self.config.accuracy_floor is not None:
            trial.set_constraint(ACCURACY_FLOOR, self.config.accuracy_floor - result.val_accuracy)
        self._save_checkpoint(trial, candidate, result)
        return result.val_accuracy, score

    def _finished(self, trial) -> list[Finished]:
        done = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return [Finished(t.values[1], dict(t.intermediate_values)) for t in done]

    def _dominated_before_training(self, trial, score: float) -> str | None:
        pruner = self.config.pruner
        if not pruner.skip_dominated:
            return None
        for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.params == trial.params:
                return f"same parameters as trial {t.number}, already finished"
            if t.values[1] <= score and t.values[0] >= pruner.skip_accuracy:
                return (f"cannot enter the front: trial {t.number} has score {t.values[1]:.4g} <= {score:.4g} "
                        f"and accuracy {t.values[0]:.4f} >= {pruner.skip_accuracy:g}")
        return None

    def _save_checkpoint(self, trial, candidate: Candidate, result) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"trial-{trial.number}.pt"
            save_candidate_checkpoint(path, candidate, result.model, self.data, self.config.data,
                                      result.val_accuracy)
            artifact_id = optuna.artifacts.upload_artifact(artifact_store=self.artifact_store, file_path=str(path),
                                                           study_or_trial=trial, mimetype="application/octet-stream")
        trial.set_user_attr("checkpoint_artifact_id", artifact_id)


def _record(trial, attrs: dict) -> None:
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def _prune(trial, reason: str):
    trial.set_user_attr("pruned_reason", reason)
    raise optuna.TrialPruned(reason)
