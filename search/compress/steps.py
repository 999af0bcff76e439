"""Compression as a sequence of steps, each a small object behind one base class (as Optuna's samplers are).

A step reads its parameters from the candidate's :class:`Compression`, changes a model in place (or returns a
new one), and says whether it is **structural**: whether the trained weights only fit a model that had the step
applied. Structural steps are replayed when a checkpoint is rebuilt (:func:`rebuild`); the others leave their mark
in the weights themselves (unstructured pruning's zeros). ``finish`` runs once training is over (unstructured
pruning bakes its masks into the weights there).

The pipeline is :data:`STEPS`, in the order the steps run: structured pruning first (it removes whole channels,
judged by their dense filter norms), then unstructured pruning of what is left, then quantization-aware training.
Adding a method is one new module with a :class:`CompressionStep` subclass, passed to :func:`register`, and its
parameters in :class:`Compression` (and the space's parameter table).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import nn

from search.compress.compression import Compression
from search.compress.pruning import make_permanent, prune_structured, prune_unstructured
from search.compress.quantize import quantize_model


class CompressionStep(ABC):
    name: str = ""
    params: tuple[str, ...] = ()  # the Compression fields this step reads
    structural: bool = False      # the trained weights fit only a model this step was applied to

    def active(self, c: Compression) -> bool:
        """Whether ``c`` asks this step for anything (its parameters differ from their "off" defaults)."""
        off = Compression()
        return any(getattr(c, p) != getattr(off, p) for p in self.params)

    @abstractmethod
    def apply(self, model: nn.Module, c: Compression) -> nn.Module:
        """Compress ``model`` (in place where possible); return the model to train on."""

    def finish(self, model: nn.Module, c: Compression) -> None:
        """After the last training epoch: make the step's effect part of the plain weights."""
        return None  # most steps leave nothing to finish


class StructuredPruning(CompressionStep):
    name, params, structural = "structured pruning", ("ps",), True

    def apply(self, model, c):
        return prune_structured(model, c.ps)


class UnstructuredPruning(CompressionStep):
    name, params, structural = "unstructured pruning", ("pu",), False

    def apply(self, model, c):
        prune_unstructured(model, c.pu)
        return model

    def finish(self, model, c):
        make_permanent(model)


class Quantization(CompressionStep):
    name, params, structural = "quantization", ("qw", "qa"), True

    def apply(self, model, c):
        return quantize_model(model, c.qw, c.qa)


STEPS: list[CompressionStep] = []


def register(step: CompressionStep) -> CompressionStep:
    """Append ``step`` to the pipeline; a name already taken is refused (as models and objectives are)."""
    for existing in STEPS:
        if existing.name == step.name:
            raise ValueError(f"compression step {step.name!r} is already registered "
                             f"(by {type(existing).__qualname__})")
    STEPS.append(step)
    return step


for _step in (StructuredPruning(), UnstructuredPruning(), Quantization()):
    register(_step)


def compress(model: nn.Module, c: Compression) -> nn.Module:
    """Every step of the pipeline that ``c`` asks for, in order."""
    for step in STEPS:
        if step.active(c):
            model = step.apply(model, c)
    return model


def finish(model: nn.Module, c: Compression) -> None:
    """Every active step's ``finish``, in order, once training is over."""
    for step in STEPS:
        if step.active(c):
            step.finish(model, c)


def rebuild(model: nn.Module, c: Compression) -> nn.Module:
    """The structure a trained compressed model has: only the structural steps, applied to an untrained build
    (structured pruning keeps the same number of channels whatever the weights, so the shapes match)."""
    for step in STEPS:
        if step.structural and step.active(c):
            model = step.apply(model, c)
    return model
