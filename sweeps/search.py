"""Ray Tune's search algorithm for a sweep: its fixed grid of trial points, handed out as each
seed's dense model becomes ready (:class:`sweeps.dense_phase.DensePhase`)."""
from __future__ import annotations

import pickle
from collections import deque

from ray.tune.search import ConcurrencyLimiter, SearchGenerator, Searcher

from analysis.schema import PARAM

from . import ray_private
from .dense_phase import DensePhase, current


class SeedGate(Searcher):
    """A Ray Tune searcher over the sweep's fixed grid of trial points, in grid order, that hands
    out a seed's trials only once its dense model exists (or its training failed: then its trials
    fail at once, naming why, and ``resume`` runs them again), and none while a dense training
    still waits for resources (:attr:`DensePhase.reserved`). The dense models are the driver's
    :class:`DensePhase` (:func:`active`), so this searcher's state is only which points it handed
    out, saved with the experiment for ``resume``. The grid too is the active phase's (its config's
    trials), so that an experiment restored after ``prunesweep extend`` hands out the grown grid."""

    def __init__(self):
        super().__init__()
        self._points: list[dict] = []
        self._labels: list[str] = []
        self._given: set[str] = set()
        self._queues: dict[int, deque] | None = None  # seed -> grid positions not handed out, in order

    def _open(self, phase: "DensePhase") -> dict[int, deque]:
        if self._queues is None:
            points = phase.points
            self._points, self._labels = [p.to_dict() for p in points], [p.label for p in points]
            self._queues = {}
            for i, point in enumerate(self._points):
                if self._labels[i] not in self._given:
                    self._queues.setdefault(point["seed"], deque()).append(i)
        return self._queues

    def suggest(self, trial_id: str):
        phase = current()
        phase.poll()
        queues = self._open(phase)
        ready = [q for seed, q in queues.items()
                 if q and phase.reserved and (seed in phase.ready or seed in phase.failed)]
        if ready:  # the earliest point in grid order among the seeds that may go
            i = min(ready, key=lambda q: q[0]).popleft()
            self._given.add(self._labels[i])
            return {PARAM: dict(self._points[i])}
        return None if any(queues.values()) else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"given": sorted(self._given)}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self._given = set(pickle.load(f)["given"])
        self._queues = None


class GridSearch(SearchGenerator):
    """Ray Tune's search algorithm over a :class:`SeedGate` (limited to ``max_concurrent`` running
    trials when given). Restored, it asks its gate again instead of keeping a saved "finished": an
    experiment's grid may have grown since (``prunesweep extend``); a gate with nothing left to
    hand out says so at once."""

    def __init__(self, max_concurrent: int | None = None):
        gate = SeedGate()
        super().__init__(ConcurrencyLimiter(gate, max_concurrent=max_concurrent) if max_concurrent else gate)

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        ray_private.reopen_search(self)
