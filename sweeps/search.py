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
        self._queues: dict | None = None  # a unit's seeds -> its grid positions not handed out, in order

    def _open(self, phase: "DensePhase") -> dict:
        if self._queues is None:
            self._units = list(phase.units)
            self._queues = {}
            for i, unit in enumerate(self._units):
                if unit.label not in self._given and not set(unit.labels) <= self._done:
                    self._queues.setdefault(unit.seeds, deque()).append(i)
        return self._queues

    def suggest(self, trial_id: str):
        phase = current()
        phase.poll()
        queues = self._open(phase)
        settled = phase.ready | set(phase.failed)
        ready = [q for seeds, q in queues.items() if q and phase.reserved and seeds <= settled]
        if ready:  # the earliest trial in grid order among those whose seeds may go
            unit = self._units[min(ready, key=lambda q: q[0]).popleft()]
            self._given.add(unit.label)
            return dict(unit.config)
        return None if any(queues.values()) else Searcher.FINISHED

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
        self._queues = None


class GridSearch(SearchGenerator):
    """Ray Tune's search algorithm over a :class:`SeedGate` of the points not ``done`` (limited to
    ``max_concurrent`` running trials when given)."""

    def __init__(self, max_concurrent: int | None = None, done: set[str] = frozenset()):
        gate = SeedGate(done)
        super().__init__(ConcurrencyLimiter(gate, max_concurrent=max_concurrent) if max_concurrent else gate)
