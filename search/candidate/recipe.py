"""A candidate's training recipe: optimizer, schedule, augmentation, precision, and the distillation loss's
weights. Frozen dataclasses read from the study file's ``train:`` and from the sampled ``kd_*`` parameters;
:mod:`search.training.trainer` runs them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from search.config import number
from search.errors import ConfigError
from search.training.data import Augmentation

SCHEDULES = ("onecycle", "cosine")
MAX_EPOCHS = 10_000  # far past any schedule here (seed 000 trained 200); 10^9 is a typo that would run for years
OPTIMIZERS = ("sgd", "adamw")
PRECISIONS = ("auto", "bf16", "fp32")  # auto: bf16 where the device computes it natively (see native_bf16)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.05                 # peak learning rate
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    schedule: str = "onecycle"       # onecycle: linear warm-up to lr then linear decay to 0; cosine: cosine to 0
    warmup_fraction: float = 0.15    # onecycle only
    eval_batch_size: int = 1024
    augment: Augmentation = field(default_factory=Augmentation)
    seed: int = 0
    channels_last: bool | None = None  # None: on when training in bf16
    compile: bool = False              # torch.compile the training forward (pays off for long runs; see BENCHMARKS)
    precision: str = "auto"            # training autocast: auto (bf16 where native), bf16, fp32
    optimizer: str = "sgd"             # sgd (momentum, nesterov) or adamw (decoupled weight decay; seed 003 used Adam)
    mixup: float = 0.0                 # MixUp's Beta(α, α); 0 = off (seed 003: +1.7 points on DenseNets)
    cutmix: float = 0.0                # CutMix's Beta(α, α); 0 = off. With both on, each batch uses one of the two
    ema: float = 0.0                   # decay of an exponential moving average of the weights per step; 0 = off.
    #                                    Warms up as min(ema, (1+n)/(10+n)) at update n (see ema_with_warmup).
    #                                    The average is what is evaluated, compressed and kept at the end.
    tta_flip: bool = False             # evaluate (and export) the mean of the logits of each image and its mirror:
    #                                    two passes per image, so the score counts twice the MACs

    def __post_init__(self):
        _check(isinstance(self.epochs, int) and not isinstance(self.epochs, bool) and 1 <= self.epochs <= MAX_EPOCHS,
               f"epochs must be an integer from 1 to {MAX_EPOCHS}, got {self.epochs!r}")
        for key in ("batch_size", "eval_batch_size"):
            value = getattr(self, key)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                   f"{key} must be an integer >= 1, got {value!r}")
        _check(number(self.lr) and self.lr > 0, f"lr must be a number > 0, got {self.lr!r}")
        _check(number(self.momentum) and 0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum!r}")
        _check(number(self.weight_decay) and self.weight_decay >= 0,
               f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        _check(number(self.label_smoothing) and 0 <= self.label_smoothing < 1,
               f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        _check(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        _check(self.channels_last in (None, True, False), f"channels_last must be true, false or null, got "
               f"{self.channels_last!r}")
        _check(isinstance(self.compile, bool), f"compile must be true or false, got {self.compile!r}")
        _check(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got "
               f"{self.precision!r}")
        _check(number(self.warmup_fraction) and 0 <= self.warmup_fraction < 1,
               f"warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        _check(self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got "
               f"{self.optimizer!r}")
        _check(isinstance(self.tta_flip, bool), f"tta_flip must be true or false, got {self.tta_flip!r}")
        _check(number(self.ema) and 0 <= self.ema < 1, f"ema must be a decay in [0, 1) (0 = off), got {self.ema!r}")
        for key in ("mixup", "cutmix"):
            value = getattr(self, key)
            _check(number(value) and value >= 0, f"{key} must be a number >= 0 (the Beta distribution's alpha; "
                   f"0 = off), got {value!r}")

    def lr_at(self, progress: float) -> float:
        """Learning rate at ``progress`` in [0, 1] of the whole run."""
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1 + math.cos(math.pi * progress))
        w = self.warmup_fraction
        if progress < w:
            return self.lr * progress / w
        return self.lr * max(0.0, 1 - (progress - w) / (1 - w))


@dataclass(frozen=True)
class Distillation:
    """Loss ``(1-α)·CE + α·T²·KL(p_teacher ‖ p_student)`` at temperature T.

    With ``final_temperature`` set, T moves linearly from ``temperature`` to it over training (seed 004: 10 → 5).
    """

    temperature: float = 4.0
    alpha: float = 0.5
    final_temperature: float | None = None

    def __post_init__(self):
        _check(number(self.temperature) and self.temperature > 0,
               f"kd temperature must be a number > 0, got {self.temperature!r}")
        _check(number(self.alpha) and 0 <= self.alpha <= 1, f"kd alpha must be in [0, 1], got {self.alpha!r}")
        _check(self.final_temperature is None or (number(self.final_temperature) and self.final_temperature > 0),
               f"kd final temperature must be a number > 0, got {self.final_temperature!r}")

    def temperature_at(self, progress: float) -> float:
        if self.final_temperature is None:
            return self.temperature
        return self.temperature + (self.final_temperature - self.temperature) * progress


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
