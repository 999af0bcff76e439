import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import search.machine as machine
import search.training.trainer as train_module
from search.candidate.recipe import Distillation, TrainConfig
from search.errors import ConfigError
from search.models import build_model
from search.training.data import Augmentation, DataConfig, load_data
from search.training.trainer import NonFiniteLossError, Trainer, distillation_loss


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(name="digits"))


@pytest.fixture(scope="module")
def synthetic():
    return load_data(DataConfig(name="synthetic", synthetic_size=256))


def test_resnet20_learns_digits_in_a_few_epochs(digits):
    torch.manual_seed(0)
    reports = []
    trainer = Trainer(build_model("resnet20"), digits, TrainConfig(epochs=4, lr=0.1, batch_size=64),
                      on_epoch=reports.append)
    trainer.run()
    assert [r.epoch for r in reports] == [1, 2, 3, 4]
    assert reports[-1].val_accuracy > 0.6  # chance is 0.1
    assert reports[-1].train_loss < reports[0].train_loss
    assert trainer.images_per_s > 0


def test_onecycle_and_cosine_schedules():
    one = TrainConfig(lr=0.2, schedule="onecycle", warmup_fraction=0.25)
    assert one.lr_at(0) == 0 and one.lr_at(0.25) == pytest.approx(0.2) and one.lr_at(1) == 0
    assert one.lr_at(0.1) < one.lr_at(0.2) and one.lr_at(0.5) > one.lr_at(0.9)
    cos = TrainConfig(lr=0.2, schedule="cosine")
    assert cos.lr_at(0) == pytest.approx(0.2) and cos.lr_at(0.5) == pytest.approx(0.1) and cos.lr_at(1) < 1e-12


def test_training_is_seeded_by_the_config_alone(synthetic):
    # Every run starts from the same initial weights; the global RNG is left in a different state before each
    # run, so only TrainConfig.seed can make two runs agree (batch order, crops, flips).
    torch.manual_seed(0)
    initial = build_model("resnet20", width=0.25).state_dict()

    def run(seed, global_seed):
        model = build_model("resnet20", width=0.25)
        model.load_state_dict(initial)
        torch.manual_seed(global_seed)
        t = Trainer(model, synthetic, TrainConfig(epochs=1, batch_size=32, seed=seed))
        t.run()
        return t.history[-1].train_loss, [p.detach().clone() for p in model.parameters()]

    loss, weights = run(seed=3, global_seed=1)
    same_loss, same_weights = run(seed=3, global_seed=2)
    other_loss, other_weights = run(seed=4, global_seed=1)
    assert same_loss == loss and all(torch.equal(a, b) for a, b in zip(weights, same_weights, strict=True))
    assert other_loss != loss and not all(torch.equal(a, b) for a, b in zip(weights, other_weights, strict=True))


def test_distillation_loss_formula():
    torch.manual_seed(0)
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    T, a = 4.0, 0.3
    p_t = F.softmax(t / T, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / T, 1))).sum(1).mean()
    expected = (1 - a) * F.cross_entropy(s, y) + a * T * T * kl
    assert distillation_loss(s, t, y, T, a).item() == pytest.approx(expected.item(), rel=1e-5)
    assert distillation_loss(s, t, y, T, 0.0).item() == pytest.approx(F.cross_entropy(s, y).item())
    assert distillation_loss(s, s, y, T, 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_distillation_changes_the_loss_and_the_temperature_moves(synthetic, monkeypatch):
    seen = []
    real = train_module.distillation_loss

    def spy(student, teacher, targets, temperature, alpha, label_smoothing=0.0):
        seen.append(temperature)
        return real(student, teacher, targets, temperature, alpha, label_smoothing)

    monkeypatch.setattr(train_module, "distillation_loss", spy)
    teacher = build_model("resnet20", width=0.25)
    cfg = TrainConfig(epochs=2, batch_size=32, augment=Augmentation(crop_padding=0, flip=False))

    def loss(kd):
        torch.manual_seed(0)
        t = Trainer(build_model("resnet20", width=0.25), synthetic, cfg, teacher=teacher if kd else None,
                    distillation=kd)
        t.run()
        return t.history[0].train_loss

    plain = loss(None)
    distilled = loss(Distillation(temperature=10, alpha=0.9, final_temperature=5))
    assert distilled != pytest.approx(plain)
    assert seen[0] == 10 and 5 <= seen[-1] < 5.5 and seen == sorted(seen, reverse=True)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_temperature_schedule():
    kd = Distillation(temperature=10, final_temperature=5)
    assert kd.temperature_at(0) == 10 and kd.temperature_at(0.5) == 7.5 and kd.temperature_at(1) == 5
    assert Distillation(temperature=4).temperature_at(0.7) == 4


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)) * math.inf


def test_non_finite_loss_stops_with_a_typed_error(synthetic):
    trainer = Trainer(Broken(), synthetic, TrainConfig(epochs=3, batch_size=64))
    with pytest.raises(NonFiniteLossError, match="epoch 1"):
        trainer.run()
    assert trainer.epoch == 1


@pytest.mark.parametrize("kwargs,fragment", [
    ({"epochs": 0}, "epochs must be an integer from 1 to 10000"), ({"lr": -1}, "lr must be"),
    ({"schedule": "step"}, "schedule must be one of onecycle, cosine"), ({"label_smoothing": 1.0}, "label_smoothing"),
])
def test_train_config_validation(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        TrainConfig(**kwargs)


def test_distillation_config_validation():
    with pytest.raises(ConfigError, match="alpha"):
        Distillation(alpha=1.5)
    with pytest.raises(ConfigError, match="temperature"):
        Distillation(temperature=0)


def test_precision_config_validation():
    with pytest.raises(ConfigError, match="precision must be one of auto, bf16, fp32"):
        TrainConfig(precision="fp16")


@pytest.mark.parametrize("flags,expected", [({"avx512f", "avx512_bf16"}, True), ({"amx_bf16"}, True),
                                            ({"avx512f", "avx2"}, False), (set(), False)])
def test_auto_precision_follows_the_cpu_bf16_instructions(monkeypatch, flags, expected):
    monkeypatch.setattr(machine, "cpu_flags", lambda: frozenset(flags))
    cpu = torch.device("cpu")
    assert machine.native_bf16("cpu") is expected
    assert train_module.device_setup(cpu) == ((torch.bfloat16, True) if expected else (None, False))
    # explicit choices win over the hardware; channels_last follows bf16 unless set
    assert train_module.device_setup(cpu, "fp32") == (None, False)
    assert train_module.device_setup(cpu, "bf16") == (torch.bfloat16, True)
    assert train_module.device_setup(cpu, "bf16", channels_last=False) == (torch.bfloat16, False)
    assert train_module.device_setup(cpu, "fp32", channels_last=True) == (None, True)


def _conv_output_dtypes(model, run):
    """{training mode: the dtypes the convs computed in} while ``run()`` runs."""
    seen = {}
    hooks = [m.register_forward_hook(lambda m, i, o: seen.setdefault(m.training, set()).add(o.dtype))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    run()
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_training_precision_is_what_the_config_says_and_evaluation_stays_float32(digits, precision, dtype):
    from search.compress import prune_structured, quantize_model

    torch.manual_seed(0)
    model = quantize_model(prune_structured(build_model("resnet20", width=0.5), 0.3), 8, 8)
    # 4 epochs: after 3 the accuracy sits near the bar (0.59-0.66 with bf16 emulated on an AVX2-only CPU, run to
    # run); after 4 it is 0.83-0.86 on that machine
    trainer = Trainer(model, digits, TrainConfig(epochs=4, lr=0.1, batch_size=64, precision=precision))
    # training steps in the config's precision; the per-epoch validation in float32
    assert _conv_output_dtypes(model, trainer.run) == {True: {dtype}, False: {torch.float32}}
    assert trainer.history[-1].val_accuracy > 0.6  # learns under QAT in either precision (chance is 0.1)
    weight = next(m.weight for m in model.modules() if isinstance(m, nn.Conv2d))
    assert weight.dtype == torch.float32  # autocast: the master weights stay float32
    assert weight.is_contiguous(memory_format=torch.channels_last) is (precision == "bf16")
    seen = _conv_output_dtypes(model, lambda: trainer.evaluate(digits.x_test, digits.y_test))
    assert seen == {False: {torch.float32}}  # the reported accuracy is the float32 model's on a CPU
