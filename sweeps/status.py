"""``prunesweep status EXPERIMENT``: where a sweep stands, while it runs or after it, from the
experiment's own files alone (a local folder or an ``s3://`` URI, through :mod:`analysis.storage`).

Per arm: its trial points done, diverged, running (at which epoch of their budget), interrupted,
failed and waiting; the dense models per seed; a total; and, while points remain, how to continue.
Nothing here starts or connects to Ray, imports ray or torch, or unpickles anything, so a status
may be read beside a running sweep or long after it: it costs a read of each trial folder's results
file (as ``resume``'s own scan of the experiment does) and of the Ray Tune files of unfinished ones.

What the files say, and how it is read:

- A point's attempts are its trial folders (a fused group's folder holds several points:
  :data:`analysis.schema.MEMBERS`). A finished attempt (:func:`analysis.schema.is_finished`) makes
  the point done, or diverged (:data:`analysis.schema.DIVERGED`), whatever its other attempts say:
  the rule of :mod:`analysis.attempts`. An attempt's epoch is the furthest its results file or
  Ray Tune's ``result.json`` has reached.
- Whether a driver runs the experiment is its lease (:data:`analysis.schema.LOCK_FILE`, written and
  renewed by :mod:`sweeps.lock`), judged live or stale by :mod:`analysis.lease`'s rule, the lock's
  own. Without a live lease nothing runs: an unfinished attempt is *interrupted* (``resume``
  continues it from its newest checkpoint). With one, an unfinished attempt whose files were
  written since the driver took the lease is *running*; an older one is *waiting* (the driver runs
  every unfinished point again).
- An attempt failed for good when Ray Tune's ``error.txt`` in its folder counts more failures than
  the experiment's ``max_failures`` (Tune retries a trial that many times).
- A dense model is *trained* once ``dense/seed_<n>.pt`` exists; *in training* while its checkpoint
  (``seed_<n>.checkpoint.pt``, a fused group's ``seeds_<a>_<b>.checkpoint.pt``) is written by a live
  driver, its epoch read from the checkpoint's pickle opcodes without loading it; *interrupted*
  when no driver holds it; *failed* when a trial of its seed failed without its model (a seed's trials
  are handed out only once its model exists or its training failed for good, and then fail at once:
  :mod:`sweeps.search`).
"""
from __future__ import annotations

import argparse
import json
import pickletools
import re
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import pyarrow.fs as pafs

from analysis import attempts, storage
from analysis import lease as leases
from analysis.experiment_file import NotAnExperiment, read_experiment_file
from analysis.messages import count, one_line, seed_text
from analysis.schema import (BUDGET_EPOCHS, CONFIG_FILE, DENSE_DIR, EPOCH, FUSION, FUSION_SIZE, MEMBERS, PARAM,
                             RESULT_FILE, TRIAL_RESULTS_FILE, TrialPoint, arm, dense_file, trial_points, tune_points)

# Ray Tune's own files in a trial folder: its config (written when the trial starts) and its errors
# ("Failure # <n> (occurred at ...)" and the error, once per failure)
PARAMS_FILE = "params.json"
ERROR_FILE = "error.txt"
FOLDER_FILES = (TRIAL_RESULTS_FILE, RESULT_FILE, PARAMS_FILE, ERROR_FILE)  # the files status reads in a trial folder

# an attempt written up to this long before its driver took the lease still counts as this driver's
# (clocks of an object store and a driver differ a little)
CLOCK_SLACK_S = 2.0

STATES = ("done", "diverged", "running", "interrupted", "failed", "waiting")
DENSE_STATES = ("trained", "in training", "interrupted", "failed", "not started")
_FAILURE = re.compile(rb"^Failure # (\d+)", re.MULTILINE)
_DENSE_CHECKPOINT = re.compile(r"^seeds?_(\d+(?:_\d+)*)\.checkpoint\.pt$")
_SHOWN_EPOCHS = 3  # running points whose epoch an arm's line shows


# ------------------------------------------------------------------ the lease
@dataclass(frozen=True)
class LeaseState:
    """Who holds the experiment: ``live`` (a driver runs it now), described by ``holder``, since
    ``since`` (seconds since the epoch); or ``note`` on a lease that no longer counts (empty: none)."""

    live: bool = False
    holder: str = ""
    since: float = 0.0
    note: str = ""


def read_lease(path: str, now: float | None = None) -> LeaseState:
    """The experiment's lease (:data:`analysis.schema.LOCK_FILE`) as :mod:`analysis.lease` judges it."""
    found = leases.judge(leases.lease_file(path), now)
    if found.live:
        return LeaseState(True, found.holder, found.since)
    if found.lease is None:
        return LeaseState()
    if not found.lease:
        return LeaseState(note=f"its lease is stale: {found.stale}")
    return LeaseState(note=f"the lease of {found.holder} is stale: {found.stale}")


# ------------------------------------------------------------------ trial folders
@dataclass(frozen=True)
class FolderAttempt:
    """One point's attempt in one trial folder: whether it finished (and diverged), the furthest epoch
    its files show of its ``budget``, how often Ray Tune saw its trial fail, and when its folder's
    files were last written (0: not asked, the attempt finished)."""

    point: str
    folder: str
    finished: bool
    diverged: bool
    epoch: int
    budget: int | None
    failures: int = 0
    touched: float = 0.0


def _read(folder: str, name: str) -> bytes:
    """A file of a trial folder; empty when it went since the listing (Ray Tune replaces its files)."""
    try:
        return storage.read_bytes(storage.join(folder, name))
    except FileNotFoundError:
        return b""


def _tune_progress(folder: str, has: set[str]) -> tuple[dict | None, int, int | None]:
    """``(Tune config, last epoch, budget)`` of a trial folder from Ray Tune's files: its config from
    ``params.json`` (else ``result.json``'s), its epoch and budget from ``result.json`` (a fused
    group's: the group's epoch)."""
    config, epoch, budget = None, 0, None
    if RESULT_FILE in has:
        for line in _read(folder, RESULT_FILE).decode(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut off by a killed process
            if not isinstance(row, dict):
                continue
            config = row.get("config") if isinstance(row.get("config"), dict) else config
            if isinstance(row.get(EPOCH), int) and row[EPOCH] >= epoch:
                epoch = row[EPOCH]
                budget = row.get(BUDGET_EPOCHS) if isinstance(row.get(BUDGET_EPOCHS), int) else budget
    if PARAMS_FILE in has:
        try:
            params = json.loads(_read(folder, PARAMS_FILE) or b"null")
            config = params if isinstance(params, dict) else config
        except ValueError:
            pass  # cut short while written: result.json's config, if any
    return config, epoch, budget


def _failures(folder: str) -> int:
    """How often Ray Tune recorded the folder's trial failing (its ``error.txt``)."""
    counts = [int(n) for n in _FAILURE.findall(_read(folder, ERROR_FILE))]
    return max(counts, default=0)


def _written(info: pafs.FileInfo) -> float | None:
    """When a listed file was written, where its listing says (None: it does not)."""
    return info.mtime.timestamp() if info.mtime is not None else None


def _touched(folder: str, listed: dict[str, float | None]) -> float:
    """When the newest of the folder's ``listed`` files (:func:`trial_files`) was written: as the
    listing says, else asked of each (0: none is there any more)."""
    times = []
    for name, written in listed.items():
        if written is None:
            try:
                written = storage.modified(storage.join(folder, name))
            except (OSError, AttributeError):  # removed since the listing (pyarrow: no mtime for a missing file)
                continue
        times.append(written)
    return max(times, default=0.0)


def _read_folder(folder: str, listed: dict[str, float | None]) -> list[FolderAttempt]:
    """The attempts of the points a trial folder trains (``listed``: its files, :func:`trial_files`).
    A folder whose points all finished costs its results file only; an unfinished one its Ray Tune
    files too."""
    has = set(listed)
    reports = attempts._last_reports(folder) if has & {TRIAL_RESULTS_FILE, RESULT_FILE} else []
    found = {}
    for trial_id, last, whole in reports:
        a = attempts.attempt(trial_id, last, folder, whole)
        budget = last.get(BUDGET_EPOCHS)
        found[a.point] = FolderAttempt(a.point, folder, a.finished, a.diverged, a.epoch,
                                       int(budget) if isinstance(budget, (int, float)) and budget == budget else None)
    if found and all(a.finished for a in found.values()):
        return list(found.values())
    config, epoch, budget = _tune_progress(folder, has)
    failures = _failures(folder) if ERROR_FILE in has else 0
    touched = _touched(folder, listed)
    try:
        labels = [p.label for p in tune_points(config)] if config and (PARAM in config or MEMBERS in config) else []
    except (KeyError, TypeError, ValueError):
        labels = []  # not a trial of ours
    out = []
    for label in dict.fromkeys([*found, *labels]):
        a = found.get(label)
        if a is not None and a.finished:
            out.append(a)
            continue
        out.append(FolderAttempt(label, folder, False, False, max(a.epoch if a else 0, epoch),
                                 (a.budget if a else None) or budget, failures, touched))
    return out


def trial_files(path: str) -> dict[str, dict[str, float | None]]:
    """``{trial folder: {file: when written}}`` of the files status reads (:data:`FOLDER_FILES`) in
    the trial folders of the experiment at ``path`` (:func:`analysis.storage.files_written`: on an
    object store one listing of its prefix, which says when each was written)."""
    folders: dict[str, dict[str, float | None]] = {}
    for name, files in storage.files_written(path, *FOLDER_FILES).items():
        for f, written in files.items():
            folders.setdefault(storage.split(f)[0], {})[name] = written
    return folders


def scan_folders(path: str) -> list[FolderAttempt]:
    """Every attempt of every trial folder of the experiment at ``path``."""
    folders = trial_files(path)
    with ThreadPoolExecutor(max_workers=16) as pool:  # an object store answers each folder in a round trip
        read = list(pool.map(lambda item: _read_folder(*item), sorted(folders.items())))
    return [a for batch in read for a in batch]


# ------------------------------------------------------------------ dense models
def checkpoint_epoch(file: str) -> int | None:
    """The ``epoch`` a dense training checkpoint (a ``torch.save`` zip) was written at, read from the
    opcodes of its pickle without running it (no torch, nothing unpickled): the last ``"epoch"`` key
    followed by an integer (the training's own, after the learner's state). None when unknown."""
    try:
        fs, p = storage.filesystem(file)
        with fs.open_input_file(p) as f, zipfile.ZipFile(f) as z:
            name = next(n for n in z.namelist() if n == "data.pkl" or n.endswith("/data.pkl"))
            data = z.read(name)
        memo: dict[int, object] = {}
        value, epoch = None, None
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[arg] = value
                continue
            if op.name == "MEMOIZE":
                memo[len(memo)] = value
                continue
            if op.name in ("BINGET", "LONG_BINGET", "GET"):
                value = memo.get(arg)
                continue
            if op.name in ("BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG") and value == "epoch" \
                    and isinstance(arg, int) and not isinstance(arg, bool):
                epoch = arg
            value = arg if isinstance(arg, str) and "UNICODE" in op.name else None
        return epoch
    except Exception:  # not a zip, cut short while written, another layout: the epoch is not known
        return None


@dataclass(frozen=True)
class DenseState:
    seed: int
    state: str
    epoch: int | None = None


def dense_states(path: str, config: dict, lease: LeaseState, tried: list[FolderAttempt],
                 seed_of: dict[str, int]) -> list[DenseState]:
    """The state of each seed's dense model (see the module's notes)."""
    folder = storage.join(path, DENSE_DIR)
    fs, p = storage.filesystem(folder)
    listed = {info.base_name: _written(info) for info in fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))}
    names = set(listed)
    checkpoints: dict[int, tuple[str, float]] = {}  # seed -> (its newest checkpoint, when written)
    for name, written in listed.items():
        m = _DENSE_CHECKPOINT.match(name)
        if m is None:
            continue
        file = storage.join(folder, name)
        if written is None:
            try:
                written = storage.modified(file)
            except (OSError, AttributeError):  # removed since the listing: its training has just ended
                continue
        for seed in map(int, m.group(1).split("_")):
            if seed not in checkpoints or written > checkpoints[seed][1]:
                checkpoints[seed] = (file, written)
    failed_at: dict[int, float] = {}  # seed -> its newest trial that failed (without its model: its training did)
    for a in tried:
        if not a.finished and a.failures and a.point in seed_of:
            s = seed_of[a.point]
            failed_at[s] = max(failed_at.get(s, 0.0), a.touched)
    since = lease.since - CLOCK_SLACK_S if lease.live else float("-inf")
    out = []
    for seed in _seeds(config):
        if dense_file(seed) in names:
            out.append(DenseState(seed, "trained"))
            continue
        file, written = checkpoints.get(seed, (None, None))
        failed = failed_at.get(seed)
        if lease.live:
            if file is not None and written >= since and (failed is None or written > failed):
                out.append(DenseState(seed, "in training", checkpoint_epoch(file)))
            elif failed is not None and failed >= since:
                out.append(DenseState(seed, "failed"))
            else:
                out.append(DenseState(seed, "not started"))
        elif failed is not None and (file is None or failed >= written):
            out.append(DenseState(seed, "failed"))
        elif file is not None:
            out.append(DenseState(seed, "interrupted", checkpoint_epoch(file)))
        else:
            out.append(DenseState(seed, "not started"))
    return out


def _cell(point: TrialPoint) -> tuple:
    return point.schedule, point.retrain, point.target_sparsity


def _seeds(config: dict) -> list[int]:
    seeds = config.get("seeds", 1)
    return list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]


# ------------------------------------------------------------------ the points
@dataclass(frozen=True)
class PointState:
    """Where one trial point stands: its state (:data:`STATES`), its epoch of ``budget`` (a running
    attempt's, else the furthest of its attempts'), the folder of its newest attempt (of the finished
    one, once it has), and how often that attempt's trial failed."""

    point: TrialPoint
    state: str
    epoch: int = 0
    budget: int | None = None
    folder: str = ""
    failures: int = 0


def point_state(point: TrialPoint, tries: list[FolderAttempt], lease: LeaseState, max_failures: int) -> PointState:
    """One point's state from its attempts (see the module's notes)."""
    ended = [a for a in tries if a.finished]
    if ended:
        a = ended[0]
        return PointState(point, "diverged" if a.diverged else "done", a.epoch, a.budget, a.folder)
    if not tries:
        return PointState(point, "waiting")
    newest = max(tries, key=lambda a: (a.touched, a.epoch, a.folder))
    epoch = max(a.epoch for a in tries)  # the furthest of its attempts: where resume continues it from
    budget = newest.budget or next((a.budget for a in tries if a.budget), None)
    gave_up = 0 <= max_failures < newest.failures
    if not lease.live:
        state = "failed" if gave_up else "interrupted"
    elif newest.touched >= lease.since - CLOCK_SLACK_S:
        state = "failed" if gave_up else "running"
        epoch = newest.epoch or epoch  # where the running attempt is (once it has reported)
    else:
        state = "waiting"  # an earlier driver's attempt: this driver runs the point again, from its checkpoint
    return PointState(point, state, epoch, budget, newest.folder, newest.failures)


@dataclass
class Status:
    """An experiment's status: :func:`status`; :meth:`lines` words it."""

    path: str
    lease: LeaseState
    points: list[PointState]
    dense: list[DenseState]
    dense_epochs: int | None = None
    dense_from: str | None = None
    fused: int = 1
    twice: list[str] = field(default_factory=list)
    max_failures: int = 3

    def counts(self, points=None) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for p in self.points if points is None else points:
            counts[p.state] += 1
        return counts

    @property
    def finished(self) -> int:
        c = self.counts()
        return c["done"] + c["diverged"]

    def lines(self, trials: bool = False) -> list[str]:
        return _lines(self, trials)


def status(path: str) -> Status:
    """The status of the experiment at ``path`` (a folder or a URI). Raises
    :class:`analysis.experiment_file.NotAnExperiment` (one line naming it) where there is none."""
    root = storage.normalise(str(path))
    try:
        if not storage.is_dir(root):
            raise NotAnExperiment(f"{root}: no such experiment")
        found = read_experiment_file(root)
    except NotAnExperiment:
        raise
    except Exception as exc:  # an unreachable or refusing object store
        raise NotAnExperiment(f"{root}: cannot read it ({one_line(exc)})") from None
    if found is None:
        raise NotAnExperiment(f"{root}: not a prunesweep experiment (no {CONFIG_FILE})")
    config, recorded = found
    try:
        grid = trial_points(config)
    except (KeyError, TypeError, ValueError) as exc:
        raise NotAnExperiment(f"{storage.join(root, CONFIG_FILE)} is damaged: no trial grid ({one_line(exc)})") \
            from None
    lease = read_lease(root)
    tried = scan_folders(root)
    by_point: dict[str, list[FolderAttempt]] = {}
    for a in tried:
        by_point.setdefault(a.point, []).append(a)
    max_failures = config.get("max_failures", 3)
    max_failures = max_failures if isinstance(max_failures, int) else 3
    points = [point_state(p, by_point.get(p.label, []), lease, max_failures) for p in grid]
    # a point whose attempts have not reported its budget yet has its cell's: every seed's point of one
    # (arm, sparsity) has the same budget
    known = {_cell(p.point): p.budget for p in points if p.budget}
    points = [p if p.budget or p.state == "waiting" else replace(p, budget=known.get(_cell(p.point))) for p in points]
    twice = sorted(p.label for p in grid if sum(a.finished for a in by_point.get(p.label, [])) > 1)
    dense = config.get("dense") or {}
    fusion = (recorded.get(FUSION) or {}) if isinstance(recorded, dict) else {}
    return Status(root, lease, points, dense_states(root, config, lease, tried, {p.label: p.seed for p in grid}),
                  dense.get("epochs"), dense.get("checkpoint"),
                  int(fusion.get(FUSION_SIZE, 1)) if isinstance(fusion, dict) else 1, twice, max_failures)


# ------------------------------------------------------------------ words
def _of(epoch: int | None, budget: int | None) -> str:
    return f"{epoch if epoch is not None else '?'}/{budget if budget else '?'}"


def _lines(s: Status, trials: bool) -> list[str]:
    total, c = len(s.points), s.counts()
    how = f"; fused in groups of up to {s.fused} seeds" if s.fused > 1 else ""
    if s.lease.live:
        who = f"a driver runs it: {s.lease.holder}"
    else:
        who = "no driver runs it" + (f" ({s.lease.note})" if s.lease.note else "")
    lines = [f"{s.path}: {count(total, 'trial points')}{how}; {who}"]
    arms: dict[str, list[PointState]] = {}
    for p in s.points:
        arms.setdefault(arm(p.point.schedule, p.point.retrain), []).append(p)
    header = ["arm", "points", *STATES]
    rows = []
    for name, points in arms.items():
        counts = s.counts(points)
        running = sorted((p for p in points if p.state == "running"), key=lambda p: -(p.epoch / (p.budget or 1)))
        shown = ", ".join(_of(p.epoch, p.budget) for p in running[:_SHOWN_EPOCHS])
        more = f", +{len(running) - _SHOWN_EPOCHS} more" if len(running) > _SHOWN_EPOCHS else ""
        rows.append([name, str(len(points)), *(str(counts[k]) for k in STATES),
                     f"running at epoch {shown}{more}" if running else ""])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def row(cells):
        first = cells[0].ljust(widths[0])
        rest = "  ".join(c.rjust(w) for c, w in zip(cells[1:len(header)], widths[1:]))
        tail = f"  {cells[len(header)]}" if len(cells) > len(header) and cells[len(header)] else ""
        return f"  {first}  {rest}{tail}"

    lines += [row(header), *(row(r) for r in rows)]
    lines.append(_dense_line(s))
    done = f"{c['done']} done" + (f", {c['diverged']} diverged (they end there and are never retried)"
                                  if c["diverged"] else "")
    rest = [f"{c[k]} {k}" for k in ("running", "interrupted", "failed", "waiting") if c[k]]
    lines.append(f"total: {s.finished} of {total} trial points finished ({done})" + (f"; {', '.join(rest)}" if rest else ""))
    if c["interrupted"]:
        lines.append(f"interrupted: {count(c['interrupted'], 'points')} stopped mid-way (no driver runs the "
                     "experiment, so none of them is running); resume continues each from its newest checkpoint")
    if c["failed"]:
        lines.append(f"failed: {count(c['failed'], 'points')} failed after all of Ray Tune's retries (max_failures: "
                     f"{s.max_failures}); resume runs them again")
    if s.twice:
        more = f" and {len(s.twice) - 3} more" if len(s.twice) > 3 else ""
        lines.append(f"warning: {count(len(s.twice), 'points')} finished more than once "
                     f"({', '.join(s.twice[:3])}{more}); the analysis refuses them until one trial folder of each "
                     "is kept")
    if s.finished < total:
        if s.lease.live:
            lines.append(f"its driver is running it; should the driver stop, continue with: prunesweep resume {s.path}")
        else:
            lines.append(f"continue with: prunesweep resume {s.path}")
    if trials:
        unfinished = [p for p in s.points if p.state not in ("done", "diverged")]
        if unfinished:
            cells = [[p.point.label, p.state, f"epoch {_of(p.epoch, p.budget)}" if p.folder else "",
                      storage.name(p.folder) if p.folder else "",
                      f"({p.failures} failure{'s' if p.failures != 1 else ''})" if p.failures else ""]
                     for p in unfinished]
            widths = [max(len(c[i]) for c in cells) for i in range(4)]
            lines.append("unfinished trial points:")
            for c in cells:
                lines.append("  " + "  ".join([*(x.ljust(w) for x, w in zip(c, widths)), c[4]]).rstrip())
    return lines


def _dense_line(s: Status) -> str:
    what = (f"dense models (from dense.checkpoint {s.dense_from})" if s.dense_from else
            f"dense models ({s.dense_epochs} epochs each)" if s.dense_epochs else "dense models")
    by: dict[str, list[DenseState]] = {}
    for d in s.dense:
        by.setdefault(d.state, []).append(d)
    parts = []
    for state in DENSE_STATES:
        group = by.get(state, [])
        if not group:
            continue
        if state == "trained" and len(group) == len(s.dense):
            parts.append(f"all {len(group)} trained")
            continue
        seeds = "seeds" if len(group) > 1 else "seed"
        if state in ("in training", "interrupted"):  # the seeds of a fused training share their epoch
            at: dict = {}
            for d in group:
                at.setdefault(d.epoch, []).append(d.seed)
            where = ", ".join(f"{seed_text(ss)} at epoch {_of(e, s.dense_epochs)}" for e, ss in at.items())
            parts.append(f"{len(group)} {state} ({seeds} {where})")
        else:
            parts.append(f"{len(group)} {state} ({seeds} {seed_text([d.seed for d in group])})")
    return f"{what}: {'; '.join(parts) if parts else 'none'}"


def lines(path: str, trials: bool = False) -> list[str]:
    """The status of the experiment at ``path`` as the lines ``prunesweep status`` prints."""
    return status(path).lines(trials)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prunesweep status",
                                description="Where an experiment stands, from its own files (no Ray): per arm its "
                                            "trial points done, running, waiting, interrupted, failed and diverged, "
                                            "and its dense models.")
    p.add_argument("experiment", help="<storage>/<name> of the experiment (a folder or a URI)")
    p.add_argument("--trials", action="store_true", help="also list each unfinished trial point")
    return p


def main(argv=None) -> int:
    """``prunesweep status``: 0 when the status was read (finished or not), 2 when ``experiment`` is
    not one (one line on stderr)."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        out = lines(args.experiment, args.trials)
    except (NotAnExperiment, ValueError, OSError) as exc:  # as `prunesweep analyze` words them
        print(f"prunesweep status: error: {one_line(exc, 1000)}", file=sys.stderr)
        return 2
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
