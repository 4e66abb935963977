"""LR schedules are pure functions of the step: checked at warm-up, peak and end against hand values,
and against what the optimizer actually uses inside ``LambdaLR``."""

import itertools
import math

import pytest
import torch

from vqalab.params import ScheduleConfig
from vqalab.schedules import lr_factor

STEPS_PER_EPOCH = 10
TOTAL = 100


def test_warmup_rises_linearly_to_the_peak():
    s = ScheduleConfig(name="constant", warmup_steps=4)
    assert [lr_factor(i, s, STEPS_PER_EPOCH, TOTAL) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_constant_without_warmup_is_one_everywhere():
    s = ScheduleConfig(name="constant")
    assert {lr_factor(i, s, STEPS_PER_EPOCH, TOTAL) for i in (0, 50, 99, 1000)} == {1.0}


def test_cosine_peak_middle_and_end():
    s = ScheduleConfig(name="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(9, s, STEPS_PER_EPOCH, TOTAL) == 1.0  # last warm-up step reaches the peak
    assert lr_factor(10, s, STEPS_PER_EPOCH, TOTAL) == pytest.approx(1.0)  # cosine starts at the peak
    assert lr_factor(55, s, STEPS_PER_EPOCH, TOTAL) == pytest.approx(0.1 + 0.9 * 0.5)  # half way
    assert lr_factor(TOTAL, s, STEPS_PER_EPOCH, TOTAL) == pytest.approx(0.1)  # the floor at the end ...
    assert lr_factor(TOTAL + 50, s, STEPS_PER_EPOCH, TOTAL) == pytest.approx(0.1)  # ... and after it


def test_cosine_matches_closed_form_and_decreases():
    s = ScheduleConfig(name="cosine")
    values = [lr_factor(i, s, STEPS_PER_EPOCH, TOTAL) for i in range(TOTAL + 1)]
    for i in (0, 13, 37, 80):
        assert values[i] == pytest.approx(0.5 * (1 + math.cos(math.pi * i / TOTAL)))
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_step_drops_by_gamma_every_step_size_epochs():
    s = ScheduleConfig(name="step", step_size=3, gamma=0.5)
    per_epoch = [lr_factor(e * STEPS_PER_EPOCH, s, STEPS_PER_EPOCH, TOTAL) for e in range(8)]
    assert per_epoch == [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25]
    # within an epoch the LR does not move
    assert lr_factor(3 * STEPS_PER_EPOCH + 9, s, STEPS_PER_EPOCH, TOTAL) == 0.5


def test_optimizer_sees_the_schedule_step_by_step():
    """LambdaLR applies lr_factor(k) during optimizer step k (0-based), as the docstring says."""
    s = ScheduleConfig(name="cosine", warmup_steps=3)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(k, s, STEPS_PER_EPOCH, 20))
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.2 * lr_factor(k, s, STEPS_PER_EPOCH, 20) for k in range(20)])
    assert seen[:3] == pytest.approx([0.2 / 3, 0.4 / 3, 0.2])
