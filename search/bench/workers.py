"""Scaling overhead of workers: orchestration time per trial with 1, 4 and 8 workers on a trivial candidate.

Each worker is a real ``micronet-search worker`` process on one study in a fresh database. A trial's
orchestration is everything a worker does that is not training the candidate (``run_candidate``): claiming the
trial under the study lock, re-queueing stale trials, sampling, measuring the score, storage writes, the
checkpoint upload. Per worker: (time from its first trial's start to its last trial's end - time in
run_candidate) / its trials. The candidate is trivial (a tiny model, one epoch on 64 images), so the numbers are
the overhead itself; as a fraction of a real trial (minutes) it is far smaller.

    python scripts/bench_workers.py                       # PostgreSQL at 127.0.0.1 and SQLite; appends BENCHMARKS.md
    python scripts/bench_workers.py --workers 1 4 --storages sqlite
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parent.parent
PG_SERVER = "postgresql://postgres@127.0.0.1:5432"

SPACE = """\
params:
  arch: {value: resnet20}
  width: {value: 0.25}
  ps: {low: 0.0, high: 0.5}
  qw: {choices: [8, 32]}
  lr: {low: 0.02, high: 0.1, log: true}
"""


def study_file(tmp: Path, n_trials: int, sampler: str) -> Path:
    (tmp / "space.yaml").write_text(SPACE)
    path = tmp / "bench.yaml"
    path.write_text(f"""\
name: bench
space: {tmp / 'space.yaml'}
artifacts: {tmp / 'artifacts'}
data: {{name: synthetic, synthetic_size: 64}}
sampler: {{name: {sampler}, seed: 0, n_startup_trials: 8}}
train: {{epochs: 1, batch_size: 32}}
stopper: {{name: none, skip_dominated: false}}
heartbeat: {{interval: 10, grace_period: 30}}
n_trials: {n_trials}
""")
    return path


def fresh_postgres() -> tuple[str, callable]:
    name = f"micronet_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(f"{PG_SERVER}/postgres", poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f"CREATE DATABASE {name}"))

    def drop():
        with admin.connect() as c:
            c.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))

    return f"{PG_SERVER}/{name}", drop


def run_arm(storage: str, workers: int, n_trials: int, sampler: str, tmp: Path) -> dict:
    path = study_file(tmp, n_trials, sampler)
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = {**os.environ, "MICRONET_STORAGE": storage, "MICRONET_THREADS": str(threads),
           "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "search", "worker", str(path)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(workers)]
    errors = [p.communicate()[1] for p in procs]
    wall = time.perf_counter() - start
    if any(p.returncode for p in procs):
        raise SystemExit("a worker failed:\n" + "\n".join(e for e in errors if e.strip()))
    trials = optuna.load_study(study_name="bench", storage=storage).get_trials()
    finished = [t for t in trials if t.state.is_finished() and t.datetime_complete]
    by_worker: dict[str, list] = {}
    for t in finished:
        by_worker.setdefault(t.user_attrs.get("worker", "?"), []).append(t)
    overhead, trains = 0.0, []
    for ts in by_worker.values():
        ts.sort(key=lambda t: t.datetime_start)
        span = (ts[-1].datetime_complete - ts[0].datetime_start).total_seconds()
        overhead += span - sum(t.user_attrs.get("train_s", 0.0) for t in ts)
        trains += [t.user_attrs["train_s"] for t in ts if "train_s" in t.user_attrs]
    per_trial = overhead / len(finished)
    return {"workers": workers, "threads": threads, "trials": len(finished), "wall_s": wall,
            "overhead_s": per_trial, "train_s": statistics.mean(trains) if trains else 0.0,
            "trials_per_s": len(finished) / wall, "used": len(by_worker)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--trials-per-worker", type=int, default=4)
    p.add_argument("--storages", nargs="+", default=["postgresql", "sqlite"], choices=["postgresql", "sqlite"])
    p.add_argument("--sampler", default="tpe")
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = p.parse_args()

    rows = []
    for kind in args.storages:
        for k in args.workers:
            n = max(8, k * args.trials_per_worker)
            with tempfile.TemporaryDirectory() as tmp:
                tmp = Path(tmp)
                if kind == "postgresql":
                    url, drop = fresh_postgres()
                else:
                    url, drop = f"sqlite:///{tmp / 'bench.db'}", (lambda: None)
                try:
                    r = run_arm(url, k, n, args.sampler, tmp)
                finally:
                    drop()
            r["storage"] = kind
            rows.append(r)
            print(f"{kind} {k} workers: {r['trials']} trials, {r['overhead_s'] * 1000:.0f} ms orchestration per "
                  f"trial", file=sys.stderr)

    table = Table(title="orchestration time per trial (trivial candidate)")
    cols = ("storage", "workers", "threads each", "trials", "orchestration ms/trial", "training ms/trial",
            "ratio to 1 worker", "trials/s", "wall s")
    for c in cols:
        table.add_column(c, justify="left" if c == "storage" else "right")
    base = {r["storage"]: r["overhead_s"] for r in rows if r["workers"] == min(args.workers)}
    lines = []
    for r in rows:
        cells = (r["storage"], str(r["workers"]), str(r["threads"]), str(r["trials"]), f"{r['overhead_s'] * 1000:.0f}",
                 f"{r['train_s'] * 1000:.0f}", f"{r['overhead_s'] / base[r['storage']]:.2f}x",
                 f"{r['trials_per_s']:.2f}", f"{r['wall_s']:.0f}")
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    Console().print(table)

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "cpu")
    command = ("python scripts/bench_workers.py " + " ".join(sys.argv[1:])).strip()
    text_ = [
        f"\n## Workers: orchestration time per trial ({datetime.date.today().isoformat()})\n",
        f"Machine: {cpu}, {os.cpu_count()} cores, optuna {optuna.__version__}. Command: `{command}`. Real "
        f"`micronet-search worker` processes on one study in a fresh database; sampler {args.sampler}; a trivial "
        f"candidate (resnet20 width 0.25, 1 epoch, 64 synthetic images). Orchestration = a worker's time from "
        f"its first trial's start to its last trial's end minus the time in run_candidate, per trial: the claim "
        f"under the study lock, stale-trial checks, sampling, the score measurement, storage writes and the "
        f"checkpoint upload. With more workers than cores the processes share the CPU, so every step, "
        f"orchestration included, takes longer.\n",
        "| " + " | ".join(cols) + " |",
        "|---|" + "---:|" * (len(cols) - 1),
        *lines,
    ]
    with Path(args.out).open("a") as f:
        f.write("\n".join(text_) + "\n")
    print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
