"""Which attempt of a trial point counts. Each point of a sweep runs once, but an interrupted sweep
leaves behind the trial folder it had started for a point, and ``resume`` continues that point in a
new trial (from the old folder's newest readable checkpoint): the point then has several attempts.

The one rule, for the analysis and for ``resume`` alike: a point's finished attempt counts, and the
others are superseded; two finished attempts of one point are a duplicate, refused
(:class:`DuplicateTrials`), so that no statistic ever rests on one; a point with no finished attempt
is where its furthest attempt got.

Needs only pyarrow, :mod:`analysis.storage` and :mod:`analysis.schema` (no pandas): the sweeps driver
reads an experiment's attempts with :func:`scan` before it runs what is missing.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Mapping

from . import storage
from .messages import one_line
from .schema import (BUDGET_EPOCHS, DIVERGED, EPOCH, LADDER, MEMBERS, PARAM, RESULT_FILE, RETRAIN, SCHEDULE, SCHEDULE_KIND,
                     SEED, TARGET_SPARSITY, TRIAL_ID, TRIAL_RESULTS_FILE, TrialPoint, is_finished)

POINT_FIELDS = (SCHEDULE, SCHEDULE_KIND, RETRAIN, TARGET_SPARSITY, SEED)


class DuplicateTrials(ValueError):
    """A trial point finished more than once in one experiment."""


@dataclass(frozen=True)
class Attempt:
    """One trial of a point: its id, the point's label (:attr:`analysis.schema.TrialPoint.label`),
    whether it finished, the last epoch it reported, whether it diverged, its folder in storage, and
    whether its reports are whole (its results file) or only Ray Tune's few numbers (``result.json``)."""

    trial_id: str
    point: str
    finished: bool
    epoch: int
    diverged: bool = False
    folder: str = ""
    whole: bool = True


def point_label(report: Mapping) -> str:
    """The label of the trial point a report belongs to (a ladder's reports share one, whatever rung)."""
    kind = report.get(SCHEDULE_KIND)
    target = None if kind == LADDER else report[TARGET_SPARSITY]
    retrain = report.get(RETRAIN)
    point = TrialPoint(report[SCHEDULE], kind or "", 0, target, int(report[SEED]),
                       retrain if isinstance(retrain, str) else "finetune")
    return point.label


def attempt(trial_id: str, last: Mapping, folder: str = "", whole: bool = True, budget=None) -> Attempt:
    """The attempt whose last report is ``last`` (the one with the highest epoch); ``budget(label)``
    gives the epoch budget of a point whose reports lack it (an older trial's; without it, such a
    trial counts as finished: :func:`analysis.schema.is_finished`)."""
    label = point_label(last)
    last = _filled(last, budget(label) if budget is not None else None)
    return Attempt(trial_id, label, bool(is_finished(last)), int(last[EPOCH]), last[DIVERGED], folder, whole)


def _filled(report: Mapping, fallback_budget=None) -> dict:
    """``report`` with a missing budget as ``fallback_budget`` or NaN and a missing or NaN
    ``diverged`` as False."""
    budget, diverged = report.get(BUDGET_EPOCHS), report.get(DIVERGED)
    if budget is None or budget != budget:
        budget = float("nan") if fallback_budget is None else fallback_budget
    return {**report, BUDGET_EPOCHS: budget,
            DIVERGED: diverged is not None and diverged == diverged and bool(diverged)}


def counted(attempts: Iterable[Attempt]) -> dict[str, Attempt]:
    """``{point: the attempt that counts}`` (the module's rule); raises :class:`DuplicateTrials`
    naming the points that finished more than once."""
    by_point: dict[str, list[Attempt]] = {}
    for a in attempts:
        by_point.setdefault(a.point, []).append(a)
    chosen, twice = {}, []
    for point, tries in sorted(by_point.items()):
        finished = sorted(a.trial_id for a in tries if a.finished)
        if len(finished) > 1:
            twice.append(f"{point} ({', '.join(finished)})")
            continue
        chosen[point] = max(tries, key=lambda a: (a.finished, a.whole, a.epoch, a.trial_id))
    if twice:
        more = f" and {len(twice) - 3} more" if len(twice) > 3 else ""
        raise DuplicateTrials(f"trial point(s) finished more than once, so their statistics would count them twice: "
                              f"{'; '.join(twice[:3])}{more}; keep one trial folder of each (move the others out "
                              "of the experiment) and analyse again")
    return chosen


def _last_reports(folder: str) -> list[tuple[str, dict, bool]]:
    """``(trial id, last report, whole)`` of each point a trial folder holds (several in a fused
    group's: :data:`analysis.schema.MEMBERS`), from its results file (whole), else from Ray Tune's
    ``result.json`` (a trial that had not reached its first checkpoint, or an older experiment's; a
    fused group's holds no point's own reports, so it counts as not begun); empty when neither
    holds a report that can be read."""
    results = storage.join(folder, TRIAL_RESULTS_FILE)
    if storage.is_file(results):
        try:
            import pyarrow.parquet as pq

            fs, p = storage.filesystem(results)
            table = pq.read_table(p, filesystem=fs)
            rows = table.select([c for c in (TRIAL_ID, EPOCH, BUDGET_EPOCHS, DIVERGED, *POINT_FIELDS)
                                 if c in table.column_names]).to_pylist()
            last: dict[str, dict] = {}
            for row in rows:
                seen = last.get(row[TRIAL_ID])
                if seen is None or row[EPOCH] > seen[EPOCH]:
                    last[row[TRIAL_ID]] = row
            if last:
                return [(trial_id, row, True) for trial_id, row in last.items()]
        except Exception as exc:  # cut short by a full disk or a killed writer: the folder's checkpoints may do
            print(f"warning: {results} cannot be read ({one_line(exc)}); its trial counts as unfinished",
                  flush=True)
    tune = storage.join(folder, RESULT_FILE)
    if not storage.is_file(tune):
        return []
    last = None
    for line in storage.read_bytes(tune).decode(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut off by a killed process
        if isinstance(row, dict) and row.get(EPOCH) is not None and (last is None or row[EPOCH] >= last[EPOCH]):
            last = row
    config = (last or {}).get("config") or {}
    if last is None or TRIAL_ID not in last or MEMBERS in config:
        return []
    point = config.get(PARAM) or {}
    return [(last[TRIAL_ID], {**point, **{k: v for k, v in last.items() if v is not None}}, False)]


def scan(path: str, budget=None) -> list[Attempt]:
    """Every trial attempt in the experiment at ``path`` (a folder or a URI), read from the trial
    folders' own files (``budget``: as for :func:`attempt`); folders with nothing readable are left out."""
    found = storage.files_named(path, TRIAL_RESULTS_FILE, RESULT_FILE)
    folders = sorted({storage.split(f)[0] for files in found.values() for f in files})
    with ThreadPoolExecutor(max_workers=16) as pool:  # an object store answers each folder in a round trip
        reports = list(pool.map(_last_reports, folders))
    return [attempt(trial_id, last, folder, whole, budget)
            for folder, hits in zip(folders, reports) for trial_id, last, whole in hits]
