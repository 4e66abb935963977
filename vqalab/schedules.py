"""Learning-rate schedules as pure functions of the optimizer step (nanoGPT's ``get_lr``)."""

from __future__ import annotations

import math

from vqalab.params import ScheduleConfig


def lr_factor(step: int, schedule: ScheduleConfig, steps_per_epoch: int, total_steps: int) -> float:
    """Multiplier of the peak LR at optimizer step ``step`` (0-based).

    Linear warm-up over ``warmup_steps``, then constant, step (×gamma every ``step_size`` epochs,
    as torch's StepLR stepped once per epoch) or cosine down to ``min_lr_ratio``.
    """
    if step < schedule.warmup_steps:
        return (step + 1) / schedule.warmup_steps
    if schedule.name == "constant":
        return 1.0
    if schedule.name == "step":
        epoch = step // max(steps_per_epoch, 1)
        return schedule.gamma ** (epoch // schedule.step_size)
    # cosine
    span = max(total_steps - schedule.warmup_steps, 1)
    progress = min((step - schedule.warmup_steps) / span, 1.0)
    return schedule.min_lr_ratio + (1 - schedule.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
