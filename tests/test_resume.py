"""A candidate run resumed from a per-epoch state ends exactly where the uninterrupted run ends."""

import io

import pytest
import torch

from search.candidate.candidate import Candidate
from search.candidate.recipe import Distillation, TrainConfig
from search.compress.compression import Compression
from search.models import build_model
from search.training.data import DataConfig, load_data
from search.training.run import run_candidate


@pytest.fixture(scope="module")
def synthetic():
    return load_data(DataConfig(name="synthetic", synthetic_size=192))


def roundtrip(state: dict) -> dict:
    """Through torch.save / torch.load, as the artifact store does."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location="cpu", weights_only=True)


# dense phase, at the compression boundary, compressed phase; and with a moving average of the weights
@pytest.mark.parametrize("resume_at, ema", [(1, 0.0), (2, 0.0), (3, 0.0), (2, 0.9), (3, 0.9)])
def test_resume_matches_an_uninterrupted_run(synthetic, resume_at, ema):
    cand = Candidate(arch="resnet20", width=0.25, compression=Compression(ps=0.3, pu=0.2, qw=8, qa=8),
                     compress_at=0.5, train=TrainConfig(epochs=4, batch_size=32, lr=0.05, ema=ema))
    states = {}
    full = run_candidate(cand, synthetic, on_state=lambda epoch, get: states.__setitem__(epoch, roundtrip(get())))
    assert sorted(states) == [1, 2, 3, 4]
    assert states[1]["phase"] == "dense" and states[3]["phase"] == "compressed"

    seen = []
    resumed = run_candidate(cand, synthetic, resume=states[resume_at], on_epoch=lambda r: seen.append(r.epoch))
    assert seen == list(range(resume_at + 1, 5))  # only the epochs that were left
    assert resumed.epochs_run == 4
    assert [r.val_accuracy for r in resumed.history] == [r.val_accuracy for r in full.history]
    assert resumed.val_accuracy == full.val_accuracy
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_with_distillation(synthetic):
    torch.manual_seed(0)
    teacher = build_model("resnet20", num_classes=synthetic.num_classes, width=0.25).eval()
    cand = Candidate(arch="resnet20", width=0.25, distillation=Distillation(temperature=4.0, alpha=0.5,
                                                                            final_temperature=2.0),
                     train=TrainConfig(epochs=3, batch_size=32))
    states = {}
    full = run_candidate(cand, synthetic, teacher, on_state=lambda e, get: states.__setitem__(e, roundtrip(get())))
    resumed = run_candidate(cand, synthetic, teacher, resume=states[1])
    assert [r.train_loss for r in resumed.history] == [r.train_loss for r in full.history]
    assert resumed.val_accuracy == full.val_accuracy
