"""The search parameters, declared once: name, meaning, where the value lands in a candidate, its check, its CLI flag
and its front column.

The space (which keys a space file may sample and which values can never build), the candidate a trial builds from
its sampled values, the flags of ``train`` and ``score`` and the columns of ``front`` are all derived from
:data:`PARAMETERS`. Adding a search parameter is one row here (and, if it is new to the candidate, its field there).

Checks call the constructor that would refuse the value in a trial, so each rule (and its message with the legal
values) lives in one place. Combinations that depend on other values (groups against a layer's channels) are left
to the trial.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from search.config import number
from search.errors import ConfigError

# Where a value lands in the candidate (search.candidate.candidate.Candidate): a field of the candidate itself, a
# builder
# option of the arch, a field of the compression, of the distillation, of the training config or of its
# augmentation.
PLACES = ("candidate", "arch_options", "compression", "distillation", "train", "augment")


@dataclass(frozen=True)
class Param:
    name: str
    help: str
    place: str                      # one of PLACES
    key: str                        # the field there
    check: Callable[[Any], None]    # raises ConfigError for a value that can never build
    type: Callable | None = None    # the CLI flag's type (None: a true/false flag; str for text)
    column: tuple[str, str] | None = None  # front table: (title, format); None: not a column
    commands: tuple[str, ...] = ()  # the CLI commands with a flag for it (train, score, bench)
    group: str | None = None        # the flag's help group; default from the place

    @property
    def flag_group(self) -> str:
        return self.group or {"candidate": "model", "arch_options": "model", "compression": "compression",
                              "distillation": "distillation"}.get(self.place, "training")

    def default(self):
        """The candidate's default for it (None where the candidate has none: builder options, distillation)."""
        import dataclasses

        from search.candidate.candidate import Candidate
        from search.compress.compression import Compression

        owner = {"candidate": Candidate, "compression": Compression}.get(self.place)
        if owner is None:
            return None
        return next(f.default for f in dataclasses.fields(owner) if f.name == self.key)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def read(self, candidate: dict):
        """This parameter's value in a candidate's dict (``Candidate.to_dict``); None where it is not set."""
        if self.place == "candidate":
            return candidate.get(self.key)
        if self.place == "augment":
            return ((candidate.get("train") or {}).get("augment") or {}).get(self.key)
        if self.place == "distillation" and self.key == "enabled":
            return candidate.get("distillation") is not None
        return (candidate.get(self.place) or {}).get(self.key)


def parse_blocks(value) -> list[int]:
    """DenseNet layers per block from '6,6,6' or a list."""
    if isinstance(value, str):
        try:
            return [int(x) for x in value.split(",")]
        except ValueError:
            raise ConfigError(f"blocks must look like '6,6,6', got {value!r}") from None
    return list(value)


# --- checks -------------------------------------------------------------------------------------------------------

def _bool(key: str):
    def check(value):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
    return check


def _arch(value):
    from search.models import list_models

    if not isinstance(value, str) or value not in list_models():
        raise ConfigError(f"unknown arch {value!r}; known archs: {', '.join(list_models())}")


def _model(option: str):
    def check(value):
        from search.models.layers import check_positive_int, check_width

        if option == "width":
            check_width("every arch", value)
        elif option in ("groups", "growth_rate"):
            check_positive_int("every arch", option, value)
        elif option in ("depthwise", "bottleneck"):
            _bool(option)(value)
        else:  # blocks
            blocks = parse_blocks(value)
            if not blocks or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in blocks):
                raise ConfigError(f"blocks must be positive layer counts like '6,6,6', got {value!r}")
    return check


def _compression(key: str):
    def check(value):
        from search.compress.compression import Compression

        if key in ("ps", "pu") and number(value) and value >= 1:
            raise ConfigError(f"{key} must be in [0, 1) (a fraction of the weights), got {value!r}")
        Compression(**{key: value})
    return check


def _train(key: str):
    def check(value):
        from search.candidate.recipe import TrainConfig

        TrainConfig(**{key: value})
    return check


def _distillation(key: str):
    def check(value):
        from search.candidate.recipe import Distillation

        Distillation(**{key: value})
    return check


def _compress_at(value):
    if not number(value) or not 0 <= value < 1:
        raise ConfigError(f"compress_at must be in [0, 1) (the fraction of the epochs trained dense), got {value!r}")


def _cutout(value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"cutout must be an integer >= 0 (pixels; 0 = off), got {value!r}")


# --- the table ----------------------------------------------------------------------------------------------------

T, S = "train", "score"  # the commands whose flags a parameter has
PARAMETERS: dict[str, Param] = {p.name: p for p in (
    Param("arch", "model architecture (resnet20, resnet18, densenet)", "candidate", "arch", _arch, str,
          ("arch", ""), (T, S, "bench")),  # bench train and bench profile time one architecture
    Param("width", "channel multiplier", "candidate", "width", _model("width"), float, ("width", "g"), (T, S)),
    Param("groups", "groups of every 3×3 block conv", "candidate", "groups", _model("groups"), int, ("groups", ""),
          (T, S)),
    Param("depthwise", "depthwise-separable block convs (3×3 depthwise + 1×1 pointwise)", "candidate", "depthwise",
          _model("depthwise"), None, ("dw", "yes/no"), (T, S)),
    Param("growth_rate", "densenet only: growth rate k (default 12)", "arch_options", "growth_rate",
          _model("growth_rate"), int, None, (T, S)),
    Param("blocks", "densenet only: layers per dense block, e.g. '6,6,6'", "arch_options", "blocks",
          _model("blocks"), str, None, (T, S)),
    Param("bottleneck", "densenet bottleneck layers", "arch_options", "bottleneck", _model("bottleneck"), None),
    Param("ps", "structured pruning ratio", "compression", "ps", _compression("ps"), float, ("ps", ".2f"), (T, S)),
    Param("pu", "unstructured pruning ratio", "compression", "pu", _compression("pu"), float, ("pu", ".2f"), (T, S)),
    Param("qw", "weight bits: 1, 2, 4, 8, 16 or 32 (32 = none)", "compression", "qw", _compression("qw"), int,
          ("qw", ""), (T, S)),
    Param("qa", "activation bits: 2, 4, 8, 16 or 32 (32 = none)", "compression", "qa", _compression("qa"), int,
          ("qa", ""), (T, S)),
    Param("compress_at", "fraction of epochs trained dense before compressing (default 0.5)", "candidate",
          "compress_at", _compress_at, float, None, (T,), group="compression"),
    Param("distillation", "distillation on/off", "distillation", "enabled", _bool("distillation")),
    Param("kd_temperature", "distillation temperature (train: switches distillation on)", "distillation",
          "temperature", _distillation("temperature"), float, ("kd T", ".1f"), (T,)),
    Param("kd_alpha", "weight of the distillation term (default 0.5)", "distillation", "alpha",
          _distillation("alpha"), float, None, (T,)),
    Param("kd_decreasing", "linearly decrease T to half its value (seed 004)", "distillation", "final_temperature",
          _bool("kd_decreasing")),
    Param("lr", "peak learning rate", "train", "lr", _train("lr"), float, None, (T,)),
    Param("weight_decay", "weight decay", "train", "weight_decay", _train("weight_decay"), float, None, (T,)),
    Param("label_smoothing", "label smoothing", "train", "label_smoothing", _train("label_smoothing"), float, None,
          (T,)),
    Param("batch_size", "batch size", "train", "batch_size", _train("batch_size"), int, None, (T, "bench")),
    Param("cutout", "cutout size in pixels (0 = off)", "augment", "cutout", _cutout, int, None, (T,)),
    Param("optimizer", "sgd (Nesterov momentum) or adamw", "train", "optimizer", _train("optimizer"), str, None,
          (T,)),
    Param("mixup", "MixUp alpha (0 = off)", "train", "mixup", _train("mixup"), float, None, (T,)),
    Param("cutmix", "CutMix alpha (0 = off)", "train", "cutmix", _train("cutmix"), float, None, (T,)),
)}
MODEL_OPTIONS = tuple(n for n, p in PARAMETERS.items() if p.place in ("candidate", "arch_options")
                      and n not in ("arch", "compress_at"))


def check_value(name: str, value, where: str) -> None:
    """The one check of a value for parameter ``name``, for a space file and for a study file's ``enqueue:`` alike:
    a value that can never build is refused with ``where`` (the file and key) and the parameter's own rule."""
    try:
        PARAMETERS[name].check(value)
    except ConfigError as e:
        raise ConfigError(f"{where}: {value!r} can never build: {e}") from None


def candidate_from(values: dict, train, compress_at: float):
    """A full candidate from sampled ``values`` on top of the study's training config and ``compress_at``."""
    from search.candidate.candidate import Candidate
    from search.candidate.recipe import Distillation
    from search.compress.compression import Compression

    unknown = set(values) - set(PARAMETERS)
    if unknown:
        raise ConfigError(f"unknown parameter {sorted(unknown)[0]!r}")
    by_place: dict[str, dict] = {p: {} for p in PLACES}
    for name, value in values.items():
        p = PARAMETERS[name]
        by_place[p.place][p.key] = parse_blocks(value) if name == "blocks" else value
    kd = by_place["distillation"]
    distillation = None
    if kd.pop("enabled", False):
        t = kd.get("temperature", Distillation.temperature)
        distillation = Distillation(temperature=t, alpha=kd.get("alpha", Distillation.alpha),
                                    final_temperature=t / 2 if kd.get("final_temperature") else None)
    if by_place["augment"]:
        by_place["train"]["augment"] = replace(train.augment, **{k: int(v) for k, v in by_place["augment"].items()})
    fields = {"compress_at": compress_at, **by_place["candidate"]}
    return Candidate(**fields, arch_options=by_place["arch_options"],
                     compression=Compression(**by_place["compression"]), distillation=distillation,
                     train=replace(train, **by_place["train"]))


def add_arguments(parser, command: str, defaults: bool = False, required: tuple[str, ...] = (),
                  groups: dict | None = None) -> dict:
    """The flags of ``command``'s search parameters (``--growth-rate`` for ``growth_rate``), typed, described and
    grouped from the table. ``defaults``: each flag defaults to the candidate's default (else None: unset, so a
    config file's value stands); ``required`` names must be given. Returns the argument groups by name (given
    ``groups`` are used and added to), for the command's own flags."""
    groups = {} if groups is None else groups
    for p in PARAMETERS.values():
        if command not in p.commands:
            continue
        if p.flag_group not in groups:
            groups[p.flag_group] = parser.add_argument_group(p.flag_group)
        group, default = groups[p.flag_group], p.default() if defaults and p.name not in required else None
        text = p.help + (f" (default {default})" if default is not None and "default" not in p.help else "")
        if p.type is None:  # true/false
            group.add_argument(p.flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            group.add_argument(p.flag, type=p.type, default=default, help=text, required=p.name in required)
    return groups


def flags(command: str) -> list[Param]:
    """The parameters with a flag in ``command``."""
    return [p for p in PARAMETERS.values() if command in p.commands]


def columns() -> list[Param]:
    """The parameters the front table shows, in table order."""
    return [p for p in PARAMETERS.values() if p.column is not None]


ARCHITECTURE_KEYS = ("arch", "width", "groups", "depthwise")


def architecture_names(names) -> list[str]:
    """Of the parameter ``names`` a space samples, the ones that choose the dense network (its architecture
    configuration: what a converged base is trained for), in the order given."""
    return [n for n in names if n in PARAMETERS and (PARAMETERS[n].place == "arch_options" or (
        PARAMETERS[n].place == "candidate" and PARAMETERS[n].key in ARCHITECTURE_KEYS))]
