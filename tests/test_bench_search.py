"""``micronet-search bench search --quick``: every arm and seed runs as a real study, the table and the plot are
written, the audit trains stopped trials to the end, and a second call reuses the recorded runs."""

import json
import subprocess
import sys
from dataclasses import replace

from search.bench.search import ARMS, QUICK, hv_curve, schedule, time_to


def test_quick_search_benchmark_runs_records_and_resumes(tmp_path):
    out, work = tmp_path / "B.md", tmp_path / "work"
    cmd = [sys.executable, "-m", "search", "bench", "search", "--quick", "--work", str(work), "--out", str(out)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    text = out.read_text()
    assert "## Search quality: hypervolume per budget" in text
    for arm in ARMS:
        assert f"| {arm.name} |" in text
    assert (tmp_path / "B-search.png").stat().st_size > 1000
    records = {p.name: json.loads(p.read_text()) for p in (work / "runs").glob("*-s*.json")
               if not p.name.startswith("audit-")}
    assert sorted(records) == sorted(f"{a.name}-s{s}.json" for a in ARMS for s in QUICK.seeds)
    for r in records.values():
        assert r["trials"], r  # every run finished trials within its budget
        assert all(t["at_s"] <= r["budget_s"] for t in r["trials"])
        assert r["hv"] == sorted(r["hv"])  # hypervolume never falls as the budget grows
    # the baseline never stops a trial; the arms share the sampler seed per seed but not the sampler
    assert all(r["stopped"] == 0 for r in records.values() if r["arm"] == "random")
    assert (work / "runs" / "audit-new-default-s0.json").exists()
    # a second call runs nothing again: the records are reused, the table appended once more
    mtimes = {p: p.stat().st_mtime for p in (work / "runs").iterdir()}
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "started" not in second.stderr
    assert {p: p.stat().st_mtime for p in (work / "runs").iterdir()} == mtimes
    assert out.read_text().count("## Search quality") == 2


def test_time_to_a_hypervolume_and_the_schedule():
    record = {"trials": [
        {"at_s": 10.0, "values": [0.5, 0.04]},
        {"at_s": 20.0, "values": None},
        {"at_s": 30.0, "values": [0.6, 0.01]},
    ]}
    curve = hv_curve(record)
    assert [s for s, _ in curve] == [0.0, 10.0, 30.0]
    assert curve[1][1] < curve[2][1]
    assert time_to(record, curve[1][1]) == 10.0 and time_to(record, curve[2][1]) == 30.0
    assert time_to(record, 1.0) is None
    order = schedule(QUICK, ARMS)
    # each arm takes each position within a seed's group once over three seeds
    plan = type(QUICK)(seeds=(0, 1, 2))
    firsts = [schedule(plan, ARMS)[3 * i][0].name for i in range(3)]
    assert sorted(firsts) == sorted(a.name for a in ARMS)
    assert len(order) == len(ARMS) * len(QUICK.seeds)


def test_bad_bench_arguments_are_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "search", "bench", "search", "--arms", "nope", "--work",
                        str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "unknown arm 'nope'" in p.stderr and "Traceback" not in p.stderr


def test_every_arm_writes_a_valid_study_file(tmp_path):
    from search.bench.search import ALL_ARMS, Plan, study_file
    from search.study.study_file import load_study_file

    plan = Plan(seeds=(4,))
    for arm in ALL_ARMS:
        loaded = load_study_file(study_file(plan, arm, 4, tmp_path, None))
        cfg = loaded.config
        assert cfg.sampler.seed == 4 and cfg.timeout == plan.budget_s and cfg.n_trials is None
        assert cfg.storage.endswith(f"{arm.name}-s4.db")
        expected = {"random": "random", "tpe-pareto": "tpe", "new-default": "tpe", "random-moasha": "random",
                    "nsga2-moasha": "nsga2", "gp-moasha": "gp"}[arm.name]
        assert cfg.sampler.name == expected
        if arm.name == "random":  # the baseline: no stopping, no reuse
            assert cfg.stopper.name == "none" and not cfg.stopper.skip_dominated and not cfg.reuse_bases
        elif arm.name != "tpe-pareto":
            assert cfg.stopper.name == "moasha" and cfg.reuse_bases


def test_arms_must_start_with_the_baseline(tmp_path):
    p = subprocess.run([sys.executable, "-m", "search", "bench", "search", "--arms", "gp-moasha,random", "--work",
                        str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--arms must start with random" in p.stderr and "Traceback" not in p.stderr


def test_runs_read_the_study_as_it_was_when_the_benchmark_started(tmp_path):
    # an edit of the study or its space while the benchmark runs (seen: a crash at seed 2) changes none of its runs
    from search.bench.search import ARMS, Plan, study_file
    from search.study.study_file import load_study_file

    (tmp_path / "space.yaml").write_text("params:\n  arch: {value: resnet20}\n  width: {choices: [0.25, 0.5]}\n")
    study = tmp_path / "s.yaml"
    study.write_text("name: s\nspace: space.yaml\ndata: {name: digits}\ntrain: {epochs: 3}\n")
    plan, work = Plan(study=str(study), seeds=(0,)), tmp_path / "work"
    first = load_study_file(study_file(plan, ARMS[0], 0, work, None)).config
    study.write_text("name: s\nspace: space.yaml\ndata: {name: digits}\ntrain: {epochs: 9}\n")
    (tmp_path / "space.yaml").write_text("params:\n  arch: {value: resnet20}\n  width: {value: 1.0}\n")
    later = load_study_file(study_file(plan, ARMS[2], 0, work, None))
    assert first.train.epochs == later.config.train.epochs == 3
    assert next(p for p in later.space.params if p.name == "width").choices == (0.25, 0.5)
    assert (work / "snapshot" / "study.yaml").read_text().startswith(f"# copied from {study.resolve()}")


def test_a_baseline_run_with_too_few_trials_is_flagged_with_the_budget_that_would_do():
    from search.bench.search import Plan, too_few_trials

    plan = Plan()  # 1380 s per run, 30 trials needed
    enough = {"arm": "random", "seed": 0, "complete": 28, "stopped": 2}
    assert too_few_trials(enough, plan) is None
    # 13 trials in 1380 s (measured on a float32-only CPU): 106 s a trial, 30 of them with 15 % margin, in minutes
    warning = too_few_trials({"arm": "random", "seed": 0, "complete": 13, "stopped": 0}, plan)
    assert "finished 13 trials in 1380 s, under the 30" in warning and "--budget 3720" in warning
    assert too_few_trials({"arm": "random", "seed": 0, "complete": 0, "stopped": 0}, plan) is not None
    assert too_few_trials({"arm": "random", "seed": 0, "complete": 1, "stopped": 0}, replace(plan, min_trials=0)) \
        is None  # --quick asks for no minimum
