"""Ray Tune's search algorithm for a sweep: its fixed grid of trial points, handed out as each
seed's dense model becomes ready (:class:`sweeps.dense_phase.DensePhase`)."""
from __future__ import annotations

import json
from collections import deque

from ray.tune.search import ConcurrencyLimiter, SearchGenerator, Searcher

from analysis.schema import PARAM

from .dense_phase import DensePhase, current


class SeedGate(Searcher):
    """A Ray Tune searcher over the sweep's fixed grid of trial points, in grid order, that hands
    out a seed's trials only once its dense model exists (or its training failed: then its trials
    fail at once, naming why, and ``resume`` runs them again), and none while a dense training
    still waits for resources (:attr:`DensePhase.reserved`). The dense models are the driver's
    :class:`DensePhase` (:func:`active`), so this searcher's state is only which points it handed
    out (beginning with the points that ``done`` names, finished in an earlier session). The grid too
    is the active phase's (its config's trials), so that an experiment grown by ``prunesweep extend``
    hands out the grown grid."""

    def __init__(self, done: set[str] = frozenset()):
        super().__init__()
        self._points: list[dict] = []
        self._labels: list[str] = []
        self._given: set[str] = set(done)
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
        """What Ray Tune saves with its experiment state (``resume`` reads the trial folders instead)."""
        with open(checkpoint_path, "w") as f:
            json.dump({"given": sorted(self._given)}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            self._given = set(json.load(f)["given"])
        self._queues = None


class GridSearch(SearchGenerator):
    """Ray Tune's search algorithm over a :class:`SeedGate` of the points not ``done`` (limited to
    ``max_concurrent`` running trials when given)."""

    def __init__(self, max_concurrent: int | None = None, done: set[str] = frozenset()):
        gate = SeedGate(done)
        super().__init__(ConcurrencyLimiter(gate, max_concurrent=max_concurrent) if max_concurrent else gate)
