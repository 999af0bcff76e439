"""Scaling overhead of workers: orchestration time per trial with 1, 4 and 8 workers on a trivial candidate.

Each worker is a real ``micronet-search worker`` process on one study in a fresh database. A trial's
orchestration is everything a worker does that is not training the candidate (``run_candidate``): claiming the
trial under the study lock, re-queueing stale trials, sampling, measuring the score, storage writes, the
checkpoint upload. Per worker: (time from its first trial's start to its last trial's end - time in
run_candidate) / its trials. The candidate is trivial (a tiny model, one epoch on 64 images), so the numbers are
the overhead itself; as a fraction of a real trial (minutes) it is far smaller. ``micronet-search bench`` measures
the overhead of one worker on a real candidate (:mod:`search.bench.orchestration`); this measures how it grows
with the workers and the storage.

    micronet-search bench workers                       # PostgreSQL at 127.0.0.1 and SQLite; appends BENCHMARKS.md
    micronet-search bench workers --workers 1 4 --storages sqlite
"""

from __future__ import annotations

import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import optuna
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from search.bench.table import pipe_table
from search.errors import MicronetError
from search.machine import available_cores, cpu_model

PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
WORKERS = (1, 4, 8)
STORAGES = ("postgresql", "sqlite")
COLUMNS = ("storage", "workers", "threads each", "trials", "orchestration ms/trial", "training ms/trial",
           "ratio to 1 worker", "trials/s", "wall s")

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


def fresh_postgres() -> tuple[str, Callable[[], None]]:
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
    threads = max(1, available_cores() // workers)
    env = {**os.environ, "MICRONET_STORAGE": storage, "MICRONET_THREADS": str(threads),
           "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "search", "worker", str(path)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(workers)]
    errors = [p.communicate()[1] for p in procs]
    wall = time.perf_counter() - start
    if any(p.returncode for p in procs):
        raise MicronetError("a worker failed:\n" + "\n".join(e for e in errors if e.strip()))
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


def run(workers: tuple[int, ...] = WORKERS, trials_per_worker: int = 4, storages: tuple[str, ...] = STORAGES,
        sampler: str = "tpe", say: Callable[[str], None] = print) -> list[dict]:
    """One arm per storage and worker count, each on a fresh database (a new PostgreSQL database at
    ``PG_SERVER``, a new SQLite file): max(8, workers * trials_per_worker) trials."""
    rows = []
    for kind in storages:
        for k in workers:
            n = max(8, k * trials_per_worker)
            with tempfile.TemporaryDirectory() as tmp:
                tmp = Path(tmp)
                if kind == "postgresql":
                    url, drop = fresh_postgres()
                else:
                    url, drop = f"sqlite:///{tmp / 'bench.db'}", (lambda: None)
                try:
                    r = run_arm(url, k, n, sampler, tmp)
                finally:
                    drop()
            r["storage"] = kind
            rows.append(r)
            say(f"{kind} {k} workers: {r['trials']} trials, {r['overhead_s'] * 1000:.0f} ms orchestration per trial")
    return rows


def cells(rows: list[dict]) -> list[tuple[str, ...]]:
    """The table's cells, row by row; the ratio is to the fewest workers of the same storage."""
    fewest = min(r["workers"] for r in rows)
    base = {r["storage"]: r["overhead_s"] for r in rows if r["workers"] == fewest}
    return [(r["storage"], str(r["workers"]), str(r["threads"]), str(r["trials"]), f"{r['overhead_s'] * 1000:.0f}",
             f"{r['train_s'] * 1000:.0f}", f"{r['overhead_s'] / base[r['storage']]:.2f}x", f"{r['trials_per_s']:.2f}",
             f"{r['wall_s']:.0f}") for r in rows]


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="orchestration time per trial (trivial candidate)")
    for c in COLUMNS:
        table.add_column(c, justify="left" if c == "storage" else "right")
    for row in cells(rows):
        table.add_row(*row)
    Console().print(table)


def markdown(rows: list[dict], sampler: str, command: str) -> str:
    text_ = [
        f"\n## Workers: orchestration time per trial ({datetime.date.today().isoformat()})\n",
        f"Machine: {cpu_model()}, {available_cores()} cores, optuna {optuna.__version__}. Command: `{command}`. Real "
        f"`micronet-search worker` processes on one study in a fresh database; sampler {sampler}; a trivial "
        f"candidate (resnet20 width 0.25, 1 epoch, 64 synthetic images). Orchestration = a worker's time from "
        f"its first trial's start to its last trial's end minus the time in run_candidate, per trial: the claim "
        f"under the study lock, stale-trial checks, sampling, the score measurement, storage writes and the "
        f"checkpoint upload. With more workers than cores the processes share the CPU, so every step, "
        f"orchestration included, takes longer.\n",
        *pipe_table(COLUMNS, "|---|" + "---:|" * (len(COLUMNS) - 1), cells(rows)),
    ]
    return "\n".join(text_) + "\n"
