"""Training options of the design documents: MixUp, CutMix, colour jitter, AdamW. Each does what it says."""

import pytest
import torch
import torch.nn.functional as F

from search.candidate.recipe import TrainConfig
from search.errors import ConfigError
from search.models import build_model
from search.study.study_file import StudyConfig, candidate_from
from search.training.data import Augmentation, DataConfig, DataError, load_data, mix_batch
from search.training.trainer import Trainer
from search.trial.objectives import Objectives


def batch(n=8, h=16, w=16):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, h, w, generator=g), torch.arange(n) % 4


def test_mixup_is_the_stated_convex_combination():
    x, y = batch()
    mixed, target = mix_batch(x, y, 4, mixup=0.4, cutmix=0.0, generator=torch.Generator().manual_seed(3))
    # recover lam and the partner of each image from the targets, then check the images follow the same lam
    onehot = F.one_hot(y, 4).float()
    assert torch.allclose(target.sum(1), torch.ones(8))
    lam = float(target[0, y[0]]) if float(target[0, y[0]]) >= 0.5 else 1 - float(target[0, y[0]])
    for i in range(8):
        partners = [j for j in range(8) if torch.allclose(mixed[i], lam * x[i] + (1 - lam) * x[j], atol=1e-5)]
        assert partners, i
        j = partners[0]
        assert torch.allclose(target[i], lam * onehot[i] + (1 - lam) * onehot[j], atol=1e-6)
    assert not torch.allclose(mixed, x)  # something was mixed


def test_cutmix_pastes_one_box_from_the_partner_and_labels_by_area():
    x, _ = batch()
    y = torch.arange(8)  # every image its own class: the target names the partner
    for seed in range(6):
        mixed, target = mix_batch(x, y, 8, mixup=0.0, cutmix=1.0, generator=torch.Generator().manual_seed(seed))
        changed = (mixed != x).any(1)  # B×H×W: the pasted pixels (random images differ everywhere)
        box = changed[0]
        rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
        if len(rows):
            # one rectangle, the same for the whole batch
            inside = box[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            assert inside.all() and box.sum() == len(rows) * len(cols)
        assert all(torch.equal(changed[i], box) for i in range(8) if target[i, i] < 1)
        area = float(box.float().mean())
        for i in range(8):
            if target[i, i] == 1:
                continue  # paired with itself: nothing changes
            j = next(k for k in range(8) if k != i and target[i, k] > 0)  # the partner
            assert float(target[i, i]) == pytest.approx(1 - area) and float(target[i, j]) == pytest.approx(area)
            assert torch.equal(mixed[i][:, box], x[j][:, box]) and torch.equal(mixed[i][:, ~box], x[i][:, ~box])


def test_cutmix_lam_is_the_uncut_share():
    x = torch.arange(2 * 3 * 10 * 10, dtype=torch.float32).view(2, 3, 10, 10)
    y = torch.tensor([0, 1])
    for seed in range(10):
        mixed, target = mix_batch(x, y, 2, mixup=0.0, cutmix=1.0, generator=torch.Generator().manual_seed(seed))
        cut = (mixed[0] != x[0]).any(0).float().mean()  # images differ everywhere: every pasted pixel shows
        assert float(target[0, 0]) == pytest.approx(1 - float(cut))


def test_jitter_keeps_pixels_in_range_and_off_is_identity():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=g)
    plain = Augmentation(crop_padding=0, flip=False)
    assert torch.equal(plain(x, torch.Generator().manual_seed(1)), x)
    out = Augmentation(crop_padding=0, flip=False, brightness=0.4, contrast=0.4)(x, torch.Generator().manual_seed(1))
    assert out.dtype == torch.uint8 and out.shape == x.shape and not torch.equal(out, x)
    bright = Augmentation(crop_padding=0, flip=False, brightness=0.4)(x, torch.Generator().manual_seed(2))
    ratio = bright.float().mean((1, 2, 3)) / x.float().mean((1, 2, 3))
    assert (ratio > 0.55).all() and (ratio < 1.45).all()  # a factor in [0.6, 1.4], less where 255 clips
    with pytest.raises(DataError, match="brightness must be a number in"):
        Augmentation(brightness=1.5)


def test_adamw_and_mixing_train():
    digits = load_data(DataConfig(name="digits", subset=600))
    for cfg in (TrainConfig(epochs=4, batch_size=32, optimizer="adamw", lr=0.01),
                TrainConfig(epochs=4, batch_size=32, lr=0.1, mixup=0.2, cutmix=1.0)):
        torch.manual_seed(0)
        trainer = Trainer(build_model("resnet20", width=0.25), digits, cfg)
        reports = trainer.run()
        assert isinstance(trainer.optimizer, torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.SGD)
        # it learns: chance is 0.1 (measured: 0.47 with AdamW, 0.30 mixed, 0.55 plain SGD)
        assert reports[-1].val_accuracy > 0.2 and reports[-1].train_loss < reports[0].train_loss - 0.3, reports


@pytest.mark.parametrize("kwargs, fragment", [
    ({"optimizer": "adam"}, "optimizer must be one of sgd, adamw"),
    ({"mixup": -1}, "mixup must be a number >= 0"),
    ({"cutmix": "yes"}, "cutmix must be a number >= 0"),
])
def test_options_are_checked(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        TrainConfig(**kwargs)


def test_options_are_search_parameters():
    c = candidate_from({"arch": "resnet20", "optimizer": "adamw", "mixup": 0.2, "cutmix": 1.0},
                       StudyConfig(name="s"))
    assert (c.train.optimizer, c.train.mixup, c.train.cutmix) == ("adamw", 0.2, 1.0)


def test_alternating_flips_show_both_views_of_every_image_in_two_epochs():
    digits = load_data(DataConfig(name="digits", subset=200))
    n = len(digits.y_train)  # one batch per epoch: every image is seen
    cfg = TrainConfig(epochs=3, batch_size=n, augment=Augmentation(crop_padding=0, flip="alternate"))
    trainer = Trainer(build_model("resnet20", width=0.25), digits, cfg)
    first = trainer._flips()
    assert 0.35 < first.float().mean() < 0.65  # a random half of the images
    handed = []
    original = Augmentation.__call__

    def spy(self, x, generator, flips=None):
        handed.append(flips.clone())
        return original(self, x, generator, flips)

    Augmentation.__call__ = spy
    try:
        trainer.run(1)
        assert torch.equal(trainer._flips(), ~first)  # epoch 2 flips exactly the images epoch 1 did not
        epoch_one = torch.cat(handed)
        handed.clear()
        trainer.run(1)
        assert torch.equal(trainer._flips(), first)   # and epoch 3 like epoch 1
        epoch_two = torch.cat(handed)
    finally:
        Augmentation.__call__ = original
    # what reached the augmentation is those masks
    assert int(epoch_one.sum()) == int(first.sum()) and int(epoch_two.sum()) == int((~first).sum())
    # the flipped images are the mirror images where the mask says so
    x = digits.x_train[:4]
    mask = torch.tensor([True, False, True, False])
    out = Augmentation(crop_padding=0, flip="alternate")(x, torch.Generator().manual_seed(0), mask)
    assert torch.equal(out[mask], x[mask].flip(3)) and torch.equal(out[~mask], x[~mask])
    with pytest.raises(DataError, match="flip must be true, false or alternate"):
        Augmentation(flip="sometimes")


def test_ema_is_the_closed_form_average_and_is_what_is_evaluated_and_kept():
    from torch import nn

    from search.candidate.candidate import Candidate
    from search.compress.compression import Compression
    from search.training.run import run_candidate

    # the closed form on a toy model: the first update copies W_1, then W_ema = d_n W_ema + (1 - d_n) W_(n+1) with
    # the warmed-up decay d_n = min(d, (1+n)/(10+n)); d = 0.5 is reached at n = 8, so both regimes are checked
    toy = load_data(DataConfig(name="digits", subset=300))
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    d = 0.5
    trainer = Trainer(model, toy, TrainConfig(epochs=1, batch_size=20, ema=d, optimizer="sgd", lr=0.01))
    snapshots = [model[1].weight.detach().clone()]
    original_step = trainer.optimizer.step

    def step(*a, **k):
        original_step(*a, **k)
        snapshots.append(model[1].weight.detach().clone())

    trainer.optimizer.step = step
    trainer.run()
    k = len(snapshots) - 1
    decays = [min(d, (1 + n) / (10 + n)) for n in range(1, k)]
    closed = snapshots[1].clone()
    for n, decay in enumerate(decays, start=1):
        closed = decay * closed + (1 - decay) * snapshots[n + 1]
    assert k >= 10 and decays[0] < 0.2 and decays[-1] == d
    assert torch.allclose(trainer.ema.module[1].weight, closed, atol=1e-6)
    assert not torch.allclose(model[1].weight, closed, atol=1e-4)  # the raw weights are elsewhere
    trainer.adopt_average()
    assert torch.equal(model[1].weight, trainer.ema.module[1].weight)

    # a compressed candidate: the reported accuracies are the average's, and the model kept is the average
    digits = load_data(DataConfig(name="digits", subset=120))
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.1, ema=0.9)
    cand = Candidate(arch="resnet20", width=0.25, compression=Compression(ps=0.3, pu=0.2, qw=8, qa=8), train=cfg)
    torch.manual_seed(0)
    result = run_candidate(cand, digits)
    from search.training.trainer import evaluate

    kept = evaluate(result.model, digits.x_val, digits.y_val, digits.mean, digits.std)
    assert kept == pytest.approx(result.history[-1].val_accuracy)
    assert result.val_accuracy == pytest.approx(kept)
    with pytest.raises(ConfigError, match="ema must be a decay in"):
        TrainConfig(ema=1.0)


def test_a_study_trained_with_ema_exports_the_averaged_weights(tmp_path, monkeypatch):
    """End to end: the trial reports the average's accuracy, and the exported TorchScript model is that average. A
    strong fixed decay over few steps keeps the average near its start, far from the raw weights, so the raw weights
    exported by mistake would show: the same candidate trained without EMA is measured beside it. (The decay's
    warm-up, tested above, would let the average catch up with the raw weights; it is replaced by torch's fixed
    decay here.)"""
    import optuna
    from torch.optim.swa_utils import get_ema_multi_avg_fn

    import search.training.trainer

    monkeypatch.setattr(search.training.trainer, "ema_with_warmup", get_ema_multi_avg_fn)

    from search.cli import main
    from search.study.runner import run_study
    from search.study.study_file import load_study_file
    from search.training.trainer import evaluate

    accuracies = {}
    for ema in (0.0, 0.99):
        name = f"ema{int(100 * ema)}"
        (tmp_path / "space.yaml").write_text("params:\n  arch: {value: resnet20}\n  width: {value: 0.25}\n"
                                             "  ps: {value: 0.3}\n  qw: {value: 8}\n")
        (tmp_path / f"{name}.yaml").write_text(f"""\
name: {name}
space: space.yaml
storage: sqlite:///{tmp_path / 's.db'}
artifacts: {tmp_path / 'artifacts'}
data: {{name: digits, subset: 400, val_fraction: 0.25, seed: 0}}
sampler: {{name: random, seed: 0}}
train: {{epochs: 5, batch_size: 32, lr: 0.1, ema: {ema}, precision: fp32}}
stopper: {{name: none, skip_dominated: false}}
n_trials: 1
""")
        study = run_study(load_study_file(tmp_path / f"{name}.yaml"))
        (trial,) = study.trials
        assert trial.state == optuna.trial.TrialState.COMPLETE
        accuracies[ema] = Objectives.parse(None).accuracy(trial)
    out = tmp_path / "model"
    assert main(["export", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--study", "ema99", "--trial", "0",
                 "--format", "torchscript", "--out", str(out), "--verify"]) == 0
    exported = torch.jit.load(str(next(out.glob("*.pt"))))
    data = load_data(DataConfig(name="digits", subset=400, val_fraction=0.25, seed=0))
    assert abs(accuracies[0.99] - accuracies[0.0]) > 0.05, accuracies  # the average is not the raw weights
    assert evaluate(exported, data.x_val, data.y_val, data.mean, data.std) == pytest.approx(accuracies[0.99], abs=0.02)
