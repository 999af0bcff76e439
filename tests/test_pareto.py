"""search.pareto: the one dominance, non-dominated sort and crowding distance (points are losses, all minimized)."""

import math

import pytest

from search.pareto import crowding_distance, dominates, non_dominated, non_dominated_sort, rank_order, weakly_dominates


def test_equal_points_weakly_dominate_each_other_but_do_not_dominate():
    a, b = (0.1, 2.0, 3.0), (0.1, 2.0, 3.0)
    assert weakly_dominates(a, b) and weakly_dominates(b, a)
    assert not dominates(a, b) and not dominates(b, a)
    assert not dominates([0.1, 2.0], (0.1, 2.0))  # a list and a tuple of the same losses are the same point


def test_weak_against_strict_dominance():
    better_in_one = ((1.0, 2.0), (1.0, 3.0))  # equal in the first loss, lower in the second
    assert weakly_dominates(*better_in_one) and dominates(*better_in_one)
    assert not weakly_dominates(*reversed(better_in_one)) and not dominates(*reversed(better_in_one))
    trade = ((1.0, 3.0), (2.0, 2.0))  # each lower in one loss: neither dominates, not even weakly
    assert not weakly_dominates(*trade) and not weakly_dominates(*reversed(trade))
    assert not dominates(*trade) and not dominates(*reversed(trade))
    assert dominates((-0.9, 1.0), (-0.8, 1.0))  # a loss is minimized: -0.9 (accuracy 0.9) beats -0.8


def test_points_of_different_lengths_are_refused():
    with pytest.raises(ValueError):
        weakly_dominates((1.0, 2.0), (1.0, 2.0, 3.0))


def test_non_dominated_keeps_ties_in_their_order():
    points = [(2.0, 2.0), (1.0, 1.0), (3.0, 0.5), (1.0, 1.0), (1.5, 1.0)]
    assert non_dominated(points) == [1, 2, 3]  # both copies of (1, 1); (1.5, 1) is dominated by them
    assert non_dominated([]) == []


def test_three_objective_non_dominated_sort_has_the_known_fronts():
    points = [
        (1, 1, 1),  # 0: dominates everything but 5 (its copy) and 6 (a trade on the third loss)
        (2, 2, 2),  # 1: third front (4 beats it)
        (1, 2, 3),  # 2: dominated by 0 and 5 only: second front
        (3, 3, 3),  # 3: dominated by 1 (and 0, 2, 4)
        (2, 1, 2),  # 4: dominated by 0 and 5 only; ties 1 in two losses and wins the second
        (1, 1, 1),  # 5: a copy of 0, in the first front with it
        (5, 5, 0),  # 6: the best third loss
        (4, 4, 4),  # 7: below 3
    ]
    assert non_dominated_sort(points) == [[0, 5, 6], [2, 4], [1], [3], [7]]
    assert non_dominated_sort([]) == []


def test_crowding_distance_inside_a_front():
    # one front, two losses: the ends are infinite, the others sum their neighbours' normalized gaps
    points = [(0.0, 4.0), (1.0, 2.0), (3.0, 1.0), (4.0, 0.0)]
    d = crowding_distance([0, 1, 2, 3], points)
    assert d[0] == d[3] == math.inf
    assert d[1] == pytest.approx((3 - 0) / 4 + (4 - 1) / 4)
    assert d[2] == pytest.approx((4 - 1) / 4 + (2 - 0) / 4)
    assert rank_order(points) == [0, 3, 1, 2]  # ends first, then the larger distance (1: 1.5 against 2: 1.25)
    assert crowding_distance([], points) == {}


def test_rank_order_breaks_equal_crowding_by_index():
    # an evenly spaced front given out of order: the ends (1, 3) are tied at infinity, the three inside at 1.0
    points = [(2.0, 2.0), (4.0, 0.0), (1.0, 3.0), (0.0, 4.0), (3.0, 1.0)]
    d = crowding_distance(list(range(5)), points)
    assert [d[i] for i in (0, 2, 4)] == pytest.approx([1.0, 1.0, 1.0])
    assert rank_order(points) == [1, 3, 0, 2, 4]


def test_rank_order_goes_front_by_front():
    points = [(3.0, 3.0), (0.0, 2.0), (2.0, 0.0), (1.0, 1.0), (2.0, 2.0), (5.0, 5.0)]
    assert rank_order(points) == [1, 2, 3, 4, 0, 5]
    assert rank_order([]) == []


def test_tied_points_and_the_spread_the_crowding_is_measured_on():
    # (accuracy, score) of three trials: two copies of (0.6, 2.0) and (0.5, 1.0), all in the first front. The gaps
    # are the same on values and on losses; which copy is an end of the accuracy axis is not.
    values = [(0.6, 2.0), (0.6, 2.0), (0.5, 1.0)]
    losses = [(-a, s) for a, s in values]
    assert rank_order(losses) == [0, 1, 2]  # on losses the copies are the two ends of the accuracy axis in turn
    assert rank_order(losses, spread=values) == [1, 2, 0]  # on values, copy 0 is inside both axes
    assert crowding_distance([0, 1, 2], values)[0] == pytest.approx(2.0)
