"""``micronet-search bench recipe --quick``: today's recipe and each option train as separate processes, the best
combination is formed from the options that beat today's, the table is written, and a second call reuses the runs."""

import json
import subprocess
import sys

from search.bench.recipe import CONFIGS, QUICK, best_combination, merge, recipe_overrides, summarize


def test_quick_recipe_benchmark_runs_records_and_resumes(tmp_path):
    out, work = tmp_path / "B.md", tmp_path / "work"
    cmd = [sys.executable, "-m", "search", "bench", "recipe", "--quick", "--work", str(work), "--out", str(out)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr
    text = out.read_text()
    assert "## Training recipes" in text
    for recipe in ("today", *QUICK.options):
        for config in CONFIGS:
            assert f"| {config} | {recipe} |" in text
            record = json.loads((work / "runs" / f"{recipe}-{config}-s0.json").read_text())
            assert len(record["curve"]) == QUICK.epochs and record["images_per_s"] > 0
            assert record["val_accuracy"] == record["curve"][-1] or recipe == "tta-flip"
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "started" not in second.stderr
    assert out.read_text().count("## Training recipes") == 2


def test_recipes_and_the_combination():
    assert recipe_overrides("today") == {}
    both = recipe_overrides("jitter+alternate-flip")
    assert both == {"augment": {"brightness": 0.2, "contrast": 0.2, "flip": "alternate"}}
    assert merge({"augment": {"crop_padding": 4, "flip": True}}, both)["augment"] == {
        "crop_padding": 4, "flip": "alternate", "brightness": 0.2, "contrast": 0.2}

    def rec(recipe, config, acc):
        return {"recipe": recipe, "config": config, "seed": 0, "val_accuracy": acc, "curve": [acc / 2, acc],
                "images_per_s": 100.0}

    records = [rec("today", c, 0.5) for c in CONFIGS] + [rec("mixup", c, 0.6) for c in CONFIGS] + \
        [rec("ema", c, 0.55) for c in CONFIGS] + [rec("adamw", "dense", 0.7), rec("adamw", "ps0.5-q8", 0.4)]
    # adamw loses on one configuration: left out
    assert best_combination(records, ("mixup", "ema", "adamw")) == "mixup+ema"
    assert best_combination(records, ("mixup", "adamw")) is None  # one winner: measured already
    rows = summarize(records, ["today", "mixup"])
    mixup = next(r for r in rows if r["recipe"] == "mixup" and r["config"] == "dense")
    assert round(mixup["gain"], 6) == 0.1 and mixup["reach_epoch"] == 2 and mixup["images_per_s_ratio"] == 1.0
