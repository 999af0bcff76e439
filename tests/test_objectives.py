"""Objectives by name (search.trial.objectives): parsing, N-D dominance and hypervolume, the knee, the stoppers with
several
costs, latency measured and recorded with its hardware, and a 3-objective study end to end."""

import json
import math
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from tiny import write_tiny_study

from search import pareto
from search.candidate.candidate import Candidate, footprint
from search.compress.compression import Compression
from search.errors import ConfigError
from search.export import knee_trial
from search.results.front import hypervolume
from search.trial.latency import Latency
from search.trial.objectives import Objectives, Subject, check_hardware
from search.trial.stopping import Finished, MOASHAStopper, ParetoStopper

REPO = Path(__file__).resolve().parents[1]


def test_default_objectives_are_accuracy_and_score():
    o = Objectives.parse(None)
    assert o.names == ["accuracy", "score"]
    assert o.metric_names == ["val_accuracy", "score"]
    assert o.directions == ["maximize", "minimize"]
    assert [m.name for m in o.before] == ["score"]


@pytest.mark.parametrize("items,fragment", [
    (["accuracy", "colour"], "unknown objective 'colour'"),
    (["accuracy", "score", "score"], "listed twice"),
    (["score", "latency"], "must hold accuracy"),
    (["accuracy"], "must hold accuracy and at least one cost"),
    (["accuracy", {"latency": {"threads": 0}}], "latency threads must be an integer >= 1"),
    (["accuracy", {"latency": {"target": "tpu"}}], "latency target must be one of"),
    (["accuracy", {"score": {"bits": 4}}], "takes no option(s) bits"),
    (["accuracy", ["score"]], "each entry is a name"),
])
def test_bad_objectives_are_named(items, fragment):
    with pytest.raises(ConfigError, match=None) as e:
        Objectives.parse(items)
    assert fragment in str(e.value)


def test_dominance_and_hypervolume_in_three_dimensions():
    o = Objectives.parse(["accuracy", "score", "latency"])

    def beats(a, b):  # values a dominate values b
        return pareto.dominates(o.loss(a), o.loss(b))

    assert o.loss((0.9, 0.1, 1.0)) == (-0.9, 0.1, 1.0)  # accuracy negated: every coordinate a loss
    assert beats((0.9, 0.1, 1.0), (0.8, 0.1, 1.0))
    assert not beats((0.8, 0.1, 1.0), (0.9, 0.1, 1.0))
    assert not beats((0.9, 0.1, 2.0), (0.8, 0.1, 1.0))  # slower: a trade, not domination
    assert not beats((0.9, 0.1, 1.0), (0.9, 0.1, 1.0))
    ref = (0.0, 1.0, 10.0)
    assert o.hypervolume([(1.0, 0.0, 0.0)], ref) == pytest.approx(1.0 * 1.0 * 10.0)
    # two boxes: 0.5×0.5×10 and 1.0×1.0×5, overlapping in 0.5×0.5×5
    pts = [(0.5, 0.5, 0.0), (1.0, 0.0, 5.0)]
    assert o.hypervolume(pts, ref) == pytest.approx(0.5 * 0.5 * 10 + 1.0 * 1.0 * 5 - 0.5 * 0.5 * 5)
    assert o.hypervolume([(0.5, 2.0, 1.0)], ref) == 0.0  # worse than the reference on the score: adds nothing


def test_two_objective_hypervolume_matches_the_area_sweep():
    # the sweep the front module used before (exact for two objectives), against Optuna's routine
    import random

    rng = random.Random(0)
    for _ in range(20):
        points = [(rng.random(), rng.random()) for _ in range(rng.randint(1, 12))]
        pts = sorted((s, a) for a, s in points if s < 1.0 and a > 0.0)
        area, best = 0.0, 0.0
        for i, (s, a) in enumerate(pts):
            best = max(best, a)
            right = pts[i + 1][0] if i + 1 < len(pts) else 1.0
            area += (right - s) * best
        assert hypervolume(points, reference_score=1.0) == pytest.approx(area)


def _trial(number, values, **attrs):
    t = create_trial(values=list(values), user_attrs=attrs)
    t.number = number
    return t


def test_knee_in_three_objectives_is_nearest_the_ideal_point():
    o = Objectives.parse(["accuracy", "score", "latency"])
    front = [_trial(0, (0.60, 0.01, 0.2)), _trial(1, (0.90, 0.05, 0.5)), _trial(2, (0.95, 0.50, 5.0)),
             _trial(3, (0.70, 0.02, 3.0))]
    # normalized goodness (1 best): 0: (0, 1, 1); 1: (0.86, 0.92, 0.94); 2: (1, 0, 0); 3: (0.29, 0.98, 0.42)
    assert knee_trial(front, o).number == 1
    two = Objectives.parse(None)  # two objectives: the line-distance knee as before
    assert knee_trial([_trial(0, (0.60, 0.01)), _trial(1, (0.90, 0.05)), _trial(2, (0.95, 0.50))], two).number == 1


def test_stoppers_compare_every_cost():
    curve = {1: 0.5, 2: 0.8, 3: 0.9}
    # rivals must be no worse on both costs to count
    finished = [Finished((0.1, 1.0), curve), Finished((0.1, 1.0), curve), Finished((0.1, 9.0), curve)]
    stopper = ParetoStopper(warmup_epochs=2, min_trials=2, percentile=50)
    assert stopper.should_stop(2, 0.5, (0.2, 2.0), finished) is not None   # two rivals dominate it in costs
    assert stopper.should_stop(2, 0.5, (0.2, 0.5), finished) is None       # faster than every rival: no rival
    moasha = MOASHAStopper(min_epochs=1, reduction_factor=2, min_trials=3)
    others = [Finished((0.1, 1.0), {1: 0.8}), Finished((0.2, 2.0), {1: 0.7}), Finished((0.3, 3.0), {1: 0.6})]
    assert moasha.should_stop(1, 0.5, (0.4, 4.0), others) is not None      # dominated by all three
    assert moasha.should_stop(1, 0.5, (0.4, 0.1), others) is None          # the fastest: on the first front


def _tiny_candidate(**compression):
    return Candidate(arch="resnet20", width=0.25, compression=Compression(**compression))


@pytest.mark.parametrize("target", ["onnxruntime-cpu", "device"])
def test_latency_is_measured_on_the_exported_form_and_recorded_with_its_hardware(target):
    candidate = _tiny_candidate(ps=0.5, qw=8, qa=8)
    from search.training.checkpoint import rebuild

    model = rebuild(candidate, 10)
    subject = Subject(candidate, footprint(candidate, 10), 10, (3, 32, 32), model=model)
    metric = Latency(target=target, warmup=2, repeats=5)
    ms, extra = metric.record(subject)
    assert 0 < ms < 10_000 and math.isfinite(ms)
    assert extra["latency_hardware"] and extra["latency_target"].startswith(
        "onnxruntime CPU, 1 thread" if target == "onnxruntime-cpu" else "torch on cpu")
    if target == "device":
        return  # torch eager at batch 1 is dominated by per-op overhead and the other process's threads here
    # ~50× the MACs takes longer: the value measures the model, not the harness
    small, big = Candidate(arch="resnet20", width=0.25), Candidate(arch="resnet18", width=1.0)
    small_ms, big_ms = (Latency(target=target, warmup=2, repeats=5).record(
        Subject(c, footprint(c, 10), 10, (3, 32, 32), model=rebuild(c, 10)))[0] for c in (small, big))
    assert big_ms > 2 * small_ms


def test_a_front_of_latencies_from_different_hardware_is_refused():
    o = Objectives.parse(["accuracy", "score", "latency"])
    a = _trial(0, (0.9, 0.1, 1.0), latency_target="onnxruntime CPU, 1 thread, batch 1", latency_hardware="CPU A")
    b = _trial(1, (0.8, 0.05, 2.0), latency_target="onnxruntime CPU, 1 thread, batch 1", latency_hardware="CPU B")
    with pytest.raises(ConfigError, match="different hardware.*--mixed-hardware"):
        check_hardware(o, [a, b])
    check_hardware(o, [a, b], mixed=True)
    check_hardware(o, [a, _trial(2, (0.8, 0.05, 2.0), latency_target=a.user_attrs["latency_target"],
                                 latency_hardware="CPU A")])
    check_hardware(Objectives.parse(None), [a, b])  # no measured objective: nothing to mix


def test_export_under_a_latency_cap_takes_the_most_accurate_member_that_meets_it():
    """The cap excludes the front's most accurate member (2.0 ms): the pick is the most accurate one under it, so
    a cap that was ignored would show."""
    from search.export import select_trial
    from search.export.errors import ExportError

    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    objectives = Objectives.parse(["accuracy", "score", "latency"])
    study.set_metric_names(objectives.metric_names)  # as a study file's objectives: list sets them
    study.set_user_attr("micronet_objectives", objectives.to_list())
    hw = {"latency_target": "onnxruntime CPU, 1 thread, batch 1", "latency_hardware": "CPU A",
          "checkpoint_artifact_id": "x"}
    for values in [(0.95, 0.50, 2.0), (0.90, 0.30, 1.2), (0.80, 0.10, 0.5), (0.70, 0.05, 0.9)]:
        study.add_trial(create_trial(values=list(values), user_attrs=hw))
    assert {t.number for t in study.best_trials} == {0, 1, 2, 3}
    assert select_trial(study, max_latency_ms=3.0).number == 0  # no cap that binds: the most accurate
    assert select_trial(study, max_latency_ms=1.5).number == 1  # 0 is too slow; 1 is the most accurate left
    assert select_trial(study, max_latency_ms=1.0).number == 2  # 3 meets it too but is less accurate
    assert select_trial(study, max_latency_ms=1.0, min_accuracy=0.6).number == 3  # with a floor: the lowest score
    with pytest.raises(ExportError, match=r"latency 0.1 ms; the fastest takes 0.500 ms \(trial 2\)"):
        select_trial(study, max_latency_ms=0.1)


def test_a_stored_study_with_other_objectives_is_refused(tmp_path):
    from test_study import cli, db_snapshot, write_study

    path = write_study(tmp_path, n_trials=1, space="params:\n  arch: {value: resnet20}\n  width: {value: 0.25}\n")
    assert cli("run", str(path)).returncode == 0
    before = db_snapshot(tmp_path / "tiny.db")
    path.write_text(path.read_text() + "objectives: [accuracy, score, latency]\n")
    result = cli("run", str(path))
    assert result.returncode == 2
    assert "has objectives accuracy, score, not the study file's objectives accuracy, score, latency" \
        in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert db_snapshot(tmp_path / "tiny.db") == before


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "search", *args], capture_output=True, text=True, timeout=600)


def test_a_three_objective_study_runs_end_to_end(tmp_path):
    """accuracy, score and latency: the run, the front table and JSON, the pairwise plot, export by latency with
    --verify, and the metric names the dashboard shows."""
    space = "params:\n  arch: {value: resnet20}\n  width: {choices: [0.25, 0.5]}\n  ps: {low: 0.0, high: 0.6}\n" \
            "  qw: {choices: [8, 32]}\n"
    study_file = write_tiny_study(
        tmp_path, name="three", db="three", space=space, seed=1,
        stopper="{name: moasha, min_epochs: 1, reduction_factor: 2, min_trials: 3}",
        extra="objectives: [accuracy, score, {latency: {warmup: 3, repeats: 15}}]\n")
    db = f"sqlite:///{tmp_path / 'three.db'}"
    run = _cli("run", str(study_file))
    assert run.returncode == 0, run.stderr
    assert "latency" in run.stderr and " ms " in run.stdout  # the run's log and its front table

    study = optuna.load_study(study_name="three", storage=db)
    assert study.metric_names == ["val_accuracy", "score", "latency_ms"]  # the dashboard's axis names
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert complete and all(len(t.values) == 3 and t.values[2] > 0 for t in complete)
    assert all(t.user_attrs["latency_hardware"] for t in complete)

    front = json.loads(_cli("front", "--storage", db, "--study", "three", "--json").stdout)
    assert {r["trial"] for r in front} == {t.number for t in study.best_trials}
    assert all(r["latency_ms"] > 0 and r["latency_target"].startswith("onnxruntime CPU") for r in front)

    plot = _cli("front", "--storage", db, "--study", "three", "--plot", str(tmp_path / "front.html"))
    assert plot.returncode == 0, plot.stderr
    html = (tmp_path / "front.html").read_text()
    assert "latency, ms per image" in html and "score (lower is better)" in html

    # the cap sits just under the most accurate member's latency when a faster member exists, so it excludes that
    # member and an ignored cap would show (a test of the rule on a known front is above)
    most_accurate = max(front, key=lambda r: (r["val_accuracy"], -r["trial"]))
    faster = [r["latency_ms"] for r in front if r["latency_ms"] < most_accurate["latency_ms"]]
    cap = (max(faster) + most_accurate["latency_ms"]) / 2 if faster else most_accurate["latency_ms"] * 1.01
    out = tmp_path / "export"
    export = _cli("export", "--storage", db, "--study", "three", "--max-latency-ms", repr(cap),
                  "--out", str(out), "--verify")
    assert export.returncode == 0, export.stderr
    card = json.loads((out / "model_card.json").read_text())
    best = max((r for r in front if r["latency_ms"] <= cap),
               key=lambda r: (r["val_accuracy"], -r["trial"]))  # ties: the lower trial number, as export does
    assert not faster or card["trial"] != most_accurate["trial"]
    assert card["trial"] == best["trial"]
    assert card["objectives"]["latency"] == pytest.approx(best["latency_ms"])
    assert card["latency"]["hardware"] == best["latency_hardware"]

    too_fast = _cli("export", "--storage", db, "--study", "three", "--max-latency-ms", "0.000001",
                    "--out", str(tmp_path / "none"))
    assert too_fast.returncode == 2 and "the fastest takes" in too_fast.stderr
    assert len(too_fast.stderr.strip().splitlines()) == 1 and not (tmp_path / "none").exists()

    # the dashboard serves the three metric names (its axes and table headers)
    from test_dashboard import free_port, get_json, wait_for_http

    port, log = free_port(), tmp_path / "dashboard.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "search", "dashboard", "--storage", db, "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/meta", proc, log)
        detail = get_json(f"http://127.0.0.1:{port}/api/studies/{study._study_id}")
        assert detail["objective_names"] == ["val_accuracy", "score", "latency_ms"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
