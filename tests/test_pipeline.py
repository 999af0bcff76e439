"""The trial as a pipeline of steps (search.trial.pipeline): each step on its own, on an in-memory study, without
training."""

from types import SimpleNamespace

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState
from tiny import write_tiny_study

from search import optuna_compat as compat
from search.study.study_file import StopperConfig, load_study_file
from search.training.trainer import EpochResult
from search.trial.context import TrialContext
from search.trial.decisions import dominated_before_training, predicted_too_long, projected_too_long, twin_of
from search.trial.epochs import EpochWatch
from search.trial.objectives import Objectives
from search.trial.pipeline import TrialPipeline
from search.trial.resume import ResumeCheckpoints

X = {"x": CategoricalDistribution(["a", "b", "c"])}


def ask(study, x="a", failed_trial=None):
    study.enqueue_trial({"x": x})
    trial = study.ask(X)
    if failed_trial is not None:
        compat.storage_of(study).set_trial_system_attr(compat.trial_id(trial), "failed_trial", failed_trial)
    return trial


# refuse twins


def test_of_two_running_twins_only_the_later_defers():
    study = optuna.create_study()
    earlier, other, later = ask(study), ask(study, "b"), ask(study)
    assert twin_of(earlier) is None
    assert twin_of(other) is None
    assert twin_of(later) == "same parameters as trial 0, running"


@pytest.mark.parametrize("state", [TrialState.COMPLETE, TrialState.PRUNED])
def test_a_twin_of_a_finished_trial_is_refused_even_if_that_one_is_later(state):
    study = optuna.create_study()
    mine, finished = ask(study), ask(study)
    study.tell(finished, 1.0 if state == TrialState.COMPLETE else None, state=state)
    assert twin_of(mine) == f"same parameters as trial 1, already {state.name.lower()}"


def test_the_retry_of_a_failed_trial_is_no_twin():
    study = optuna.create_study()
    original = ask(study)
    study.tell(original, state=TrialState.FAIL)
    ask(study)  # another worker's twin, running since before the retry
    retry = ask(study, failed_trial=original.number)
    assert twin_of(retry) is None
    assert twin_of(ask(study)) == "same parameters as trial 1, running"  # a plain trial is still refused


# cost

PARAMS = {"groups": 1, "ps": 0.1, "pu": 0.1, "qw": 8, "lr": 0.1}  # the tiny study's, one that can be built


@pytest.fixture
def pipeline(tmp_path):
    loaded = load_study_file(write_tiny_study(tmp_path, stopper="{name: none, skip_dominated: true}"))
    data = SimpleNamespace(x_train=torch.zeros(4, 3, 32, 32), y_train=torch.zeros(360), num_classes=10,
                           device=torch.device("cpu"))
    started = []
    p = TrialPipeline(loaded, data, None, optuna.artifacts.FileSystemArtifactStore(str(tmp_path)),
                      StopperConfig(name="none").build(None), on_start=lambda: started.append(True), worker="w:1")
    p.started = started
    return p


def test_the_cost_step_records_the_costs_known_before_training(pipeline):
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.enqueue_trial(PARAMS)
    run = TrialContext(study.ask(), start=0.0)
    pipeline.sample(run)
    pipeline.cost(run)
    attrs = run.trial.user_attrs
    assert attrs["worker"] == "w:1" and attrs["candidate"] == run.candidate.to_dict()
    assert attrs["dense_macs"] == run.footprint.dense.macs > 0
    assert attrs["score"] == run.footprint.score.total == run.before["score"]
    assert attrs["before_values"] == run.before
    assert run.costs == (run.before["score"],)  # minimized as it is


def test_a_candidate_that_cannot_be_built_is_pruned_at_the_cost_step(pipeline):
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.enqueue_trial(PARAMS)
    run = TrialContext(study.ask(), start=0.0)
    pipeline.sample(run)
    run.values = {**run.values, "distillation": True}  # and the study has no teacher
    with pytest.raises(optuna.TrialPruned):
        pipeline.cost(run)
    assert run.trial.user_attrs["pruned_reason"] == ("cannot build this candidate: distillation sampled but the "
                                                     "study has no teacher")


def test_a_twin_is_pruned_once_the_claim_is_released(pipeline):
    study = optuna.create_study(directions=["maximize", "minimize"])
    for _ in range(2):
        study.enqueue_trial(PARAMS)
    pipeline.space.sample(study.ask())  # the earlier twin, running
    with pytest.raises(optuna.TrialPruned, match="same parameters as trial 0, running"):
        pipeline(study.ask())
    assert pipeline.started == [True]
    assert study.trials[1].user_attrs["pruned_reason"] == "same parameters as trial 0, running"


# decide before training


def finished(study, accuracy, score, **record):
    t = study.ask()
    for k, v in record.items():
        t.set_user_attr(k, v)
    study.tell(t, (accuracy, score))


@pytest.mark.parametrize("accuracy, score, skipped", [
    (0.9, 0.5, True),           # equal costs, accuracy exactly skip_accuracy
    (0.95, 0.4, True),
    (0.9 - 1e-9, 0.5, False),   # just below skip_accuracy
    (0.99, 0.5 + 1e-9, False),  # a cost just above the candidate's
])
def test_the_skip_before_training(accuracy, score, skipped):
    study = optuna.create_study(directions=["maximize", "minimize"])
    finished(study, accuracy, score)
    objectives = Objectives.parse(None)
    why = dominated_before_training(study.ask(), objectives, StopperConfig(skip_accuracy=0.9), (0.5,))
    assert (why is not None) == skipped
    if skipped:
        assert why.startswith("cannot enter the front: trial 0 has score ") and why.endswith(" >= 0.9")


def test_no_skip_when_off_or_a_cost_is_unknown():
    study = optuna.create_study(directions=["maximize", "minimize"])
    finished(study, 1.0, 0.1)
    objectives = Objectives.parse(None)
    assert dominated_before_training(study.ask(), objectives, StopperConfig(skip_dominated=False), (0.5,)) is None
    assert dominated_before_training(study.ask(), objectives, StopperConfig(), None) is None


def test_the_prediction_at_the_cap():
    study = optuna.create_study(directions=["maximize", "minimize"])
    # 100 MACs × 10 images × 2 epochs in 1 s: 2000 MAC-images/s; a trial whose dense phase was reused trains 1 epoch
    finished(study, 0.5, 0.5, dense_macs=100, train_s=1.0, epochs_run=2)
    finished(study, 0.5, 0.5, dense_macs=100, train_s=0.5, epochs_run=2, epochs_saved=1)
    assert predicted_too_long(study.ask(), 1.0, 10, 4, 100) is None  # two finished trials predict nothing
    finished(study, 0.5, 0.5, dense_macs=200, train_s=2.0, epochs_run=2)
    finished(study, 0.5, 0.5, dense_macs=100, train_s=1.0, epochs_run=2, epochs_saved=2)  # trained nothing itself
    trial = study.ask()
    assert predicted_too_long(trial, 2.0, 10, 4, 100) is None  # 100 × 10 × 4 / 2000 = 2 s: at the cap
    assert "predicted_train_s" not in trial.user_attrs
    why = predicted_too_long(trial, 1.999, 10, 4, 100)
    assert why == ("predicted to train for 2 s (4 epochs at the median MAC throughput of 3 finished trials), over "
                   "max_trial_seconds 1.999")
    assert trial.user_attrs["predicted_train_s"] == 2.0
    assert predicted_too_long(trial, None, 10, 4, 10**9) is None


def report(epoch, epochs=4, images_per_s=100.0, accuracy=0.5):
    return EpochResult(epoch=epoch, epochs=epochs, train_loss=1.0, val_accuracy=accuracy, lr=0.1,
                       images_per_s=images_per_s)


def test_the_projection_at_the_cap():
    assert projected_too_long(10.0, report(1), 1, 2.5) is None  # 2.5 s + 3 more epochs of 2.5 s: at the cap
    assert projected_too_long(10.0, report(1), 1, 2.5001).startswith("projected to train for 10 s (3 s for its first "
                                                                     "1 epoch(s) of 4), over max_trial_seconds 10")
    assert projected_too_long(10.0, report(2), 2, 5.0) is None
    assert projected_too_long(10.0, report(4), 4, 1000.0) is None  # the last epoch: stopping saves nothing
    assert projected_too_long(None, report(1), 1, 1000.0) is None


# train with stopping: the per-epoch bookkeeping


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Recorder:
    sees = "complete"

    def __init__(self, stop_at=None):
        self.seen, self.stop_at = [], stop_at

    def should_stop(self, epoch, accuracy, costs, finished, dense_epochs=None):
        self.seen.append(epoch)
        return "told to" if epoch == self.stop_at else None


def watch(trial, clock, stopper=None, cap=None, every=1, min_seconds=30.0, epochs=4, on_epoch=None, save=None):
    run = TrialContext(trial, start=0.0, costs=(0.5,),
                       candidate=SimpleNamespace(dense_epochs=None, train=SimpleNamespace(epochs=epochs)))
    config = SimpleNamespace(max_trial_seconds=cap, checkpoint_every=every, checkpoint_min_seconds=min_seconds)
    return run, EpochWatch(run, stopper or Recorder(), config, rivals=list, save=save or (lambda e, s: None),
                           on_epoch=on_epoch, clock=clock, wall=clock)


def test_the_checkpoint_cadence():
    clock, saved = Clock(), []
    clock.now = 100.0  # the watch's start counts as a save
    run, w = watch(optuna.create_study().ask(), clock, every=2, min_seconds=30.0, epochs=6,
                   save=lambda epoch, state: saved.append((epoch, state)))
    for epoch, now in ((1, 140), (2, 129.9), (2, 130), (3, 200), (4, 159.9), (4, 160), (6, 500)):
        clock.now = now
        w.on_state(epoch, lambda e=epoch: {"epoch": e})
    # not an odd epoch, nor under 30 s after the last save, nor the last epoch
    assert saved == [(2, {"epoch": 2}), (4, {"epoch": 4})]
    assert run.last_saved == 160
    _, w = watch(optuna.create_study().ask(), clock, every=0, min_seconds=0.0, save=lambda e, s: saved.append(e))
    w.on_state(2, dict)
    assert len(saved) == 2


def test_the_bookkeeping_is_not_training():
    clock, stopper = Clock(), Recorder()
    trial = optuna.create_study(directions=["maximize", "minimize"]).ask()

    def display(number, report):  # the progress display takes 1 s per epoch
        clock.now += 1.0

    def save(epoch, state):  # a resume checkpoint takes 2 s
        clock.now += 2.0

    run, w = watch(trial, clock, stopper, cap=16.0, min_seconds=0.0, epochs=4, on_epoch=display, save=save)
    clock.now = run.trained_since = 10.0
    for epoch in (1, 2):  # 3 s of training each
        clock.now += 3.0
        w.on_epoch(report(epoch))
        w.on_state(epoch, dict)
    # epoch 1: 4 s (its display counts until the epoch is done) projects exactly 16 s; epoch 2: 10 s less the 3 s of
    # epoch 1's display and checkpoint project 14 s (with them, 20 s)
    assert run.bookkeeping_s == 6.0 and run.epochs_trained == 2
    assert trial.storage.get_trial(compat.trial_id(trial)).intermediate_values == {1: 0.5, 2: 0.5}
    clock.now += 9.0  # a slow third epoch: 16 s in 3 epochs
    with pytest.raises(optuna.TrialPruned, match=r"projected to train for 21 s \(16 s for its first 3 epoch"):
        w.on_epoch(report(3))
    assert trial.user_attrs["epochs_run"] == 3 and trial.user_attrs["wall_s"] == 32.0
    assert run.bookkeeping_s == 7.0 and stopper.seen == [1, 2, 3]


def test_a_replayed_base_neither_counts_nor_is_judged():
    clock, stopper = Clock(), Recorder()
    trial = optuna.create_study(directions=["maximize", "minimize"]).ask()
    run, w = watch(trial, clock, stopper, cap=100.0)
    for epoch in (1, 2):  # replayed from a reused base: no time, no rung; the clock starts after them
        clock.now += 50.0
        w.on_epoch(report(epoch, images_per_s=0.0))
    assert run.epochs_trained == 0 and run.trained_since == 100.0 and stopper.seen == []
    clock.now += 40.0
    w.on_epoch(report(3))  # 40 s for its one epoch project 80 s, under the cap (from the start: 280 s)
    assert run.epochs_trained == 1 and stopper.seen == [3]


def test_the_stopper_stops_a_trial_but_not_at_its_last_epoch():
    clock, stopper = Clock(), Recorder(stop_at=4)
    run, w = watch(optuna.create_study(directions=["maximize", "minimize"]).ask(), clock, stopper)
    for epoch in (1, 2, 3, 4):
        w.on_epoch(report(epoch))
    assert stopper.seen == [1, 2, 3] and run.epochs_trained == 4
    stopper.stop_at = 2
    with pytest.raises(optuna.TrialPruned, match="told to"):
        w.on_epoch(report(2))
    assert run.trial.user_attrs["pruned_reason"] == "told to"


# resume checkpoints


def test_resume_checkpoints(tmp_path):
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path))
    checkpoints = ResumeCheckpoints(store)
    candidate = SimpleNamespace(to_dict=lambda: {"arch": "resnet20"})
    study = optuna.create_study()
    trial = study.ask()
    checkpoints.save(trial, candidate, 1, {"w": torch.ones(2)})
    first = trial.user_attrs["resume"]["artifact_id"]
    checkpoints.save(trial, candidate, 2, {"w": torch.ones(2) * 2})
    assert trial.user_attrs["resume"]["epoch"] == 2 and not (tmp_path / first).exists()  # one checkpoint at a time
    assert checkpoints.load(trial, candidate) is None  # not a retry
    retry = ask(study, failed_trial=trial.number)
    retry.set_user_attr("resume", trial.user_attrs["resume"])  # as the retry callback copies it
    assert checkpoints.load(retry, SimpleNamespace(to_dict=lambda: {"arch": "other"})) is None
    state = checkpoints.load(retry, candidate)
    assert state["w"].tolist() == [2.0, 2.0] and retry.user_attrs["resumed_from_epoch"] == 2
    checkpoints.drop(retry)
    assert retry.user_attrs["resume"] is None and not list(tmp_path.iterdir())
    checkpoints.drop(retry)  # nothing left: nothing to do
