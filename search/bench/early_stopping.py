"""Pareto-aware early stopping: the same study budget with and without it, epochs trained and final hypervolume.

Both arms run the same study file with a seeded random sampler, so they sample the same candidates in the same
order; the only difference is the stopper (early stopping + skipping candidates that cannot enter the front).
Hypervolume is over the feasible completed trials (accuracy >= the floor), from the reference corner
(accuracy = floor, score = 1.1 × the largest score seen in either arm).

    micronet-search bench stopper [--study studies/quickstart-scratch.yaml] [--n-trials 24] [--seed 1]
"""

from __future__ import annotations

import datetime
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from search.machine import cpu_model
from search.results.front import hypervolume
from search.study.runner import run_study
from search.study.study_file import SamplerConfig, StopperConfig, load_study_file
from search.trial.objectives import Objectives

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "studies" / "quickstart-scratch.yaml"  # trials from scratch: what it measured


def run_arm(study_file: str, n_trials: int, seed: int, stopper: StopperConfig, tmp: Path, name: str) -> dict:
    loaded = load_study_file(study_file, storage=f"sqlite:///{tmp / name}.db", n_trials=n_trials)
    cfg = replace(loaded.config, name=name, sampler=SamplerConfig(name="random", seed=seed), stopper=stopper,
                  artifacts=str(tmp / f"{name}-artifacts"), timeout=None)
    loaded = replace(loaded, config=cfg)
    start = time.perf_counter()
    study = run_study(loaded)
    wall = time.perf_counter() - start
    trials = study.get_trials(deepcopy=False)
    return {
        "study": study, "wall_s": wall,
        "epochs": sum(t.user_attrs.get("epochs_run", 0) for t in trials),
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "floor": cfg.accuracy_floor or 0.0,
    }


def feasible_points(study: optuna.Study, floor: float) -> list[tuple[float, float]]:
    """(accuracy, first cost: the score) of the completed trials at or above the floor."""
    objectives = Objectives.of_study(study)
    return [(objectives.accuracy(t), objectives.first_cost(t))
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if objectives.accuracy(t) >= floor]


@dataclass(frozen=True)
class Comparison:
    study: str                 # the study file
    n_trials: int
    seed: int
    stopper: StopperConfig     # the study file's stopper: the "with" arm's
    off: dict                  # the arm without the stopper: epochs, complete, pruned, wall_s
    on: dict                   # the arm with it
    hv_off: float
    hv_on: float
    floor: float               # the reference corner: accuracy floor ...
    ref: float                 # ... and 1.1 × the largest score seen in either arm

    @property
    def epochs_saved(self) -> float:
        return 1 - self.on["epochs"] / self.off["epochs"] if self.off["epochs"] else 0.0

    @property
    def hv_loss(self) -> float:
        return 1 - self.hv_on / self.hv_off if self.hv_off else 0.0

    @property
    def verdict(self) -> str:
        return "met" if self.epochs_saved >= 0.5 and self.hv_loss <= 0.02 else "not met"


def compare(study: str | Path = STUDY, n_trials: int = 24, seed: int = 1) -> Comparison:
    """Run both arms of ``study`` (``n_trials`` each, random sampler ``seed``) in a temporary folder."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = str(study)
    base = load_study_file(study).config.stopper
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        off = run_arm(study, n_trials, seed, replace(base, name="none", skip_dominated=False), tmp, "without")
        on = run_arm(study, n_trials, seed, replace(base, name="pareto"), tmp, "with")
        floor = off["floor"]
        points = {k: feasible_points(r["study"], floor) for k, r in (("off", off), ("on", on))}
        all_scores = [s for pts in points.values() for _, s in pts]
        ref = 1.1 * max(all_scores) if all_scores else 1.0
        hv = {k: hypervolume(pts, ref, floor) for k, pts in points.items()}
    return Comparison(study, n_trials, seed, base, off, on, hv["off"], hv["on"], floor, ref)


def print_table(c: Comparison) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"stopper benchmark: {Path(c.study).name}, {c.n_trials} trials, random sampler seed {c.seed}")
    for col in ("arm", "epochs trained", "complete", "pruned", "wall s", "hypervolume"):
        table.add_column(col, justify="right" if col != "arm" else "left")
    for name, arm, hv in (("without stopper", c.off, c.hv_off), ("Pareto stopper", c.on, c.hv_on)):
        table.add_row(name, str(arm["epochs"]), str(arm["complete"]), str(arm["pruned"]), f"{arm['wall_s']:.0f}",
                      f"{hv:.5f}")
    Console().print(table)
    print(f"epochs saved {c.epochs_saved:.1%} (target >= 50%), hypervolume loss {c.hv_loss:.2%} (target <= 2%): "
          f"{c.verdict}")


def markdown(c: Comparison, command: str) -> str:
    base, off, on = c.stopper, c.off, c.on
    lines = [
        f"\n## Pareto-aware early stopping ({datetime.date.today().isoformat()})\n",
        f"Machine: {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, optuna "
        f"{optuna.__version__}. Command: `{command.strip()}`. Study {Path(c.study).name}, {c.n_trials} trials, the "
        f"same candidates in both arms (random sampler, seed {c.seed}); stopper: warmup_epochs {base.warmup_epochs}, "
        f"min_trials {base.min_trials}, percentile {base.percentile:g}, skip_dominated (skip_accuracy "
        f"{base.skip_accuracy:g}); hypervolume over feasible trials, reference corner "
        f"(accuracy {c.floor:g}, score {c.ref:.4g}).\n",
        "| arm | epochs trained | complete | pruned | wall s | hypervolume |",
        "|---|---:|---:|---:|---:|---:|",
        f"| without stopper | {off['epochs']} | {off['complete']} | {off['pruned']} | {off['wall_s']:.0f} | "
        f"{c.hv_off:.5f} |",
        f"| Pareto stopper | {on['epochs']} | {on['complete']} | {on['pruned']} | {on['wall_s']:.0f} | "
        f"{c.hv_on:.5f} |",
        f"\nEpochs saved: **{c.epochs_saved:.1%}** (target ≥ 50 %); hypervolume loss: **{c.hv_loss:.2%}** "
        f"(target ≤ 2 %): {c.verdict}.\n",
    ]
    return "\n".join(lines) + "\n"
