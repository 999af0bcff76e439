"""Which trial(s) of a study to export: a trial number, bounds on accuracy and latency, the front's knee, or
an ensemble's members."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from search.export.errors import ExportError
from search.results.front import front_trials
from search.trial.objectives import DEFAULT as DEFAULT_OBJECTIVES
from search.trial.objectives import Objectives
from search.trial.record import TrialRecord


def select_trial(study: optuna.Study, trial: int | None = None, min_accuracy: float | None = None,
                 knee: bool = False, max_latency_ms: float | None = None,
                 mixed_hardware: bool = False, max_score: float | None = None) -> FrozenTrial:
    """The trial to export: exactly one of ``trial`` (a number), bounds (``min_accuracy``, ``max_score``,
    ``max_latency_ms``, any of them together) or ``knee``.

    - ``trial``: that trial, which must be complete with a checkpoint (it need not be on the front);
    - ``min_accuracy``: the front member with the lowest first cost (the score) whose validation accuracy is at
      least ``min_accuracy`` (and within the other bounds, if given);
    - ``max_score`` or ``max_latency_ms`` without ``min_accuracy``: the most accurate front member within them
      (what a user who allows a score of 0.03 deploys);
    - ``knee``: the front's knee, see :func:`knee_trial`.
    """
    bounds = min_accuracy is not None or max_latency_ms is not None or max_score is not None
    if sum((trial is not None, bounds, bool(knee))) != 1:
        raise ExportError("choose the trial with exactly one of --trial N, --knee, or bounds (--min-accuracy A, "
                          "--max-score S, --max-latency-ms L, alone or together)")
    if trial is not None:
        return trial_with_checkpoint(study, trial)
    front = _front(study, mixed_hardware)
    objectives = Objectives.of_study(study)
    if knee:
        return knee_trial(front, objectives)
    if min_accuracy is not None and not 0 <= min_accuracy <= 1:
        raise ExportError(f"--min-accuracy is a validation accuracy in [0, 1], got {min_accuracy:g}")
    if max_latency_ms is not None and objectives.get("latency") is None:
        raise ExportError(f"--max-latency-ms: study {study.study_name!r} does not measure latency (its objectives: "
                          f"{', '.join(objectives.names)}); add latency to the study file's objectives")
    if max_score is not None and (objectives.get("score") is None or not max_score > 0):
        raise ExportError(f"--max-score is a score > 0 and needs the score objective (study {study.study_name!r} "
                          f"has {', '.join(objectives.names)}), got {max_score:g}")
    fits = [t for t in front  # sorted by the first cost, lowest first
            if (min_accuracy is None or objectives.accuracy(t) >= min_accuracy)
            and (max_score is None or objectives.value(t, "score") <= max_score)
            and (max_latency_ms is None or objectives.value(t, "latency") <= max_latency_ms)]
    if fits:
        return fits[0] if min_accuracy is not None else max(fits, key=lambda t: (objectives.accuracy(t), -t.number))
    if min_accuracy is not None and not any(objectives.accuracy(t) >= min_accuracy for t in front):
        best = max(front, key=lambda t: (objectives.accuracy(t), -objectives.first_cost(t)))
        raise ExportError(f"no Pareto-front member of study {study.study_name!r} reaches validation accuracy "
                          f"{min_accuracy:g}; the best is {objectives.accuracy(best):.4f} (trial {best.number})")
    if max_score is not None and not any(objectives.value(t, "score") <= max_score for t in front):
        lowest = min(front, key=lambda t: (objectives.value(t, "score"), t.number))
        raise ExportError(f"no Pareto-front member of study {study.study_name!r} has a score <= {max_score:g}; the "
                          f"lowest is {objectives.value(lowest, 'score'):.4g} (trial {lowest.number})")
    if max_latency_ms is None:
        raise ExportError(f"no Pareto-front member of study {study.study_name!r} has both validation accuracy >= "
                          f"{min_accuracy:g} and a score <= {max_score:g}")
    fastest = min(front, key=lambda t: objectives.value(t, "latency"))
    raise ExportError(f"no Pareto-front member of study {study.study_name!r} meets "
                      f"{'validation accuracy ' + format(min_accuracy, 'g') + ' and ' if min_accuracy else ''}"
                      f"latency {max_latency_ms:g} ms; the fastest takes {objectives.value(fastest, 'latency'):.3f} ms "
                      f"(trial {fastest.number})")


def knee_trial(front: Sequence[FrozenTrial], objectives: Objectives | None = None) -> FrozenTrial:
    """The knee of a front.

    Two objectives (accuracy and a cost): with three or more members both are normalized over the front to [0, 1]
    and the knee is the member farthest from the straight line between the two extreme members (the lowest and the
    highest cost); a tie goes to the lower cost. With one or two members (or a front that is a straight line) there
    is no bend: the knee is then the member with the most validation accuracy per unit of cost (accuracy / cost),
    the best balance of the two; a zero cost counts as infinitely efficient.

    More objectives: a line between two extremes has no N-D counterpart that keeps its meaning, so the knee is the
    member closest (Euclidean) to the ideal point after each objective is normalized over the front to [0, 1], best
    at 1 (compromise programming); ties go to the lower first cost.
    """
    if not front:
        raise ExportError("the Pareto front is empty: no completed trial yet")
    objectives = objectives or Objectives.parse(DEFAULT_OBJECTIVES)
    members = sorted(front, key=lambda t: (objectives.first_cost(t), -objectives.accuracy(t), t.number))
    if len(objectives) > 2:
        return _ideal_nearest(members, objectives)
    cost = objectives.cost_objectives[0].name
    if len(members) >= 3:
        acc = np.array([objectives.accuracy(t) for t in members], dtype=np.float64)
        score = np.array([objectives.value(t, cost) for t in members], dtype=np.float64)
        a = (acc - acc.min()) / (np.ptp(acc) or 1.0)
        s = (score - score.min()) / (np.ptp(score) or 1.0)
        (s0, a0), (s1, a1) = (s[0], a[0]), (s[-1], a[-1])
        length = math.hypot(s1 - s0, a1 - a0)
        if length > 0:
            distance = np.abs((s1 - s0) * (a0 - a) - (s0 - s) * (a1 - a0)) / length
            best = int(np.argmax(distance))  # the first maximum: the lowest score among ties
            if distance[best] > 1e-12:
                return members[best]
    return max(members, key=lambda t: (_efficiency(objectives, t), -objectives.first_cost(t), -t.number))


def _efficiency(objectives: Objectives, t: FrozenTrial) -> float:
    accuracy, cost = objectives.accuracy(t), objectives.first_cost(t)
    return math.inf if cost <= 0 else accuracy / cost


def _ideal_nearest(members: list[FrozenTrial], objectives: Objectives) -> FrozenTrial:
    goodness = np.array([[-x for x in objectives.loss(t.values)] for t in members], dtype=np.float64)
    span = np.ptp(goodness, axis=0)
    normalized = (goodness - goodness.min(axis=0)) / np.where(span > 0, span, 1.0)
    distance = np.linalg.norm(1.0 - normalized, axis=1)
    return members[int(np.argmin(distance))]  # the first minimum: members are sorted by the first cost


def select_members(study: optuna.Study, trials: Sequence[int] | None = None, top_k: int | None = None
                   ) -> list[FrozenTrial]:
    """An ensemble's members: the given trial numbers, or the ``top_k`` front members with the best accuracy.

    Given trials must be complete with a checkpoint; they need not be on the front (the card says which are).
    ``top_k`` breaks accuracy ties by the lower score. At least two members are needed.
    """
    if (trials is None) == (top_k is None):
        raise ExportError("choose the members with exactly one of --trials N,N,... or --top-k K")
    if trials is not None:
        numbers = list(trials)
        repeated = sorted({n for n in numbers if numbers.count(n) > 1})
        if repeated:
            raise ExportError(f"trial {repeated[0]} is given twice; each member once")
        if len(numbers) < 2:
            raise ExportError(f"an ensemble needs at least 2 members, got {len(numbers)}; export one model with "
                              f"'micronet-search export --trial N'")
        return [trial_with_checkpoint(study, n) for n in numbers]
    if top_k < 2:
        raise ExportError(f"--top-k must be at least 2 (an ensemble of one is 'micronet-search export'), got {top_k}")
    front = _front(study)
    if top_k > len(front):
        raise ExportError(f"--top-k {top_k}: the Pareto front of study {study.study_name!r} has only {len(front)} "
                          f"member{'s' if len(front) != 1 else ''} (trials "
                          f"{', '.join(str(t.number) for t in front)})")
    objectives = Objectives.of_study(study)
    ranked = sorted(front, key=lambda t: (-objectives.accuracy(t), objectives.first_cost(t), t.number))
    return [require_checkpoint(t) for t in ranked[:top_k]]


def trial_with_checkpoint(study: optuna.Study, number: int) -> FrozenTrial:
    trials = study.get_trials(deepcopy=False)
    match = [t for t in trials if t.number == number]
    if not match:
        known = f"trials 0..{max(t.number for t in trials)}" if trials else "no trials"
        raise ExportError(f"study {study.study_name!r} has no trial {number} ({known})")
    return require_checkpoint(match[0])


def require_checkpoint(t: FrozenTrial) -> FrozenTrial:
    """``t``, if it completed with a checkpoint; else an :class:`ExportError` saying why not."""
    if t.state != TrialState.COMPLETE:
        reason = TrialRecord.of(t).pruned_reason
        why = f" (pruned_reason: {reason})" if reason else ""
        raise ExportError(f"trial {t.number} is {t.state.name}{why}; only completed trials have a checkpoint")
    if not TrialRecord.of(t).checkpoint_artifact_id:
        raise ExportError(f"trial {t.number} is COMPLETE but has no checkpoint (no checkpoint_artifact_id user "
                          f"attribute); it was not run by micronet-search")
    return t


def _front(study: optuna.Study, mixed_hardware: bool = False) -> list[FrozenTrial]:
    front = front_trials(study, mixed_hardware)
    if not front:
        raise ExportError(f"study {study.study_name!r} has no Pareto front yet: no feasible completed trial")
    return front
