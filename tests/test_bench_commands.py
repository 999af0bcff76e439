"""The benchmarks that were scripts, now ``micronet-search bench train|profile|workers|hand-workers|stopper``: each
runs at tiny sizes and writes its BENCHMARKS.md section; and the machine is read in one place (search.machine)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from search.bench import hand_workers
from search.bench import worker_overhead as workers
from search.bench.table import machine
from search.cli import main
from search.machine import available_cores, cpu_model

ROOT = Path(__file__).resolve().parent.parent


def bench(*args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "search", "bench", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def tiny_study(tmp_path, name="tiny", epochs=1, stopper="{name: none, skip_dominated: false}"):
    (tmp_path / "space.yaml").write_text("params:\n  arch: {value: resnet20}\n  width: {value: 0.25}\n"
                                         "  ps: {low: 0.0, high: 0.5}\n")
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""\
name: {name}
space: {tmp_path / 'space.yaml'}
data: {{name: synthetic, synthetic_size: 64}}
sampler: {{name: random, seed: 0}}
train: {{epochs: {epochs}, batch_size: 32}}
stopper: {stopper}
checkpoint_every: 0
n_trials: 2
""")
    return path


def test_bench_train_appends_the_trainer_against_the_classic_loop(tmp_path):
    out = tmp_path / "BENCH.md"
    r = bench("train", "--steps", "1", "--batch-size", "32", "--loader-workers", "0", "--precision", "fp32",
              "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    text = out.read_text()
    assert "## Training throughput: resnet20 (" in text
    assert "Command: `micronet-search bench train --steps 1 --batch-size 32 --loader-workers 0 --precision fp32 " \
           f"--out {out}`" in text
    # the machine line of the child process: its own torch thread count, which another test may have changed here
    expected = re.escape(machine()).replace(re.escape(f"{torch.get_num_threads()} threads"), r"\d+ threads")
    assert re.search(f"Machine: {expected}\\.", text), text
    assert re.search(r"\| resnet20: classic loop, fp32 \(PIL \+ DataLoader, 0 workers\) \| [\d,.]+ img/s \|", text)
    assert re.search(r"\| resnet20: trainer, fp32 \| [\d,.]+ img/s \| classic loop \| [\d.]+x \| >= 3x \| (not )?met",
                     text), text


def test_bench_profile_prints_where_a_step_goes(tmp_path):
    r = bench("profile", "--steps", "2", "--batch-size", "16", "--precision", "fp32", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resnet20, batch 16, 2 steps" in r.stdout and ", fp32" in r.stdout
    for phase in ("data: augment + normalize", "model: forward + loss", "model: backward", "optimizer step"):
        assert re.search(rf"^  {re.escape(phase)} +[\d.]+ ms/step +[\d.]+%$", r.stdout, re.M), (phase, r.stdout)
    assert "Self CPU" in r.stdout  # torch.profiler's operator table
    assert not list(tmp_path.iterdir())  # prints only


def test_workers_arm_measures_orchestration_per_trial(tmp_path):
    """One arm with real worker processes on SQLite: one worker with every core, its orchestration and training."""
    r = workers.run_arm(f"sqlite:///{tmp_path / 'bench.db'}", 1, 2, "random", tmp_path)
    assert r["workers"] == 1 and r["threads"] == available_cores() and r["trials"] == 2 and r["used"] == 1, r
    assert 0 < r["overhead_s"] < r["wall_s"] and r["train_s"] > 0 and r["trials_per_s"] > 0, r


def test_bench_workers_runs_an_arm_per_storage_and_worker_count_and_appends_the_section(tmp_path, monkeypatch):
    calls = []

    def arm(storage, n, n_trials, sampler, tmp):
        calls.append((storage.split(":")[0], n, n_trials, sampler))
        return {"workers": n, "threads": 1, "trials": n_trials, "wall_s": 10.0, "overhead_s": 0.05 * n,
                "train_s": 0.2, "trials_per_s": n_trials / 10, "used": n}

    monkeypatch.setattr(workers, "run_arm", arm)
    out = tmp_path / "BENCH.md"
    argv = ["bench", "workers", "--workers", "1", "4", "--trials-per-worker", "3", "--storages", "sqlite",
            "--sampler", "random", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", ["micronet-search", *argv])
    assert main(argv) == 0
    assert calls == [("sqlite", 1, 8, "random"), ("sqlite", 4, 12, "random")]  # at least 8 trials an arm
    text = out.read_text()
    assert "## Workers: orchestration time per trial (" in text
    assert f"Machine: {cpu_model()}, {available_cores()} cores, optuna " in text
    assert f"Command: `micronet-search {' '.join(argv)}`" in text and "sampler random" in text
    assert "| sqlite | 4 | 1 | 12 | 200 | 200 | 4.00x | 1.20 | 10 |" in text


def test_workers_table_ratios_are_to_the_fewest_workers_of_each_storage():
    rows = [{"storage": s, "workers": w, "threads": 1, "trials": 8, "wall_s": 10.0, "overhead_s": o, "train_s": 0.1,
             "trials_per_s": 0.8} for s, w, o in (("postgresql", 1, 0.1), ("postgresql", 4, 0.3), ("sqlite", 1, 0.2),
                                                   ("sqlite", 4, 0.2))]
    assert [c[6] for c in workers.cells(rows)] == ["1.00x", "3.00x", "1.00x", "1.00x"]
    text = workers.markdown(rows, "tpe", "micronet-search bench workers")
    assert "sampler tpe" in text and "| postgresql | 4 | 1 | 8 | 300 | 100 | 3.00x | 0.80 | 10 |" in text


def test_hand_workers_arm_counts_what_finished_and_the_threads_used(tmp_path):
    """One arm on a tiny study: one hand-started worker has the host to itself, so its fair share is every core."""
    study = tiny_study(tmp_path, "hand")
    cache = tmp_path / "cache"
    cache.mkdir()
    r = hand_workers.run_arm(1, None, 12.0, tmp_path / "arm", cache, study=study, study_name="hand")
    assert r["workers"] == 1 and r["arm"] == "fair share" and r["seconds"] == 12.0
    assert r["finished"] >= 1 and r["epochs"] >= r["finished"], r
    assert r["threads"] == str(available_cores()), r
    assert r["trials_per_min"] == r["finished"] / 0.2


def test_hand_workers_table_and_section():
    rows = [{"workers": 1, "arm": "fair share", "finished": 10, "epochs": 80, "seconds": 60.0,
             "trials_per_min": 10.0, "epochs_per_min": 80.0, "threads": "2"},
            {"workers": 2, "arm": "fair share", "finished": 14, "epochs": 112, "seconds": 60.0,
             "trials_per_min": 14.0, "epochs_per_min": 112.0, "threads": "1"},
            {"workers": 2, "arm": "torch default (2 each)", "finished": 5, "epochs": 40, "seconds": 60.0,
             "trials_per_min": 5.0, "epochs_per_min": 40.0, "threads": "2"}]
    assert [c[-1] for c in hand_workers.cells(rows)] == ["1.00x", "1.40x", "0.50x"]
    text = hand_workers.markdown(rows, 60.0, "micronet-search bench hand-workers --seconds 60")
    assert "## Hand-started workers: study throughput (" in text
    assert f"Machine: {cpu_model()} (with" in text or f"Machine: {cpu_model()} (without" in text
    assert f"{available_cores()} cores. Command: `micronet-search bench hand-workers --seconds 60`" in text
    assert "each configuration for 60 s" in text
    assert "| 2 | torch default (2 each) | 2 | 5 | 40 | 5.0 | 40.0 | 0.50x |" in text


def test_bench_stopper_runs_both_arms_and_appends_the_comparison(tmp_path):
    study = tiny_study(tmp_path, epochs=2, stopper="{name: pareto, warmup_epochs: 1, min_trials: 1, percentile: 50}")
    out = tmp_path / "BENCH.md"
    r = bench("stopper", "--study", str(study), "--n-trials", "2", "--seed", "3", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "epochs saved" in r.stdout and "hypervolume loss" in r.stdout
    text = out.read_text()
    assert "## Pareto-aware early stopping (" in text
    assert f"Command: `micronet-search bench stopper --study {study} --n-trials 2 --seed 3 --out {out}`" in text
    assert "Study tiny.yaml, 2 trials, the same candidates in both arms (random sampler, seed 3)" in text
    assert "stopper: warmup_epochs 1, min_trials 1, percentile 50" in text
    without = re.search(r"^\| without stopper \| (\d+) \| (\d+) \| (\d+) \| \d+ \| [\d.]+ \|$", text, re.M)
    assert without and without.groups() == ("4", "2", "0"), text  # 2 trials of 2 epochs, none stopped
    assert re.search(r"^\| Pareto stopper \| \d+ \| \d+ \| \d+ \| \d+ \| [\d.]+ \|$", text, re.M), text
    assert "Epochs saved: **" in text and "hypervolume loss: **" in text


@pytest.mark.parametrize("args, needle", [
    (["workers", "--workers", "0"], "--workers must be an integer >= 1, got 0"),
    (["hand-workers", "--seconds", "0"], "--seconds must be a number of seconds > 0, got 0.0"),
    (["train", "--steps", "0"], "--steps must be an integer >= 1, got 0"),
    (["stopper", "--n-trials", "0"], "--n-trials must be an integer >= 1, got 0"),
    (["stopper", "--study", "missing.yaml"], "missing.yaml"),
])
def test_bad_benchmark_arguments_are_one_line(tmp_path, args, needle):
    r = bench(*args, "--no-write", cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_the_machine_is_read_in_one_place():
    """Only search/machine.py reads /proc/cpuinfo: the benchmarks, the trainer and the latency records name the
    machine through it."""
    readers = [p.relative_to(ROOT).as_posix() for p in [*ROOT.glob("search/**/*.py"), *ROOT.glob("scripts/**/*")]
               if p.is_file() and "/proc/cpuinfo" in p.read_text(errors="replace")]
    assert readers == ["search/machine.py"]
    assert machine().startswith(cpu_model() + ", ")
