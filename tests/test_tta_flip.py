"""Test-time flip averaging (``train: {tta_flip: true}``): off by default; when on, what is evaluated is the mean of
the logits of each image and its mirror, the score counts both passes, and the export carries the averaging."""

import json

import onnxruntime as ort
import optuna
import pytest
import torch

from search.candidate.candidate import Candidate, footprint
from search.candidate.recipe import TrainConfig
from search.compress.compression import Compression
from search.errors import ConfigError
from search.models.flip import FlipAverage
from search.study.study_file import load_study_file
from search.training.data import DataConfig, load_data
from search.training.run import run_candidate
from search.training.trainer import predict


def test_off_by_default_and_checked():
    assert TrainConfig().tta_flip is False
    assert not isinstance(Candidate(arch="resnet20", width=0.25).build(10), FlipAverage)
    with pytest.raises(ConfigError, match="tta_flip must be true or false"):
        TrainConfig(tta_flip="yes")


def test_eval_averages_the_mirror_and_training_runs_one_pass():
    torch.manual_seed(0)
    model = Candidate(arch="resnet20", width=0.25, train=TrainConfig(tta_flip=True)).build(10)
    assert isinstance(model, FlipAverage)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    inner = model.model
    expected = (inner(x) + inner(torch.flip(x, dims=(3,)))) / 2
    assert torch.allclose(model(x), expected, atol=1e-5)
    assert not torch.allclose(model(x), inner(x), atol=1e-4)  # the mirror changes the logits
    model.train()
    calls = []
    handle = inner.register_forward_hook(lambda *a: calls.append(1))
    model(x)
    handle.remove()
    assert len(calls) == 1  # training costs what it did


def test_the_score_counts_both_passes():
    plain = Candidate(arch="resnet20", width=0.25, compression=Compression(ps=0.3, qw=8, qa=8))
    flip = Candidate(arch="resnet20", width=0.25, compression=Compression(ps=0.3, qw=8, qa=8),
                     train=TrainConfig(tta_flip=True))
    a, b = footprint(plain, 10), footprint(flip, 10)
    assert b.dense.params == a.dense.params and b.compressed.params == a.compressed.params
    assert b.dense.macs == 2 * a.dense.macs and b.compressed.macs == 2 * a.compressed.macs
    assert b.score.param_term == a.score.param_term
    assert b.score.macs_term == pytest.approx(2 * a.score.macs_term)


def test_a_compressed_candidate_trains_and_its_accuracy_is_the_averaged_models(tmp_path):
    data = load_data(DataConfig(name="digits", subset=300, val_fraction=0.2, seed=0))
    cand = Candidate(arch="resnet20", width=0.25, compression=Compression(ps=0.5, pu=0.2, qw=8, qa=8),
                     train=TrainConfig(epochs=2, batch_size=32, tta_flip=True))
    result = run_candidate(cand, data)
    assert isinstance(result.model, FlipAverage)
    logits = predict(result.model, data.x_val, data.mean, data.std)
    assert result.val_accuracy == pytest.approx((logits.argmax(1) == data.y_val).float().mean().item())
    assert result.footprint.dense.macs == 2 * footprint(Candidate(arch="resnet20", width=0.25), 10,
                                                input_size=tuple(data.x_train.shape[1:])).dense.macs


def test_a_study_with_flip_averaging_exports_it_and_verifies(tmp_path):
    from search.cli import main
    from search.study.runner import run_study

    (tmp_path / "space.yaml").write_text("params:\n  arch: {value: resnet20}\n  width: {value: 0.25}\n"
                                         "  qw: {choices: [8]}\n  qa: {choices: [8]}\n  ps: {value: 0.3}\n")
    (tmp_path / "s.yaml").write_text(f"""\
name: tta
space: space.yaml
storage: sqlite:///{tmp_path / 's.db'}
artifacts: {tmp_path / 'artifacts'}
data: {{name: digits, subset: 300, val_fraction: 0.2, seed: 0}}
sampler: {{name: random, seed: 0}}
train: {{epochs: 2, batch_size: 32, tta_flip: true}}
stopper: {{name: none, skip_dominated: false}}
n_trials: 1
""")
    study = run_study(load_study_file(tmp_path / "s.yaml"))
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    rc = main(["export", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--study", "tta", "--trial", "0",
               "--out", str(tmp_path / "model"), "--verify"])
    assert rc == 0
    card = json.loads((tmp_path / "model" / "model_card.json").read_text())
    assert card["test_time_flip"] is True
    assert "flip" in (tmp_path / "model" / "README.md").read_text()
    # the ONNX model averages an image and its mirror: a mirrored input gives the same logits
    onnx = next((tmp_path / "model").glob("*.onnx"))
    session = ort.InferenceSession(str(onnx))
    name = session.get_inputs()[0].name
    x = torch.randn(2, 3, 32, 32).numpy()
    a = session.run(None, {name: x})[0]
    b = session.run(None, {name: x[..., ::-1].copy()})[0]
    assert abs(a - b).max() < 1e-4 * max(1.0, abs(a).max())
