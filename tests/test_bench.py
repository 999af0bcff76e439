"""``micronet-search bench --quick``: every benchmark runs and lands in the table and the report."""

import math
import subprocess
import sys

import pytest
import torch

from search.bench import throughput
from search.bench.suite import COMPRESSED
from search.bench.table import Row, markdown
from search.bench.throughput import bench_candidate, cifar_shaped, trainer_images_per_s
from search.candidate.candidate import footprint
from search.candidate.complexity import count_params
from search.compress.quantize import quantization_of


def table_rows(text: str) -> dict[str, list[str]]:
    """figure -> its cells (value, anchor, ratio, target, verdict, note), from the markdown table."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| figure |"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            rows[cells[0]] = cells[1:]
    return rows


def test_bench_quick_runs_every_figure(tmp_path):
    """The default device: CUDA where there is one. Without it the GPU figures say they are still to be measured;
    with it they are measured, and the CPU-only classic loop is not run."""
    out = tmp_path / "BENCH.md"
    r = subprocess.run([sys.executable, "-m", "search", "bench", "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    text = out.read_text()
    assert "micronet-search bench --quick" in text
    rows = table_rows(text)
    for figure in ("resnet20: trainer, dense", "(default)", "resnet20: trainer, ps 0.5 qw 8 qa 8",
                   "densenet: trainer, dense", "resnet18 groups 8: trainer, dense", "resnet20: trainer, torch.compile",
                   "ps 0.5 qw 8 qa 8, torch.compile", "one epoch of 50,000 images", "2 concurrent trial(s)",
                   "orchestration per trial", "peak RSS", "peak GPU memory allocated"):
        assert any(figure in f for f in rows), (figure, list(rows))
    for figure in ("resnet20: trainer, ps 0.5 qw 8 qa 8", "orchestration per trial (share of trial time)"):
        assert rows[figure][0] != "still to be measured", rows[figure]
    if torch.cuda.is_available():
        assert rows["resnet20: one epoch of 50,000 images"][0].endswith(" s"), rows
        assert rows["resnet20: one epoch of 50,000 images"][4] in ("met", "not met")
        assert rows["peak GPU memory allocated, same run"][0].endswith(" GiB"), rows
        assert "resnet20: 8 concurrent trial(s), aggregate" in rows
        assert not [f for f in rows if "classic loop" in f] and "still to be measured" not in \
            rows["peak GPU memory allocated, same run"] + rows["resnet20: one epoch of 50,000 images"]
    else:
        assert rows["resnet20: classic loop, fp32 (PIL + DataLoader, 2 workers)"][0].endswith(" img/s"), rows
        projected = rows["resnet20: one epoch of 50,000 images (CPU, projected)"]
        assert projected[0].endswith(" s") and "GPU target (<= 1.0 s) is still to be measured" in projected[5]
        assert rows["peak GPU memory allocated"][0] == "still to be measured", rows
        assert not [f for f in rows if "8 concurrent" in f or f.endswith(", same run")]


def test_trainer_rate_is_measured_on_the_compressed_model(monkeypatch):
    """The compressed figure times the pruned and fake-quantized model, with the compressed parameter count."""
    trainers = []

    class Recording(throughput.Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            trainers.append(self)

    monkeypatch.setattr(throughput, "Trainer", Recording)
    data = cifar_shaped(64)
    cand = bench_candidate("resnet20", 32, width=0.25, compression=COMPRESSED)
    expected = footprint(cand, data.num_classes)
    rate, first = trainer_images_per_s(cand, data)
    warm, timed = trainers
    assert timed.model is warm.model and len(timed.data.x_train) == len(data.x_train)  # the whole epoch, timed
    assert quantization_of(timed.model) == (8, 8)
    assert count_params(timed.model) == expected.compressed.params < expected.dense.params / 2
    assert rate == timed.images_per_s and math.isfinite(rate) and rate > 0 and math.isfinite(first) and first > 0

    dense, _ = trainer_images_per_s(bench_candidate("resnet20", 32, width=0.25), data)
    assert quantization_of(trainers[-1].model) == (32, 32) and count_params(trainers[-1].model) == \
        expected.dense.params  # the dense figure: the model as built


def test_rows_render_ratio_target_and_verdict():
    row = Row("x: trainer", 600.0, "img/s", "classic loop", 2.0, ">= 3x", False)
    assert row.cells()[:6] == ["x: trainer", "600 img/s", "classic loop", "2.00x", ">= 3x", "not met"]
    assert "| x: trainer | 600 img/s | classic loop | 2.00x | >= 3x | not met |" in markdown("T", [row], "m", "c")
    assert Row("gpu", float("nan"), "s").cells()[1] == "still to be measured"


@pytest.mark.parametrize("bad", [["--device", "tpu"]])
def test_bench_bad_device_is_one_line(bad):
    r = subprocess.run([sys.executable, "-m", "search", "bench", *bad, "--no-write"], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
