"""The trainer: SGD (nesterov) or AdamW with a one-cycle or cosine schedule, label smoothing, MixUp / CutMix,
optional distillation.

Data lives on the device as uint8 tensors; each step indexes a batch, augments it with tensor ops and normalizes it
(see :mod:`search.training.data`). The step runs under bf16 autocast with channels_last tensors on CUDA and on CPUs that
compute bf16 natively (``precision: auto``), in float32 elsewhere.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel

from search.candidate.recipe import Distillation, TrainConfig
from search.errors import ConfigError, MicronetError
from search.machine import native_bf16
from search.training.data import Splits, mix_batch, normalize, steps_per_epoch, train_batches


class NonFiniteLossError(MicronetError):
    """The training loss became NaN or infinite (learning rate too high, or a broken configuration)."""


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, temperature: float,
                      alpha: float, label_smoothing: float = 0.0) -> torch.Tensor:
    ce = F.cross_entropy(student, targets, label_smoothing=label_smoothing)
    if alpha == 0:
        return ce
    t = temperature
    kl = F.kl_div(F.log_softmax(student.float() / t, 1), F.log_softmax(teacher.float() / t, 1),
                  reduction="batchmean", log_target=True)
    return (1 - alpha) * ce + alpha * t * t * kl


@dataclass(frozen=True)
class EpochResult:
    epoch: int                 # 1-based, counted over the whole run
    epochs: int
    train_loss: float
    val_accuracy: float
    lr: float
    images_per_s: float


EpochCallback = Callable[[EpochResult], None]


def ema_with_warmup(decay: float):
    """The update of an exponential moving average whose decay warms up: ``min(decay, (1 + n) / (10 + n))`` at the
    n-th update (TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``). torch's ``get_ema_multi_avg_fn``
    keeps the decay fixed, and a fixed 0.99 over a search trial of about 100 steps leaves a third of the weight on
    the random start: measured on cifar10-dev, the average scored 0.15 against the raw weights' 0.39 after 6 epochs,
    and a compression step given that lagging average lost 20 points (BENCHMARKS.md, training recipes)."""

    @torch.no_grad()
    def update(averages: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        # a tensor, not a Python float: no device sync per step
        weight = 1 - torch.clamp((1 + n_averaged) / (10 + n_averaged), max=decay)
        if torch.is_floating_point(averages[0]):
            torch._foreach_lerp_(averages, current, weight.to(averages[0].dtype))
        else:  # integer buffers (BatchNorm's num_batches_tracked)
            for a, c in zip(averages, current, strict=True):
                a.copy_(a * (1 - weight) + c * weight)

    return update


def device_setup(device: torch.device, precision: str = "auto",
                 channels_last: bool | None = None) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype, or None for float32; channels_last) for training on ``device``.

    ``precision``: bf16 autocast when "bf16", or when "auto" and the device computes bf16 natively (see
    :func:`native_bf16`). ``channels_last`` None means: with bf16, where oneDNN's and cuDNN's fast bf16 kernels
    want NHWC. In float32 on a CPU it is left off: there it slowed DenseNet down (BENCHMARKS.md, 2026-11-24).
    """
    bf16 = precision == "bf16" or (precision == "auto" and native_bf16(device.type))
    return (torch.bfloat16 if bf16 else None), (bf16 if channels_last is None else channels_last)


class Trainer:
    """Trains one model over ``config.epochs`` epochs, possibly in several phases (e.g. dense, then compressed).

    The learning-rate schedule runs over the whole run; :meth:`reset_optimizer` starts a new optimizer (needed
    when compression replaced the parameters) without restarting the schedule.

    Over 120 lines because the loop, its optimizer and schedule, the weight average and the resumable state share one
    step counter and one random generator; split apart, each would need the others' state.
    """

    def __init__(self, model: nn.Module, data: Splits, config: TrainConfig, teacher: nn.Module | None = None,
                 distillation: Distillation | None = None, on_epoch: EpochCallback | None = None):
        self.model, self.data, self.config = model, data, config
        self.teacher, self.distillation = teacher, distillation
        if distillation is not None and teacher is None:
            raise ConfigError("distillation needs a teacher model")
        self.on_epoch = on_epoch
        self.device = data.device
        self.autocast_dtype, self.channels_last = device_setup(self.device, config.precision,
                                                               config.channels_last)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.steps_per_epoch = steps_per_epoch(len(data.y_train), config.batch_size)
        self.total_steps = config.epochs * self.steps_per_epoch
        self.step = 0
        self.epoch = 0
        self.train_seconds = 0.0
        self.images_seen = 0
        self.history: list[EpochResult] = []
        self.optimizer = None
        self.reset_optimizer()
        if teacher is not None:
            teacher.eval().requires_grad_(False)

    def reset_optimizer(self) -> None:
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on BN and biases
        cfg = self.config
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        lr = cfg.lr_at(self.step / self.total_steps)
        if cfg.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(groups, lr=lr)
        else:
            self.optimizer = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum,
                                             nesterov=cfg.nesterov and cfg.momentum > 0)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # compiled again after compression replaced the modules; the first steps of each phase pay the compile
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        # torch's AveragedModel keeps the average (BatchNorm statistics too); a new phase starts a new average
        self.ema = None
        if cfg.ema:
            from search.compress.pruning import copyable

            with copyable(self.model):
                self.ema = AveragedModel(self.model, multi_avg_fn=ema_with_warmup(cfg.ema), use_buffers=True)

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated: the moving average when ``ema`` is on."""
        return self.ema.module if self.ema is not None else self.model

    def adopt_average(self) -> None:
        """Put the moving average into the trained model (before compression, and at the end of training)."""
        if self.ema is not None:
            self.model.load_state_dict(self.ema.module.state_dict())

    def _inputs(self, xb: torch.Tensor) -> torch.Tensor:
        return normalize(xb, self.data.mean, self.data.std, channels_last=self.channels_last)

    def run(self, epochs: int | None = None) -> list[EpochResult]:
        """Train ``epochs`` more epochs (default: all that are left)."""
        left = self.config.epochs - self.epoch
        epochs = left if epochs is None else min(epochs, left)
        reports = []
        for _ in range(epochs):
            reports.append(self._epoch())
        return reports

    def _epoch(self) -> EpochResult:
        cfg, model = self.config, self.model
        model.train()
        loss_sum = torch.zeros((), device=self.device)
        n_seen = 0
        start = time.perf_counter()
        for xb, yb in train_batches(self.data.x_train, self.data.y_train, cfg.batch_size, self.generator,
                                    cfg.augment, flips=self._flips()):
            progress = self.step / self.total_steps
            lr = cfg.lr_at(progress)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            x = self._inputs(xb)
            target = yb
            if cfg.mixup or cfg.cutmix:
                x, target = mix_batch(x, yb, self.data.num_classes, cfg.mixup, cfg.cutmix, self.generator)
            with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                                enabled=self.autocast_dtype is not None):
                logits = self.forward(x)
                if self.distillation is not None:
                    with torch.no_grad():
                        teacher_logits = self.teacher(x)
                    kd = self.distillation
                    loss = distillation_loss(logits, teacher_logits, target, kd.temperature_at(progress), kd.alpha,
                                             cfg.label_smoothing)
                else:
                    loss = F.cross_entropy(logits, target, label_smoothing=cfg.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            loss_sum += loss.detach() * len(yb)  # summed on the device: no sync per step
            n_seen += len(yb)
            self.step += 1
        train_loss = (loss_sum / max(n_seen, 1)).item()
        seconds = time.perf_counter() - start
        self.train_seconds += seconds
        self.images_seen += n_seen
        self.epoch += 1
        if not math.isfinite(train_loss):
            raise NonFiniteLossError(f"training loss became {train_loss} in epoch {self.epoch}; lower the learning "
                                     f"rate (now {cfg.lr:g}) or check the configuration")
        result = EpochResult(self.epoch, cfg.epochs, train_loss, self.evaluate(self.data.x_val, self.data.y_val),
                             cfg.lr_at(self.step / self.total_steps), n_seen / seconds if seconds else 0.0)
        self.history.append(result)
        if self.on_epoch is not None:
            self.on_epoch(result)
        return result

    def _flips(self) -> torch.Tensor | None:
        """``flip: alternate``: this epoch's flips, one per training image: a seeded random half in even epochs,
        the other half in odd ones. Drawn from a generator of their own (the seed and nothing else), so they are
        the same after a resume and do not shift the other random draws."""
        if self.config.augment.flip != "alternate":
            return None
        if getattr(self, "_flip_base", None) is None:
            g = torch.Generator(device=self.device).manual_seed(self.config.seed + 1)
            self._flip_base = torch.rand(len(self.data.y_train), device=self.device, generator=g) < 0.5
        return self._flip_base ^ bool(self.epoch % 2)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return evaluate(self.eval_model, x, y, self.data.mean, self.data.std, self.config.eval_batch_size)

    def state_dict(self) -> dict:
        """Everything needed to continue this run bit for bit: weights, optimizer, schedule position, RNG."""
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step,
            "epoch": self.epoch, "train_seconds": self.train_seconds, "images_seen": self.images_seen,
            "history": [asdict(r) for r in self.history], "generator": self.generator.get_state(),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`; the model must already have the saved structure."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.train_seconds, self.images_seen = state["train_seconds"], state["images_seen"]
        self.history = [EpochResult(**r) for r in state["history"]]
        self.generator.set_state(state["generator"].cpu())
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])

    @property
    def images_per_s(self) -> float:
        return self.images_seen / self.train_seconds if self.train_seconds else 0.0


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, mean, std, batch_size: int = 1024) -> torch.Tensor:
    """Logits (float32) of a uint8 image tensor, in large batches, in eval mode.

    bf16 and channels_last on CUDA, float32 elsewhere: on a CPU the reported accuracies (the search objective, the
    model card) are those of the float32 model, whatever precision trained it.
    """
    was_training = model.training
    model.eval()
    autocast_dtype, channels_last = device_setup(x.device, "bf16" if x.device.type == "cuda" else "fp32")
    out = []
    for start in range(0, len(x), batch_size):
        xb = normalize(x[start:start + batch_size], mean, std, channels_last=channels_last)
        with torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            out.append(model(xb).float())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean, std, batch_size: int = 1024) -> float:
    """Top-1 accuracy in [0, 1]."""
    if len(y) == 0:
        return float("nan")
    logits = predict(model, x, mean, std, batch_size)
    return (logits.argmax(1) == y).float().mean().item()


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
