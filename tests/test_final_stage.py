"""The final stage: the search front's members fine-tuned to the end in a companion study, within the study's timeout;
the reading commands use its front; and the budget kept back for it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search.config import from_mapping
from search.errors import ConfigError
from search.study.final import FinalConfig, finalists, kendall_tau, load_stage, reserve_seconds
from search.study.study_file import StudyConfig
from search.training.bases import BaseConfig
from search.trial.objectives import Objectives

DIST = {"ps": FloatDistribution(0, 1)}


def study_of(points, **attrs):
    """An in-memory study with one complete trial per (accuracy, score) point."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("micronet_objectives", [{"name": "accuracy"}, {"name": "score"}])
    for i, (acc, score) in enumerate(points):
        study.add_trial(create_trial(values=[acc, score], params={"ps": i / 100}, distributions=DIST,
                                     user_attrs={"worker": "w1", **attrs}))
    return study


@pytest.mark.parametrize("options, message", [
    ({"epochs": 0}, "final epochs must be an integer from 1 to 10000, got 0"),
    ({"members": 0}, "final members must be an integer >= 1, got 0"),
    ({"lr": 0}, r"final lr must be a number > 0 \(or null: the study's\), got 0"),
    ({"margin": -0.1}, "final margin must be a number >= 0, got -0.1"),
    ({"bounds": (0.03, 0)}, r"final bounds must be a list of scores > 0 \(e.g. \[0.03, 0.01\]\), got \(0.03, 0\)"),
])
def test_a_bad_final_option_is_refused_with_one_line(options, message):
    with pytest.raises(ConfigError, match=message):
        FinalConfig(**options)


def test_the_companion_study_trains_every_finalist_to_the_end():
    config = StudyConfig(name="s", base=BaseConfig(), final=FinalConfig(epochs=12, members=3, lr=0.01),
                         max_trial_seconds=60.0, enqueue=[{"ps": 0.1}])
    stage = config.final_stage(3)
    assert stage.name == "s-final" and stage.final is None and stage.n_trials == 3 and stage.enqueue == []
    assert stage.train.epochs == 12 and stage.train.lr == 0.01 and stage.train.schedule == config.train.schedule
    assert stage.stopper.name == "none" and stage.stopper.skip_dominated is False
    assert stage.max_trial_seconds is None and stage.base == config.base
    # its checkpoints go where the search's do: export finds them through the study's artifact_dir
    assert stage.artifact_dir == config.artifact_dir == Path("studies/s-artifacts")  # not studies/s-final-artifacts
    assert config.final_stage(3, "/data/art").artifact_dir == Path("/data/art")


def test_finalists_span_the_front_extremes_first():
    # a front of 6 members along the score, and two dominated trials
    front = [(0.50, 0.001), (0.55, 0.002), (0.56, 0.0021), (0.60, 0.004), (0.70, 0.01), (0.80, 0.03)]
    study = study_of(front + [(0.40, 0.002), (0.5, 0.05)])
    assert [t.number for t in finalists(study, 10)] == [0, 1, 2, 3, 4, 5]  # all of them, by score
    chosen = [t.number for t in finalists(study, 3)]
    assert 0 in chosen and 5 in chosen  # both ends of the front
    assert len(chosen) == 3 and chosen == sorted(chosen)
    # the third is the most isolated in between: not 1 or 2, which crowd each other
    assert chosen[1] in (3, 4)


def test_the_best_member_within_each_export_bound_is_a_finalist_before_the_spread():
    # the front of the test above: by spread alone 3 finalists are 0, 5 and one of 3, 4; a user who exports at
    # score 0.0025 wants member 2 (the most accurate within it), and at 0.03 member 5
    front = [(0.50, 0.001), (0.55, 0.002), (0.56, 0.0021), (0.60, 0.004), (0.70, 0.01), (0.80, 0.03)]
    study = study_of(front + [(0.40, 0.002), (0.5, 0.05)])
    assert 2 not in [t.number for t in finalists(study, 3)]
    assert [t.number for t in finalists(study, 3, bounds=(0.03, 0.0025))] == [0, 2, 5]  # then the front's low end
    assert [t.number for t in finalists(study, 1, bounds=(0.03, 0.0025))] == [2]  # tightest bound first
    assert [t.number for t in finalists(study, 2, bounds=(0.0005,))] == [0, 5]  # nothing within it: spread only
    assert [t.number for t in finalists(study, 10, bounds=(0.0025,))] == [0, 1, 2, 3, 4, 5]
    config = from_mapping(StudyConfig, {"name": "s", "final": {"epochs": 5, "bounds": [0.03, 0.01]}}, "s.yaml")
    assert config.final.bounds == (0.03, 0.01)  # a YAML list


def test_finalists_are_feasible_only():
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("micronet_objectives", [{"name": "accuracy"}, {"name": "score"}])
    for i, (acc, score, c) in enumerate([(0.3, 0.001, 0.2), (0.9, 0.02, -0.4)]):
        study.add_trial(create_trial(values=[acc, score], params={"ps": i / 10}, distributions=DIST,
                                     system_attrs={"constraints": (c,)}))
    assert [t.number for t in finalists(study, 4)] == [1]


def test_the_time_kept_back_is_the_finalists_epochs_at_their_measured_pace():
    final = FinalConfig(epochs=10, members=2, margin=0.0)
    study = study_of([(0.5, 0.001), (0.6, 0.002), (0.7, 0.004)], train_s=8.0, epochs_run=4)  # 2 s per epoch
    assert reserve_seconds(study, final, workers=1) == pytest.approx(2 * 10 * 2.0)  # two finalists, one worker
    assert reserve_seconds(study, final, workers=2) == pytest.approx(10 * 2.0)     # side by side
    assert reserve_seconds(study, FinalConfig(epochs=10, members=2), 2) == pytest.approx(20 * 1.15)  # the margin
    assert reserve_seconds(study_of([]), final, 1) is None  # nothing measured yet


def test_kendall_tau_pairs_each_finalist_with_its_search_trial():
    search = study_of([(0.5, 0.001), (0.6, 0.002), (0.7, 0.004)])
    final = study_of([])
    for number, acc in ((0, 0.62), (1, 0.66), (2, 0.75)):
        final.add_trial(create_trial(values=[acc, 0.001], params={"ps": number / 100}, distributions=DIST,
                                     user_attrs={"search_trial": number}))
    assert kendall_tau(final, search) == (pytest.approx(1.0), 3)
    final.add_trial(create_trial(values=[0.50, 0.001], params={"ps": 0.5}, distributions=DIST,
                                 user_attrs={"search_trial": 99}))  # no such search trial: left out
    assert kendall_tau(final, search)[1] == 3
    swapped = study_of([])
    for number, acc in ((0, 0.75), (1, 0.66), (2, 0.62)):
        swapped.add_trial(create_trial(values=[acc, 0.001], params={"ps": number / 100}, distributions=DIST,
                                       user_attrs={"search_trial": number}))
    assert kendall_tau(swapped, search) == (pytest.approx(-1.0), 3)


SPACE = """\
params:
  arch: {value: resnet20}
  width: {value: 0.25}
  ps: {low: 0.1, high: 0.6}
  qw: {choices: [8, 32]}
"""


def write_study(tmp_path, **extra):
    (tmp_path / "space.yaml").write_text(SPACE)
    lines = "".join(f"{k}: {v}\n" for k, v in extra.items())
    path = tmp_path / "fin.yaml"
    path.write_text(f"""\
name: fin
space: {tmp_path / 'space.yaml'}
artifacts: {tmp_path / 'artifacts'}
sampler: {{name: random, seed: 1}}
stopper: {{name: none, skip_dominated: false}}
checkpoint_min_seconds: 0
""" + lines)
    return path


def cli(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "search", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_run_ends_with_the_final_front_and_the_reading_commands_use_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'fin.db'}"
    path = write_study(tmp_path, storage=url, data="{name: digits, subset: 300}",
                       train="{epochs: 1, batch_size: 32, lr: 0.02, schedule: cosine}", base="{epochs: 2}",
                       final="{epochs: 3, members: 2}", n_trials=4)
    done = cli("run", str(path))
    assert done.returncode == 0, done.stderr
    assert "final stage: fine-tuning" in done.stderr
    assert "Final front of fin" in done.stdout and "final: " in done.stdout and "bases: 1 trained" in done.stdout
    search = optuna.load_study(study_name="fin", storage=url)
    final = optuna.load_study(study_name="fin-final", storage=url)
    finals = final.get_trials()
    assert 1 <= len(finals) <= 2 and all(t.state == TrialState.COMPLETE for t in finals)
    for t in finals:  # each a search-front member, trained to the end with the final recipe, from its base
        origin = search.trials[t.user_attrs["search_trial"]]
        assert origin.params == t.params and origin.number in {m.number for m in search.best_trials}
        assert t.user_attrs["epochs_run"] == 3 and t.user_attrs["base_reused"] is True
        assert t.user_attrs["base_key"] == origin.user_attrs["base_key"]

    front = json.loads(cli("front", "--storage", url, "--study", "fin", "--json").stdout)
    assert {r["trial"] for r in front} == {t.number for t in final.best_trials}  # the final front by default
    assert all(r["search_trial"] is not None for r in front)
    searched = json.loads(cli("front", "--storage", url, "--study", "fin", "--json", "--stage", "search").stdout)
    assert {r["trial"] for r in searched} == {t.number for t in search.best_trials}
    assert all(r["search_trial"] is None for r in searched)

    # the report shows both fronts side by side and how well the search ranked the finalists
    report = cli("report", "--storage", url, "--study", "fin", "--out", "-", "--format", "md").stdout
    assert report.startswith("# Study fin-final") and "## Search and final stage" in report
    assert "Kendall's τ between the finalists' search-stage and final validation accuracy" in report
    for t in finals:
        assert f"| {t.number} | {t.user_attrs['search_trial']} | {Objectives.parse(None).accuracy(t):.4f} |" in report
    assert "Bases: 1 trained for this study" in cli("report", "--storage", url, "--study", "fin", "--stage", "search",
                                                    "--out", "-", "--format", "md").stdout

    # export --trial takes the number front --json shows; by default the final front's
    member = front[-1]
    out = tmp_path / "export"
    done = cli("export", "--storage", url, "--study", "fin", "--trial", str(member["trial"]), "--out", str(out),
               "--format", "state_dict")
    assert done.returncode == 0, done.stderr
    card = json.loads((out / "model_card.json").read_text())
    assert card["study"] == "fin-final" and card["trial"] == member["trial"]
    assert card["val_accuracy"] == pytest.approx(member["val_accuracy"])
    done = cli("export", "--storage", url, "--study", "fin", "--min-accuracy", "0", "--out", str(tmp_path / "e2"),
               "--format", "state_dict")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "e2" / "model_card.json").read_text())["study"] == "fin-final"


def test_a_study_without_a_final_stage_reads_and_exports_as_before(tmp_path):
    """A study as made before this change (no base:, no final:, records without base fields): front and export
    read its own front; the default stage falls back to it."""
    url = f"sqlite:///{tmp_path / 'fin.db'}"
    path = write_study(tmp_path, storage=url, data="{name: digits, subset: 300}", train="{epochs: 2, batch_size: 32}",
                       reuse_bases="true", n_trials=3)
    assert cli("run", str(path)).returncode == 0
    study = load_stage(url, "fin")
    assert study.study_name == "fin"
    front = json.loads(cli("front", "--storage", url, "--study", "fin", "--json").stdout)
    assert front and {r["trial"] for r in front} == {t.number for t in study.best_trials}
    done = cli("export", "--storage", url, "--study", "fin", "--trial", str(front[0]["trial"]), "--out",
               str(tmp_path / "e"), "--format", "state_dict")
    assert done.returncode == 0, done.stderr


def test_the_final_stage_finishes_inside_the_timeout_with_a_worker_killed_during_it(postgres, tmp_path):
    """Two workers; one is killed (SIGKILL) while it fine-tunes a finalist, past its first checkpoint. The other
    finishes its own finalist, then the killed one's, resumed from its checkpoint once the heartbeat's grace
    period has passed, all inside the timeout: every finalist complete, nothing lost."""
    timeout = 300
    path = write_study(tmp_path, data="{name: synthetic, synthetic_size: 1024}",
                       train="{epochs: 1, batch_size: 32, lr: 0.02, schedule: cosine}", base="{epochs: 2}",
                       final="{epochs: 30, members: 2}", n_trials=4, timeout=timeout,
                       heartbeat="{interval: 1, grace_period: 4, max_retry: 2}")
    env = {**os.environ, "MICRONET_STORAGE": postgres, "MICRONET_THREADS": "1", "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    procs = {p.pid: p for p in (subprocess.Popen([sys.executable, "-m", "search", "worker", str(path)], env=env,
                                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                                for _ in range(2))}

    def finals():
        try:
            return optuna.load_study(study_name="fin-final", storage=postgres).get_trials()
        except KeyError:
            return []

    try:
        deadline = time.monotonic() + 240
        while True:
            running = [t for t in finals() if t.state == TrialState.RUNNING
                       and (t.user_attrs.get("resume") or {}).get("epoch", 0) >= 1]
            if running:
                break
            assert time.monotonic() < deadline, "no finalist reached its first checkpoint"
            time.sleep(0.05)
        victim = running[0]
        pid = int(victim.user_attrs["worker"].rsplit(":", 1)[1])
        procs[pid].send_signal(signal.SIGKILL)
        survivor = next(p for q, p in procs.items() if q != pid)
        out, _ = survivor.communicate(timeout=timeout)
        took = time.monotonic() - start
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
            p.wait()
    assert survivor.returncode == 0, out
    assert took < timeout, took
    trials = finals()
    chosen = {t.user_attrs["search_trial"] for t in trials}
    assert len(chosen) == 2
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs["search_trial"] for t in complete) == sorted(chosen)  # every finalist, once
    killed = next(t for t in trials if t.number == victim.number)
    assert killed.state == TrialState.FAIL
    (retry,) = [t for t in complete if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.user_attrs["resumed_from_epoch"] >= 1  # went on from the killed worker's checkpoint
    assert retry.user_attrs["epochs_run"] == 30
