import json
import sqlite3
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState
from tiny import SPACE, write_tiny_study

from search.pareto import dominates
from search.results.front import front_rows, front_trials, hypervolume
from search.study.runner import run_study
from search.study.study_file import load_study_file, open_study
from search.training.checkpoint import load_candidate_checkpoint
from search.trial.objectives import Objectives

OBJECTIVES = Objectives.parse(None)  # accuracy, score: the tiny studies' objectives


def write_study(tmp_path, n_trials=4, extra="", name="tiny", space=SPACE):
    return write_tiny_study(tmp_path, name=name, space=space, n_trials=n_trials, extra=extra)


def test_study_runs_records_and_resumes(tmp_path):
    path = write_study(tmp_path, n_trials=3, extra="enqueue: [{groups: 3}]\n")
    study = run_study(load_study_file(path))
    trials = study.get_trials()
    assert len([t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 3
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert complete
    for t in complete:
        assert t.intermediate_values.keys() == {1, 2}  # one validation accuracy per epoch, for the dashboard
        for key in ("dense_params", "dense_macs", "compressed_params", "compressed_macs", "nonzero_params",
                    "score", "measured_score", "epochs_run", "wall_s", "images_per_s", "device",
                    "candidate", "checkpoint_artifact_id"):
            assert key in t.user_attrs, key
        assert OBJECTIVES.value(t, "score") == pytest.approx(t.user_attrs["score"])
    # the enqueued groups=3 ran first: 3 does not divide the 4 channels of width 0.25, so it was pruned with the
    # reason, and the study went on
    first = trials[0]
    assert first.params["groups"] == 3 and first.state == TrialState.PRUNED
    assert "cannot build this candidate" in first.user_attrs["pruned_reason"]
    assert "groups=3 does not divide" in first.user_attrs["pruned_reason"]
    for t in trials:
        if t.params.get("groups") == 3:
            assert t.state == TrialState.PRUNED and "cannot build" in t.user_attrs["pruned_reason"]

    numbers = {t.number for t in complete}
    resumed = run_study(load_study_file(path, n_trials=5))
    finished = [t for t in resumed.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 5
    assert numbers <= {t.number for t in finished if t.state == TrialState.COMPLETE}  # nothing lost

    again = run_study(load_study_file(path, n_trials=5))  # already done: no new trial
    assert len(again.get_trials()) == len(resumed.get_trials())


def test_checkpoint_reloads_to_the_same_accuracy(tmp_path):
    from search.training.data import DataConfig, load_data
    from search.training.trainer import evaluate

    path = write_study(tmp_path, n_trials=2, space=SPACE.replace("[1, 2, 3]", "[1, 2]"))
    study = run_study(load_study_file(path))
    trial = next(t for t in study.get_trials() if t.state == TrialState.COMPLETE)
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path / "artifacts"))
    file = tmp_path / "ckpt.pt"
    optuna.artifacts.download_artifact(artifact_store=store, artifact_id=trial.user_attrs["checkpoint_artifact_id"],
                                       file_path=str(file))
    model, meta = load_candidate_checkpoint(file)
    assert meta["candidate"] == trial.user_attrs["candidate"]
    data = load_data(DataConfig(name="digits", subset=400))
    accuracy = evaluate(model, data.x_val, data.y_val, meta["mean"], meta["std"])
    assert accuracy == pytest.approx(OBJECTIVES.accuracy(trial))


def test_accuracy_floor_is_a_constraint(tmp_path):
    # Two enqueued candidates on either side of the floor: a cheap one that cannot learn in 3 epochs (lr 1e-4) and a
    # dense one that does (about 0.6; chance is 0.1). Without the constraint both would be on the front: the cheap
    # one has the lower score.
    floor = 0.3
    space = SPACE.replace("[1, 2, 3]", "[1]").replace("low: 0.05", "low: 0.0001")
    path = write_study(tmp_path, n_trials=2, space=space,
                       extra=f"accuracy_floor: {floor}\nenqueue:\n"
                             "  - {groups: 1, ps: 0.6, pu: 0.3, qw: 8, lr: 0.0001}\n"
                             "  - {groups: 1, ps: 0.0, pu: 0.0, qw: 32, lr: 0.05}\n")
    path.write_text(path.read_text().replace(
        "train: {epochs: 2, batch_size: 32}",
        "train: {epochs: 3, batch_size: 16, precision: fp32, augment: {crop_padding: 0, flip: false}}"))
    study = run_study(load_study_file(path))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 2
    for t in complete:  # Optuna's constraint API: stored as a system attribute, read back by FrozenTrial.constraints
        assert t.constraints == {"accuracy_floor": pytest.approx(floor - OBJECTIVES.accuracy(t))}
        assert t.system_attrs["constraints:accuracy_floor"] == pytest.approx(floor - OBJECTIVES.accuracy(t))
    infeasible = [t for t in complete if OBJECTIVES.accuracy(t) < floor]
    feasible = [t for t in complete if OBJECTIVES.accuracy(t) >= floor]
    assert infeasible and feasible, [t.values for t in complete]
    points = [OBJECTIVES.loss(t.values) for t in complete]
    for t in infeasible:  # non-dominated: only the constraint keeps it off the front
        assert not any(dominates(p, OBJECTIVES.loss(t.values)) for p in points)
    front = {t.number for t in study.best_trials}
    assert front == {t.number for t in feasible}
    assert {t.number for t in front_trials(study)} == front


def test_early_stopping_prunes_with_a_reason(tmp_path):
    path = write_study(tmp_path, n_trials=6, extra="", space=SPACE.replace("[1, 2, 3]", "[1]"))
    text = path.read_text().replace("stopper: {name: none, skip_dominated: false}",
                                    "stopper: {name: pareto, warmup_epochs: 1, min_trials: 1, percentile: 100}")
    # 3 epochs: a stopper decides after epochs 1 and 2 (after the last one stopping would save nothing)
    path.write_text(text.replace("train: {epochs: 2,", "train: {epochs: 3,"))
    study = run_study(load_study_file(path))
    pruned = [t for t in study.get_trials() if t.state == TrialState.PRUNED]
    assert pruned, "percentile 100 stops every trial that does not beat all its finished rivals"
    assert all("percentile" in t.user_attrs["pruned_reason"] for t in pruned)
    assert all(1 <= max(t.intermediate_values) < 3 for t in pruned)


TPE_SPACE = """\
params:
  ps: {low: 0.0, high: 0.9}
"""


def _distance_to_the_best(tmp_path, sampler: str, n_startup: int = 10, n_trials: int = 40):
    """Run the study file's sampler on a cheap stand-in for training: every trial is stopped early after writing a
    two-epoch learning curve, as the objective writes it, whose accuracy peaks at ps = 0.7. Returns the median
    distance to 0.7 of the trials after the start-up ones, and the study."""
    tmp_path.mkdir()
    path = write_study(tmp_path, n_trials=n_trials, space=TPE_SPACE)
    text = path.read_text().replace("sampler: {name: random, seed: 3}", sampler)
    path.write_text(text.replace(f"sqlite:///{tmp_path / 'tiny.db'}", f"journal:{tmp_path / 'tiny.log'}"))
    loaded = load_study_file(path)
    study = open_study(loaded)  # the sampler the study file asks for

    def objective(trial):
        ps = loaded.space.sample(trial)["ps"]
        accuracy = 1 - abs(ps - 0.7)
        for epoch in (1, 2):
            trial.storage.set_trial_intermediate_value(trial._trial_id, epoch, accuracy * epoch / 2)
        raise optuna.TrialPruned("stopped early")

    study.optimize(objective, n_trials=n_trials)
    later = sorted(abs(t.params["ps"] - 0.7) for t in study.get_trials()[n_startup:])
    return later[len(later) // 2], study


def test_tpe_learns_from_pruned_trials_with_learning_curves(tmp_path):
    # Optuna's TPE ranks pruned trials by their last intermediate value with study.direction, which a two-objective
    # study refuses; our sampler ranks them by accuracy (maximized). With every trial pruned, the trials it models
    # as good are the pruned ones with the best curves: after start-up it must sample closer to the best than
    # random sampling does (uniform on [0, 0.9]: a median distance of 0.25).
    tpe, study = _distance_to_the_best(tmp_path / "tpe", "sampler: {name: tpe, seed: 0, n_startup_trials: 10}")
    assert all(t.state == TrialState.PRUNED and len(t.intermediate_values) == 2 for t in study.get_trials())
    random, _ = _distance_to_the_best(tmp_path / "random", "sampler: {name: random, seed: 0}")
    assert tpe < 0.15 < random, (tpe, random)


def test_resume_from_another_working_directory(tmp_path, monkeypatch):
    path = write_study(tmp_path, n_trials=1, space=SPACE.replace("[1, 2, 3]", "[1]"))
    path.write_text(path.read_text().replace(f"space: {tmp_path / 'space.yaml'}", "space: space.yaml"))
    run_study(load_study_file(path))  # space.yaml found next to the study file
    monkeypatch.chdir(tmp_path)  # now found from the working directory: same space, same study
    study = run_study(load_study_file(path.name, n_trials=2))
    assert len(study.get_trials()) == 2


def test_front_is_non_dominated(tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize"])
    points = [(0.9, 0.5), (0.8, 0.2), (0.85, 0.6), (0.95, 1.0), (0.7, 0.1), (0.6, 0.3), (0.8, 0.2)]
    for acc, score in points:
        study.add_trial(optuna.trial.create_trial(values=[acc, score], params={}, distributions={}))
    front = front_trials(study)
    values = [tuple(t.values) for t in front]
    for a in values:
        assert not any(dominates(OBJECTIVES.loss(t.values), OBJECTIVES.loss(a)) for t in study.trials)
    assert {(0.9, 0.5), (0.95, 1.0), (0.7, 0.1), (0.8, 0.2)} == set(values)
    assert [r["score"] for r in front_rows(study)] == sorted(r["score"] for r in front_rows(study))
    # the floor keeps exactly the members at or above it (an empty list would pass an all())
    assert sorted(r["val_accuracy"] for r in front_rows(study, min_accuracy=0.85)) == [0.9, 0.95]


def test_hypervolume():
    assert hypervolume([(1.0, 0.0)], reference_score=1.0) == pytest.approx(1.0)
    assert hypervolume([(0.5, 0.5)], reference_score=1.0) == pytest.approx(0.25)
    # two points: staircase area
    assert hypervolume([(0.5, 0.2), (0.9, 0.6)], reference_score=1.0) == pytest.approx(0.5 * 0.4 + 0.9 * 0.4)
    assert hypervolume([(0.5, 0.2), (0.4, 0.3)], reference_score=1.0) == pytest.approx(0.5 * 0.8)


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "search", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def test_run_and_front_commands(tmp_path):
    path = write_study(tmp_path, n_trials=2, space=SPACE.replace("[1, 2, 3]", "[1, 2]"))
    result = cli("run", str(path))
    assert result.returncode == 0, result.stderr
    assert "Pareto front of tiny" in result.stdout
    storage = f"sqlite:///{tmp_path / 'tiny.db'}"
    out = cli("front", "--storage", storage, "--study", "tiny", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert rows
    for key in ("trial", "val_accuracy", "score", "params", "macs", "arch", "groups", "depthwise", "ps", "pu",
                "qw", "qa", "kd_temperature"):
        assert key in rows[0]
    # the time each member took is shown (cost awareness): positive seconds, and the table prints the column
    assert all(r["wall_s"] > 0 and r["epochs_run"] >= 1 for r in rows)
    table = cli("front", "--storage", storage, "--study", "tiny")
    assert "time s" in table.stdout and f"{rows[0]['wall_s']:.0f}" in table.stdout
    for suffix in ("png", "html"):
        plot = cli("front", "--storage", storage, "--study", "tiny", "--plot", str(tmp_path / f"front.{suffix}"))
        assert plot.returncode == 0, plot.stderr
        assert (tmp_path / f"front.{suffix}").stat().st_size > 1000


def db_snapshot(db):
    if not db.exists():
        return None
    con = sqlite3.connect(db)
    try:
        return con.execute("select count(*) from trials").fetchone(), con.execute(
            "select study_name from studies").fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("mutate,fragment", [
    (lambda t: t.replace("sampler: {name: random, seed: 3}", "sampler: {name: cmaes}"), "unknown sampler 'cmaes'"),
    (lambda t: t.replace("n_trials:", "n_trails:"), "unknown key 'n_trails'"),
    (lambda t: t.replace("train: {epochs: 2", "train: {epochs: [2"), "is not valid YAML"),
    (lambda t: t.replace("storage: sqlite:///", "storage: postgresql://u:secret@127.0.0.1:1/x#"),
     "cannot open storage"),
])
def test_bad_study_input_is_one_line_and_leaves_the_db_alone(tmp_path, mutate, fragment):
    path = write_study(tmp_path, n_trials=1, space=SPACE.replace("[1, 2, 3]", "[1]"))
    assert cli("run", str(path)).returncode == 0
    before = db_snapshot(tmp_path / "tiny.db")
    path.write_text(mutate(path.read_text()))
    result = cli("run", str(path), "--n-trials", "3")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr and "secret" not in result.stderr
    assert db_snapshot(tmp_path / "tiny.db") == before


def test_unknown_space_key_is_named(tmp_path):
    path = write_study(tmp_path, space=SPACE + "  colour: {choices: [red]}\n")
    result = cli("run", str(path))
    assert result.returncode == 2
    assert "params.colour: unknown space key 'colour'" in result.stderr
    assert not (tmp_path / "tiny.db").exists()


def test_study_with_other_directions_is_refused(tmp_path):
    path = write_study(tmp_path)
    optuna.create_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'tiny.db'}", directions=["minimize"])
    before = db_snapshot(tmp_path / "tiny.db")
    result = cli("run", str(path))
    assert result.returncode == 2
    assert "has directions minimize" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert db_snapshot(tmp_path / "tiny.db") == before


def test_front_of_unknown_study(tmp_path):
    path = write_study(tmp_path, n_trials=1, space=SPACE.replace("[1, 2, 3]", "[1]"))
    cli("run", str(path))
    result = cli("front", "--storage", f"sqlite:///{tmp_path / 'tiny.db'}", "--study", "nope")
    assert result.returncode == 2 and "no study 'nope'" in result.stderr and "tiny" in result.stderr
