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

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from search.errors import ConfigError

DEFAULT = ("accuracy", "score")


@dataclass(frozen=True)
class Subject:
    """What an objective's value is computed from: the candidate and its counts (before training), and after
    training the trained model (CPU copy, eval mode) and the data's input shape."""

    candidate: object        # search.candidate.Candidate
    costs: object            # search.candidate.Costs
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
    """The seeds' MicroNet-style score (:mod:`search.score`), known before training."""

    name: ClassVar[str] = "score"
    metric_name: ClassVar[str] = "score"
    direction: ClassVar[str] = "minimize"
    when: ClassVar[str] = "before"
    label: ClassVar[str] = "score (lower is better)"
    log_axis: ClassVar[bool] = True

    def compute(self, subject: Subject) -> float:
        return float(subject.costs.score.total)


@dataclass(frozen=True)
class MicroNet2019(Metric):
    """The official MicroNet Challenge 2019 score (:mod:`search.micronet2019`): its counts need the pruning only,
    which zeroes exactly the sampled fractions, so it is known before training."""

    name: ClassVar[str] = "micronet2019"
    metric_name: ClassVar[str] = "micronet2019"
    direction: ClassVar[str] = "minimize"
    when: ClassVar[str] = "before"
    label: ClassVar[str] = "MicroNet 2019 score (lower is better)"
    log_axis: ClassVar[bool] = True

    def compute(self, subject: Subject) -> float:
        from search import micronet2019

        model = subject.candidate.build(subject.num_classes)
        return float(micronet2019.count_candidate(model, subject.candidate.compression,
                                                  tuple(subject.input_shape)).score)


LATENCY_TARGETS = ("onnxruntime-cpu", "device")


@dataclass(frozen=True)
class Latency(Metric):
    """Milliseconds per image of the exported-form model (physically pruned, quantized weights baked in, activation
    quantizers in the graph), batch 1, the median of ``repeats`` runs after ``warmup`` runs.

    ``onnxruntime-cpu``: its ONNX graph in onnxruntime on this worker's CPU with ``threads`` intra-op threads (the
    deployment most users of small models have); ``device``: the torch model on the worker's own device.
    """

    name: ClassVar[str] = "latency"
    metric_name: ClassVar[str] = "latency_ms"
    direction: ClassVar[str] = "minimize"
    when: ClassVar[str] = "measured"
    label: ClassVar[str] = "latency, ms per image (lower is better)"
    fmt: ClassVar[str] = ".3f"
    log_axis: ClassVar[bool] = True
    target: str = "onnxruntime-cpu"
    threads: int = 1
    warmup: int = 20
    repeats: int = 100

    def __post_init__(self):
        if self.target not in LATENCY_TARGETS:
            raise ConfigError(f"latency target must be one of {', '.join(LATENCY_TARGETS)}, got {self.target!r}")
        for key, low in (("threads", 1), ("warmup", 0), ("repeats", 3)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"latency {key} must be an integer >= {low}, got {value!r}")

    def options(self) -> dict:
        return {"target": self.target, "threads": self.threads, "warmup": self.warmup, "repeats": self.repeats}

    def describe_target(self, device=None) -> str:
        if self.target == "onnxruntime-cpu":
            return f"onnxruntime CPU, {self.threads} thread{'s' if self.threads > 1 else ''}, batch 1"
        return f"torch on {device or 'cpu'}, batch 1"

    def record(self, subject: Subject) -> tuple[float, dict]:
        model = export_form(subject.candidate, subject.model, subject.num_classes)
        example = np.zeros((1, *subject.input_shape), dtype=np.float32)
        if self.target == "onnxruntime-cpu":
            ms = self._onnxruntime_ms(model, example)
            hardware = cpu_name()
        else:
            ms, hardware = self._torch_ms(model, example, subject.device)
        return ms, {"latency_target": self.describe_target(subject.device), "latency_hardware": hardware}

    def compute(self, subject: Subject) -> float:
        return self.record(subject)[0]

    def _onnxruntime_ms(self, model, example: np.ndarray) -> float:
        import onnxruntime as ort
        import torch

        from search.export.files import _write_graphs

        with tempfile.TemporaryDirectory() as tmp:
            # the very graph `micronet-search export` writes (same exporter, opset and names)
            path = Path(tmp) / _write_graphs(model, Path(tmp), ["onnx"], torch.from_numpy(example), "logits")["onnx"]
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {"input": example}
        return self._median_ms(lambda: session.run(None, feed))

    def _torch_ms(self, model, example: np.ndarray, device) -> tuple[float, str]:
        import torch

        device = torch.device(device or "cpu")
        model = model.to(device).eval()
        x = torch.from_numpy(example).to(device)
        if device.type == "cuda":
            sync, hardware = torch.cuda.synchronize, torch.cuda.get_device_name(device)
        else:
            sync, hardware = (lambda: None), f"{cpu_name()}, {torch.get_num_threads()} torch threads"

        def once():
            with torch.no_grad():
                model(x)
            sync()

        return self._median_ms(once), hardware

    def _median_ms(self, run) -> float:
        for _ in range(self.warmup):
            run()
        times = []
        for _ in range(self.repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        return 1000.0 * statistics.median(times)


def export_form(candidate, model, num_classes: int):
    """A CPU copy of a trained ``model`` as ``micronet-search export`` writes it: rebuilt physically pruned, the
    trained weights loaded, the quantized weights baked in."""
    from search.checkpoint import rebuild
    from search.compress import bake_weights

    built = rebuild(candidate, num_classes)
    built.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    bake_weights(built)
    return built.eval()


def cpu_name() -> str:
    """This machine's CPU model as /proc/cpuinfo names it (else what the platform module says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


REGISTRY: dict[str, type[Metric]] = {}


def register(cls: type[Metric]) -> type[Metric]:
    REGISTRY[cls.name] = cls
    return cls


for _cls in (Accuracy, Score, MicroNet2019, Latency):
    register(_cls)


class Objectives(tuple):
    """The study's objectives in order (the order of ``trial.values``)."""

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
    def costs(self) -> list[Metric]:
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
        return trial.values[self.index(self.costs[0].name)]

    def loss(self, values: Sequence[float]) -> tuple[float, ...]:
        """``values`` in this order, turned so that every coordinate is minimized."""
        return tuple(-v if m.direction == "maximize" else v for m, v in zip(self, values, strict=True))

    def dominates(self, a: Sequence[float], b: Sequence[float]) -> bool:
        """Values ``a`` dominate ``b``: no worse in every objective, better in one."""
        la, lb = self.loss(a), self.loss(b)
        return all(x <= y for x, y in zip(la, lb, strict=True)) and la != lb

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

    def stop_costs(self, known: dict[str, float]) -> tuple[float, ...] | None:
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
    from search.record import TrialRecord

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
