"""Pareto-aware early stopping: the same study budget with and without it, epochs trained and final hypervolume.

Both arms run the same study file with a seeded random sampler, so they sample the same candidates in the same
order; the only difference is the stopper (early stopping + skipping candidates that cannot enter the front).
Hypervolume is over the feasible completed trials (accuracy >= the floor), from the reference corner
(accuracy = floor, score = 1.1 × the largest score seen in either arm).

    python scripts/bench_stopper.py [--study studies/quickstart.yaml] [--n-trials 24] [--seed 1]
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState
from rich.console import Console
from rich.table import Table

from search.results.front import hypervolume
from search.study.runner import run_study
from search.study.study_file import SamplerConfig, StopperConfig, load_study_file

ROOT = Path(__file__).resolve().parent.parent


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
    return [(t.values[0], t.values[1]) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values[0] >= floor]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", default=str(ROOT / "studies" / "quickstart.yaml"))
    p.add_argument("--n-trials", type=int, default=24)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    base = load_study_file(args.study).config.stopper
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        off = run_arm(args.study, args.n_trials, args.seed, replace(base, name="none", skip_dominated=False), tmp,
                      "without")
        on = run_arm(args.study, args.n_trials, args.seed, replace(base, name="pareto"), tmp, "with")
        floor = off["floor"]
        points = {k: feasible_points(r["study"], floor) for k, r in (("off", off), ("on", on))}
        all_scores = [s for pts in points.values() for _, s in pts]
        ref = 1.1 * max(all_scores) if all_scores else 1.0
        hv = {k: hypervolume(pts, ref, floor) for k, pts in points.items()}

    epochs_saved = 1 - on["epochs"] / off["epochs"] if off["epochs"] else 0.0
    hv_loss = 1 - hv["on"] / hv["off"] if hv["off"] else 0.0
    table = Table(title=f"stopper benchmark: {Path(args.study).name}, {args.n_trials} trials, random sampler "
                        f"seed {args.seed}")
    for col in ("arm", "epochs trained", "complete", "pruned", "wall s", "hypervolume"):
        table.add_column(col, justify="right" if col != "arm" else "left")
    table.add_row("without stopper", str(off["epochs"]), str(off["complete"]), str(off["pruned"]),
                  f"{off['wall_s']:.0f}", f"{hv['off']:.5f}")
    table.add_row("Pareto stopper", str(on["epochs"]), str(on["complete"]), str(on["pruned"]),
                  f"{on['wall_s']:.0f}", f"{hv['on']:.5f}")
    Console().print(table)
    verdict = "met" if epochs_saved >= 0.5 and hv_loss <= 0.02 else "not met"
    print(f"epochs saved {epochs_saved:.1%} (target >= 50%), hypervolume loss {hv_loss:.2%} (target <= 2%): "
          f"{verdict}")

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "cpu")
    command = "python scripts/bench_stopper.py " + " ".join(sys.argv[1:])
    lines = [
        f"\n## Pareto-aware early stopping ({datetime.date.today().isoformat()})\n",
        f"Machine: {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, optuna {optuna.__version__}. "
        f"Command: `{command.strip()}`. Study {Path(args.study).name}, {args.n_trials} trials, the same candidates "
        f"in both arms (random sampler, seed {args.seed}); stopper: warmup_epochs {base.warmup_epochs}, "
        f"min_trials {base.min_trials}, percentile {base.percentile:g}, skip_dominated (skip_accuracy "
        f"{base.skip_accuracy:g}); hypervolume over feasible trials, reference corner "
        f"(accuracy {floor:g}, score {ref:.4g}).\n",
        "| arm | epochs trained | complete | pruned | wall s | hypervolume |",
        "|---|---:|---:|---:|---:|---:|",
        f"| without stopper | {off['epochs']} | {off['complete']} | {off['pruned']} | {off['wall_s']:.0f} | "
        f"{hv['off']:.5f} |",
        f"| Pareto stopper | {on['epochs']} | {on['complete']} | {on['pruned']} | {on['wall_s']:.0f} | "
        f"{hv['on']:.5f} |",
        f"\nEpochs saved: **{epochs_saved:.1%}** (target ≥ 50 %); hypervolume loss: **{hv_loss:.2%}** "
        f"(target ≤ 2 %): {verdict}.\n",
    ]
    with Path(args.out).open("a") as f:
        f.write("\n".join(lines) + "\n")
    print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
