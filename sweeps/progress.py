"""One line of progress at a steady interval for long sweeps, beside Ray Tune's table."""
from __future__ import annotations

import os
import time

from ray.tune import Callback

from analysis.schema import tune_points

from . import ray_metrics
from .groups import trial_name

INTERVAL_ENV = "PRUNESWEEP_PROGRESS_S"
INTERVAL_S = 30.0
METRICS_S = 5.0  # the counts as Ray metrics (with ``experiment``): at most this often


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = int(round(seconds / 60))
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


class ProgressLine(Callback):
    """Every ``interval`` seconds (``PRUNESWEEP_PROGRESS_S``, default 30): trials done, running,
    waiting (for resources or for their seed's dense model) and failed out of the sweep's whole
    grid (``done_before`` of them finished in earlier sessions), and an ETA from the rate at which
    trials have finished so far in this session. With ``weight`` (a fused sweep's: how many trial
    points a Ray Tune trial trains), it counts trial points, and the running fused trials. With
    ``experiment`` (its name), the counts are Ray metrics too (:func:`sweeps.ray_metrics.points`),
    updated every :data:`METRICS_S` seconds."""

    def __init__(self, trials: int, interval: float | None = None, done_before: int = 0, weight=None,
                 experiment: str | None = None):
        self.trials, self.done_before, self.weight, self.experiment = trials, done_before, weight, experiment
        self.interval = float(os.environ.get(INTERVAL_ENV, INTERVAL_S)) if interval is None else interval
        self._start = self._last = self._counted = time.monotonic()
        self._done_at_start = None

    def counts(self, trials) -> tuple[dict[str, int], int]:
        """Trials (or trial points) by state (:data:`sweeps.ray_metrics.POINT_STATES`) among Tune's
        ``trials`` and those done before, and how many Tune trials run."""
        count = {"TERMINATED": 0, "RUNNING": 0, "ERROR": 0}
        groups = 0
        for trial in trials:
            count[trial.status] = count.get(trial.status, 0) + (self.weight(trial) if self.weight else 1)
            groups += trial.status == "RUNNING"
        done, running, failed = count["TERMINATED"] + self.done_before, count["RUNNING"], count["ERROR"]
        return {"done": done, "running": running, "waiting": self.trials - done - running - failed,
                "failed": failed}, groups

    def line(self, trials, now: float, counted: tuple[dict[str, int], int] | None = None) -> str:
        """The progress line for Tune's ``trials`` at time ``now`` (``time.monotonic()``), from their
        :meth:`counts` where given."""
        states, groups = counted or self.counts(trials)
        done, running, waiting, failed = (states[k] for k in ("done", "running", "waiting", "failed"))
        if self._done_at_start is None:
            self._done_at_start = done  # finished in an earlier session: no measure of this one's speed
        finished_here, elapsed = done - self._done_at_start, now - self._start
        if waiting + running == 0:
            eta = "all ended"
        elif finished_here and elapsed > 0:
            eta = f"ETA {_duration((waiting + running) * elapsed / finished_here)}"
        else:
            eta = "ETA after the first trial ends"
        what, inside = ("trial points", f" (in {groups} fused trials)") if self.weight else ("trials", "")
        return (f"[prunesweep] {what}: {done} done, {running} running{inside}, {waiting} waiting, {failed} failed "
                f"of {self.trials}; {_duration(elapsed)} elapsed; {eta}")

    def on_step_end(self, iteration: int, trials, **info) -> None:
        now = time.monotonic()
        due = now - self._last >= self.interval
        # the first counts note how many had ended before this session
        if self._done_at_start is None or due or now - self._counted >= METRICS_S:
            self._counted = now
            counted = self.counts(trials)
            text = self.line(trials, now, counted)
            if self.experiment is not None:
                ray_metrics.points(self.experiment, counted[0])
            if due:
                self._last = now
                print(text, flush=True)

    def on_trial_complete(self, iteration: int, trials, trial, **info) -> None:
        if self.experiment is not None:  # its worker has gone, and may not have exported its last epoch
            ray_metrics.trial_ended(self.experiment, trial_name(trial.trial_id, trial.config),
                                    [p.label for p in tune_points(trial.config)])
