"""``micronet-search bench --quick``: every benchmark runs and lands in the table and the report."""

import subprocess
import sys

import pytest

from search.bench.report import Row, markdown
from search.bench.throughput import bench_candidate, cifar_shaped, trainer_images_per_s


def test_bench_quick_runs_every_figure(tmp_path):
    out = tmp_path / "BENCH.md"
    r = subprocess.run([sys.executable, "-m", "search", "bench", "--quick", "--device", "cpu", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    text = out.read_text()
    for figure in ("resnet20: classic loop, fp32", "resnet20: trainer, dense", "(default)",
                   "resnet20: trainer, ps 0.5 qw 8 qa 8", "densenet: trainer, dense",
                   "resnet18 groups 8: trainer, dense", "resnet20: trainer, torch.compile",
                   "ps 0.5 qw 8 qa 8, torch.compile", "one epoch of 50,000 images", "2 concurrent trial(s)",
                   "orchestration per trial", "peak RSS", "peak GPU memory allocated"):
        assert figure in text, figure
    assert "still to be measured" in text  # no GPU here: said, not invented
    assert "micronet-search bench --quick" in text


def test_trainer_rate_is_measured_on_the_compressed_model():
    data = cifar_shaped(64)
    dense = bench_candidate("resnet20", 32, width=0.25)
    rate, first = trainer_images_per_s(dense, data)
    assert rate > 0 and first > 0


def test_rows_render_ratio_target_and_verdict():
    row = Row("x: trainer", 600.0, "img/s", "classic loop", 2.0, ">= 3x", False)
    assert row.cells()[:6] == ["x: trainer", "600 img/s", "classic loop", "2.00x", ">= 3x", "not met"]
    assert "| x: trainer | 600 img/s | classic loop | 2.00x | >= 3x | not met |" in markdown("T", [row], "m", "c")
    assert Row("gpu", float("nan"), "s").cells()[1] == "still to be measured"


@pytest.mark.parametrize("bad", [["--device", "tpu"]])
def test_bench_bad_device_is_one_line(bad):
    r = subprocess.run([sys.executable, "-m", "search", "bench", *bad, "--no-write"], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
