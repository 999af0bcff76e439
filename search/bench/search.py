"""The search benchmark: does a search strategy find a better front per CPU-hour than random sampling?

Each arm is the same study (same data, space, training recipe) with a different sampler / stopper / reuse. Every
(arm, seed) run is a real ``micronet-search run`` process with its own SQLite storage, given the same wall-clock
budget on one core; runs go ``parallel`` at a time (each pinned to one torch thread), arms interleaved so no arm
gets the quieter slots. A run is stopped at its budget (SIGTERM: the running trial is dropped); only trials that
completed within the budget count.

Per arm the table gives the hypervolume of the front of (validation accuracy, score) at 25 / 50 / 100 % of the
budget (median, min, max over seeds; a fixed reference point), and the time each run needs to reach the
baseline's final median hypervolume. The audit then trains every trial one stopping run stopped to the end and
counts those that would have entered that run's final front.

Each run leaves ``runs/ARM-sSEED.json`` in the work folder; a run whose file exists is not run again, so an
interrupted benchmark goes on where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from search.pareto import dominates
from search.results.front import hypervolume
from search.trial.objectives import DEFAULT, Objectives

FRACTIONS = (0.25, 0.5, 1.0)
REFERENCE = (0.10, 0.05)  # (accuracy, score): chance accuracy on 10 classes; a score above every member of the space
STOPPED_BY_STOPPER = ("epoch ", "rung at epoch", "projected", "predicted")  # reasons the audit re-trains


@dataclass(frozen=True)
class Arm:
    name: str
    what: str                                   # one line for the table
    overrides: dict = field(default_factory=dict)  # study-file keys replaced for this arm


ARMS = (
    Arm("random", "random sampling, no early stopping, no reuse (baseline)",
        {"sampler": {"name": "random"}, "stopper": {"name": "none", "skip_dominated": False}, "reuse_bases": False}),
    Arm("tpe-pareto", "TPE + the Pareto stopper as shipped before (warmup 2, min_trials 4, percentile 50)",
        {"sampler": {"name": "tpe", "n_startup_trials": 10},
         "stopper": {"name": "pareto", "warmup_epochs": 2, "min_trials": 4, "percentile": 50},
         "reuse_bases": False}),
    Arm("new-default", "the study file as shipped (studies/cifar10-dev.yaml)", {}),
)
# Arms that --arms can add, to tell apart what the new default's parts buy (the sampler; the stopper and reuse).
EXTRA_ARMS = (
    Arm("random-moasha", "random sampling with the shipped stopper and reuse",
        {"sampler": {"name": "random"}}),
    Arm("nsga2-moasha", "NSGA-II (population 10) with the shipped stopper and reuse",
        {"sampler": {"name": "nsga2", "population_size": 10}}),
    Arm("gp-moasha", "Optuna's GPSampler (EHVI, 10 start-up trials) with the shipped stopper and reuse",
        {"sampler": {"name": "gp", "n_startup_trials": 10}}),
)
ALL_ARMS = ARMS + EXTRA_ARMS


@dataclass(frozen=True)
class Plan:
    study: str = "studies/cifar10-dev.yaml"
    seeds: tuple[int, ...] = (0, 1, 2)
    budget_s: float = 1380.0  # 9 runs, 2 at a time: 5 rounds of 23 min, under 2 h
    parallel: int = 2
    audit_seed: int | None = 0
    audit_arms: tuple[str, ...] = ("new-default",)  # the stopper the defaults ship; the audit is costly
    audit_max: int = 60
    quick_data: dict | None = None   # --quick: replaces the data (digits), epochs and budget
    quick_train: dict | None = None
    min_trials: int = 30             # the baseline's finished trials per run the comparison needs (issue 13)


QUICK = Plan(seeds=(0, 1), budget_s=25.0, audit_max=2, audit_arms=("tpe-pareto", "new-default"), min_trials=0,
             quick_data={"name": "digits", "subset": 300, "val_fraction": 0.2, "seed": 0},
             quick_train={"epochs": 3, "batch_size": 64})


def snapshot(plan: Plan, work: Path) -> dict:
    """The benchmark study as it was when the benchmark started: copied with its space into the work folder at the
    first call, read from there at every later one (and by a resumed benchmark), so that editing the study or the
    space while the benchmark runs changes none of its runs."""
    folder = work / "snapshot"
    study_path = folder / "study.yaml"
    if not study_path.exists():
        raw = yaml.safe_load(Path(plan.study).read_text())
        base = Path(plan.study).resolve().parent
        folder.mkdir(parents=True, exist_ok=True)
        space = folder / "space.yaml"
        space.write_text(_resolve(raw["space"], base).read_text())
        raw["space"] = str(space)
        if raw.get("data", {}).get("name") == "npz" and "path" in raw["data"]:
            raw["data"]["path"] = str(_resolve(raw["data"]["path"], base))
        study_path.write_text(f"# copied from {Path(plan.study).resolve()} at {datetime.now():%Y-%m-%d %H:%M}\n"
                              + yaml.safe_dump(raw, sort_keys=False))
    return yaml.safe_load(study_path.read_text())


def study_file(plan: Plan, arm: Arm, seed: int, work: Path, data_path: str | None) -> Path:
    """The arm's study file: the benchmark study (its snapshot) with the arm's overrides, its own storage, seed and
    budget."""
    raw = snapshot(plan, work)
    for key, value in arm.overrides.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) and key != "stopper" else value
    if plan.quick_data is not None:
        raw["data"] = plan.quick_data
        raw["train"] = {**raw.get("train", {}), **plan.quick_train}
    elif data_path is not None:
        raw["data"] = {**raw["data"], "path": str(Path(data_path).resolve())}
    name = f"{arm.name}-s{seed}"
    raw.update(name=name, storage=f"sqlite:///{work / 'db' / name}.db", artifacts=str(work / "artifacts" / name),
               n_trials=None, timeout=plan.budget_s, enqueue=[])
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


def run_all(plan: Plan, arms: tuple[Arm, ...], work: Path, data_path: str | None, say,
            audit_runs: tuple[tuple[str, int], ...] = ()) -> list[dict]:
    """Run every (arm, seed) not run yet, ``plan.parallel`` at a time; return all runs' records.

    The audits of ``audit_runs`` (arm name, seed) are jobs too, one core each: each starts once its run is recorded
    and a slot is free, so it fills the slot the last runs leave idle instead of running after them."""
    (work / "runs").mkdir(parents=True, exist_ok=True)
    todo = [(a, s) for a, s in schedule(plan, arms) if not _record_path(work, a, s).exists()]
    audits = [(a, s) for a, s in audit_runs if not _audit_path(work, a, s).exists()]
    running: list[tuple[Arm, int, subprocess.Popen, float, datetime]] = []
    auditing: list[tuple[str, int, subprocess.Popen]] = []
    while todo or running or audits or auditing:
        for item in list(auditing):
            name, seed, proc = item
            if proc.poll() is not None:
                auditing.remove(item)
                if proc.returncode != 0:
                    raise RuntimeError(f"the audit of {name} seed {seed} failed (exit code {proc.returncode}); "
                                       f"see {work / 'logs' / f'audit-{name}-s{seed}.log'}")
        ready = [(a, s) for a, s in audits if _record_path(work, Arm(a, ""), s).exists()]
        # runs first: an audit takes a slot only when no run waits for one
        while ready and not todo and len(running) + len(auditing) < plan.parallel:
            name, seed = ready.pop(0)
            audits.remove((name, seed))
            (work / "logs").mkdir(parents=True, exist_ok=True)
            log = open(work / "logs" / f"audit-{name}-s{seed}.log", "w")
            cmd = [sys.executable, "-m", "search.bench.search", "audit", str(work), name, str(seed),
                   str(plan.audit_max)] + ([data_path] if data_path else [])
            env = {**os.environ, "MICRONET_THREADS": "1"}
            auditing.append((name, seed, subprocess.Popen(cmd, stdout=log, stderr=log, env=env, cwd=work)))
            say(f"started the audit of {name} seed {seed}")
        if not todo and not running and audits and not ready and not auditing:
            missing = ", ".join(f"{a} seed {s}" for a, s in audits)
            raise RuntimeError(f"cannot audit {missing}: no such run in this benchmark")
        while todo and len(running) + len(auditing) < plan.parallel:
            arm, seed = todo.pop(0)
            path = study_file(plan, arm, seed, work, data_path)
            for stale in (work / "db" / f"{arm.name}-s{seed}.db",):
                stale.unlink(missing_ok=True)  # a run cut off earlier starts again from nothing
            (work / "db").mkdir(parents=True, exist_ok=True)
            (work / "logs").mkdir(parents=True, exist_ok=True)
            log = open(work / "logs" / f"{arm.name}-s{seed}.log", "w")
            env = {**os.environ, "MICRONET_THREADS": "1", "MICRONET_WORKER_DIR": str(work / "host")}
            env.pop("MICRONET_STORAGE", None)
            started, wall = time.monotonic(), datetime.now()
            proc = subprocess.Popen([sys.executable, "-m", "search", "run", str(path)], stdout=log, stderr=log,
                                    env=env, cwd=work)
            running.append((arm, seed, proc, started, wall))
            say(f"started {arm.name} seed {seed} ({plan.budget_s:.0f} s)")
        time.sleep(0.5)
        for item in list(running):
            arm, seed, proc, started, wall = item
            over = time.monotonic() - started >= plan.budget_s
            if over and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # the budget is spent: the running trial does not count
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.poll() is not None:
                running.remove(item)
                record = collect(arm, seed, work, wall, plan.budget_s)
                _record_path(work, arm, seed).write_text(json.dumps(record))
                say(f"finished {arm.name} seed {seed}: {record['complete']} complete, {record['stopped']} stopped, "
                    f"HV {record['hv'][-1]:.4f}")
                if arm == arms[0] and (warning := too_few_trials(record, plan)):
                    say(warning)
    return [json.loads(_record_path(work, a, s).read_text()) for a, s in schedule(plan, arms)]


def too_few_trials(record: dict, plan: Plan) -> str | None:
    """A warning, as soon as a baseline run ends, when it finished fewer trials than the comparison needs: this
    machine trains slower than the one the budget was sized on (a CPU without bf16 takes about 2.2× as long), and
    the hours left would give a table that misses the mark. Names the budget that would reach it."""
    done = record["complete"] + record["stopped"]
    if done >= plan.min_trials:
        return None
    per_trial = plan.budget_s / max(done, 1)
    budget = math.ceil(1.15 * plan.min_trials * per_trial / 60) * 60  # 15 % margin: trial costs vary with the draw
    return (f"warning: baseline {record['arm']} seed {record['seed']} finished {done} trials in "
            f"{plan.budget_s:.0f} s, under the {plan.min_trials} the comparison needs; on this machine about "
            f"--budget {budget} would reach it (stop with Ctrl-C and rerun with it, or let this run finish)")


def _record_path(work: Path, arm: Arm, seed: int) -> Path:
    return work / "runs" / f"{arm.name}-s{seed}.json"


def _audit_path(work: Path, arm_name: str, seed: int) -> Path:
    return work / "runs" / f"audit-{arm_name}-s{seed}.json"


def load_audit(work: Path, arm_name: str, seed: int) -> dict:
    return json.loads(_audit_path(work, arm_name, seed).read_text())


def collect(arm: Arm, seed: int, work: Path, wall: datetime, budget_s: float) -> dict:
    """One run's record: every finished trial with the second (from the run's start) it finished at."""
    import optuna
    from optuna.trial import TrialState

    from search.trial.objectives import Objectives
    from search.trial.record import TrialRecord

    name = f"{arm.name}-s{seed}"
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{work / 'db' / name}.db")
    objectives = Objectives.of_study(study)  # accuracy, score: the dev study's
    trials = []
    for t in study.get_trials(deepcopy=False):
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED) or t.datetime_complete is None:
            continue
        at = (t.datetime_complete - wall).total_seconds()
        if at > budget_s:
            continue
        a = TrialRecord.of(t)
        trials.append({
            "number": t.number, "state": t.state.name, "at_s": at,
            "values": list(t.values) if t.state == TrialState.COMPLETE else None,
            "score": objectives.value(t, "score") if t.state == TrialState.COMPLETE else a.score,
            "epochs_run": len(t.intermediate_values), "pruned_reason": a.pruned_reason,
            "base_reused": a.base_reused, "epochs_saved": a.epochs_saved or 0,
            "candidate": a.candidate, "macs": a.dense_macs, "wall_s": a.wall_s,
        })
    points = [tuple(t["values"]) for t in trials if t["values"]]
    hv_at = [hypervolume([tuple(t["values"]) for t in trials if t["values"] and t["at_s"] <= f * budget_s],
                         REFERENCE[1], REFERENCE[0])
             for f in FRACTIONS]
    return {"arm": arm.name, "seed": seed, "budget_s": budget_s, "trials": trials, "hv": hv_at,
            "complete": len(points), "stopped": sum(t["state"] == "PRUNED" for t in trials),
            "epochs": sum(t["epochs_run"] - (t["epochs_saved"] or 0) for t in trials),
            "epochs_saved": sum(t["epochs_saved"] or 0 for t in trials)}


def hv_curve(record: dict) -> list[tuple[float, float]]:
    """(second, hypervolume so far) after each completed trial."""
    points, curve = [], [(0.0, 0.0)]
    for t in sorted((t for t in record["trials"] if t["values"]), key=lambda t: t["at_s"]):
        points.append(tuple(t["values"]))
        curve.append((t["at_s"], hypervolume(points, REFERENCE[1], REFERENCE[0])))
    return curve


def time_to(record: dict, target: float) -> float | None:
    return next((s for s, hv in hv_curve(record) if hv >= target), None)


def audit(record: dict, work: Path, data_path: str | None, audit_max: int, say, threads: int = 1) -> dict:
    """Train each trial the stopper stopped to the end; count those that would have entered the run's final front.

    A re-trained trial enters the front when no trial completed in the run dominates its (accuracy, score).
    Cheapest first (by the MACs the trial recorded), so that a cut-off audit has covered the most trials.
    """
    import torch

    from search.candidate.candidate import Candidate
    from search.study.study_file import load_study_file
    from search.training.data import load_data
    from search.training.run import run_candidate

    loaded = load_study_file(work / "studies" / f"{record['arm']}-s{record['seed']}.yaml", data_path=data_path)
    data = load_data(loaded.config.data)
    torch.set_num_threads(threads)
    objectives = Objectives.parse(DEFAULT)  # (accuracy, score), as losses for search.pareto
    front = [objectives.loss(t["values"]) for t in record["trials"] if t["values"]]
    stopped = [t for t in record["trials"] if t["state"] == "PRUNED" and t["candidate"]
               and (t["pruned_reason"] or "").startswith(STOPPED_BY_STOPPER)]
    stopped = sorted(stopped, key=lambda t: t.get("macs") or 0)[:audit_max]
    rows = []
    for t in stopped:
        candidate = Candidate.from_dict(t["candidate"])
        if candidate.distillation is not None:
            continue  # the audit has no teacher; the benchmark space samples no distillation
        result = run_candidate(candidate, data)
        point = objectives.loss((result.val_accuracy, t["score"]))
        enters = not any(dominates(p, point) for p in front)
        rows.append({"number": t["number"], "stopped_at": t["epochs_run"], "reason": t["pruned_reason"],
                     "final_accuracy": result.val_accuracy,
                     "score": t["score"], "enters_front": enters})
        say(f"audit {record['arm']} seed {record['seed']} trial {t['number']}: {result.val_accuracy:.4f} at score "
            f"{t['score']:.4g}" + (" -> would enter the front" if enters else ""))
    return {"arm": record["arm"], "seed": record["seed"], "audited": len(rows),
            "entered": sum(r["enters_front"] for r in rows), "rows": rows}


def summarize(records: list[dict], arms: tuple[Arm, ...]) -> tuple[list[dict], float]:
    """Per arm: trials, epochs, hypervolume at each budget fraction, time to the baseline's final median."""
    by_arm = {a.name: [r for r in records if r["arm"] == a.name] for a in arms}
    baseline = statistics.median(r["hv"][-1] for r in by_arm[arms[0].name])
    rows = []
    for arm in arms:
        runs = by_arm[arm.name]
        row = {"arm": arm.name, "seeds": len(runs),
               "trials": statistics.median(len(r["trials"]) for r in runs),
               "complete": statistics.median(r["complete"] for r in runs),
               "stopped": statistics.median(r["stopped"] for r in runs),
               "epochs": statistics.median(r["epochs"] for r in runs),
               "epochs_saved": statistics.median(r["epochs_saved"] for r in runs)}
        for i, f in enumerate(FRACTIONS):
            values = [r["hv"][i] for r in runs]
            row[f"hv{int(f * 100)}"] = (statistics.median(values), min(values), max(values))
        times = [time_to(r, baseline) for r in runs]
        reached = [t for t in times if t is not None]
        # a run that never reached it counts as infinitely slow: the median is then "not reached"
        ordered = sorted(t if t is not None else math.inf for t in times)
        median = ordered[(len(ordered) - 1) // 2] if len(ordered) % 2 else \
            (ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2
        row["time_to_baseline"] = (median, len(reached), len(times))
        rows.append(row)
    return rows, baseline


def markdown(rows: list[dict], baseline: float, plan: Plan, arms: tuple[Arm, ...], audits: list[dict],
             machine: str, command: str, minutes: float, plot: str | None) -> str:
    def hv(t):
        return f"{t[0]:.4f} ({t[1]:.4f}–{t[2]:.4f})"

    def tt(t):
        median, reached, n = t
        pct = f" ({100 * median / plan.budget_s:.0f} %)" if math.isfinite(median) else ""
        return (f"{median:.0f} s{pct}" if math.isfinite(median) else "not reached") + f", {reached}/{n} runs"

    lines = [f"## Search quality: hypervolume per budget, {datetime.now():%Y-%m-%d}", "",
             f"Machine: {machine}. Command: `{command}`. The whole run took {minutes:.0f} min.",
             f"Study `{plan.study}`, {len(plan.seeds)} seeds per arm, {plan.budget_s:.0f} s per run on 1 core "
             f"(torch threads 1), {plan.parallel} runs at a time. Hypervolume of (validation accuracy, score) with "
             f"reference point accuracy {REFERENCE[0]}, score {REFERENCE[1]}; only trials completed within the budget "
             f"count. Baseline final median hypervolume: {baseline:.4f}.", "",
             "| arm | trials | complete | stopped | epochs trained | epochs reused | HV 25 % | HV 50 % | HV 100 % "
             "| time to baseline's final median |",
             "|---|---:|---:|---:|---:|---:|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['trials']:g} | {r['complete']:g} | {r['stopped']:g} | {r['epochs']:g} | "
                     f"{r['epochs_saved']:g} | {hv(r['hv25'])} | {hv(r['hv50'])} | {hv(r['hv100'])} | "
                     f"{tt(r['time_to_baseline'])} |")
    lines += ["", "Trials, epochs: medians over seeds. HV: median (min–max) over seeds. Arms:"]
    lines += [f"- `{a.name}`: {a.what}" for a in arms]
    for a in audits:
        lines += ["", f"Stopper audit ({a['arm']}, seed {a['seed']}): {a['audited']} stopped trials trained to the "
                      f"end; {a['entered']} would have entered that run's final front."]
        for r in a["rows"]:
            if r["enters_front"]:
                lines.append(f"- trial {r['number']} (stopped after epoch {r['stopped_at']}: {r['reason']}): "
                             f"final accuracy {r['final_accuracy']:.4f} at score {r['score']:.4g}")
    if plot:
        lines += ["", f"![hypervolume against time]({plot})"]
    return "\n".join(lines) + "\n"


def plot_curves(records: list[dict], arms: tuple[Arm, ...], budget_s: float, path: Path) -> Path | None:
    """Median hypervolume against time per arm, with the min–max band over seeds."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    grid = [budget_s * i / 100 for i in range(101)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm in arms:
        curves = [hv_curve(r) for r in records if r["arm"] == arm.name]
        at = [[max(hv for s, hv in c if s <= t) for t in grid] for c in curves]
        columns = list(zip(*at, strict=True))
        minutes = [t / 60 for t in grid]
        ax.plot(minutes, [statistics.median(c) for c in columns], label=arm.name)
        ax.fill_between(minutes, [min(c) for c in columns], [max(c) for c in columns], alpha=0.15)
    ax.set_xlabel("minutes (1 core per run)")
    ax.set_ylabel("hypervolume (accuracy × score)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _audit_main(argv: list[str]) -> int:
    """``python -m search.bench.search audit WORK ARM SEED MAX [DATA_PATH]``: one audit, as a job of run_all."""
    work, arm_name, seed, audit_max = Path(argv[1]), argv[2], int(argv[3]), int(argv[4])
    data_path = argv[5] if len(argv) > 5 else None
    record = json.loads(_record_path(work, Arm(arm_name, ""), seed).read_text())
    result = audit(record, work, data_path, audit_max, lambda text: print(text, flush=True),
                   threads=int(os.environ.get("MICRONET_THREADS", "1")))
    _audit_path(work, arm_name, seed).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 6 or sys.argv[1] != "audit":
        sys.exit("usage: python -m search.bench.search audit WORK ARM SEED MAX [DATA_PATH]")
    sys.exit(_audit_main(sys.argv[1:]))
