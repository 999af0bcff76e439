"""Start K local worker processes on one study: ``micronet-search run STUDY --workers K [--trials-per-gpu M]``.

Each worker is a ``micronet-search worker`` process (separate processes, not threads: training holds the GIL and a
CUDA context per process keeps trials independent). Worker ``i`` sees one GPU through ``CUDA_VISIBLE_DEVICES``
(round robin, so M workers share each GPU: one small CIFAR model cannot fill a large GPU) and
``cores / K`` torch threads. The storage URL travels in the environment, never on a command line (``ps`` shows
command lines). Workers write to log files; this process shows the study's progress from the storage.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from search.machine import available_cores
from search.study.storage import ENV_STORAGE
from search.study.threads import ENV_THREADS

STOP_GRACE_S = 60.0  # after SIGTERM a worker queues its trial again and exits; after this it is killed


@dataclass(frozen=True)
class WorkerPlan:
    index: int
    gpu: str | None       # the CUDA_VISIBLE_DEVICES entry, None on CPU
    threads: int


def plan_workers(workers: int, gpus: list[str], cpus: int, threads: int | None = None) -> list[WorkerPlan]:
    """Round-robin GPUs over the workers; split the CPU cores between them (unless ``threads`` is given)."""
    threads = threads or max(1, cpus // workers)
    return [WorkerPlan(i, gpus[i % len(gpus)] if gpus else None, threads) for i in range(workers)]


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [g.strip() for g in listed.split(",") if g.strip()][:torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def cpu_count() -> int:
    """The cores the workers share (:func:`search.machine.available_cores`)."""
    return available_cores()


def worker_env(plan: WorkerPlan, storage_url: str) -> dict:
    env = dict(os.environ)
    env[ENV_STORAGE] = storage_url
    env[ENV_THREADS] = str(plan.threads)
    env["OMP_NUM_THREADS"] = str(plan.threads)
    env["MICRONET_WORKER"] = str(plan.index)
    if plan.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = plan.gpu
    return env


@dataclass
class Worker:
    plan: WorkerPlan
    process: subprocess.Popen
    log: Path


def start_workers(study_path: str, storage_url: str, plans: list[WorkerPlan], log_dir: Path,
                  extra_args: list[str]) -> list[Worker]:
    log_dir.mkdir(parents=True, exist_ok=True)
    workers = []
    for plan in plans:
        log = log_dir / f"worker-{plan.index}.log"
        with open(log, "ab") as out:
            # a session of its own: Ctrl-C reaches only this process, which stops the workers in order
            process = subprocess.Popen([sys.executable, "-m", "search", "worker", study_path, *extra_args],
                                       env=worker_env(plan, storage_url), stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        workers.append(Worker(plan, process, log))
    return workers


def stop_workers(workers: list[Worker], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM (each worker queues its running trial again), then SIGKILL whatever is left after ``grace_s``."""
    for w in workers:
        if w.process.poll() is None:
            w.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for w in workers:
        try:
            w.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.process.kill()
            w.process.wait()


def wait_workers(workers: list[Worker], poll, interval_s: float = 2.0) -> None:
    """Call ``poll()`` every ``interval_s`` until every worker has exited."""
    while any(w.process.poll() is None for w in workers):
        poll()
        time.sleep(interval_s)
    poll()
