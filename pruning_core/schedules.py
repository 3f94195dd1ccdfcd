"""Pruning schedules: the cumulative sparsity after each prune step."""
from __future__ import annotations

import math

SCHEDULE_KINDS = ("instant", "gradual", "cubic")


def check_sparsity(value, what: str = "sparsity") -> float:
    """Return ``value`` as float if it is in [0, 1), else raise a ValueError saying so."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number in [0, 1), got {value!r}") from None
    if math.isnan(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {value}")
    return value


def sparsity_schedule(kind: str, target: float, steps: int = 1) -> list[float]:
    """Cumulative sparsity after each of ``steps`` prunes; the last value is exactly ``target``.

    - ``instant``: ``[target]``
    - ``gradual``: ``1 - (1 - target) ** (i / steps)``: every step prunes the same fraction
      of the weights that remain.
    - ``cubic``: ``target * (1 - (1 - i / steps) ** 3)`` (Zhu & Gupta 2017).
    """
    target = check_sparsity(target, "target sparsity")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if kind == "instant":
        return [target]
    if kind == "gradual":
        values = [1.0 - (1.0 - target) ** (i / steps) for i in range(1, steps + 1)]
    elif kind == "cubic":
        values = [target * (1.0 - (1.0 - i / steps) ** 3) for i in range(1, steps + 1)]
    else:
        raise ValueError(f"schedule kind must be one of {', '.join(SCHEDULE_KINDS)}; got {kind!r}")
    values[-1] = target
    return values
