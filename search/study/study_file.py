"""Study definitions (``studies/*.yaml``) and the multi-objective Optuna study built from them.

Objectives: the study file's ``objectives`` (:mod:`search.trial.objectives`; default maximize validation accuracy,
minimize score). Each trial samples a candidate from the space, measures
its score before training, trains it with Pareto-aware early stopping, and stores a checkpoint in the artifact store.
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass, field, make_dataclass, replace
from pathlib import Path

import optuna

from search.candidate.candidate import Candidate
from search.candidate.recipe import TrainConfig
from search.candidate.score import ScoreReference
from search.config import from_mapping, load_yaml, to_mapping
from search.errors import ConfigError
from search.space import params as space_params
from search.space.params import check_value
from search.space.space import Space, load_space
from search.study.final import FinalConfig, final_name
from search.study.samplers import ParetoTPESampler, TrialSeededSampler
from search.study.storage import StorageError, mask, open_storage, resolve_storage
from search.training.bases import BaseConfig
from search.training.data import DataConfig
from search.training.teacher import TeacherSpec
from search.trial.objectives import DEFAULT as DEFAULT_OBJECTIVES
from search.trial.objectives import Objectives
from search.trial.stopping import EarlyStopper, make_stopper, stopper_class, study_options
from search.trial.stopping import options as stopper_options

SAMPLERS = ("tpe", "nsga2", "gp", "random")


@dataclass(frozen=True)
class SamplerConfig:
    name: str = "tpe"
    seed: int = 0
    n_startup_trials: int = 10  # tpe, gp: random trials before the model kicks in
    population_size: int = 20   # nsga2

    def __post_init__(self):
        if self.name not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.name!r}; use one of {', '.join(SAMPLERS)}")

    def build(self) -> optuna.samplers.BaseSampler:
        """The sampler, re-seeded per trial so that parallel workers draw different candidates."""
        if self.name == "tpe":
            sampler = ParetoTPESampler(seed=self.seed, n_startup_trials=self.n_startup_trials)
        elif self.name == "nsga2":
            sampler = optuna.samplers.NSGAIISampler(seed=self.seed, population_size=self.population_size)
        elif self.name == "gp":
            # Gaussian-process EHVI over the parameters every trial has; conditional ones (a ResNet's width, a
            # DenseNet's growth rate) are drawn at random, which Optuna would warn about once per trial.
            sampler = optuna.samplers.GPSampler(seed=self.seed, n_startup_trials=self.n_startup_trials,
                                                warn_independent_sampling=False)
        else:
            sampler = optuna.samplers.RandomSampler(seed=self.seed)
        return TrialSeededSampler(sampler, self.seed)


class _StopperMethods:
    """What :class:`StopperConfig` does; its fields are made below from the stoppers' own."""

    def build(self, accuracy_floor: float | None) -> EarlyStopper:
        """The stopper ``name`` names, with its options (the other stoppers' are not its own, and ignored) and, when
        it takes one, the study's accuracy floor."""
        own = stopper_options(stopper_class(self.name))
        return make_stopper(self.name, accuracy_floor=accuracy_floor, **{k: getattr(self, k) for k in own})

    def __post_init__(self):
        self.build(None)  # validates


# The study file's ``stopper:``: the stopper's ``name`` (pareto, moasha or none), every stopper's options as its
# dataclass declares them (search.trial.stopping.study_options: warmup_epochs, min_trials, percentile, min_epochs,
# reduction_factor), and the skip before training, which is no stopper's: skip_dominated (skip, before training, a
# candidate a finished trial already beats) and skip_accuracy (... namely one with every cost no worse and at least this
# accuracy).
StopperConfig = make_dataclass(
    "StopperConfig",
    [("name", str, field(default="pareto")),
     *((key, hint, field(default=default)) for key, hint, default in study_options()),
     ("skip_dominated", bool, field(default=True)),
     ("skip_accuracy", float, field(default=1.0))],
    bases=(_StopperMethods,), frozen=True)
StopperConfig.__module__ = __name__  # (make_dataclass's module= is Python 3.12's) for pickle and repr


@dataclass(frozen=True)
class HeartbeatConfig:
    """Fault tolerance for workers (RDB storages): a running trial beats every ``interval`` seconds; one silent for
    ``grace_period`` seconds (its worker was killed, its machine lost) is marked FAILED and re-run with the same
    parameters, at most ``max_retry`` times, resuming from its last epoch checkpoint."""

    interval: int = 60           # 0 switches heartbeats off
    grace_period: int = 180
    max_retry: int = 2

    def __post_init__(self):
        for key in ("interval", "grace_period", "max_retry"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"heartbeat {key} must be an integer >= 0, got {value!r}")
        if self.interval and self.grace_period <= self.interval:
            raise ConfigError(f"heartbeat grace_period ({self.grace_period} s) must be longer than the interval "
                              f"({self.interval} s), or a live trial would be taken for a dead one")


@dataclass(frozen=True)
class StudyConfig:
    name: str
    space: str = "spaces/micronet.yaml"
    storage: str | None = None           # default sqlite:///studies/<name>.db; --storage and MICRONET_STORAGE win
    data: DataConfig = field(default_factory=DataConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    stopper: StopperConfig = field(default_factory=StopperConfig)  # early stopping ("pruner:" in old files)
    accuracy_floor: float | None = None  # a constraint: trials below it are infeasible and off the front
    train: TrainConfig = field(default_factory=TrainConfig)
    compress_at: float = 0.5
    n_trials: int | None = 20            # finished (complete or pruned) trials in the storage, all runs and workers
    timeout: float | None = None         # seconds, per run
    teacher: TeacherSpec = field(default_factory=TeacherSpec)
    artifacts: str | None = None         # default studies/<name>-artifacts
    device: str = "auto"
    reference: ScoreReference = field(default_factory=ScoreReference)
    enqueue: list = field(default_factory=list)
    heartbeat: HeartbeatConfig = field(default_factory=HeartbeatConfig)
    checkpoint_every: int = 1            # epochs between a trial's resume checkpoints; 0: none
    checkpoint_min_seconds: float = 30.0  # ... and at least this much training between two: short epochs skip some
    storage_outage_s: float = 300.0      # a database server's outage a worker rides out (search.study.outage); 0: none
    base: BaseConfig | None = None       # train once, compress many: candidates are fine-tuned from converged bases
    final: FinalConfig | None = None     # the final stage: the search front's members fine-tuned to the end
    reuse_bases: bool = False            # no base: share the dense phase among candidates that differ in compression
    max_trial_seconds: float | None = None  # a trial predicted or projected to train longer is stopped (none)
    objectives: list = field(default_factory=lambda: list(DEFAULT_OBJECTIVES))  # search.trial.objectives, in order

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"name must be letters, digits, - and _, got {self.name!r}")
        if self.accuracy_floor is not None and not (isinstance(self.accuracy_floor, (int, float))
                                                    and 0 <= self.accuracy_floor <= 1):
            raise ConfigError(f"accuracy_floor must be in [0, 1], got {self.accuracy_floor!r}")
        if self.n_trials is not None and (not isinstance(self.n_trials, int) or self.n_trials < 1):
            raise ConfigError(f"n_trials must be an integer >= 1, got {self.n_trials!r}")
        if self.timeout is not None and (not isinstance(self.timeout, (int, float)) or self.timeout <= 0):
            raise ConfigError(f"timeout must be a number of seconds > 0, got {self.timeout!r}")
        if isinstance(self.checkpoint_every, bool) or not isinstance(self.checkpoint_every, int) \
                or self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be an integer >= 0 (epochs), got {self.checkpoint_every!r}")
        if isinstance(self.checkpoint_min_seconds, bool) or not isinstance(self.checkpoint_min_seconds, (int, float)) \
                or self.checkpoint_min_seconds < 0:
            raise ConfigError(f"checkpoint_min_seconds must be a number >= 0, got {self.checkpoint_min_seconds!r}")
        if isinstance(self.storage_outage_s, bool) or not isinstance(self.storage_outage_s, (int, float)) \
                or self.storage_outage_s < 0:
            raise ConfigError(f"storage_outage_s must be a number of seconds >= 0, got {self.storage_outage_s!r}")
        if self.max_trial_seconds is not None and (isinstance(self.max_trial_seconds, bool) or not isinstance(
                self.max_trial_seconds, (int, float)) or self.max_trial_seconds <= 0):
            raise ConfigError(f"max_trial_seconds must be a number of seconds > 0 (or null: no cap), got "
                              f"{self.max_trial_seconds!r}")
        if not isinstance(self.reuse_bases, bool):
            raise ConfigError(f"reuse_bases must be true or false, got {self.reuse_bases!r}")
        if self.base is not None and self.reuse_bases:
            raise ConfigError("reuse_bases shares the dense phase of candidates trained from scratch; with base: every "
                              "candidate starts from a converged base and has no dense phase: drop reuse_bases")
        if not isinstance(self.enqueue, list) or not all(isinstance(e, dict) for e in self.enqueue):
            raise ConfigError("enqueue must be a list of mappings of space parameters")
        if not isinstance(self.objectives, (list, tuple)):
            raise ConfigError(f"objectives must be a list, for example [accuracy, score], got {self.objectives!r}")
        Objectives.parse(self.objectives)  # validates

    def final_stage(self, finalists: int, artifacts: str | None = None) -> StudyConfig:
        """The final stage's companion study (:mod:`search.study.final`): this study named ``<name>-final``, trained
        for ``final.epochs`` with nothing stopping or skipping a finalist, one trial per finalist, its checkpoints in
        the search's artifact folder (``artifacts``: the one the workers use, default this study's)."""
        final = self.final
        train = replace(self.train, epochs=final.epochs, **({"lr": final.lr} if final.lr is not None else {}))
        return replace(self, name=final_name(self.name), train=train, final=None, enqueue=[],
                       artifacts=str(Path(artifacts) if artifacts else self.artifact_dir),
                       stopper=StopperConfig(name="none", skip_dominated=False), max_trial_seconds=None,
                       n_trials=max(1, finalists))

    @property
    def candidate_compress_at(self) -> float:
        """Where a candidate is compressed: at once when it starts from a converged base (``base:``)."""
        return 0.0 if self.base is not None else self.compress_at

    @property
    def objective_list(self) -> Objectives:
        return Objectives.parse(self.objectives)

    @property
    def artifact_dir(self) -> Path:
        return Path(self.artifacts or f"studies/{self.name}-artifacts")


@dataclass(frozen=True)
class LoadedStudy:
    """A study file with its space, validated, and the storage URL it resolves to."""

    config: StudyConfig
    space: Space
    storage_url: str
    path: str


def load_study_file(path: str | Path, storage: str | None = None, n_trials: int | None = None,
                    timeout: float | None = None, data_path: str | None = None,
                    artifacts: str | None = None) -> LoadedStudy:
    """Read and validate a study file and its space; nothing touches the storage yet.

    ``data_path`` (``--data-path``) replaces the study file's ``data.path``. A relative npz path that is not found
    from the working directory is looked for next to the study file and one folder up, like the space file.
    """
    path = Path(path)
    raw = load_yaml(path)
    if "name" not in raw:
        raise ConfigError(f"{path}: missing key 'name' (the study name)")
    if "pruner" in raw:
        # renamed: "pruning" is the compression (ps, pu); early stopping is the stopper
        if "stopper" in raw:
            raise ConfigError(f"{path}: both 'pruner' and 'stopper'; 'pruner' is the old name of 'stopper', keep one")
        raw = {("stopper" if k == "pruner" else k): v for k, v in raw.items()}
        print(f"micronet-search: {path}: 'pruner:' is now called 'stopper:' (early stopping); read as 'stopper:', "
              f"rename it to silence this line", file=sys.stderr)
    config = from_mapping(StudyConfig, raw, str(path))
    # --artifacts: also what the study records as its artifact_dir, where export looks for the checkpoints
    overrides = {k: v for k, v in {"n_trials": n_trials, "timeout": timeout, "artifacts": artifacts}.items()
                 if v is not None}
    if data_path is not None:
        overrides["data"] = replace(config.data, path=data_path)
    elif config.data.name in ("npz", "folder") and config.data.path and not Path(config.data.path).is_absolute() \
            and not Path(config.data.path).exists():
        found = [c for c in (path.parent / config.data.path, path.parent.parent / config.data.path) if c.exists()]
        if found:
            overrides["data"] = replace(config.data, path=str(found[0]))
    if overrides:
        config = replace(config, **overrides)
    space = load_space(_find(config.space, path))
    for i, params in enumerate(config.enqueue):
        for key, value in params.items():
            if key not in space.names():
                raise ConfigError(f"{path}: enqueue[{i}] sets {key!r}, which {config.space} does not sample; "
                                  f"its parameters: {', '.join(space.names())}")
            check_value(key, value, f"{path}: enqueue[{i}].{key}")
    return LoadedStudy(config, space, resolve_storage(storage, config.storage, config.name), str(path))


def _find(relative: str, study_file: Path) -> Path:
    """A path from a study file: as given (from the working directory), else next to the file or one folder up."""
    candidates = [Path(relative), study_file.parent / relative, study_file.parent.parent / relative]
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(f"{study_file}: space file {relative!r} not found (looked in {', '.join(map(str, candidates))})")


def candidate_from(values: dict, config: StudyConfig) -> Candidate:
    """Turn sampled space values into a full candidate on top of the study's defaults (search.space.params says where
    each value lands). With ``base:`` the candidate is compressed at once: every epoch fine-tunes its base."""
    return space_params.candidate_from(values, config.train, config.candidate_compress_at)


def open_study(loaded: LoadedStudy, create: bool = True) -> optuna.Study:
    """Create the study or load it to resume; refuse one stored with other directions or another space.

    Workers starting together may all try to create it: the ones that lose the race load the winner's.
    """
    cfg = loaded.config
    hb = cfg.heartbeat
    storage = open_storage(loaded.storage_url, hb.interval or None, hb.grace_period or None, hb.max_retry,
                           outage_s=cfg.storage_outage_s)
    space = to_mapping(loaded.space)
    space.pop("source")  # where the file was read from does not change the space
    objectives = cfg.objective_list
    described = {"space": space, "directions": objectives.directions}
    if objectives.names != list(DEFAULT_OBJECTIVES):  # studies made before objectives had names keep their print
        described["objectives"] = objectives.to_list()
    fingerprint = json.dumps(described, sort_keys=True, default=str)
    try:
        existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    except Exception as e:
        raise StorageError(f"cannot read studies from {mask(loaded.storage_url)}: {e}") from None
    if cfg.name in existing:
        _check_compatible(loaded, existing[cfg.name], fingerprint)
        return optuna.load_study(study_name=cfg.name, storage=storage, sampler=cfg.sampler.build())
    if not create:
        raise StorageError(f"no study {cfg.name!r} in {mask(loaded.storage_url)}; known: "
                           f"{', '.join(sorted(existing)) or 'none'}")
    try:
        study = optuna.create_study(study_name=cfg.name, storage=storage, directions=objectives.directions,
                                    sampler=cfg.sampler.build())
    except optuna.exceptions.DuplicatedStudyError:  # another worker created it a moment ago
        return optuna.load_study(study_name=cfg.name, storage=storage, sampler=cfg.sampler.build())
    with warnings.catch_warnings():  # experimental since Optuna 3.2, stable in use
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(objectives.metric_names)  # axis names in the dashboard and plots
    study.set_user_attr("micronet_objectives", objectives.to_list())  # readers rebuild them (Objectives.of_study)
    study.set_user_attr("micronet_fingerprint", fingerprint)
    study.set_user_attr("micronet_config", stored_config(cfg))
    study.set_user_attr("artifact_dir", str(cfg.artifact_dir.resolve()))
    for params in cfg.enqueue:
        study.enqueue_trial(params, skip_if_exists=True)
    return study


def stored_config(cfg: StudyConfig) -> dict:
    """The study file's configuration as the study keeps it (``micronet_config``), without the storage URL: the
    dashboard and every reader of the database would see its password, and the study lives in that storage anyway."""
    stored = json.loads(json.dumps(to_mapping(cfg), default=str))
    stored.pop("storage", None)
    return stored


def _check_compatible(loaded: LoadedStudy, summary, fingerprint: str) -> None:
    name, where = loaded.config.name, mask(loaded.storage_url)
    directions = [d.name.lower() for d in summary.directions]
    objectives = loaded.config.objective_list
    stored = [o["name"] for o in summary.user_attrs.get("micronet_objectives", [])] or None
    if directions != objectives.directions or (stored is not None and stored != objectives.names):
        what = f"objectives {', '.join(stored)}" if stored else f"directions {', '.join(directions)}"
        raise ConfigError(f"study {name!r} in {where} has {what}, not the study file's objectives "
                          f"{', '.join(objectives.names)} ({', '.join(objectives.directions)}); use another study name")
    stored = summary.user_attrs.get("micronet_fingerprint")
    if stored is not None and stored != fingerprint:
        raise ConfigError(f"study {name!r} in {where} was created with another search space; use another study "
                          f"name or the space it was made with")
