"""The search benchmark: what a user deploys at the end of one whole run, for each way of spending the same budget.

Every (arm, seed) run is a real ``micronet-search run`` process with its own SQLite storage and artifact folder,
given the budget as its ``timeout`` on one core; it ends by itself (a study with a final stage keeps back the time the
stage needs). Runs go ``parallel`` at a time (one torch thread each), arms rotated per seed so no arm gets the
quieter slots. The arms:

- **today**: the dev study as shipped before bases (``studies/cifar10-dev-scratch.yaml``): 4-epoch trials from
  scratch, no final stage;
- **new-default**: ``studies/cifar10-dev.yaml``: converged bases, candidates fine-tuned from them, the final stage;
- **random-final**: the same with random sampling (separates the sampler from the design);
- **hand**: one dense ResNet20 trained for the whole budget with the base recipe (what a user gets without any
  search): as many epochs as one probe epoch says fit.

Per run the record holds the deliverable front (the final stage's, else the search's) with its hypervolume of
(validation accuracy, score), the held-out test accuracy of the member a user would export at score ≤ 0.03 and ≤ 0.01
(the most accurate on validation within the bound, exported with ``micronet-search export`` and read from its model
card: the test split is touched only there), candidates evaluated, bases trained, seconds per stage and Kendall τ
between the finalists' search-stage and final accuracy. Each run leaves ``runs/ARM-sSEED.json`` in the work folder;
a run whose file exists is not run again, so an interrupted benchmark goes on where it stopped.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import yaml

from search.results.front import hypervolume

REFERENCE = (0.10, 0.25)  # (accuracy, score): chance on 10 classes; above the dense ResNet20 width 1 (0.196)
BOUNDS = (0.03, 0.01)      # the scores a user allows: the held-out accuracy reported at each
GRACE = 1.25               # a run still going at GRACE x its budget (plus a minute) is stopped


@dataclass(frozen=True)
class Arm:
    name: str
    what: str                                      # one line for the table
    overrides: dict = field(default_factory=dict)  # study-file keys replaced for this arm
    study: str | None = None                       # another study file than the plan's
    hand: bool = False                             # no study: one ResNet20 trained for the budget


ARMS = (
    Arm("today", "the dev study as shipped before this design (studies/cifar10-dev-scratch.yaml): 4-epoch trials "
        "from scratch, reused dense phases, no final stage", study="studies/cifar10-dev-scratch.yaml"),
    Arm("new-default", "studies/cifar10-dev.yaml: converged bases, candidates fine-tuned from them, final stage"),
    Arm("random-final", "the same with random sampling", {"sampler": {"name": "random"}}),
    Arm("hand", "one dense ResNet20 (width 1) trained for the whole budget with the base recipe", hand=True),
)
# Run only when named (--arms): variants of the new default measured against it.
EXTRA_ARMS = (
    Arm("one-long-base", "the new default with one base trained 72 epochs (max_bases 1) instead of up to 8 of 30: "
        "the hand recipe's network, most of the budget on its base", {"base": {"epochs": 72, "max_bases": 1}}),
)


@dataclass(frozen=True)
class Plan:
    study: str = "studies/cifar10-dev.yaml"
    seeds: tuple[int, ...] = (0, 1, 2)
    budget_s: float = 900.0  # 12 runs, 2 at a time: 6 rounds of 15 min, and the exports, under 2 h
    parallel: int = 2
    quick_data: dict | None = None   # --quick: replaces the data (digits), epochs and budget
    quick_train: dict | None = None
    quick_base: dict | None = None
    quick_final: dict | None = None


QUICK = Plan(seeds=(0,), budget_s=40.0,
             quick_data={"name": "digits", "subset": 300, "val_fraction": 0.2, "seed": 0},
             quick_train={"epochs": 2, "batch_size": 64}, quick_base={"epochs": 2}, quick_final={"epochs": 2})


def snapshot(plan: Plan, arm: Arm, work: Path) -> dict:
    """The arm's study as it was when the benchmark started: copied with its space into the work folder at the
    first call, read from there at every later one (and by a resumed benchmark), so that editing the study or the
    space while the benchmark runs changes none of its runs."""
    source = Path(arm.study or plan.study)
    folder = work / "snapshot" / source.stem
    study_path = folder / "study.yaml"
    if not study_path.exists():
        raw = yaml.safe_load(source.read_text())
        base = source.resolve().parent
        folder.mkdir(parents=True, exist_ok=True)
        space = folder / "space.yaml"
        space.write_text(_resolve(raw["space"], base).read_text())
        raw["space"] = str(space)
        if raw.get("data", {}).get("name") == "npz" and "path" in raw["data"]:
            raw["data"]["path"] = str(_resolve(raw["data"]["path"], base))
        study_path.write_text(f"# copied from {source.resolve()} at {datetime.now():%Y-%m-%d %H:%M}\n"
                              + yaml.safe_dump(raw, sort_keys=False))
    return yaml.safe_load(study_path.read_text())


def study_file(plan: Plan, arm: Arm, seed: int, work: Path, data_path: str | None) -> Path:
    """The arm's study file: its study (snapshot) with the arm's overrides, its own storage, artifacts, seed and the
    budget as its timeout."""
    raw = snapshot(plan, arm, work)
    for key, value in arm.overrides.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) and key != "stopper" else value
    if plan.quick_data is not None:
        raw["data"] = plan.quick_data
        raw["train"] = {**raw.get("train", {}), **plan.quick_train}
        for key, value in (("base", plan.quick_base), ("final", plan.quick_final)):
            if key in raw:
                raw[key] = {**raw[key], **value}
    elif data_path is not None:
        raw["data"] = {**raw["data"], "path": str(Path(data_path).resolve())}
    name = f"{arm.name}-s{seed}"
    raw.update(name=name, storage=f"sqlite:///{work / 'db' / name}.db", artifacts=str(work / "artifacts" / name),
               n_trials=None, timeout=plan.budget_s)
    raw["sampler"] = {**raw.get("sampler", {}), "seed": seed}
    path = work / "studies" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _resolve(relative: str, base: Path) -> Path:
    for c in (Path(relative), base / relative, base.parent / relative):
        if c.exists():
            return c.resolve()
    return Path(relative)


def schedule(plan: Plan, arms: tuple[Arm, ...]) -> list[tuple[Arm, int]]:
    """Seed by seed, the arms in a rotated order per seed: each arm meets each slot position."""
    out = []
    for i, seed in enumerate(plan.seeds):
        k = i % len(arms)
        out += [(arm, seed) for arm in arms[k:] + arms[:k]]
    return out


def run_all(plan: Plan, arms: tuple[Arm, ...], work: Path, data_path: str | None, say) -> list[dict]:
    """Run every (arm, seed) not run yet, ``plan.parallel`` at a time; return all runs' records."""
    (work / "runs").mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    (work / "db").mkdir(parents=True, exist_ok=True)
    todo = [(a, s) for a, s in schedule(plan, arms) if not _record_path(work, a, s).exists()]
    running: list[tuple[Arm, int, subprocess.Popen, float]] = []
    while todo or running:
        while todo and len(running) < plan.parallel:
            arm, seed = todo.pop(0)
            log = open(work / "logs" / f"{arm.name}-s{seed}.log", "w")
            env = {**os.environ, "MICRONET_THREADS": "1", "MICRONET_WORKER_DIR": str(work / "host")}
            env.pop("MICRONET_STORAGE", None)
            if arm.hand:
                path = study_file(plan, ARMS[1], seed, work, data_path)  # the new default's data and recipe
                cmd = [sys.executable, "-m", "search.bench.search", "hand", str(path), str(seed),
                       str(plan.budget_s), str(_record_path(work, arm, seed))]
            else:
                path = study_file(plan, arm, seed, work, data_path)
                (work / "db" / f"{arm.name}-s{seed}.db").unlink(missing_ok=True)  # a run cut off earlier: anew
                cmd = [sys.executable, "-m", "search", "run", str(path)]
            running.append((arm, seed, subprocess.Popen(cmd, stdout=log, stderr=log, env=env, cwd=work),
                            time.monotonic()))
            say(f"started {arm.name} seed {seed} ({plan.budget_s:.0f} s)")
        time.sleep(0.5)
        for item in list(running):
            arm, seed, proc, started = item
            if proc.poll() is None and time.monotonic() - started > GRACE * plan.budget_s + 60:
                proc.send_signal(signal.SIGTERM)  # far past its budget: what finished counts, and the overrun shows
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.poll() is None:
                continue
            running.remove(item)
            wall = time.monotonic() - started
            if arm.hand:
                if proc.returncode != 0:
                    raise RuntimeError(f"hand run seed {seed} failed; see {work / 'logs' / f'hand-s{seed}.log'}")
                record = json.loads(_record_path(work, arm, seed).read_text())
            else:
                record = collect(arm, seed, work, data_path, wall, plan.budget_s)
                _record_path(work, arm, seed).write_text(json.dumps(record))
            say(f"finished {arm.name} seed {seed} in {wall:.0f} s: HV {record['hv']:.4f}, held-out "
                + ", ".join(f"<= {b:g}: {_pct(record['held_out'].get(str(b)))}" for b in BOUNDS))
    return [json.loads(_record_path(work, a, s).read_text()) for a, s in schedule(plan, arms)]


def _pct(x) -> str:
    return "-" if x is None else f"{x:.1%}"


def _record_path(work: Path, arm: Arm, seed: int) -> Path:
    return work / "runs" / f"{arm.name}-s{seed}.json"


def collect(arm: Arm, seed: int, work: Path, data_path: str | None, wall: float, budget_s: float) -> dict:
    """One run's record: its deliverable front, the held-out accuracy at each bound, what each stage cost."""
    import optuna
    from optuna.trial import TrialState

    from search import optuna_compat as compat
    from search.results.front import front_trials, stage_costs
    from search.study.final import final_study
    from search.trial.objectives import Objectives

    name = f"{arm.name}-s{seed}"
    url = f"sqlite:///{work / 'db' / name}.db"
    search = optuna.load_study(study_name=name, storage=url)
    final = final_study(compat.storage_of(search), name)
    shown = final or search
    objectives = Objectives.of_study(shown)
    front = front_trials(shown)
    points = [(objectives.accuracy(t), objectives.value(t, "score")) for t in front]
    held_out, exported = {}, {}
    for bound in (*BOUNDS, None):  # None: any score, the most accurate member
        fits = [t for t in front if bound is None or objectives.value(t, "score") <= bound]
        key = "any" if bound is None else str(bound)
        if not fits:
            held_out[key] = None
            continue
        best = max(fits, key=lambda t: (objectives.accuracy(t), -t.number))
        if best.number not in exported:
            exported[best.number] = export_test_accuracy(url, shown.study_name, best.number,
                                                         work / "exports" / name, data_path)
        held_out[key] = exported[best.number]
    costs = stage_costs(search, final)
    finished = search.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return {"arm": arm.name, "seed": seed, "budget_s": budget_s, "wall_s": wall,
            "front": [{"number": t.number, "accuracy": a, "score": s} for t, (a, s) in zip(front, points, strict=True)],
            "hv": hypervolume(points, REFERENCE[1], REFERENCE[0]), "held_out": held_out,
            "candidates": len(finished), "trained": sum(bool(t.intermediate_values) for t in finished), **costs}


def export_test_accuracy(url: str, study: str, number: int, out: Path, data_path: str | None) -> float:
    """The held-out accuracy a user gets: ``micronet-search export`` of that trial, read from its model card."""
    folder = out / f"trial-{number}"
    cmd = [sys.executable, "-m", "search", "export", "--storage", url, "--study", study, "--trial", str(number),
           "--out", str(folder), "--format", "state_dict", "--force"] + (["--data-path", data_path] if data_path
                                                                            else [])
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "MICRONET_THREADS": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"export of {study} trial {number} failed: {done.stderr.strip()[-400:]}")
    return json.loads((folder / "model_card.json").read_text())["test_accuracy"]


def hand(study_path: str, seed: int, budget_s: float, out: str) -> dict:
    """The hand recipe: one dense ResNet20 (width 1) on the study's data with the base recipe, for as many epochs as
    a probe epoch says fit in the budget; validation and test accuracy, score."""
    import torch

    from search.candidate.candidate import Candidate, footprint
    from search.study.study_file import load_study_file
    from search.training.data import load_data
    from search.training.trainer import Trainer

    start = time.monotonic()
    torch.set_num_threads(int(os.environ.get("MICRONET_THREADS", "1")))
    cfg = load_study_file(study_path).config
    data = load_data(cfg.data)
    recipe = replace(cfg.base.recipe(cfg.train) if cfg.base is not None else cfg.train, seed=seed)
    candidate = Candidate(arch="resnet20", width=1.0, train=recipe)
    probe = Trainer(candidate.build(data.num_classes), data, recipe)
    t0 = time.monotonic()
    probe.run(1)
    per_epoch = time.monotonic() - t0
    epochs = max(1, int((budget_s - (time.monotonic() - start)) / (per_epoch * 1.05)))
    recipe = replace(recipe, epochs=epochs)
    torch.manual_seed(recipe.seed)
    model = candidate.build(data.num_classes)
    trainer = Trainer(model, data, recipe)
    trainer.run()
    fp = footprint(candidate, data.num_classes, cfg.reference, tuple(data.x_train.shape[1:]))
    val, test = trainer.evaluate(data.x_val, data.y_val), trainer.evaluate(data.x_test, data.y_test)
    score = fp.score.total
    record = {"arm": "hand", "seed": seed, "budget_s": budget_s, "wall_s": time.monotonic() - start, "epochs": epochs,
              "front": [{"number": 0, "accuracy": val, "score": score}],
              "hv": hypervolume([(val, score)], REFERENCE[1], REFERENCE[0]),
              "held_out": {**{str(b): (test if score <= b else None) for b in BOUNDS}, "any": test},
              "candidates": 1, "trained": 1, "bases": 0, "base_s": 0.0, "search_trials": 1,
              "search_train_s": trainer.train_seconds}
    Path(out).write_text(json.dumps(record))
    return record


def summarize(records: list[dict], arms: tuple[Arm, ...]) -> list[dict]:
    """Per arm: medians (and min–max) over seeds."""
    rows = []
    for arm in arms:
        runs = [r for r in records if r["arm"] == arm.name]

        def spread(values):
            values = [v for v in values if v is not None]
            return (statistics.median(values), min(values), max(values), len(values)) if values else None

        rows.append({
            "arm": arm.name, "seeds": len(runs), "hv": spread([r["hv"] for r in runs]),
            **{f"held_out_{b}": spread([r["held_out"].get(str(b)) for r in runs]) for b in BOUNDS},
            "best": spread([r["held_out"].get("any") for r in runs]),
            "candidates": spread([r["candidates"] for r in runs]), "bases": spread([r["bases"] for r in runs]),
            "base_s": spread([r["base_s"] for r in runs]), "search_s": spread([r["search_train_s"] for r in runs]),
            "final_s": spread([r.get("final_train_s") for r in runs]), "wall_s": spread([r["wall_s"] for r in runs]),
            "tau": spread([r.get("tau") for r in runs]),
            "front": spread([len(r["front"]) for r in runs]),
        })
    return rows


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets, met or not, from the medians."""
    by = {r["arm"]: r for r in rows}

    def med(arm, key):
        v = by.get(arm, {}).get(key)
        return None if v is None else v[0]

    lines = []
    new, hand_best, today = med("new-default", "held_out_0.03"), med("hand", "best"), med("today", "held_out_0.03")
    if new is not None and hand_best is not None:
        ok = new >= hand_best - 0.01
        lines.append(f"- new-default's held-out accuracy at score ≤ 0.03 ({new:.1%}) within 1 point of the hand "
                     f"recipe's ({hand_best:.1%}): **{'met' if ok else 'not met'}** ({100 * (new - hand_best):+.1f} "
                     f"points)")
    if new is not None and today is not None:
        ok = new > today + 0.15
        lines.append(f"- ... more than 15 points above today's ({_pct(today)}): **{'met' if ok else 'not met'}**")
    elif new is not None:
        lines.append("- ... more than 15 points above today's: today not run in this benchmark")
    hv_new, hv_today, hv_random = med("new-default", "hv"), med("today", "hv"), med("random-final", "hv")
    if hv_new is not None and (hv_today is not None or hv_random is not None):
        ok = all(v is not None and hv_new > v for v in (hv_today, hv_random))
        shown = [("not run" if v is None else format(v, ".4f")) for v in (hv_today, hv_random)]
        lines.append(f"- final-front hypervolume {hv_new:.4f} above today's ({shown[0]}) and random-final's "
                     f"({shown[1]}): **{'met' if ok else 'not met'}**")
    elif hv_new is not None:
        lines.append("- final-front hypervolume above today's and random-final's: neither run in this benchmark")
    for extra in EXTRA_ARMS:
        held = med(extra.name, "held_out_0.03")
        if held is not None and hand_best is not None:
            lines.append(f"- (not a target) {extra.name}'s held-out accuracy at score ≤ 0.03: {held:.1%}, "
                         f"{100 * (held - hand_best):+.1f} points from the hand recipe's")
    tau = med("new-default", "tau")
    lines.append("- Kendall τ between search-stage and final accuracy ≥ 0.6: "
                 + ("no finalists pair" if tau is None else f"{tau:.2f}, **{'met' if tau >= 0.6 else 'not met'}**"))
    return lines


def markdown(rows: list[dict], plan: Plan, arms: tuple[Arm, ...], machine: str, command: str,
             minutes: float) -> str:
    def cell(v, fmt):
        if v is None:
            return "-"
        median, low, high, n = v
        text = format(median, fmt)
        return text if low == high else f"{text} ({format(low, fmt)}–{format(high, fmt)})"

    lines = [f"## Search quality: what a whole run delivers, {datetime.now():%Y-%m-%d}", "",
             f"Machine: {machine}. Command: `{command}`. The whole benchmark took {minutes:.0f} min.",
             f"Studies `{plan.study}` and `studies/cifar10-dev-scratch.yaml`, {len(plan.seeds)} seeds per arm, "
             f"{plan.budget_s:.0f} s per run (its timeout: search and final stage together) on 1 core (torch "
             f"threads 1), {plan.parallel} runs at a time. Hypervolume of the deliverable front (the final stage's, "
             f"else the search's) in (validation accuracy, score), reference accuracy {REFERENCE[0]}, score "
             f"{REFERENCE[1]}. Held-out: test accuracy of the front member with the best validation accuracy within "
             f"the score bound, exported with `micronet-search export`. Medians over seeds (min–max).", "",
             "| arm | HV | held-out ≤ 0.03 | held-out ≤ 0.01 | best held-out | front | candidates | bases | base s "
             "| search s | final s | run s | Kendall τ |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {cell(r['hv'], '.4f')} | {cell(r['held_out_0.03'], '.1%')} | "
                     f"{cell(r['held_out_0.01'], '.1%')} | {cell(r['best'], '.1%')} | {cell(r['front'], 'g')} | "
                     f"{cell(r['candidates'], 'g')} | {cell(r['bases'], 'g')} | {cell(r['base_s'], '.0f')} | "
                     f"{cell(r['search_s'], '.0f')} | {cell(r['final_s'], '.0f')} | {cell(r['wall_s'], '.0f')} | "
                     f"{cell(r['tau'], '.2f')} |")
    lines += ["", "Seconds are training seconds summed over the run's trials (bases: their own training); run s is "
                  "the run's wall time. Arms:"]
    lines += [f"- `{a.name}`: {a.what}" for a in arms]
    lines += ["", "Targets (medians):", *targets(rows)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 6 or sys.argv[1] != "hand":
        sys.exit("usage: python -m search.bench.search hand STUDY_FILE SEED BUDGET_S OUT_JSON")
    hand(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
