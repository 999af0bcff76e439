"""The decisions a trial's steps take (:mod:`search.trial.pipeline`): refuse a twin, skip a candidate before training
(dominated, or predicted over the time cap), stop it during training (projected over the cap), and the rivals the
early stopper compares it with. Each returns the reason, or None to go on; :func:`prune` ends the trial with it."""

from __future__ import annotations

import numpy as np
import optuna
from optuna.trial import TrialState

from search import optuna_compat as compat
from search.pareto import weakly_dominates
from search.training.trainer import EpochResult
from search.trial import record
from search.trial.objectives import Objectives
from search.trial.record import TrialRecord
from search.trial.stopping import EarlyStopper, Finished


def prune(trial, reason: str):
    record.write(trial, pruned_reason=reason)
    raise optuna.TrialPruned(reason)


def twin_of(trial) -> str | None:
    """Why ``trial`` need not be trained: a finished trial, or a running one that started first, has its parameters.

    Called under the study's claim lock, after sampling: the trials that started earlier have all their
    parameters. Of two running twins only the later defers, so a candidate is trained once, never zero times. A
    retry of a failed trial (``failed_trial``) is the one legitimate repeat: its original is FAIL, a state not
    looked at here.
    """
    if trial.storage.get_trial_system_attrs(compat.trial_id(trial)).get("failed_trial") is not None:
        return None
    params = trial.params
    for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                            TrialState.RUNNING)):
        if t.number == trial.number or t.params != params:
            continue
        if t.state == TrialState.RUNNING:
            if t.number < trial.number:
                return f"same parameters as trial {t.number}, running"
        else:
            return f"same parameters as trial {t.number}, already {t.state.name.lower()}"
    return None


def known_before(objectives: Objectives, t) -> dict[str, float]:
    """A trial's before-training values: from its values when complete, else from its record."""
    if t.state == TrialState.COMPLETE:
        return {m.name: objectives.value(t, m.name) for m in objectives.before}
    r = TrialRecord.of(t)
    return objectives.before_values(r.before_values, r.score)


def dominated_before_training(trial, objectives: Objectives, stopper, costs: tuple[float, ...] | None) -> str | None:
    """Why a candidate cannot enter the front before it trains: a finished trial has every cost no worse and at
    least ``stopper.skip_accuracy`` (``stopper``: the study's StopperConfig). Only when every cost is known before
    training (a measured latency may still win)."""
    if not stopper.skip_dominated or costs is None or any(m.when != "before" for m in objectives.cost_objectives):
        return None
    for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        theirs = objectives.known_costs(known_before(objectives, t))
        accuracy = objectives.accuracy(t)
        if weakly_dominates(theirs, costs) and accuracy >= stopper.skip_accuracy:
            shown = ", ".join(f"{m.name} {a:.4g} <= {b:.4g}" for m, a, b in zip(objectives.before, theirs, costs,
                                                                                 strict=True))
            return (f"cannot enter the front: trial {t.number} has {shown} and accuracy {accuracy:.4f} >= "
                    f"{stopper.skip_accuracy:g}")
    return None


def predicted_too_long(trial, cap: float | None, images: int, epochs: int, macs: int) -> str | None:
    """With a cap (``max_trial_seconds``): the reason not to start a candidate whose training time, predicted from its
    MACs and the training throughput (MACs × images per second) of the trials finished so far, is over it; records
    ``predicted_train_s`` then. Until three trials have finished nothing is predicted; the per-epoch projection still
    bounds the first. ``images``: the training set's size; ``epochs``, ``macs``: the candidate's, dense."""
    if cap is None:
        return None
    rates = []
    for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        r = TrialRecord.of(t)
        trained = (r.epochs_run or 0) - (r.epochs_saved or 0)
        if r.train_s and r.dense_macs and trained > 0:
            rates.append(r.dense_macs * images * trained / r.train_s)
    if len(rates) < 3:
        return None
    predicted = macs * images * epochs / float(np.median(rates))
    if predicted <= cap:
        return None
    record.write(trial, predicted_train_s=predicted)
    return (f"predicted to train for {predicted:.0f} s ({epochs} epochs at the median MAC throughput of "
            f"{len(rates)} finished trials), over max_trial_seconds {cap:g}")


def projected_too_long(cap: float | None, report: EpochResult, trained: int, seconds: float) -> str | None:
    """With a cap (``max_trial_seconds``): the reason to stop a trial whose ``trained`` epochs so far, in ``seconds``,
    project past it."""
    if cap is None or report.epoch >= report.epochs:  # the last epoch is spent already: stopping saves nothing
        return None
    projected = seconds + seconds / trained * (report.epochs - report.epoch)
    if projected <= cap:
        return None
    return (f"projected to train for {projected:.0f} s ({seconds:.0f} s for its first {trained} epoch(s) of "
            f"{report.epochs}), over max_trial_seconds {cap:g}")


def rivals(stopper: EarlyStopper, objectives: Objectives, trial) -> list[Finished]:
    """The trials ``stopper`` compares ``trial`` with: the complete trials, or for a stopper that sees "all" every
    other trial with a learning curve (complete, stopped early, running)."""
    states = (TrialState.COMPLETE,) if stopper.sees != "all" else (
        TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    out = []
    for t in trial.study.get_trials(deepcopy=False, states=states):
        if t.number == trial.number or (stopper.sees == "all" and not t.intermediate_values):
            continue
        costs = objectives.known_costs(known_before(objectives, t))
        if costs is not None:
            out.append(Finished(costs, dict(t.intermediate_values), TrialRecord.of(t).dense_epochs))
    return out


def no_budget_for_base(trial, key: str, base, macs: int, timeout: float | None, n_trials: int | None,
                       epochs: int) -> str | None:
    """With ``base:`` (``base``: the study's BaseConfig): the reason not to train a new converged base for this
    candidate, whose base ``key`` is not stored (:func:`base_refusal`); records ``predicted_base_s`` when the time
    decides. A base another trial is training now is no new cost: the trial waits for it."""
    bases, workers = trained_bases([t for t in trial.study.get_trials(deepcopy=False) if t.number != trial.number])
    if key in bases:
        return None
    reason, predicted = base_refusal(bases, workers, base, macs, timeout, n_trials, epochs)
    if reason and predicted is not None:
        record.write(trial, predicted_base_s=predicted)
    return reason


def trained_bases(trials) -> tuple[dict[str, TrialRecord], int]:
    """The converged bases the ``trials`` trained or are training (key: the record of the trial that trains it), and
    how many workers ran them."""
    bases: dict[str, TrialRecord] = {}
    workers = set()
    for t in trials:
        r = TrialRecord.of(t)
        if r.worker:
            workers.add(r.worker)
        if r.base_key and r.base_reused is False:
            if r.base_key not in bases or r.base_train_s is not None:
                bases[r.base_key] = r
    return bases, max(1, len(workers))


def base_refusal(bases: dict[str, TrialRecord], workers: int, base, macs: int, timeout: float | None,
                 n_trials: int | None, epochs: int) -> tuple[str | None, float | None]:
    """(the reason a new base of ``macs`` dense MACs is over the bases' budget or None, its predicted seconds when
    the time decided). The first base is always trained; a new one is refused when

    * ``max_bases`` bases are trained or being trained;
    * with a ``timeout``: the bases' training time so far plus this one's (predicted from the seconds per dense MAC
      and epoch of the bases trained so far) would pass ``max_share`` of the workers' time (``timeout`` × workers);
    * with ``n_trials`` and no timeout: the bases' epochs would pass ``max_share`` of all epochs, the candidates'
      (``n_trials`` × ``epochs`` fine-tune epochs) and the bases' together.
    """
    if not bases:
        return None, None
    if base.max_bases is not None and len(bases) >= base.max_bases:
        return f"its architecture has no base, and the study's max_bases ({base.max_bases}) are trained", None
    share = base.max_share
    if timeout is None:
        if n_trials is None or share >= 1:
            return None, None
        most = max(1, int(share / (1 - share) * n_trials * epochs / base.epochs))
        if len(bases) < most:
            return None, None
        return (f"its architecture has no base, and {len(bases)} bases of {base.epochs} epochs are max_share "
                f"{share:g} of the study's epochs ({n_trials} trials of {epochs})"), None
    rates = [r.base_train_s / (r.dense_macs * r.base_epochs) for r in bases.values()
             if r.base_train_s and r.dense_macs and r.base_epochs]
    if not rates:
        return None, None
    rate = float(np.median(rates))
    spent = sum(r.base_train_s if r.base_train_s is not None else rate * (r.dense_macs or 0) * base.epochs
                for r in bases.values())
    predicted = rate * macs * base.epochs
    allowed = share * timeout * workers
    if spent + predicted <= allowed:
        return None, None
    if not predicted:
        return (f"its architecture has no base, and the bases took max_share {share:g} of the time ({spent:.0f} s "
                f"spent of {allowed:.0f} s)"), None
    return (f"its architecture has no base, and training one (predicted {predicted:.0f} s) would take the bases "
            f"past max_share {share:g} of the time ({spent:.0f} s spent of {allowed:.0f} s)"), predicted
