"""The latency objective: milliseconds per image of the model as ``micronet-search export`` ships it, measured on
this worker's hardware after training and recorded with the target and the hardware (:mod:`search.machine`)."""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from search.errors import ConfigError
from search.machine import cpu_name
from search.trial.objectives import Metric, Subject, register

LATENCY_TARGETS = ("onnxruntime-cpu", "device")


@register
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

        from search.models.graphs import write_graphs

        with tempfile.TemporaryDirectory() as tmp:
            # the very graph `micronet-search export` writes (same exporter, opset and names)
            path = Path(tmp) / write_graphs(model, Path(tmp), ["onnx"], torch.from_numpy(example), "logits")["onnx"]
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
    from search.compress import bake_weights
    from search.training.checkpoint import rebuild

    built = rebuild(candidate, num_classes)
    built.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    bake_weights(built)
    return built.eval()
