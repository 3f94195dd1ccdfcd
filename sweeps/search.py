"""Ray Tune's search algorithm for a sweep: its fixed grid of trials (one per trial point, or per
fused group of points: :mod:`sweeps.groups`), handed out as their seeds' dense models become ready
(:class:`sweeps.dense_phase.DensePhase`)."""
from __future__ import annotations

import json
from collections import deque

from ray.tune.search import ConcurrencyLimiter, SearchGenerator, Searcher

from .dense_phase import DensePhase, current


class SeedGate(Searcher):
    """A Ray Tune searcher over the sweep's fixed grid of trials (:class:`sweeps.groups.Unit`: a trial
    point, or a fused group of points), in grid order, that hands out a trial only once the dense
    models of all its seeds exist (or one's training failed: then the trial fails at once, naming
    why, and ``resume`` runs it again), and none while a dense training still waits for resources
    (:attr:`DensePhase.reserved`). The dense models are the driver's :class:`DensePhase`
    (:func:`active`), so this searcher's state is only which trials it handed out, by label
    (beginning with those whose points ``done`` names all, finished in an earlier session). The grid
    too is the active phase's (its config's trials), so that an experiment grown by ``prunesweep
    extend`` hands out the grown grid."""

    def __init__(self, done: set[str] = frozenset()):
        super().__init__()
        self._done = set(done)
        self._units: list = []
        self._given: set[str] = set()
        self._queue: deque | None = None  # grid positions not handed out, in order

    def _open(self, phase: "DensePhase") -> deque:
        if self._queue is None:
            self._units = list(phase.units)
            self._queue = deque(i for i, u in enumerate(self._units)
                                if u.label not in self._given and not set(u.labels) <= self._done)
        return self._queue

    def suggest(self, trial_id: str):
        phase = current()
        phase.poll()
        queue = self._open(phase)
        if not queue:
            return Searcher.FINISHED
        if not phase.reserved:
            return None
        settled = phase.ready | set(phase.failed)
        for i in queue:  # the earliest trial in grid order whose seeds may go
            unit = self._units[i]
            if unit.seeds <= settled:
                queue.remove(i)
                self._given.add(unit.label)
                return dict(unit.config)
        return None

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        """What Ray Tune saves with its experiment state (``resume`` reads the trial folders instead)."""
        with open(checkpoint_path, "w") as f:
            json.dump({"given": sorted(self._given), "done": sorted(self._done)}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            saved = json.load(f)
        self._given, self._done = set(saved["given"]), set(saved.get("done", []))
        self._queue = None


class GridSearch(SearchGenerator):
    """Ray Tune's search algorithm over a :class:`SeedGate` of the points not ``done`` (limited to
    ``max_concurrent`` running trials when given)."""

    def __init__(self, max_concurrent: int | None = None, done: set[str] = frozenset()):
        gate = SeedGate(done)
        super().__init__(ConcurrencyLimiter(gate, max_concurrent=max_concurrent) if max_concurrent else gate)
