"""``micronet-search bench search --quick``: every arm and seed runs as a real whole run (search and final stage),
the held-out accuracy comes from an export, the table says which targets are met, and a second call reuses the
recorded runs."""

import json
import subprocess
import sys

from search.bench.search import ARMS, QUICK, schedule, summarize, targets


def test_quick_search_benchmark_runs_records_and_resumes(tmp_path):
    out, work = tmp_path / "B.md", tmp_path / "work"
    cmd = [sys.executable, "-m", "search", "bench", "search", "--quick", "--work", str(work), "--out", str(out)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr
    text = out.read_text()
    assert "## Search quality: what a whole run delivers" in text and "Targets (medians):" in text
    for arm in ARMS:
        assert f"| {arm.name} |" in text
    records = {p.name: json.loads(p.read_text()) for p in (work / "runs").glob("*-s*.json")}
    assert sorted(records) == sorted(f"{a.name}-s{s}.json" for a in ARMS for s in QUICK.seeds)
    for r in records.values():
        assert r["front"] and r["candidates"] >= 1, r
        assert r["wall_s"] < 1.25 * r["budget_s"] + 60  # each run ended by itself, about its timeout
    hand = records["hand-s0.json"]
    assert hand["epochs"] >= 1 and hand["held_out"]["any"] is not None
    new = records["new-default-s0.json"]
    assert new["bases"] >= 1 and new["base_s"] > 0
    for r in (new, records["today-s0.json"]):  # the held-out accuracy is the exported model card's
        exported = [json.loads(p.read_text()) for p in (work / "exports" / f"{r['arm']}-s0").glob("*/model_card.json")]
        assert r["held_out"]["any"] in {c["test_accuracy"] for c in exported}
    # a second call runs nothing again: the records are reused, the table appended once more
    mtimes = {p: p.stat().st_mtime for p in (work / "runs").iterdir()}
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "started" not in second.stderr
    assert {p: p.stat().st_mtime for p in (work / "runs").iterdir()} == mtimes
    assert out.read_text().count("## Search quality") == 2


def test_each_arm_takes_each_slot_over_the_seeds():
    plan = type(QUICK)(seeds=(0, 1, 2, 3))
    order = schedule(plan, ARMS)
    assert len(order) == len(ARMS) * 4
    firsts = [order[len(ARMS) * i][0].name for i in range(4)]
    assert sorted(firsts) == sorted(a.name for a in ARMS)


def run(arm, hv, low, any_, tau=None):
    return {"arm": arm, "hv": hv, "held_out": {"0.03": low, "0.01": None, "any": any_}, "front": [{}],
            "candidates": 10, "bases": 1, "base_s": 1.0, "search_train_s": 1.0, "wall_s": 1.0, "tau": tau}


def test_the_targets_are_read_from_the_medians_and_a_miss_says_so():
    records = [run("today", 0.02, 0.40, 0.40), run("today", 0.03, 0.42, 0.42), run("today", 0.01, 0.38, 0.38),
               run("new-default", 0.09, 0.755, 0.76, 0.7), run("new-default", 0.08, 0.70, 0.72, 0.5),
               run("new-default", 0.10, 0.76, 0.77, 0.9),
               run("random-final", 0.07, 0.70, 0.70), run("hand", 0.05, None, 0.765)]
    lines = targets(summarize(records, ARMS))
    assert lines[0].startswith("- new-default's held-out accuracy at score ≤ 0.03 (75.5%) within 1 point of the "
                               "hand recipe's (76.5%): **met** (-1.0 points)")
    assert "more than 15 points above today's (40.0%): **met**" in lines[1]
    assert "final-front hypervolume 0.0900 above today's (0.0200) and random-final's (0.0700): **met**" in lines[2]
    assert lines[3].endswith("0.70, **met**")
    records[3]["held_out"]["0.03"] = 0.70  # the median falls to 0.70: 6.5 points short
    records[-1]["held_out"]["any"] = 0.80
    lines = targets(summarize(records, ARMS))
    assert "**not met** (-10.0 points)" in lines[0]
    # arms left out of a run are said to be left out, never counted as met or missed
    partial = [r for r in records if r["arm"] in ("new-default", "hand")]
    lines = targets(summarize(partial, ARMS))
    assert "today not run in this benchmark" in lines[1]
    assert "neither run in this benchmark" in lines[2] and "**met**" not in lines[2]


def test_bad_bench_arguments_are_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "search", "bench", "search", "--arms", "nope", "--work",
                        str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "unknown arm 'nope'" in p.stderr and "Traceback" not in p.stderr


def test_every_study_arm_writes_a_valid_study_file(tmp_path):
    from search.bench.search import EXTRA_ARMS, Plan, study_file
    from search.study.study_file import load_study_file

    plan = Plan(seeds=(4,))
    for arm in ARMS + EXTRA_ARMS:
        if arm.hand:
            continue
        cfg = load_study_file(study_file(plan, arm, 4, tmp_path, None)).config
        assert cfg.sampler.seed == 4 and cfg.timeout == plan.budget_s and cfg.n_trials is None
        assert cfg.storage.endswith(f"{arm.name}-s4.db") and cfg.artifacts.endswith(f"{arm.name}-s4")
        assert cfg.sampler.name == {"today": "tpe", "new-default": "tpe", "random-final": "random",
                                    "one-long-base": "tpe"}[arm.name]
        if arm.name == "one-long-base":  # the arm's base keys replace the study's, the others stay
            assert cfg.base.epochs == 72 and cfg.base.max_bases == 1 and cfg.base.lr == 0.1
        if arm.name == "today":  # the dev study as it was: from scratch, no final stage
            assert cfg.base is None and cfg.final is None and cfg.train.epochs == 4 and cfg.reuse_bases
        else:
            assert cfg.base is not None and cfg.final is not None


def test_runs_read_the_study_as_it_was_when_the_benchmark_started(tmp_path):
    # an edit of the study or its space while the benchmark runs changes none of its runs
    from search.bench.search import Plan, study_file
    from search.study.study_file import load_study_file

    (tmp_path / "space.yaml").write_text("params:\n  arch: {value: resnet20}\n  width: {choices: [0.25, 0.5]}\n")
    study = tmp_path / "s.yaml"
    study.write_text("name: s\nspace: space.yaml\ndata: {name: digits}\ntrain: {epochs: 3}\n")
    plan, work = Plan(study=str(study), seeds=(0,)), tmp_path / "work"
    first = load_study_file(study_file(plan, ARMS[1], 0, work, None)).config
    study.write_text("name: s\nspace: space.yaml\ndata: {name: digits}\ntrain: {epochs: 9}\n")
    (tmp_path / "space.yaml").write_text("params:\n  arch: {value: resnet20}\n  width: {value: 1.0}\n")
    later = load_study_file(study_file(plan, ARMS[2], 0, work, None))
    assert first.train.epochs == later.config.train.epochs == 3
    assert next(p for p in later.space.params if p.name == "width").choices == (0.25, 0.5)
    assert (work / "snapshot" / "s" / "study.yaml").read_text().startswith(f"# copied from {study.resolve()}")
