"""Per-trial orchestration overhead as a fraction of trial time, on a real (quickstart-sized) candidate.

A worker process runs a few trials of a small study in a fresh SQLite file. Orchestration is all the worker's time
from its first trial's start to its last trial's end that is not spent in ``run_candidate`` (training and
compressing): claiming the trial, sampling, the score measurement before training, storage writes and the
checkpoint upload.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna

from search.trial.record import TrialRecord

SPACE = """\
params:
  arch: {value: resnet20}
  width: {choices: [0.5, 0.75]}
  ps: {low: 0.0, high: 0.5}
  pu: {low: 0.0, high: 0.3}
  qw: {choices: [8, 16, 32]}
  qa: {choices: [8, 32]}
  lr: {low: 0.05, high: 0.2, log: true}
"""


def study_yaml(tmp: Path, n_trials: int, epochs: int, dataset: str) -> Path:
    (tmp / "space.yaml").write_text(SPACE)
    data = "{name: digits}" if dataset == "digits" else "{name: synthetic, synthetic_size: 256}"
    path = tmp / "orchestration.yaml"
    path.write_text(f"""\
name: orchestration
space: {tmp / 'space.yaml'}
storage: sqlite:///{tmp / 'study.db'}
artifacts: {tmp / 'artifacts'}
data: {data}
sampler: {{name: tpe, seed: 0, n_startup_trials: 2}}
train: {{epochs: {epochs}, batch_size: 32}}
stopper: {{name: none, skip_dominated: false}}
n_trials: {n_trials}
""")
    return path


def orchestration_overhead(n_trials: int = 3, epochs: int = 8, dataset: str = "digits") -> dict:
    """{'orchestration_s', 'trial_s', 'fraction'} per trial, averaged over trials 2 to ``n_trials``, and the first
    trial's orchestration apart."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = study_yaml(tmp, n_trials, epochs, dataset)
        env = {k: v for k, v in os.environ.items() if k != "MICRONET_STORAGE"}
        subprocess.run([sys.executable, "-m", "search", "worker", str(path)], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        trials = optuna.load_study(study_name="orchestration", storage=f"sqlite:///{tmp / 'study.db'}").trials
    done = sorted((t for t in trials if t.state.is_finished()), key=lambda t: t.datetime_start)
    # steady state: from the end of the first trial, which also pays one-time warm-ups (kernels, caches)
    first, rest = done[0], done[1:]
    span = (done[-1].datetime_complete - first.datetime_complete).total_seconds()
    train = sum(TrialRecord.of(t).train_s for t in rest)
    first_s = (first.datetime_complete - first.datetime_start).total_seconds()
    return {"orchestration_s": (span - train) / len(rest), "trial_s": span / len(rest),
            "fraction": (span - train) / span, "trials": len(rest),
            "first_orchestration_s": first_s - TrialRecord.of(first).train_s,
            "sample_s": sum(TrialRecord.of(t).sample_s for t in rest) / len(rest),
            "bookkeeping_s": sum(TrialRecord.of(t).bookkeeping_s for t in rest) / len(rest)}
