"""Pareto dominance, the one implementation: the early stoppers, the skip before training, the front, the hypervolume
and the benchmarks all compare points through here.

Every point is a tuple of **losses**, each minimized (:meth:`search.trial.objectives.Objectives.loss` turns a trial's
values into one: accuracy negated, costs as they are). Optuna keeps its own dominance and non-dominated sorting
private (``optuna.study._multi_objective``), so they are written once here; its hypervolume is public enough to use
(:func:`search.optuna_compat.hypervolume`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Point = Sequence[float]


def weakly_dominates(a: Point, b: Point) -> bool:
    """``a`` is no worse than ``b`` in every loss."""
    return all(x <= y for x, y in zip(a, b, strict=True))


def dominates(a: Point, b: Point) -> bool:
    """``a`` is no worse than ``b`` in every loss and better in one."""
    return weakly_dominates(a, b) and tuple(a) != tuple(b)


def non_dominated(points: Sequence[Point]) -> list[int]:
    """Indices of the points that no other point dominates (ties all kept), in their order."""
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]


def non_dominated_sort(points: Sequence[Point]) -> list[list[int]]:
    """The fronts of ``points``, best first: front k holds the indices dominated only by points of fronts < k."""
    remaining = list(range(len(points)))
    fronts: list[list[int]] = []
    while remaining:
        front = [remaining[i] for i in non_dominated([points[j] for j in remaining])]
        fronts.append(front)
        remaining = [i for i in remaining if i not in front]
    return fronts


def crowding_distance(front: Sequence[int], points: Sequence[Point]) -> dict[int, float]:
    """NSGA-II's crowding distance of each index of ``front``: infinite at the ends of every coordinate, else the sum
    over coordinates of the normalized gap between its two neighbours.

    The gaps do not depend on which way a coordinate points (a loss or the value it was turned from give the same
    distances); only which of several *tied* points is taken for an end does: along each coordinate the points are
    ordered by value, ties in the order of ``front``, and the first and the last are the ends."""
    distance = dict.fromkeys(front, 0.0)
    if not front:
        return distance
    for k in range(len(points[front[0]])):
        ordered = sorted(front, key=lambda i: points[i][k])
        span = points[ordered[-1]][k] - points[ordered[0]][k]
        distance[ordered[0]] = distance[ordered[-1]] = math.inf
        if span > 0:
            for j in range(1, len(ordered) - 1):
                distance[ordered[j]] += (points[ordered[j + 1]][k] - points[ordered[j - 1]][k]) / span
    return distance


def rank_order(points: Sequence[Point], spread: Sequence[Point] | None = None) -> list[int]:
    """Indices of ``points`` (losses), best first: by non-dominated front, then by crowding distance within the front
    (largest first), then by index.

    ``spread``: the coordinates the crowding distance is measured on, one tuple per point (default ``points``). They
    give the same distances as the losses, save for ties (:func:`crowding_distance`): MO-ASHA measures on (accuracy,
    costs), as it always did, so that a tie at a rung ends where it did."""
    spread = points if spread is None else spread
    order: list[int] = []
    for front in non_dominated_sort(points):
        crowding = crowding_distance(front, spread)
        order += sorted(front, key=lambda i: (-crowding[i], i))
    return order
