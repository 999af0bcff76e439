"""Converged bases (``base:``): the dense network of an architecture trained once, every candidate of that architecture
compressed from it and fine-tuned; how many bases a study may train."""

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time

import optuna
import pytest
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search.candidate.candidate import Candidate
from search.candidate.recipe import Distillation, TrainConfig
from search.compress.compression import Compression
from search.errors import ConfigError
from search.study.runner import run_study
from search.study.study_file import StudyConfig, load_study_file
from search.training.bases import BaseConfig, BaseStore, architecture, converged_key, train_converged
from search.training.data import DataConfig, load_data
from search.training.run import run_candidate
from search.trial.decisions import no_budget_for_base

CANDIDATE = Candidate(arch="resnet20", width=0.25, compression=Compression(ps=0.3, pu=0.1, qw=8, qa=8),
                      compress_at=0.0, train=TrainConfig(epochs=2, batch_size=32, lr=0.02, schedule="cosine",
                                                         precision="fp32"))
RECIPE = BaseConfig(epochs=3).recipe(CANDIDATE.train)


def test_the_base_recipe_is_the_training_recipe_with_the_bases_epochs_lr_and_schedule():
    assert RECIPE == dataclasses.replace(CANDIDATE.train, epochs=3, lr=0.1, schedule="onecycle")
    assert BaseConfig(epochs=5, lr=0.2, schedule="cosine").recipe(CANDIDATE.train).schedule == "cosine"


@pytest.mark.parametrize("options, message", [
    ({"epochs": 0}, "base epochs must be an integer from 1 to 10000, got 0"),
    ({"epochs": True}, "base epochs must be an integer from 1 to 10000, got True"),
    ({"lr": -1}, "base lr must be a number > 0, got -1"),
    ({"schedule": "step"}, "base schedule must be one of onecycle, cosine, got 'step'"),
    ({"teacher": "mine"}, "base teacher must be one of base, study, got 'mine'"),
    ({"max_share": 0}, r"base max_share must be in \(0, 1\], got 0"),
    ({"max_bases": 0}, "base max_bases must be an integer >= 1"),
])
def test_a_bad_base_option_is_refused_with_one_line(options, message):
    with pytest.raises(ConfigError, match=message):
        BaseConfig(**options)


def test_a_study_with_bases_has_no_dense_phase_to_share():
    assert StudyConfig(name="s", base=BaseConfig()).candidate_compress_at == 0.0
    assert StudyConfig(name="s", compress_at=0.5).candidate_compress_at == 0.5
    with pytest.raises(ConfigError, match="drop reuse_bases"):
        StudyConfig(name="s", base=BaseConfig(), reuse_bases=True)


def test_the_key_is_the_architecture_the_recipe_the_data_and_the_device():
    key = converged_key(CANDIDATE, RECIPE, "d1")
    # what a candidate does after its base changes nothing: compression, distillation, the fine-tune recipe
    same = [dataclasses.replace(CANDIDATE, compression=Compression(ps=0.5, qw=4, qa=4)),
            dataclasses.replace(CANDIDATE, distillation=Distillation()),
            dataclasses.replace(CANDIDATE, train=dataclasses.replace(CANDIDATE.train, epochs=9, lr=0.3))]
    assert {converged_key(c, RECIPE, "d1") for c in same} == {key}
    changed = [converged_key(dataclasses.replace(CANDIDATE, **{k: v}), RECIPE, "d1")
               for k, v in {"arch": "resnet18", "width": 0.5, "groups": 2, "depthwise": True,
                            "arch_options": {"blocks": [2, 2, 2]}}.items()]
    changed += [converged_key(CANDIDATE, dataclasses.replace(RECIPE, epochs=4), "d1"),
                converged_key(CANDIDATE, dataclasses.replace(RECIPE, lr=0.2), "d1"),
                converged_key(CANDIDATE, RECIPE, "d2"),
                converged_key(CANDIDATE, RECIPE, "d1", device="meta")]
    assert len({key, *changed}) == 1 + len(changed)


@pytest.fixture(scope="module")
def synthetic():
    return load_data(DataConfig(name="synthetic", synthetic_size=192))


def test_a_candidate_fine_tuned_from_a_stored_base_equals_one_from_the_base_in_memory(synthetic, tmp_path):
    base = train_converged(CANDIDATE, RECIPE, synthetic)
    assert base["epochs"] == 3 and 0 <= base["val_accuracy"] <= 1 and base["train_s"] > 0
    store = BaseStore(FileSystemArtifactStore(str(tmp_path)), lambda key: threading.Lock())
    state, reused = store.get_or_train("k", lambda: base)
    assert reused is False
    stored, reused = store.get_or_train("k", lambda: pytest.fail("trained again"))
    assert reused is True

    in_memory = run_candidate(CANDIDATE, synthetic, initial=base["model"])
    from_store = run_candidate(CANDIDATE, synthetic, initial=stored["model"])
    assert in_memory.epochs_run == from_store.epochs_run == 2  # every epoch a fine-tune of the compressed base
    assert [r.val_accuracy for r in in_memory.history] == [r.val_accuracy for r in from_store.history]
    a, b = in_memory.model.state_dict(), from_store.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and the base is where it starts: from scratch, the same two epochs end elsewhere
    scratch = run_candidate(CANDIDATE, synthetic)
    assert any(not torch.equal(scratch.model.state_dict()[k], a[k]) for k in a if a[k].is_floating_point())


def test_the_base_model_is_the_architecture_uncompressed(synthetic):
    base = train_converged(CANDIDATE, RECIPE, synthetic)
    model = architecture(CANDIDATE).build(synthetic.num_classes)
    model.load_state_dict(base["model"])  # the dense shapes: nothing pruned
    assert sum(p.numel() for p in model.parameters()) == sum(v.numel() for k, v in base["model"].items()
                                                             if not k.endswith(("running_mean", "running_var",
                                                                                "num_batches_tracked")))


# ---- how many bases a study trains ----

def study_with_bases(bases, workers=("w1",)):
    """An in-memory study whose finished trials trained ``bases`` (key -> (train_s, dense MACs, epochs)) and a new
    trial asking."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    dist = {"ps": FloatDistribution(0, 1)}
    for i, (key, (train_s, macs, epochs)) in enumerate(bases.items()):
        study.add_trial(create_trial(
            values=[0.5, 0.1], params={"ps": i / 10}, distributions=dist,
            user_attrs={"base_key": key, "base_reused": False, "base_train_s": train_s, "dense_macs": macs,
                        "base_epochs": epochs, "worker": workers[i % len(workers)]}))
    study.add_trial(create_trial(values=[0.5, 0.1], params={"ps": 0.9}, distributions=dist,
                                 user_attrs={"base_key": "a", "base_reused": True, "worker": workers[0]}))
    return study, study.ask()


def test_the_first_base_and_a_stored_or_running_one_are_always_allowed():
    study, trial = study_with_bases({})
    assert no_budget_for_base(trial, "a", BaseConfig(max_bases=1), 10**6, 1.0, 1, 1) is None
    study, trial = study_with_bases({"a": (100.0, 10**6, 30)})
    assert no_budget_for_base(trial, "a", BaseConfig(max_bases=1), 10**6, 1.0, 1, 1) is None
    # a base being trained (its key recorded, its time not yet) is no new cost
    study.add_trial(create_trial(state=TrialState.RUNNING, user_attrs={"base_key": "b", "base_reused": False}))
    assert no_budget_for_base(trial, "b", BaseConfig(max_bases=1), 10**6, 1.0, 1, 1) is None


def test_max_bases_caps_the_bases_and_counts_one_being_trained():
    study, trial = study_with_bases({"a": (100.0, 10**6, 30)})
    assert no_budget_for_base(trial, "b", BaseConfig(max_bases=2), 10**6, None, None, 4) is None
    study.add_trial(create_trial(state=TrialState.RUNNING, user_attrs={"base_key": "b", "base_reused": False}))
    reason = no_budget_for_base(trial, "c", BaseConfig(max_bases=2), 10**6, None, None, 4)
    assert reason == "its architecture has no base, and the study's max_bases (2) are trained"


def test_without_a_timeout_the_bases_take_at_most_their_share_of_the_epochs():
    # 20 trials of 3 fine-tune epochs = 60 epochs; max_share 0.5: as many base epochs, two 30-epoch bases
    config = BaseConfig(epochs=30, max_share=0.5)
    study, trial = study_with_bases({"a": (1.0, 10**6, 30)})
    assert no_budget_for_base(trial, "b", config, 10**6, None, 20, 3) is None
    study, trial = study_with_bases({"a": (1.0, 10**6, 30), "b": (1.0, 10**6, 30)})
    reason = no_budget_for_base(trial, "c", config, 10**6, None, 20, 3)
    assert reason == ("its architecture has no base, and 2 bases of 30 epochs are max_share 0.5 of the study's "
                      "epochs (20 trials of 3)")
    # a third base (90 base epochs) needs 90 candidate epochs: 30 trials of 3, not 29
    assert no_budget_for_base(trial, "c", config, 10**6, None, 29, 3) is not None
    assert no_budget_for_base(trial, "c", config, 10**6, None, 30, 3) is None
    assert no_budget_for_base(trial, "c", BaseConfig(epochs=30, max_share=1.0), 10**6, None, 20, 3) is None


def test_with_a_timeout_a_new_base_is_predicted_from_the_bases_seconds_per_mac():
    # one base: 100 s for 10^6 MACs x 30 epochs; a candidate of 2x10^6 MACs needs a predicted 200 s
    config = BaseConfig(epochs=30, max_share=0.5)
    study, trial = study_with_bases({"a": (100.0, 10**6, 30)})
    assert no_budget_for_base(trial, "b", config, 2 * 10**6, 600.0, None, 4) is None  # 300 <= 0.5 x 600
    reason = no_budget_for_base(trial, "b", config, 2 * 10**6, 599.0, None, 4)
    assert reason == ("its architecture has no base, and training one (predicted 200 s) would take the bases past "
                      "max_share 0.5 of the time (100 s spent of 300 s)")
    assert trial.user_attrs["predicted_base_s"] == pytest.approx(200.0)
    # two workers have twice the time
    study, trial = study_with_bases({"a": (100.0, 10**6, 30), "c": (100.0, 10**6, 30)}, workers=("w1", "w2"))
    assert no_budget_for_base(trial, "b", config, 2 * 10**6, 400.0, None, 4) is None  # 400 <= 0.5 x 400 x 2


# ---- studies ----

SPACE = """\
params:
  arch: {value: resnet20}
  width: {choices: [0.25, 0.5]}
  ps: {low: 0.1, high: 0.5}
  distillation: {value: true}
"""


def test_a_study_fine_tunes_every_candidate_from_its_architectures_base_which_teaches_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MICRONET_CACHE", str(tmp_path / "cache"))  # a study teacher would land here
    (tmp_path / "space.yaml").write_text(SPACE)
    path = tmp_path / "ft.yaml"
    path.write_text(f"""\
name: ft
space: {tmp_path / 'space.yaml'}
storage: sqlite:///{tmp_path / 'ft.db'}
artifacts: {tmp_path / 'artifacts'}
data: {{name: digits, subset: 300}}
sampler: {{name: random, seed: 3}}
train: {{epochs: 2, batch_size: 32, lr: 0.02, schedule: cosine}}
base: {{epochs: 3}}
stopper: {{name: none, skip_dominated: false}}
n_trials: 5
""")
    events = []
    study = run_study(load_study_file(path), on_event=events.append)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    assert not (tmp_path / "cache").exists()  # no study teacher: each base teaches its candidates
    widths = {t.params["width"] for t in trials}
    keys = {t.user_attrs["base_key"] for t in trials}
    assert len(keys) == len(widths)  # one base per architecture
    trained = [t for t in trials if t.user_attrs["base_reused"] is False]
    assert len(trained) == len(keys)  # ... each trained once
    assert sorted(p.name for p in (tmp_path / "artifacts").glob("base-*")) == sorted(f"base-{k}" for k in keys)
    for t in trials:
        assert t.user_attrs["dense_epochs"] == 0  # compressed at once: every epoch is a fine-tune
        assert set(t.intermediate_values) == {1, 2} and t.user_attrs["epochs_run"] == 2
        assert t.user_attrs["base_epochs"] == 3 and t.user_attrs["base_train_s"] > 0
        same = [u for u in trials if u.user_attrs["base_key"] == t.user_attrs["base_key"]]
        assert {u.user_attrs["base_val_accuracy"] for u in same} == {t.user_attrs["base_val_accuracy"]}
    assert sum("base resnet20 width" in e and "epoch 3/3" in e for e in events) == len(keys)


PARALLEL_SPACE = """\
params:
  arch: {value: resnet20}
  width: {value: 0.25}
  ps: {low: 0.1, high: 0.5}
"""


def trials_of(url, name):
    try:
        return optuna.load_study(study_name=name, storage=url).get_trials()
    except KeyError:
        return []


def postgres_waits_on(url: str, name: str) -> bool:
    """Whether a session waits for study lock ``name`` now, as PostgreSQL's pg_locks tells it. (The SQLite lock
    file has no such witness: filelock polls a non-blocking flock, so the kernel lists no waiter.)"""
    import sqlalchemy

    from search.study.locks import advisory_key

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    key = advisory_key(name) & 0xFFFFFFFFFFFFFFFF  # a bigint key is split into classid (high) and objid (low)
    with engine.connect() as c:
        n = c.execute(sqlalchemy.text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND classid = :hi "
            "AND objid = :lo"), {"hi": key >> 32, "lo": key & 0xFFFFFFFF}).scalar()
    engine.dispose()
    return n > 0


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_two_workers_train_a_base_once_the_second_waits_on_the_shared_lock(backend, request, tmp_path):
    """Worker A is stopped (SIGSTOP) while it trains the base, holding the base's lock; worker B starts, needs the
    same base and must wait on that lock (one lock both see, not one each) until A goes on and stores the base.
    A goes on only once B has asked for the base (its trial records the key first) and, on PostgreSQL, once the
    server lists B's session as waiting for the lock; A still has nearly all of its 40 epochs to train then, so a
    B with a lock of its own would train the base itself long before A stores it."""
    url = request.getfixturevalue("postgres") if backend == "postgresql" else f"sqlite:///{tmp_path / 'par.db'}"
    (tmp_path / "space.yaml").write_text(PARALLEL_SPACE)
    path = tmp_path / "par.yaml"
    path.write_text(f"""\
name: par
space: {tmp_path / 'space.yaml'}
artifacts: {tmp_path / 'artifacts'}
data: {{name: synthetic, synthetic_size: 1024}}
sampler: {{name: random, seed: 0}}
train: {{epochs: 1, batch_size: 32}}
base: {{epochs: 40}}
stopper: {{name: none, skip_dominated: false}}
heartbeat: {{interval: 30, grace_period: 120}}
n_trials: 3
""")
    env = {**os.environ, "MICRONET_STORAGE": url, "MICRONET_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MICRONET_CACHE": str(tmp_path / "cache")}

    def start():
        return subprocess.Popen([sys.executable, "-m", "search", "worker", str(path)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def training_base():
        return [t for t in trials_of(url, "par") if t.state == TrialState.RUNNING
                and t.user_attrs.get("base_reused") is False and "base_train_s" not in t.user_attrs]

    a = start()
    procs = [a]
    try:
        deadline = time.monotonic() + 120
        while not training_base():
            assert time.monotonic() < deadline and a.poll() is None, "worker A never started training the base"
            time.sleep(0.05)
        a.send_signal(signal.SIGSTOP)
        (a_trial,) = training_base()  # still training it now that it is stopped: the window is held open
        b = start()
        procs.append(b)
        deadline = time.monotonic() + 120
        while not [t for t in trials_of(url, "par") if t.number != a_trial.number and t.state == TrialState.RUNNING
                   and t.user_attrs.get("base_key")]:
            assert time.monotonic() < deadline and b.poll() is None, "worker B never asked for the base"
            time.sleep(0.05)
        lock = f"par:base:{a_trial.user_attrs['base_key']}"
        while backend == "postgresql" and not postgres_waits_on(url, lock):
            assert time.monotonic() < deadline and b.poll() is None, "worker B never waited on the base's lock"
            time.sleep(0.05)
        a.send_signal(signal.SIGCONT)
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], outputs
    trials = trials_of(url, "par")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3, outputs
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    assert len({t.user_attrs["base_key"] for t in trials}) == 1
    assert [t.number for t in trials if t.user_attrs["base_reused"] is False] == [a_trial.number]
    (b_first,) = [t for t in trials if t.user_attrs.get("base_wait_s") is not None]
    assert b_first.user_attrs["worker"] != a_trial.user_attrs["worker"]
    assert b_first.user_attrs["base_wait_s"] > 0  # it waited on A's lock (seen above), then loaded A's base
    assert len(list((tmp_path / "artifacts").glob("base-*"))) == 1


def test_once_the_bases_are_spent_new_trials_take_the_least_used_trained_base(tmp_path):
    from types import SimpleNamespace

    from optuna.distributions import CategoricalDistribution

    from search.space.space import load_space
    from search.study.draw import fixed_architecture

    (tmp_path / "space.yaml").write_text(SPACE)  # width 0.25 or 0.5, ps, distillation
    loaded = SimpleNamespace(config=StudyConfig(name="s", base=BaseConfig(max_bases=2), n_trials=None),
                             space=load_space(tmp_path / "space.yaml"))
    study = optuna.create_study(directions=["maximize", "minimize"])
    dists = {"width": CategoricalDistribution([0.25, 0.5]), "ps": FloatDistribution(0, 1)}

    def add(width, ps, key, reused, state=TrialState.COMPLETE):
        study.add_trial(create_trial(state=state, values=[0.5, 0.1] if state == TrialState.COMPLETE else None,
                                     params={"width": width, "ps": ps}, distributions=dists,
                                     user_attrs={"base_key": key, "base_reused": reused, "base_train_s": 1.0,
                                                 "dense_macs": 10**6, "base_epochs": 30}))

    add(0.5, 0.1, "b05", False)
    assert fixed_architecture(study, loaded, 10, (3, 32, 32)) == (None, None)  # one base of two: a new one may come
    add(0.25, 0.2, "b025", False)
    add(0.25, 0.3, "b025", True)
    fixed, why = fixed_architecture(study, loaded, 10, (3, 32, 32))
    assert fixed == {"width": 0.5} and why == "the study's max_bases (2) are trained"  # b05 has fewer trials
    add(0.5, 0.4, "b05", True, TrialState.PRUNED)  # a stopped trial is a use too
    # tied at 2 each: the base trained first
    assert fixed_architecture(study, loaded, 10, (3, 32, 32))[0] == {"width": 0.5}
    add(0.5, 0.5, "b05", True)
    assert fixed_architecture(study, loaded, 10, (3, 32, 32))[0] == {"width": 0.25}


def test_the_bases_are_spent_only_when_no_architecture_without_a_base_fits(tmp_path, monkeypatch):
    """One base of 100 s took the time share but for 60 s: an architecture whose base is predicted under 60 s still
    fits, so the sampler draws freely; once none does, trials take the trained base's architecture."""
    from types import SimpleNamespace

    from optuna.distributions import CategoricalDistribution

    from search.space.space import load_space
    from search.study import draw

    (tmp_path / "space.yaml").write_text(SPACE)
    loaded = SimpleNamespace(config=StudyConfig(name="s", base=BaseConfig(epochs=30, max_share=0.5), timeout=320.0),
                             space=load_space(tmp_path / "space.yaml"))
    macs = {0.25: 10**6, 0.5: 4 * 10**6}
    monkeypatch.setattr(draw, "_dense_macs", lambda values, cfg, n, size: macs[values["width"]])
    study = optuna.create_study(directions=["maximize", "minimize"])
    dists = {"width": CategoricalDistribution([0.25, 0.5]), "ps": FloatDistribution(0, 1)}
    study.add_trial(create_trial(values=[0.5, 0.1], params={"width": 0.5, "ps": 0.1}, distributions=dists,
                                 user_attrs={"base_key": "b05", "base_reused": False, "base_train_s": 100.0,
                                             "dense_macs": 4 * 10**6, "base_epochs": 30, "worker": "w"}))
    # 160 s allowed, 100 spent: width 0.25's base is predicted at 25 s (a quarter of the MACs), it fits
    assert draw.fixed_architecture(study, loaded, 10, (3, 32, 32)) == (None, None)
    loaded.config = StudyConfig(name="s", base=BaseConfig(epochs=30, max_share=0.5), timeout=240.0)
    # 120 s allowed: 100 + 25 is over; no architecture without a base fits
    fixed, why = draw.fixed_architecture(study, loaded, 10, (3, 32, 32))
    assert fixed == {"width": 0.5} and "max_share 0.5 of the time (100 s spent of 120 s)" in why


def test_an_architecture_that_can_never_build_needs_no_base():
    from search.study import draw

    config = StudyConfig(name="s", base=BaseConfig())
    # DenseNet at growth 12 and width 0.25 has convs of 9 channels: groups 4 cannot divide them
    assert draw._dense_macs({"arch": "densenet", "groups": 4, "growth_rate": 12, "width": 0.25}, config, 10,
                            (3, 32, 32)) is None
    assert draw._dense_macs({"arch": "resnet20", "width": 0.25, "groups": 1}, config, 10, (3, 32, 32)) > 0
