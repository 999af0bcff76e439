"""Bases: the dense phase trained once and reused by candidates that differ only in their compression."""

import dataclasses
import os
import subprocess
import sys
import threading

import optuna
import pytest
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState

from search.candidate.candidate import Candidate
from search.candidate.recipe import Distillation, TrainConfig
from search.compress.compression import Compression
from search.errors import ConfigError
from search.models import build_model
from search.study.runner import run_study
from search.study.study_file import StudyConfig, load_study_file
from search.training.bases import Base, BaseStore, base_key
from search.training.data import Augmentation, DataConfig, load_data
from search.training.run import run_candidate

KD = Distillation(temperature=4.0, alpha=0.5)
CANDIDATE = Candidate(arch="resnet20", width=0.25, compression=Compression(ps=0.3, pu=0.1, qw=8, qa=8),
                      compress_at=0.5, distillation=KD, train=TrainConfig(epochs=4, batch_size=32, precision="fp32"))


def key_of(candidate=CANDIDATE, data="digits-val0.1s0", teacher="t1", device="cpu"):
    return base_key(candidate, data, teacher, device)


# a changed value for every field of the training configuration: a field added later must be listed here
TRAIN_CHANGES = {
    "epochs": 5,  # still 2 dense epochs (round(2.5) == 2), but the schedule spans 5: another base
    "batch_size": 64, "lr": 0.1, "momentum": 0.8, "nesterov": False, "weight_decay": 1e-4, "label_smoothing": 0.1,
    "schedule": "cosine", "warmup_fraction": 0.2, "eval_batch_size": 512, "augment": Augmentation(cutout=8),
    "seed": 1, "channels_last": True, "compile": True, "precision": "bf16",
    "optimizer": "adamw", "mixup": 0.2, "cutmix": 1.0, "ema": 0.99, "tta_flip": True,
}
AUGMENT_CHANGES = {"crop_padding": 2, "flip": False, "cutout": 4, "brightness": 0.2, "contrast": 0.2}
CANDIDATE_CHANGES = {"arch": "resnet18", "width": 0.5, "groups": 2, "depthwise": True,
                     "arch_options": {"blocks": [2, 2, 2]}, "compress_at": 0.75, "distillation": None}
KD_CHANGES = {"temperature": 2.0, "alpha": 0.9, "final_temperature": 2.0}


def test_every_field_of_the_training_configuration_changes_the_key():
    assert set(TRAIN_CHANGES) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(AUGMENT_CHANGES) == {f.name for f in dataclasses.fields(Augmentation)}
    keys = {key_of()}
    for name, value in TRAIN_CHANGES.items():
        changed = dataclasses.replace(CANDIDATE, train=dataclasses.replace(CANDIDATE.train, **{name: value}))
        keys.add(key_of(changed))
    for name, value in AUGMENT_CHANGES.items():
        augment = dataclasses.replace(CANDIDATE.train.augment, **{name: value})
        keys.add(key_of(dataclasses.replace(CANDIDATE, train=dataclasses.replace(CANDIDATE.train, augment=augment))))
    assert None not in keys
    assert len(keys) == 1 + len(TRAIN_CHANGES) + len(AUGMENT_CHANGES)


def test_model_distillation_teacher_data_and_device_change_the_key():
    # every field of a candidate either determines its base or is the compression
    assert set(CANDIDATE_CHANGES) | {"compression", "train"} == {f.name for f in dataclasses.fields(Candidate)}
    assert CANDIDATE.dense_epochs == 2 and dataclasses.replace(CANDIDATE, compress_at=0.75).dense_epochs == 3
    keys = [key_of()]
    keys += [key_of(dataclasses.replace(CANDIDATE, **{name: value})) for name, value in CANDIDATE_CHANGES.items()]
    keys += [key_of(dataclasses.replace(CANDIDATE, distillation=dataclasses.replace(KD, **{name: value})))
             for name, value in KD_CHANGES.items()]
    keys += [key_of(teacher="t2"), key_of(data="digits-subset400-val0.1s0"), key_of(device="cuda")]
    assert None not in keys
    assert len(set(keys)) == len(keys)


def test_the_compression_does_not_change_the_key():
    key = key_of()
    for change in ({"ps": 0.5}, {"pu": 0.0}, {"qw": 4}, {"qa": 32}, {"ps": 0.0, "pu": 0.2, "qw": 32, "qa": 32}):
        compression = dataclasses.replace(CANDIDATE.compression, **change)
        assert key_of(dataclasses.replace(CANDIDATE, compression=compression)) == key, change
    # compress_at only matters through the dense epochs it gives: 0.5 and 0.55 of 4 epochs are both 2
    assert key_of(dataclasses.replace(CANDIDATE, compress_at=0.55)) == key
    # without distillation the teacher plays no part
    plain = dataclasses.replace(CANDIDATE, distillation=None)
    assert key_of(plain, teacher="t1") == key_of(plain, teacher="t2") == key_of(plain, teacher=None)


def test_no_key_when_nothing_is_shared():
    assert key_of(dataclasses.replace(CANDIDATE, compression=Compression())) is None  # all epochs dense
    assert key_of(dataclasses.replace(CANDIDATE, compress_at=0.0)) is None  # compressed from the start
    with pytest.raises(ValueError, match="teacher"):
        key_of(teacher=None)  # distillation on: the teacher is part of the base


def test_a_torn_or_foreign_base_is_trained_again(tmp_path):
    store = BaseStore(FileSystemArtifactStore(str(tmp_path)), lambda key: threading.Lock())
    calls = []

    def train():
        calls.append(1)
        return {"w": torch.arange(4.0), "phase": "dense"}

    assert store.get_or_train("k1", train)[1] is False
    state, reused = store.get_or_train("k1", train)
    assert reused and torch.equal(state["w"], torch.arange(4.0)) and len(calls) == 1
    path = tmp_path / "base-k1"
    blob = path.read_bytes()
    path.write_bytes(blob[:-10])  # a worker died while writing it
    assert store.load("k1") is None
    assert store.get_or_train("k1", train)[1] is False and len(calls) == 2  # trained again, overwritten
    assert store.load("k1") is not None
    (tmp_path / "base-k2").write_bytes(blob)  # another key's base under this name
    assert store.load("k2") is None


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_worker_asking_while_another_trains_waits_on_the_study_lock_and_loads(backend, request, tmp_path):
    """Two workers (threads, each with its own store and lock objects, as two processes have) ask for one base.
    The first is held inside its training until the second is at the lock, and gives the second 2 s to get past
    it. On the study's shared lock the second cannot: it waits, then loads what the first stored. With one lock
    per caller it gets in at once, finds no base and trains it again."""
    from search.study.locks import study_lock

    url = request.getfixturevalue("postgres") if backend == "postgresql" else f"sqlite:///{tmp_path / 'db.sqlite'}"
    training, at_lock, past_lock = threading.Event(), threading.Event(), threading.Event()
    trained, results = [], {}

    class Watched:
        def __init__(self, lock):
            self.lock = lock

        def __enter__(self):
            at_lock.set()
            self.lock.acquire()
            past_lock.set()

        def __exit__(self, *exc):
            self.lock.release()

    def worker(name):
        lock_for = (lambda key: study_lock(url, f"s:base:{key}")) if name == "a" else \
            (lambda key: Watched(study_lock(url, f"s:base:{key}")))
        store = BaseStore(FileSystemArtifactStore(str(tmp_path)), lock_for)

        def train():
            trained.append(name)
            training.set()
            assert at_lock.wait(60), "the other worker never reached the lock"
            past_lock.wait(2.0)  # a condition that must not happen while this worker holds the lock
            return {"w": torch.arange(4.0), "by": name}

        if name == "b":
            assert training.wait(60)
        results[name] = store.get_or_train("k", train)

    threads = [threading.Thread(target=worker, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert trained == ["a"]  # trained once, by the worker that came first
    assert results["a"][1] is False and results["b"][1] is True
    assert results["b"][0]["by"] == "a" and torch.equal(results["b"][0]["w"], torch.arange(4.0))


@pytest.fixture(scope="module")
def synthetic():
    return load_data(DataConfig(name="synthetic", synthetic_size=192))


@pytest.mark.parametrize("distill", [False, True])
def test_a_reused_base_continues_exactly_as_the_run_that_trained_it(synthetic, tmp_path, distill):
    cand = dataclasses.replace(CANDIDATE, distillation=KD if distill else None)
    teacher = None
    if distill:
        torch.manual_seed(0)
        teacher = build_model("resnet20", num_classes=synthetic.num_classes, width=0.25).eval()
    store = BaseStore(FileSystemArtifactStore(str(tmp_path)), lambda key: threading.Lock())
    key = key_of(cand, teacher="t")
    full = run_candidate(cand, synthetic, teacher)  # no base at all
    assert full.base_reused is None and full.epochs_saved == 0

    first = run_candidate(cand, synthetic, teacher, base=Base(store, key))
    assert first.base_reused is False and first.epochs_saved == 0
    assert list((tmp_path).glob("base-*")) == [tmp_path / f"base-{key}"]

    seen, saved, ready = [], [], []
    second = run_candidate(cand, synthetic, teacher, base=Base(store, key, ready.append),
                           on_epoch=lambda r: seen.append(r.epoch), on_state=lambda e, get: saved.append(e))
    assert ready == [True] and second.base_reused is True and second.epochs_saved == 2
    assert seen == [1, 2, 3, 4]  # the base's epochs are replayed into the curve
    assert saved == [3, 4]  # ... but not checkpointed again
    assert second.epochs_run == 4
    for run in (first, second):
        assert [r.val_accuracy for r in run.history] == pytest.approx([r.val_accuracy for r in full.history],
                                                                      abs=1e-6)
        assert [r.train_loss for r in run.history] == pytest.approx([r.train_loss for r in full.history], rel=1e-5)
        assert run.val_accuracy == pytest.approx(full.val_accuracy, abs=1e-6)
        a, b = full.model.state_dict(), run.model.state_dict()
        assert a.keys() == b.keys()
        for k in a:
            assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k


def test_reuse_bases_must_be_a_bool():
    assert StudyConfig(name="s", reuse_bases=True).reuse_bases is True
    with pytest.raises(ConfigError, match="reuse_bases must be true or false, got 'yes'"):
        StudyConfig(name="s", reuse_bases="yes")


SPACE = """\
params:
  arch: {value: resnet20}
  width: {value: 0.25}
  ps: {low: 0.1, high: 0.5}
  qw: {choices: [8, 32]}
  distillation: {value: true}
"""


def test_a_study_trains_each_base_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MICRONET_CACHE", str(tmp_path / "cache"))  # the teacher's local copy
    (tmp_path / "space.yaml").write_text(SPACE)
    path = tmp_path / "bases.yaml"
    path.write_text(f"""\
name: bases
space: {tmp_path / 'space.yaml'}
storage: sqlite:///{tmp_path / 'bases.db'}
artifacts: {tmp_path / 'artifacts'}
data: {{name: digits, subset: 300}}
sampler: {{name: random, seed: 3}}
train: {{epochs: 4, batch_size: 32}}
stopper: {{name: none, skip_dominated: false}}
teacher: {{arch: resnet20, width: 0.25, epochs: 1}}
reuse_bases: true
n_trials: 3
""")
    study = run_study(load_study_file(path))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert len({t.params["ps"] for t in trials}) == 3
    assert len({t.user_attrs["base_key"] for t in trials}) == 1  # the teacher's identity is the same each time
    assert [t.user_attrs["base_reused"] for t in trials] == [False, True, True]
    assert [t.user_attrs["epochs_saved"] for t in trials] == [0, 2, 2]
    for t in trials:
        assert set(t.intermediate_values) == {1, 2, 3, 4}  # the whole learning curve, replayed epochs included
        assert t.user_attrs["epochs_run"] == 4
        # the dense epochs are the base's: the same curve in every trial
        assert [t.intermediate_values[e] for e in (1, 2)] == [trials[0].intermediate_values[e] for e in (1, 2)]
    assert len(list((tmp_path / "artifacts").glob("base-*"))) == 1


PARALLEL_SPACE = """\
params:
  arch: {value: resnet20}
  width: {value: 0.25}
  ps: {low: 0.1, high: 0.5}
"""


def test_two_workers_train_a_shared_base_once(postgres, tmp_path):
    """Two worker processes start together on trials that all need the same base: one trains it, every other
    trial (the other worker's first one included, which waits on the base's lock) loads it."""
    (tmp_path / "space.yaml").write_text(PARALLEL_SPACE)
    path = tmp_path / "par.yaml"
    # 3 dense epochs of 2048 images: seconds, much longer than the gap between the two workers' first trials
    path.write_text(f"""\
name: par
space: {tmp_path / 'space.yaml'}
artifacts: {tmp_path / 'artifacts'}
data: {{name: synthetic, synthetic_size: 2048}}
sampler: {{name: random, seed: 0}}
train: {{epochs: 6, batch_size: 32}}
stopper: {{name: none, skip_dominated: false}}
heartbeat: {{interval: 1, grace_period: 30}}
reuse_bases: true
n_trials: 4
""")
    env = {**os.environ, "MICRONET_STORAGE": postgres, "MICRONET_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MICRONET_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-m", "search", "worker", str(path)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    try:
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], outputs
    trials = optuna.load_study(study_name="par", storage=postgres).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4, outputs
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers ran trials
    assert len({t.user_attrs["base_key"] for t in trials}) == 1
    assert sorted(t.user_attrs["base_reused"] for t in trials) == [False, True, True, True]
    assert sorted(t.user_attrs["epochs_saved"] for t in trials) == [0, 3, 3, 3]
    assert all(set(t.intermediate_values) == set(range(1, 7)) for t in trials)
    assert len(list((tmp_path / "artifacts").glob("base-*"))) == 1


class StopLightlyCompressedAtEpochOne:
    """Stops, at epoch 1, every trial whose score is above a bar (as a rung would stop a dominated sibling). The
    costs it is given are the objectives known before training: here the score alone."""

    sees = "complete"

    def __init__(self, bar):
        self.bar = bar

    def should_stop(self, epoch, accuracy, costs, finished, dense_epochs=None):
        (score,) = costs
        return f"epoch {epoch}: score {score:.4g} above the bar" if epoch == 1 and score > self.bar else None


def test_no_stopper_decides_on_an_epoch_replayed_from_a_reused_base(tmp_path, monkeypatch):
    from search.study.study_file import StopperConfig

    (tmp_path / "space.yaml").write_text(PARALLEL_SPACE)
    path = tmp_path / "replay.yaml"
    path.write_text(f"""\
name: replay
space: {tmp_path / 'space.yaml'}
storage: sqlite:///{tmp_path / 'replay.db'}
artifacts: {tmp_path / 'artifacts'}
data: {{name: digits, subset: 300}}
sampler: {{name: random, seed: 3}}
train: {{epochs: 4, batch_size: 32}}
reuse_bases: true
n_trials: 2
enqueue: [{{ps: 0.5}}, {{ps: 0.1}}]
""")
    # ps 0.5 scores lower than ps 0.1: the first trial trains the base untouched, the second replays its epoch 1
    bar = 0.5 * (costs_of(0.5) + costs_of(0.1))
    monkeypatch.setattr(StopperConfig, "build", lambda self, floor: StopLightlyCompressedAtEpochOne(bar))
    study = run_study(load_study_file(path))
    first, second = study.get_trials()
    assert first.user_attrs["base_reused"] is False and second.user_attrs["base_reused"] is True
    assert second.state == TrialState.COMPLETE  # its epoch 1 was replayed: no decision there


def costs_of(ps):
    from search.candidate.candidate import footprint

    return footprint(Candidate(arch="resnet20", width=0.25, compression=Compression(ps=ps)), 10).score.total
