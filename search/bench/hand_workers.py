"""Study throughput of hand-started workers on one machine: the fair thread share against torch's default.

N ``micronet-search worker`` processes are started by hand on one study (the quickstart: digits, 8 epochs), as a
user would, with nothing telling them about each other. Arm "fair share" is today's default (each worker takes
cores // live workers threads); arm "torch default" gives every worker ``--threads <cores>``, which is what a
worker did before (torch's default is one thread per core). Each configuration runs for the same wall time; the
workers are then killed and the trials that finished within it are counted. Both arms and all N run in one
invocation, so compare the ratios.

    micronet-search bench hand-workers                      # 1, 2, 4 workers, 120 s each; appends BENCHMARKS.md
    micronet-search bench hand-workers --workers 1 2 --seconds 60 --no-write
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import TrialState

from search.bench.table import pipe_table
from search.machine import available_cores, cpu_flags, cpu_model

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "studies" / "quickstart-scratch.yaml"  # trials from scratch: what it measured
WORKERS = (1, 2, 4)
COLUMNS = ("workers", "threads", "threads seen in trials", "trials finished", "epochs run", "trials/min",
           "epochs/min", "vs 1 worker")


def run_arm(workers: int, threads: int | None, seconds: float, tmp: Path, cache: Path, study: Path = STUDY,
            study_name: str = "quickstart-scratch") -> dict:
    """``workers`` workers on ``study`` in a fresh SQLite file for ``seconds``, then killed: what finished."""
    storage = f"sqlite:///{tmp / 'study.db'}"
    env = {k: v for k, v in os.environ.items() if k not in ("MICRONET_THREADS", "OMP_NUM_THREADS")}
    env.update(MICRONET_STORAGE=storage, MICRONET_WORKER_DIR=str(tmp / "registry"), MICRONET_CACHE=str(cache))
    extra = [] if threads is None else ["--threads", str(threads)]
    # a budget no arm reaches in the time given: the count is what finished in ``seconds``
    cmd = [sys.executable, "-m", "search", "worker", str(study), "--n-trials", "500",
           "--artifacts", str(tmp / "artifacts"), *extra]
    # the first worker creates the study (and its tables); the others join a moment later, as by hand
    procs = [subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)]
    time.sleep(3)
    procs += [subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True) for _ in range(workers - 1)]
    start = time.monotonic()
    time.sleep(seconds)
    for p in procs:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    study_ = optuna.load_study(study_name=study_name, storage=storage)
    first = min((t.datetime_start for t in study_.trials if t.datetime_start), default=None)
    finished = [t for t in study_.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    epochs = sum(len(t.intermediate_values) for t in study_.trials)
    used = sorted({t.user_attrs.get("threads") for t in finished if "threads" in t.user_attrs})
    return {"workers": workers, "arm": "fair share" if threads is None else f"torch default ({threads} each)",
            "finished": len(finished), "epochs": epochs, "seconds": seconds,
            "trials_per_min": len(finished) / (seconds / 60), "epochs_per_min": epochs / (seconds / 60),
            "threads": ", ".join(map(str, used)) or "-", "first": first, "wall": time.monotonic() - start}


def run(workers: tuple[int, ...] = WORKERS, seconds: float = 120.0, say: Callable[[str], None] = print) -> list[dict]:
    """Both arms for each worker count (one arm for a single worker: its fair share is all cores, the same as
    torch's default), after the quickstart's distillation teacher is trained once into a cache every arm reads."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cores = available_cores()
    rows = []
    cache = Path(tempfile.mkdtemp())
    # the distillation teacher of the quickstart, trained once into a cache every arm reads: no arm pays for it
    subprocess.run([sys.executable, "-m", "search", "worker", str(STUDY),
                    "--n-trials", "1", "--artifacts", str(cache / "artifacts")], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "MICRONET_STORAGE": f"sqlite:///{cache / 'warm.db'}",
                        "MICRONET_CACHE": str(cache)})
    for n in workers:
        for threads in (None, cores):
            if n == 1 and threads is not None:
                continue  # one worker: the fair share is all cores, the same as torch's default
            with tempfile.TemporaryDirectory() as tmp:
                r = run_arm(n, threads, seconds, Path(tmp), cache)
            rows.append(r)
            say(f"{n} workers, {r['arm']}: {r['finished']} trials, {r['epochs']} epochs in {seconds:.0f} s")
    return rows


def cells(rows: list[dict]) -> list[tuple[str, ...]]:
    """The table's cells, row by row; 'vs 1 worker' is to the fair share of the fewest workers."""
    fewest = min(r["workers"] for r in rows)
    base = next(r["trials_per_min"] for r in rows if r["workers"] == fewest and r["arm"] == "fair share")
    return [(str(r["workers"]), r["arm"], r["threads"], str(r["finished"]), str(r["epochs"]),
             f"{r['trials_per_min']:.1f}", f"{r['epochs_per_min']:.1f}",
             f"{r['trials_per_min'] / base:.2f}x" if base else "-") for r in rows]


def print_table(rows: list[dict], seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"hand-started workers on {available_cores()} cores, {seconds:.0f} s each")
    for c in COLUMNS:
        table.add_column(c, justify="right" if c not in ("threads",) else "left")
    for row in cells(rows):
        table.add_row(*row)
    Console().print(table)


def markdown(rows: list[dict], seconds: float, command: str) -> str:
    cores = available_cores()
    bf16 = "with" if "avx512_bf16" in cpu_flags() else "without"
    text = [
        f"\n## Hand-started workers: study throughput ({datetime.date.today().isoformat()})\n",
        f"Machine: {cpu_model()} ({bf16} AVX512-BF16), {cores} cores. Command: `{command}`. N `micronet-search worker "
        f"studies/quickstart-scratch.yaml` processes started by hand on one SQLite study, each configuration for "
        f"{seconds:.0f} s, then killed; trials finished (complete or stopped early) within that time. "
        f"'fair share' is the default (cores // live workers on the host); 'torch default' passes --threads "
        f"{cores} to every worker, which is what a hand-started worker did before.\n",
        *pipe_table(COLUMNS, "|---:|---|" + "---:|" * (len(COLUMNS) - 2), cells(rows)),
    ]
    return "\n".join(text) + "\n"
