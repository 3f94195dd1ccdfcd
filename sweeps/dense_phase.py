"""The dense phase: one dense model per seed, shared by all trials of that seed.

Each missing seed trains as a Ray task of its own, or in a fused experiment each seed group's
missing seeds as one fused task (:meth:`sweeps.groups.Grouping.dense_groups`); on a GPU in a fresh
worker process (``max_calls=1``, so that its CUDA context goes with it). A task checkpoints every
epoch into the experiment's storage and is retried (``max_failures``) from there; it writes its
dense models to storage itself, so a driver that dies loses nothing. A seed whose training fails
for good fails only its own trials. Ray Tune gets the trials through :class:`sweeps.search.SeedGate`,
which hands out a trial once its seeds' dense models exist: trials of the seeds that are ready run
while the others still train.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time

from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from analysis import storage
from analysis.messages import one_line
from analysis.schema import DENSE_DIR, DENSE_LOG, dense_file, dense_group_checkpoint_file

from . import ray_metrics
from .config import ConfigError, SweepConfig
from .groups import Grouping, units
from .torch_files import load_torch, save_torch

CHAOS_ENV = "PRUNESWEEP_CHAOS_DENSE"  # "<seed>@<epoch>": kill once before epoch's checkpoint; "<seed>@fail"
PROGRESS_S = 30.0  # a dense training prints its progress at most this often (and at its end)


def _chaos(seeds: list[int]) -> str | None:
    wanted, _, what = os.environ.get(CHAOS_ENV, "").partition("@")
    return what if wanted and int(wanted) in seeds else None


def dense_task_name(seeds: list[int]) -> str:
    """The dense training's name in Ray's dashboard (Tasks) and before each line it prints: ``dense_seed3``, ``dense_seeds0-2``."""
    return f"dense_seed{seeds[0]}" if len(seeds) == 1 else f"dense_seeds{seeds[0]}-{seeds[-1]}"


def train_seeds(sweep: SweepConfig, seeds: list[int], experiment: str, checkpoint_state: dict | None,
                chaos: str | None = None, fused: bool = False, dtype: str | None = None) -> tuple:
    """The Ray task of one seed, or of a fused group of ``seeds`` (``fused``): train (continuing from
    its checkpoint in storage, if any), write each ``dense/seed_<n>.pt``, drop the checkpoint.
    Returns ``(summaries, dense, ...)``: one summary per seed, then each seed's dense model."""
    import ray

    from .dense_training import train_dense_group
    from .loops import device_for, set_dtype, use_cpus

    set_dtype(dtype)
    use_cpus(sweep.resources.of_group(fused)[0])
    what = f"dense seed {seeds[0]}" if len(seeds) == 1 else f"dense seeds {', '.join(map(str, seeds))} (fused)"
    folder = storage.join(experiment, DENSE_DIR)
    checkpoint = storage.join(folder, dense_group_checkpoint_file(seeds))
    resume = None
    if storage.exists(checkpoint):
        try:
            resume = load_torch(checkpoint)
        except Exception as exc:  # cut short by a full disk, or not data: train from the start
            print(f"{what}: its checkpoint {checkpoint} cannot be read ({one_line(exc)}); "
                  "training from the start", file=sys.stderr, flush=True)
    if chaos == "fail":
        raise RuntimeError(f"injected failure of {what}'s training ({CHAOS_ENV})")
    started, last = time.perf_counter(), [0.0]
    first = resume["epoch"] if resume else 0
    if first:
        print(f"{what}: continuing from epoch {first} (its checkpoint)", flush=True)

    def on_epoch(epoch: int, epochs: int, state) -> None:
        if chaos is not None and chaos.isdigit() and epoch == int(chaos) + 1:
            marker = storage.join(folder, f".chaos-killed-{seeds[0]}")
            if not storage.exists(marker):  # once: the retry goes on from the last checkpoint
                storage.write_bytes(marker, b"")
                os.kill(os.getpid(), signal.SIGKILL)
        save_torch(checkpoint, state())
        ray_metrics.dense_epoch(storage.name(experiment), seeds, epoch)
        now = time.perf_counter() - started
        if now - last[0] >= PROGRESS_S or epoch == epochs:
            last[0] = now
            per_epoch = now / (epoch - first)
            print(f"{what}: epoch {epoch}/{epochs}, {per_epoch:.1f} s/epoch, "
                  f"about {per_epoch * (epochs - epoch) / 60:.0f} min to go", flush=True)

    denses = train_dense_group(sweep, seeds, device_for(ray.get_gpu_ids()), checkpoint_state, resume, on_epoch,
                               fused=fused)
    for seed, dense in zip(seeds, denses):
        save_torch(storage.join(folder, dense_file(seed)), dense)
    if storage.exists(checkpoint):
        storage.delete(checkpoint)
    keys = ("seed", "epochs", "test_accuracy", "test_loss", "seconds")
    summaries = [{**{k: d[k] for k in keys}, "resumed_from_epoch": first,
                  **({"fused_with": [s for s in seeds if s != d["seed"]]} if fused else {})} for d in denses]
    return (summaries, *denses)


class DensePhase:
    """The dense models of one sweep, on the driver: :meth:`start` loads the seeds whose model is in
    storage and starts a task for each other one; :meth:`poll` notes which tasks have finished.
    ``refs`` holds a dense model's ObjectRef per seed (a task's before it finishes), ``ready`` the
    seeds whose model exists, ``failed`` why a seed's training failed for good."""

    def __init__(self, config: SweepConfig, path: str, checkpoint_state: dict | None = None,
                 grouping: Grouping = Grouping(), dtype: str | None = None):
        self.config, self.path, self.checkpoint_state = config, path, checkpoint_state
        self.grouping, self.dtype = grouping, dtype
        self.units = units(config, grouping)  # the sweep's trials, in grid order (:class:`sweeps.search.SeedGate`)
        self.refs: dict = {}
        self.ready: set[int] = set()
        self.failed: dict[int, str] = {}
        self._pending: dict = {}  # summaries' ObjectRef -> the seeds it trains
        self._groups: dict = {}  # the seeds of a training (a tuple) -> the placement group it runs in
        self._placing: dict = {}  # a placement group's ready() ObjectRef -> the seeds, until it is placed

    def start(self) -> "DensePhase":
        import ray

        from .preflight import dense_checkpoint

        missing = []
        for seed in self.config.seed_list:
            file = storage.join(self.path, DENSE_DIR, dense_file(seed))
            if storage.exists(file):
                try:
                    self.refs[seed] = ray.put(load_torch(file))
                except Exception as exc:  # a dense model is never trained again in its place: its trials used it
                    raise ConfigError(f"dense model of seed {seed}: {one_line(exc)}; restore the file, or move it "
                                      "out of the experiment to train it again") from None
                self.ready.add(seed)
            else:
                missing.append(seed)
        if not missing:
            return self
        dense = self.config.dense
        fused = self.grouping.fused
        trainings = self.grouping.dense_groups(missing)
        what = "load" if dense.checkpoint else f"train ({dense.epochs} epochs each, checkpointed every epoch)"
        how = (f" in fused groups {', '.join(str(g) for g in trainings)}" if fused and not dense.checkpoint else "")
        print(f"dense models: {what} for seeds {missing}{how}; trials of a seed start when its model exists", flush=True)
        if dense.checkpoint and self.checkpoint_state is None:
            self.checkpoint_state = dense_checkpoint(self.config)
        shipped = ray.put(self.checkpoint_state) if self.checkpoint_state is not None else None
        cpu, gpu = self.config.resources.of_group(fused)
        # on a GPU, a fresh worker process per training, so that its CUDA context goes with it
        task = ray.remote(max_calls=1 if gpu else 0)(train_seeds)
        bundle = {"CPU": cpu, **({"GPU": gpu} if gpu else {})}
        # loaded from a checkpoint: nothing to train, so each seed alone
        for seeds in (trainings if not dense.checkpoint else [[s] for s in missing]):
            # each training's resources are reserved (a placement group, asked for before any trial's) until
            # it ends: trials of the seeds that are ready never starve it, retries included
            key = tuple(seeds)
            group = placement_group([bundle])
            summary, *models = task.options(
                name=dense_task_name(seeds), num_cpus=cpu, num_gpus=gpu, num_returns=1 + len(seeds), max_retries=self.config.max_failures,
                retry_exceptions=True, scheduling_strategy=PlacementGroupSchedulingStrategy(group)).remote(
                self.config, seeds, self.path, shipped, _chaos(seeds), fused and not dense.checkpoint, self.dtype)
            self.refs.update(zip(seeds, models))
            self._pending[summary] = key
            self._groups[key] = group
            self._placing[group.ready()] = key
        return self

    @property
    def reserved(self) -> bool:
        """Whether every training still to finish has its resources (its placement group is placed).
        Until then :class:`sweeps.search.SeedGate` hands out no trial, so that a trial (or an actor Ray Tune keeps
        for the next one) never holds what a dense training waits for."""
        return not self._placing

    @property
    def waiting(self) -> list[int]:
        """Seeds whose training is still running."""
        return sorted(s for seeds in self._pending.values() for s in seeds)

    def poll(self, timeout: float | None = 0) -> None:
        """Note the tasks that have finished (waiting up to ``timeout`` seconds for one; None: until one has)."""
        import ray

        if self._placing:
            placed, _ = ray.wait(list(self._placing), num_returns=len(self._placing), timeout=0)
            for ref in placed:
                del self._placing[ref]
        if not self._pending:
            return
        done, _ = ray.wait(list(self._pending), num_returns=len(self._pending) if timeout == 0 else 1,
                           timeout=timeout)
        for ref in done:
            seeds = self._pending.pop(ref)
            remove_placement_group(self._groups.pop(seeds))
            self._placing = {r: s for r, s in self._placing.items() if s != seeds}
            try:
                summaries = ray.get(ref)
            except Exception as exc:  # the task's own error, or its worker's death, after every retry
                why = one_line(getattr(exc, "cause", None) or exc)
                for seed in seeds:
                    self.failed[seed] = why
                    print(f"dense seed {seed} failed after {self.config.max_failures} retries: {why}; "
                          "its trials fail too (`prunesweep resume` trains it again)", file=sys.stderr, flush=True)
                continue
            for summary in summaries:
                seed = summary["seed"]
                self.ready.add(seed)
                self._log(summary)
                print(f"dense seed {seed}: test_accuracy {summary['test_accuracy']:.4f} ({summary['seconds']:.1f} s); "
                      "its trials may start", flush=True)

    def release(self) -> None:
        """Give back what is still reserved for trainings that will not be waited for (an interrupted sweep)."""
        for seeds in list(self._groups):
            remove_placement_group(self._groups.pop(seeds))

    def _log(self, summary: dict) -> None:
        file = storage.join(self.path, DENSE_DIR, DENSE_LOG)
        log = storage.read_bytes(file) if storage.exists(file) else b""
        storage.write_bytes(file, log + (json.dumps({**summary, "finished_at": time.time()}) + "\n").encode())


_ACTIVE: list[DensePhase] = []


def current() -> DensePhase:
    """The dense phase of the sweep this driver process runs (:func:`active`)."""
    return _ACTIVE[-1]


@contextlib.contextmanager
def active(phase: DensePhase):
    """Make ``phase`` the one :class:`sweeps.search.SeedGate` consults (in this driver process) while
    the sweep runs."""
    _ACTIVE.append(phase)
    try:
        yield phase
    finally:
        _ACTIVE.remove(phase)
        phase.release()
