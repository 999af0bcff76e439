"""The one object the steps of a trial share (:mod:`search.trial.pipeline`): each step reads what the earlier ones
left here and adds its own."""

from __future__ import annotations

from dataclasses import dataclass, field

import optuna

from search.candidate.candidate import Candidate, Footprint
from search.trial.objectives import Subject


@dataclass
class TrialContext:
    trial: optuna.Trial
    start: float                                  # perf_counter when the trial started
    values: dict | None = None                    # the sampled parameters
    sample_s: float = 0.0                         # the sampler's share of the orchestration
    candidate: Candidate | None = None
    footprint: Footprint | None = None
    subject: Subject | None = None
    before: dict[str, float] = field(default_factory=dict)  # the objectives known before training, by name
    costs: tuple[float, ...] | None = None   # ... as the stoppers compare them (each minimized)
    base: dict | None = None                      # base: the converged base it is fine-tuned from (train_converged)
    bookkeeping_s: float = 0.0                    # seconds in the per-epoch bookkeeping: orchestration, not training
    epochs_trained: int = 0                       # epochs this trial trained itself (not a reused base's) ...
    trained_since: float = 0.0                    # ... since when (perf_counter)
    last_saved: float = 0.0                       # monotonic time of the last resume checkpoint (or the start)
