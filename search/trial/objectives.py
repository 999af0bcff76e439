"""The study's objectives, declared once, by name (``objectives:`` in the study file; default accuracy and score).

Each objective is one small object: its name in the study file, the metric name Optuna and the dashboard show, its
direction, when its value is known, and how it is shown. Everything that reads a trial's values (the objective, the
stoppers, front, hypervolume, knee, export, report, the benchmarks) goes through :class:`Objectives`; nothing
else indexes ``values[k]``.

When a value is known decides who may use it:

- ``training``: the validation accuracy, the result of training (exactly one per study);
- ``before``: computed from the candidate before it trains (the seeds' score, the MicroNet 2019 score), so the early
  stoppers and the skip of dominated candidates can use it;
- ``measured``: timed on hardware after training (latency); recorded with the target and the hardware it was
  measured on, and the front refuses to mix values from different hardware unless told to.

Adding an objective is one subclass of :class:`Metric` and a :func:`register` call.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from search.errors import ConfigError

DEFAULT = ("accuracy", "score")


@dataclass(frozen=True)
class Subject:
    """What an objective's value is computed from: the candidate and its counts (before training), and after
    training the trained model (CPU copy, eval mode) and the data's input shape."""

    candidate: object        # search.candidate.candidate.Candidate
    footprint: object        # search.candidate.candidate.Footprint
    num_classes: int
    input_shape: tuple[int, ...]
    model: object = None     # the trained torch model ("measured" objectives)
    device: object = None    # the worker's torch device


@dataclass(frozen=True)
class Metric:
    """One objective. Subclasses set the class attributes and, unless ``when`` is "training", :meth:`compute`."""

    name: ClassVar[str]
    metric_name: ClassVar[str]      # Optuna's metric name: dashboard axis, JSON key, front column
    direction: ClassVar[str]        # "maximize" or "minimize"
    when: ClassVar[str]             # "training", "before" or "measured"
    label: ClassVar[str]            # axis title
    fmt: ClassVar[str] = ".4g"
    log_axis: ClassVar[bool] = False

    def compute(self, subject: Subject) -> float:
        raise NotImplementedError(f"objective {self.name!r} is the training result, not computed")

    def record(self, subject: Subject) -> tuple[float, dict]:
        """The value and what to record beside it (a measured value's target and hardware)."""
        return self.compute(subject), {}

    def options(self) -> dict:
        """The options the study file gave (to store with the study, so readers rebuild the same objective)."""
        return {}

    def show(self, value: float | None) -> str:
        return "-" if value is None else format(value, self.fmt)


@dataclass(frozen=True)
class Accuracy(Metric):
    name: ClassVar[str] = "accuracy"
    metric_name: ClassVar[str] = "val_accuracy"
    direction: ClassVar[str] = "maximize"
    when: ClassVar[str] = "training"
    label: ClassVar[str] = "validation accuracy"
    fmt: ClassVar[str] = ".2%"


@dataclass(frozen=True)
class Score(Metric):
    """The seeds' MicroNet-style score (:mod:`search.candidate.score`), known before training."""

    name: ClassVar[str] = "score"
    metric_name: ClassVar[str] = "score"
    direction: ClassVar[str] = "minimize"
    when: ClassVar[str] = "before"
    label: ClassVar[str] = "score (lower is better)"
    log_axis: ClassVar[bool] = True

    def compute(self, subject: Subject) -> float:
        return float(subject.footprint.score.total)


@dataclass(frozen=True)
class MicroNet2019(Metric):
    """The official MicroNet Challenge 2019 score (:mod:`search.candidate.micronet2019`): its counts need the pruning
    only,
    which zeroes exactly the sampled fractions, so it is known before training."""

    name: ClassVar[str] = "micronet2019"
    metric_name: ClassVar[str] = "micronet2019"
    direction: ClassVar[str] = "minimize"
    when: ClassVar[str] = "before"
    label: ClassVar[str] = "MicroNet 2019 score (lower is better)"
    log_axis: ClassVar[bool] = True

    def compute(self, subject: Subject) -> float:
        from search.candidate import micronet2019

        model = subject.candidate.build(subject.num_classes)
        return float(micronet2019.count_candidate(model, subject.candidate.compression,
                                                  tuple(subject.input_shape)).score)


REGISTRY: dict[str, type[Metric]] = {}


def register(cls: type[Metric]) -> type[Metric]:
    """Add an objective under its ``name``; a name already taken is refused (as models are)."""
    if cls.name in REGISTRY:
        raise ValueError(f"objective {cls.name!r} is already registered (by {REGISTRY[cls.name].__qualname__})")
    REGISTRY[cls.name] = cls
    return cls


for _cls in (Accuracy, Score, MicroNet2019):
    register(_cls)


class Objectives(tuple):
    """The study's objectives in order (the order of ``trial.values``).

    Over 120 lines because it is the one reader of a trial's values (parse, directions, accessors, losses,
    hypervolume, reference point): everything else goes through it, so no ``values[k]`` is written anywhere else."""

    @classmethod
    def parse(cls, items: Iterable | None) -> Objectives:
        """From the study file's list: names, or one-key mappings of a name to its options
        (``- latency: {threads: 1}``)."""
        items = list(DEFAULT if items is None else items)
        metrics = []
        for item in items:
            if isinstance(item, str):
                name, options = item, {}
            elif isinstance(item, dict) and len(item) == 1:
                (name, options), = item.items()
                options = options or {}
                if not isinstance(options, dict):
                    raise ConfigError(f"objective {name!r}: options must be a mapping, got {options!r}")
            else:
                raise ConfigError(f"objectives: each entry is a name or {{name: {{options}}}}, got {item!r}")
            if name not in REGISTRY:
                raise ConfigError(f"unknown objective {name!r}; known: {', '.join(REGISTRY)}")
            try:
                metrics.append(REGISTRY[name](**options))
            except TypeError:
                raise ConfigError(f"objective {name!r} takes no option(s) {', '.join(sorted(options))}") from None
        names = [m.name for m in metrics]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"objective {repeated[0]!r} is listed twice")
        if names.count("accuracy") != 1 or len(names) < 2:
            raise ConfigError(f"objectives must hold accuracy and at least one cost to trade it against, got "
                              f"{names}; for example [accuracy, score]")
        return cls(metrics)

    @classmethod
    def of_study(cls, study) -> Objectives:
        """A stored study's objectives, from its metric names (and the options stored with it); a study made
        before objectives had names is accuracy and score."""
        names = study.metric_names
        if names is None:
            return cls.parse(DEFAULT)
        options = {o["name"]: o.get("options", {}) for o in study.user_attrs.get("micronet_objectives", [])}
        by_metric = {c.metric_name: c for c in REGISTRY.values()}
        unknown = [n for n in names if n not in by_metric]
        if unknown:
            raise ConfigError(f"study {study.study_name!r} has objective {unknown[0]!r}, which this version does not "
                              f"know; known: {', '.join(by_metric)}")
        return cls.parse([{by_metric[n].name: options.get(by_metric[n].name, {})} for n in names])

    def to_list(self) -> list[dict]:
        return [{"name": m.name, "options": m.options()} for m in self]

    @property
    def names(self) -> list[str]:
        return [m.name for m in self]

    @property
    def metric_names(self) -> list[str]:
        return [m.metric_name for m in self]

    @property
    def directions(self) -> list[str]:
        return [m.direction for m in self]

    @property
    def cost_objectives(self) -> list[Metric]:
        """Every objective but accuracy."""
        return [m for m in self if m.name != "accuracy"]

    @property
    def before(self) -> list[Metric]:
        """The objectives known before training (the stoppers rank by them beside accuracy)."""
        return [m for m in self if m.when == "before"]

    def index(self, name: str) -> int:  # type: ignore[override]
        for i, m in enumerate(self):
            if m.name == name:
                return i
        raise KeyError(f"no objective {name!r} in this study ({', '.join(self.names)})")

    def get(self, name: str) -> Metric | None:
        return next((m for m in self if m.name == name), None)

    def values(self, trial) -> dict[str, float]:
        """A complete trial's values by objective name."""
        return dict(zip(self.names, trial.values, strict=True))

    def value(self, trial, name: str) -> float:
        return trial.values[self.index(name)]

    def accuracy(self, trial) -> float:
        return self.value(trial, "accuracy")

    def first_cost(self, trial) -> float:
        """The value of the first cost objective (the score in the default study): the order fronts are shown in."""
        return trial.values[self.index(self.cost_objectives[0].name)]

    def loss(self, values: Sequence[float]) -> tuple[float, ...]:
        """``values`` in this order, turned so that every coordinate is minimized: the points :mod:`search.pareto`
        compares (``pareto.dominates(o.loss(a), o.loss(b))``)."""
        return tuple(-v if m.direction == "maximize" else v for m, v in zip(self, values, strict=True))

    def hypervolume(self, points: Iterable[Sequence[float]], reference: Sequence[float]) -> float:
        """The volume the ``points`` (values in this order) dominate up to the ``reference`` values; points no
        better than the reference in every objective add nothing."""
        from search.optuna_compat import hypervolume

        ref = np.array(self.loss(reference), dtype=np.float64)
        losses = [self.loss(p) for p in points]
        inside = np.array([p for p in losses if all(x < r for x, r in zip(p, ref, strict=True))], dtype=np.float64)
        if len(inside) == 0:
            return 0.0
        return float(hypervolume(inside, ref))

    def reference(self, trials: Sequence) -> tuple[float, ...]:
        """A reference point for the hypervolume of ``trials``: accuracy 0, each cost 1.1 × its worst value."""
        ref = []
        for i, m in enumerate(self):
            if m.name == "accuracy":
                ref.append(0.0)
            else:
                worst = max(t.values[i] for t in trials) if m.direction == "minimize" else min(
                    t.values[i] for t in trials)
                ref.append(worst * 1.1 if m.direction == "minimize" else worst / 1.1)
        return tuple(ref)

    def before_values(self, record_values: dict | None, score: float | None) -> dict[str, float]:
        """The before-training values a trial recorded (``before_values``); a trial stored before that field
        recorded only its score (``score``)."""
        if record_values:
            return dict(record_values)
        return {} if score is None else {"score": score}

    def known_costs(self, known: dict[str, float]) -> tuple[float, ...] | None:
        """The before-training objectives' values as the stoppers compare them (each minimized), or None when one is
        missing."""
        out = []
        for m in self.before:
            if m.name not in known or known[m.name] is None:
                return None
            out.append(-known[m.name] if m.direction == "maximize" else known[m.name])
        return tuple(out)


def check_hardware(objectives: Objectives, trials: Sequence, mixed: bool = False) -> None:
    """Refuse a front whose measured values come from different hardware or targets, unless ``mixed``."""
    from search.trial.record import TrialRecord

    if mixed or not any(m.when == "measured" for m in objectives):
        return
    seen: dict[tuple, int] = {}
    for t in trials:
        r = TrialRecord.of(t)
        seen.setdefault((r.latency_target, r.latency_hardware), t.number)
    if len(seen) > 1:
        (a, na), (b, nb) = list(seen.items())[:2]
        raise ConfigError(f"latency was measured on different hardware: trial {na} on {a[1]} ({a[0]}), trial {nb} "
                          f"on {b[1]} ({b[0]}); compare like with like, or pass --mixed-hardware to accept it")
