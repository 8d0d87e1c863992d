import math
from itertools import pairwise

import pytest

from deepstart.train.schedule import (
    ScheduleSpec,
    combine,
    constant,
    cosine,
    exponential,
    linear,
    one_cycle,
    one_cycle_momentum,
    step_decay,
    triangle,
)


def test_basic_shapes_exact():
    assert constant(0.3)(0.7) == 0.3
    assert linear(1.0, 3.0)(0.25) == 1.5
    assert cosine(1.0, 0.0)(0.0) == 1.0
    assert cosine(1.0, 0.0)(1.0) == 0.0
    assert cosine(1.0, 0.0)(0.5) == pytest.approx(0.5)
    assert exponential(1e-7, 10.0)(0.5) == pytest.approx(math.sqrt(1e-7 * 10))
    # progress outside [0, 1] is clipped, never extrapolated
    assert linear(1.0, 3.0)(1.5) == 3.0
    assert linear(1.0, 3.0)(-1) == 1.0


def test_one_cycle_matches_fastai_definition():
    s = one_cycle(0.1, pct_start=0.25, div=25, final_div=1e5)
    assert s(0.0) == pytest.approx(0.1 / 25)
    assert s(0.25) == pytest.approx(0.1)
    assert s(1.0) == pytest.approx(0.1 / 1e5)
    # half-way through warm-up: cosine midpoint between lr_max/div and lr_max
    assert s(0.125) == pytest.approx((0.1 / 25 + 0.1) / 2)
    # half-way through annealing
    assert s(0.625) == pytest.approx((0.1 + 0.1 / 1e5) / 2)
    # rises then falls
    values = [s(i / 100) for i in range(101)]
    peak = values.index(max(values))
    assert peak == 25
    assert all(a <= b for a, b in pairwise(values[: peak + 1]))
    assert all(a >= b for a, b in pairwise(values[peak:]))


def test_one_cycle_momentum_is_opposite():
    m = one_cycle_momentum((0.95, 0.85, 0.95), pct_start=0.3)
    assert m(0.0) == pytest.approx(0.95)
    assert m(0.3) == pytest.approx(0.85)
    assert m(1.0) == pytest.approx(0.95)


def test_step_decay_and_combine():
    s = step_decay(1.0, step_pcts=[0.5, 0.75], gamma=0.1)
    assert s(0.49) == 1.0
    assert s(0.5) == pytest.approx(0.1)
    assert s(0.8) == pytest.approx(0.01)
    c = combine([0.5, 0.5], [constant(1.0), linear(1.0, 0.0)])
    assert c(0.25) == 1.0
    assert c(0.75) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        combine([0.5, 0.4], [constant(1), constant(2)])


def test_triangle_is_airbench_straight_up_then_down():
    s = triangle(2.0, pct_start=0.25)
    assert s(0.0) == pytest.approx(0.4) and s(0.25) == pytest.approx(2.0)
    assert s(0.125) == pytest.approx(1.2)  # straight lines
    assert s(1.0) == pytest.approx(0.14) and s(0.625) == pytest.approx((2.0 + 0.14) / 2)
    spec = ScheduleSpec("triangle", pct_start=0.5)
    assert spec.lr(1.0)(0.5) == pytest.approx(1.0) and spec.momentum((0.95, 0.85, 0.95)) is None


def test_schedule_spec_by_name():
    assert ScheduleSpec("constant").lr(0.2)(0.9) == 0.2
    assert ScheduleSpec("one_cycle").lr(0.2)(0.25) == pytest.approx(0.2)
    assert ScheduleSpec("cosine", final_div=10).lr(1.0)(1.0) == pytest.approx(0.1)
    assert ScheduleSpec("constant").momentum((0.95, 0.85, 0.95)) is None
    with pytest.raises(ValueError, match="unknown schedule"):
        ScheduleSpec("bogus").lr(0.1)
