"""Declarative search spaces (``spaces/*.yaml``): what a study samples, with conditionals and validation.

A space file maps parameter names to specs::

    params:
      arch:        {choices: [resnet20, densenet, resnet18]}
      width:       {low: 0.5, high: 1.5, step: 0.25}
      growth_rate: {choices: [8, 12, 16], when: {arch: densenet}}
      lr:          {low: 0.01, high: 0.2, log: true}
      qw:          {value: 8}                      # fixed
    max_ps_plus_pu: 0.9

A spec is ``choices`` (categorical), ``low``/``high`` (float; ``int: true`` for integers; ``log``, ``step``) or
``value`` (fixed). ``when`` samples the parameter only if every named parameter has one of the given values.
Parameters are sampled in file order, so a ``when`` may only name parameters above it. ``pu``'s upper bound
shrinks so that ``ps + pu <= max_ps_plus_pu``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from search.config import load_yaml, number
from search.errors import ConfigError
from search.space.params import MODEL_OPTIONS, PARAMETERS, check_value

# Every key a space may sample, and what it means: from the one table of search parameters (search.space.params).
PARAMS = {name: p.help for name, p in PARAMETERS.items()}
CHECKS = {name: p.check for name, p in PARAMETERS.items()}
SPEC_KEYS = {"choices", "low", "high", "log", "step", "int", "value", "when"}


@dataclass(frozen=True)
class ParamSpec:
    name: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False
    value: Any = None
    fixed: bool = False
    when: dict = field(default_factory=dict)

    def active(self, sampled: dict) -> bool:
        return all(k in sampled and sampled[k] in allowed for k, allowed in self.when.items())

    def suggest(self, trial: optuna.Trial, high: float | None = None):
        if self.fixed:
            return self.value
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        hi = self.high if high is None else high
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(hi), log=self.log, step=int(self.step or 1))
        return trial.suggest_float(self.name, self.low, hi, log=self.log, step=self.step)


@dataclass(frozen=True)
class Space:
    params: tuple[ParamSpec, ...]
    max_ps_plus_pu: float = 0.9
    source: str = "space"

    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def combinations(self, names: list[str]) -> list[dict] | None:
        """Every combination of the parameters ``names`` the space can sample (each one's fixed value, choices or
        stepped range, with ``when:`` conditions on the ones before it), in the space's order; None when one of
        them is continuous."""
        out: list[dict] = [{}]
        for spec in self.params:
            if spec.name not in names:
                continue
            if spec.fixed:
                values = [spec.value]
            elif spec.choices is not None:
                values = list(spec.choices)
            elif spec.step is not None:
                count = int(round((spec.high - spec.low) / spec.step))
                values = [spec.low + i * spec.step for i in range(count + 1)]
                values = [int(v) if spec.integer else round(v, 10) for v in values]
            else:
                return None
            out = [with_value for c in out
                   for with_value in ([{**c, spec.name: v} for v in values] if spec.active(c) else [c])]
        return out

    def sample(self, trial: optuna.Trial) -> dict:
        """Suggest every active parameter through ``trial``; returns the sampled values by name."""
        values: dict = {}
        for spec in self.params:
            if not spec.active(values):
                continue
            high = None
            if spec.name == "pu" and not spec.fixed and spec.choices is None:
                # Bound ps + pu: pu's range shrinks with the ps already sampled (never below its low end).
                high = max(spec.low, min(spec.high, self.max_ps_plus_pu - values.get("ps", 0.0)))
            values[spec.name] = spec.suggest(trial, high)
        return values


def load_space(path: str | Path) -> Space:
    raw = load_yaml(path)
    return parse_space(raw, str(path))


def parse_space(raw: dict, source: str = "space") -> Space:
    unknown = sorted(set(raw) - {"params", "max_ps_plus_pu"})
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}; a space has 'params' and 'max_ps_plus_pu'")
    params = raw.get("params")
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{source}: 'params' must map parameter names to specs, e.g. arch: {{choices: [resnet20]}}")
    bound = raw.get("max_ps_plus_pu", 0.9)
    if not number(bound) or not 0 < bound < 1:
        raise ConfigError(f"{source}: max_ps_plus_pu must be in (0, 1), got {bound!r}")
    specs: list[ParamSpec] = []
    for name, spec in params.items():
        specs.append(_parse_param(name, spec, [s.name for s in specs], f"{source}: params.{name}"))
    for spec in specs:
        _check_buildable(spec, specs, f"{source}: params.{spec.name}")
    return Space(tuple(specs), float(bound), source)


# --- values that can never build, refused when the space is read, before a study exists (search.space.params) ---

def _values(spec: ParamSpec) -> list:
    """The values to check: every choice, the fixed value, or a range's two ends (the checks are monotone)."""
    if spec.fixed:
        return [spec.value]
    if spec.choices is not None:
        return list(spec.choices)
    if spec.integer:
        return [int(spec.low), int(spec.high)]
    return [spec.low, spec.high]


def _check_buildable(spec: ParamSpec, specs: list[ParamSpec], where: str) -> None:
    for value in _values(spec):
        check_value(spec.name, value, where)
    if spec.name in MODEL_OPTIONS:
        _check_option(spec, specs, where)


def _check_option(spec: ParamSpec, specs: list[ParamSpec], where: str) -> None:
    """A model option must be taken by every arch it can be sampled with (``when: {arch: ...}`` narrows them)."""
    from search.models.registry import model_options

    arch = next((s for s in specs if s.name == "arch"), None)
    archs = ["resnet20"] if arch is None else _values(arch)  # the candidate's default arch
    if "arch" in spec.when:
        archs = [a for a in archs if a in spec.when["arch"]]
    refusing = [a for a in archs if spec.name not in model_options(a)]
    if refusing:
        taking = [a for a in archs if a not in refusing]
        hint = (f"sample it only for {', '.join(taking)} with when: {{arch: [{', '.join(taking)}]}}" if taking
                else "remove it or add an arch that takes it")
        raise ConfigError(f"{where}: {', '.join(refusing)} has no option {spec.name!r}; {hint}")


def _parse_param(name, spec, earlier: list[str], where: str) -> ParamSpec:
    if name not in PARAMS:
        raise ConfigError(f"{where}: unknown space key {name!r}; known keys: {', '.join(PARAMS)}")
    if not isinstance(spec, dict):
        spec = {"value": spec}  # a bare value is a fixed parameter
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown spec key {unknown[0]!r}; use choices, low/high (log, step, int), "
                          f"value, when")
    when = spec.get("when") or {}
    if not isinstance(when, dict):
        raise ConfigError(f"{where}.when must map earlier parameter names to values, got {when!r}")
    conditions = {}
    for key, allowed in when.items():
        if key not in earlier:
            raise ConfigError(f"{where}.when names {key!r}, which is not a parameter above {name!r}")
        conditions[key] = tuple(allowed) if isinstance(allowed, list) else (allowed,)
    kinds = [k for k in ("choices", "low", "value") if k in spec]
    if "high" in spec and "low" not in spec:
        kinds.append("high")
    if len(kinds) != 1 or kinds == ["high"]:
        raise ConfigError(f"{where}: give exactly one of choices, low/high or value")
    if "value" in spec:
        return ParamSpec(name, value=spec["value"], fixed=True, when=conditions)
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}.choices must be a non-empty list")
        if any(isinstance(c, (dict, list)) for c in choices):
            raise ConfigError(f"{where}.choices must be plain values (write blocks as '6,6,6')")
        return ParamSpec(name, choices=tuple(choices), when=conditions)
    low, high = _float(spec.get("low")), _float(spec.get("high"))
    if low is None or high is None or low > high:
        raise ConfigError(f"{where}: low and high must be numbers with low <= high, got {low!r}, {high!r}")
    log, step, integer = bool(spec.get("log", False)), spec.get("step"), bool(spec.get("int", False))
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got {low!r}")
    if step is not None and (not number(step) or step <= 0 or log):
        raise ConfigError(f"{where}: step must be a number > 0 and cannot go with log, got {step!r}")
    return ParamSpec(name, low=low, high=high, log=log, step=step, integer=integer, when=conditions)


def _float(x) -> float | None:
    """A finite number, also from a string: YAML 1.1 reads ``1e-5`` (no dot) as a string."""
    if isinstance(x, str):
        try:
            x = float(x)
        except ValueError:
            return None
    return float(x) if number(x) else None
