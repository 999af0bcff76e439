import json
import os
import subprocess
import sys

import numpy as np
import pytest

FAST = ["--arch", "resnet20", "--width", "0.25", "--epochs", "2", "--batch-size", "64", "--dataset", "synthetic"]


def run_cli(*args, cache=None):
    env = dict(os.environ)
    if cache is not None:
        env["MICRONET_CACHE"] = str(cache)
    return subprocess.run([sys.executable, "-m", "search", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


def test_train_json_reports_everything(tmp_path):
    result = run_cli("train", *FAST, "--ps", "0.3", "--pu", "0.2", "--qw", "8", "--qa", "8", "--json",
                     cache=tmp_path)
    assert result.returncode == 0, result.stderr
    out = last_json(result.stdout)
    for key in ("val_accuracy", "test_accuracy", "params", "macs", "compressed_params", "compressed_macs",
                "nonzero_params", "score", "measured_score", "train_images_per_s", "wall_s"):
        assert key in out
    assert out["compressed_macs"] < out["macs"] and out["nonzero_params"] < out["compressed_params"]
    assert out["sparsity"] == pytest.approx(0.2, abs=0.01)
    assert "epoch 2/2" in result.stderr  # plain progress lines when not on a terminal


def test_train_from_yaml_with_flag_override(tmp_path):
    cfg = tmp_path / "cand.yaml"
    cfg.write_text("arch: resnet20\nwidth: 0.25\ncompression: {ps: 0.5}\ntrain: {epochs: 1, batch_size: 64}\n"
                   "data: {name: synthetic, synthetic_size: 256}\n")
    result = run_cli("train", str(cfg), "--epochs", "2", "--json", cache=tmp_path)
    assert result.returncode == 0, result.stderr
    out = last_json(result.stdout)
    assert out["epochs_run"] == 2 and out["compressed_params"] < out["params"]


def test_teacher_is_trained_once_and_reused(tmp_path):
    kd = ["--kd-temperature", "4", "--teacher-arch", "resnet20", "--teacher-epochs", "1"]
    first = run_cli("train", *FAST, *kd, "--json", cache=tmp_path)
    assert first.returncode == 0, first.stderr
    teachers = list((tmp_path / "teachers").glob("*.pt"))
    assert len(teachers) == 1 and "resnet20-synthetic" in teachers[0].name
    assert "teacher resnet20 epoch 1/1" in first.stderr
    second = run_cli("train", *FAST, *kd, "--json", cache=tmp_path)
    assert second.returncode == 0 and "teacher resnet20 epoch" not in second.stderr
    cached = run_cli("teacher", "--arch", "resnet20", "--epochs", "1", "--dataset", "synthetic", "--json",
                     cache=tmp_path)
    assert json.loads(cached.stdout)["cached"] is True


def bad_npz(path):
    np.savez(path, x_train=np.zeros((10, 3, 32, 32), np.uint8), y_train=np.zeros(10, np.int64),
             x_test=np.zeros((4, 32, 32, 3), np.uint8), y_test=np.zeros(4, np.int64))
    return path


@pytest.mark.parametrize("make_args,fragment", [
    (lambda d: ["train", "--dataset", "cifar10", "--data-path", str(d / "nowhere")], "CIFAR-10 not found"),
    (lambda d: ["train", "--dataset", "npz", "--data-path", str(bad_npz(d / "bad.npz"))], "x_train has shape"),
    (lambda d: ["train", "--dataset", "npz", "--data-path", str(d / "missing.npz")], "npz dataset not found"),
    (lambda d: ["train", "--epochs", "2", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (lambda d: ["train", "--arch", "resnet20", "--ps", "0.9", "--pu", "0.2"], "ps + pu must be below 1"),
    (lambda d: ["train", "--kd-alpha", "0.5"], "need --kd-temperature"),
    (lambda d: ["train", "--precision", "fp16"], "precision must be one of auto, bf16, fp32"),
    (lambda d: ["train", str(d / "none.yaml")], "none.yaml: no such file"),
    (lambda d: ["train", "--device", "cuda:0"] if not _cuda() else ["train", "--device", "tpu"], "device"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, make_args, fragment):
    result = run_cli(*make_args(tmp_path), cache=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr


def _cuda():
    import torch
    return torch.cuda.is_available()


def test_corrupt_teacher_checkpoint_is_one_line_and_left_alone(tmp_path):
    kd = ["--kd-temperature", "4", "--teacher-arch", "resnet20", "--teacher-epochs", "1"]
    first = run_cli("train", *FAST, *kd, "--json", cache=tmp_path)
    assert first.returncode == 0, first.stderr
    (path,) = (tmp_path / "teachers").glob("*.pt")
    path.write_bytes(b"garbage")
    again = run_cli("train", *FAST, *kd, "--json", cache=tmp_path)
    assert again.returncode == 2
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and "is corrupt" in lines[0] and "delete it" in lines[0]
    assert sorted(p.name for p in (tmp_path / "teachers").iterdir()) == [path.name]  # no temp files left


def test_bad_yaml_names_file_and_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("arch: resnet20\ntrain: {epochz: 3}\n")
    result = run_cli("train", str(cfg), cache=tmp_path)
    assert result.returncode == 2
    assert f"{cfg}.train: unknown key 'epochz'" in result.stderr
    cfg.write_text("arch: [resnet20\n")
    result = run_cli("train", str(cfg), cache=tmp_path)
    assert result.returncode == 2 and "is not valid YAML" in result.stderr and len(result.stderr.splitlines()) == 1
