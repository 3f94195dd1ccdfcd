"""Which trial points train together: the fused groups of a sweep (``fuse`` in its config).

A fused experiment splits its seeds into *seed groups* of at most ``fuse`` seeds (balanced, in seed
order) once, when it starts, and records them (:data:`analysis.schema.FUSION` in its provenance).
Every (arm, sparsity) cell of the grid then trains as one Ray Tune trial per seed group, and each
seed group's dense models train fused too. ``resume`` keeps the recorded groups and ``extend`` adds
groups for new seeds only, so that a finished point is never trained again in another group and a
CPU run reproduces bit for bit. Since every cell uses the same seed groups, the two points a paired
comparison pairs (two arms, one seed) trained in groups of the same seeds; and since an experiment
is fused or not as a whole, no comparison pairs a fused point with one that trained alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from analysis.schema import FUSION, FUSION_DENSE, FUSION_MEASURED, FUSION_SEEDS, FUSION_SIZE, MEMBERS, PARAM, TrialPoint

from .config import ConfigError, SweepConfig
from .plan import expand

LABEL = "label"     # a fused group's label in its Ray Tune config (its folder's suffix, the progress table's column)
AUTO_MAX = 16       # `fuse: auto` fuses at most this many seeds per group
AUTO_PAYS = 1.1     # ... where fused steps measured at least this many times faster than one after another


def seed_groups(seeds: list[int], size: int) -> list[list[int]]:
    """``seeds`` in consecutive groups of at most ``size``, as even as possible (10 seeds at size 4:
    4, 3, 3), so that no group is left with one seed where a balanced split needs none."""
    if not seeds:
        return []
    count = math.ceil(len(seeds) / size)
    base, extra = divmod(len(seeds), count)
    groups, start = [], 0
    for i in range(count):
        n = base + (i < extra)
        groups.append(list(seeds[start:start + n]))
        start += n
    return groups


def split_to_fill(groups: list[list[int]], slots: int) -> list[list[int]]:
    """``groups`` with the largest split in two (its first half first) until there are ``slots``
    groups or none has two seeds left: as many fused dense trainings as can run at once."""
    groups = [list(g) for g in groups]
    while len(groups) < slots and any(len(g) > 1 for g in groups):
        i = max(range(len(groups)), key=lambda j: len(groups[j]))
        half = (len(groups[i]) + 1) // 2
        groups[i:i + 1] = [groups[i][:half], groups[i][half:]]
    return groups


@dataclass(frozen=True)
class Grouping:
    """How an experiment's points train: alone (``size`` 1), or fused in groups of the seeds of
    ``seed_groups`` (each of at most ``size`` seeds) per (arm, sparsity) cell, and their dense
    models in the groups of ``dense`` (the seed groups, split to fill the cluster when the
    experiment started: :meth:`filling`)."""

    size: int = 1
    seed_groups: tuple[tuple[int, ...], ...] = ()
    measured: float | None = field(default=None, compare=False)  # fuse: auto's measured speed-up
    dense: tuple[tuple[int, ...], ...] = ()

    @classmethod
    def of_seeds(cls, size: int, seeds: list[int], measured: float | None = None) -> "Grouping":
        """``seeds`` in groups of at most ``size`` (:func:`seed_groups`)."""
        return cls(size, tuple(tuple(g) for g in seed_groups(seeds, size)), measured)

    @property
    def fused(self) -> bool:
        return self.size > 1

    def record(self) -> dict:
        """What the experiment's provenance records (:data:`analysis.schema.FUSION`)."""
        out = {FUSION_SIZE: self.size, FUSION_SEEDS: [list(g) for g in self.seed_groups]}
        if self.dense:
            out[FUSION_DENSE] = [list(g) for g in self.dense]
        return {**out, FUSION_MEASURED: round(self.measured, 3)} if self.measured is not None else out

    @classmethod
    def of_record(cls, recorded: dict | None) -> "Grouping":
        """The grouping an experiment recorded; none recorded: it trained every point alone."""
        fusion = (recorded or {}).get(FUSION)
        if not fusion:
            return cls()
        try:
            def groups(key):
                return tuple(tuple(int(s) for s in g) for g in fusion.get(key, []))

            measured = fusion.get(FUSION_MEASURED)
            return cls(int(fusion[FUSION_SIZE]), groups(FUSION_SEEDS), None if measured is None else float(measured),
                       groups(FUSION_DENSE))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"provenance.{FUSION}: {fusion!r} is not a record of fused groups "
                              f"({{{FUSION_SIZE}: N, {FUSION_SEEDS}: [[seed, ...], ...]}})") from None

    def grown(self, seeds: list[int], slots: int = 1) -> "Grouping":
        """This grouping over ``seeds``: the recorded groups as they are, and new groups for the
        seeds none of them holds (their dense groups split to fill ``slots``: :meth:`filling`)."""
        if not self.fused:
            return self
        known = {s for g in self.seed_groups for s in g}
        new = [tuple(g) for g in seed_groups([s for s in seeds if s not in known], self.size)]
        dense = self.dense or self.seed_groups
        return replace(self, seed_groups=self.seed_groups + tuple(new),
                       dense=dense + tuple(tuple(g) for g in split_to_fill([list(g) for g in new], slots)))

    def filling(self, slots: int) -> "Grouping":
        """This grouping with its dense models trained in as many fused groups as ``slots`` (the
        trainings the cluster runs at once, when the experiment starts) where the seed groups are
        fewer: the dense phase, which every trial waits for, then leaves no slot idle."""
        if not self.fused:
            return self
        return replace(self, dense=tuple(tuple(g) for g in split_to_fill([list(g) for g in self.seed_groups], slots)))

    def dense_groups(self, seeds: list[int]) -> list[list[int]]:
        """How the dense models of ``seeds`` (those missing) train: in their recorded dense groups
        (the part of each that is missing), else each alone."""
        if not self.fused:
            return [[s] for s in seeds]
        wanted = set(seeds)
        groups = [[s for s in g if s in wanted] for g in (self.dense or self.seed_groups)]
        placed = {s for g in groups for s in g}
        return [g for g in groups if g] + [[s] for s in seeds if s not in placed]


@dataclass(frozen=True)
class Unit:
    """One Ray Tune trial of a sweep: its label (its folder's suffix), its Tune config and the
    points it trains (one, or a fused group's members), and their seeds."""

    label: str
    config: dict
    points: tuple[TrialPoint, ...]
    seeds: frozenset = field(default=frozenset(), compare=False)

    def __post_init__(self):
        object.__setattr__(self, "seeds", frozenset(p.seed for p in self.points))

    @property
    def labels(self) -> list[str]:
        return [p.label for p in self.points]


def trial_name(trial_id: str, config: dict) -> str:
    """A Ray Tune trial's readable name, its folder's too, from its id and its Tune config:
    ``<id>_<schedule>_s<target>_seed<n>``, a fused group's ``<id>_<schedule>_s<target>_seeds<first>-<last>``."""
    label = config.get(LABEL) or TrialPoint.from_dict(config[PARAM]).label
    return f"{trial_id}_{label}"


def group_label(points) -> str:
    """A fused group's label: its first point's without the seed, and its seeds' range
    (``gradual4_s0.9_seeds0-4``)."""
    first, last = points[0], points[-1]
    seeds = f"{first.seed}" if first.seed == last.seed else f"{first.seed}-{last.seed}"
    return f"{first.label.rsplit('_seed', 1)[0]}_seeds{seeds}"


def units(config: SweepConfig, grouping: Grouping) -> list[Unit]:
    """The sweep's Ray Tune trials in grid order: one per point, or fused, one per (arm, sparsity)
    cell and seed group (:class:`Grouping`)."""
    points = expand(config)
    if not grouping.fused:
        return [Unit(p.label, {PARAM: p.to_dict()}, (p,)) for p in points]
    group_of = {s: i for i, g in enumerate(grouping.grown(config.seed_list).seed_groups) for s in g}
    cells: dict[tuple, dict[int, list[TrialPoint]]] = {}
    for p in points:
        cells.setdefault((p.arm, p.schedule, p.target_sparsity), {}).setdefault(group_of[p.seed], []).append(p)
    out = []
    for groups in cells.values():
        for members in groups.values():
            label = group_label(members)
            out.append(Unit(label, {MEMBERS: [p.to_dict() for p in members], LABEL: label}, tuple(members)))
    return out


def slots(config: SweepConfig) -> int:
    """How many fused trainings the connected Ray cluster runs at once now (at least 1)."""
    import ray

    cpu, gpu = config.resources.of_group(True)
    have = ray.cluster_resources()
    fit = int(have.get("CPU", 0) // cpu)
    if gpu:
        fit = min(fit, int(have.get("GPU", 0) // gpu))
    return max(1, fit)


def _fusable(config: SweepConfig) -> str | None:
    """Why ``config``'s model cannot train fused (on one batch of its data), or None."""
    import torch

    from .data import DeviceLoader, load_dataset
    from .fused import FusionError, check_fusable
    from .learner import model_for

    data = load_dataset(config.dataset)
    xb, _ = next(iter(DeviceLoader(data, min(config.finetune.batch_size, 8), torch.Generator().manual_seed(0))))
    torch.manual_seed(0)
    try:
        check_fusable(model_for(config, data), xb, mixed=False)
    except FusionError as exc:
        return str(exc)
    return None


def planned(config: SweepConfig) -> Grouping:
    """The grouping ``fuse: N`` asks for, unchecked (what ``validate`` shows without touching data)."""
    if not isinstance(config.fuse, int):
        return Grouping()
    return Grouping.of_seeds(config.fuse, config.seed_list)


def resolve(config: SweepConfig) -> Grouping:
    """The grouping a new experiment of ``config`` (through :func:`sweeps.preflight.preflight`) starts
    with: ``fuse: off`` every point alone, ``fuse: N`` seed groups of at most N, ``fuse: auto`` groups of up to :data:`AUTO_MAX` seeds where
    fused steps of this model measure at least :data:`AUTO_PAYS` times faster than one after another on
    the device the trials use (a GPU the driver lacks: fused, as fusion pays on GPUs), else alone."""
    seeds = config.seed_list
    if config.fuse == "off":
        return Grouping()
    if config.fuse != "auto":
        return planned(config)  # checked by sweeps.preflight
    size = min(len(seeds), AUTO_MAX)
    if size < 2:
        return Grouping()
    problem = _fusable(config)
    if problem:
        print(f"fuse: auto: each point trains alone ({problem})", flush=True)
        return Grouping()
    import torch

    from .fused import speedup

    if config.resources.gpu and not torch.cuda.is_available():
        print(f"fuse: auto: fused groups of up to {size} seeds (the trials use GPUs, which this driver lacks to "
              "measure on; fusion pays on GPUs for small models)", flush=True)
        return Grouping.of_seeds(size, seeds)
    device = torch.device("cuda" if config.resources.gpu else "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(config.resources.cpu)))  # as a trial would
    try:
        measured = speedup(config, size, device)
    finally:
        torch.set_num_threads(threads)
    fused = measured >= AUTO_PAYS
    print(f"fuse: auto: {size} members train {measured:.2f}x as fast fused as one after another on {device.type}: "
          + (f"fused groups of up to {size} seeds" if fused else "each point alone"), flush=True)
    return Grouping.of_seeds(size, seeds, measured) if fused else Grouping(measured=measured)


def describe(config: SweepConfig, grouping: Grouping, shown: int = 3) -> list[str]:
    """Lines for ``prunesweep validate`` about a fused sweep (none when every point trains alone):
    its seed groups, how many Ray Tune trials, and what the first of them train."""
    if not grouping.fused:
        return []
    from .plan import trial_count

    seed_sets = grouping.grown(config.seed_list).seed_groups
    cells = trial_count(config) // config.seed_count
    groups = ", ".join(f"[{', '.join(map(str, g))}]" for g in seed_sets)
    lines = [f"fused (fuse: {config.fuse}): {cells * len(seed_sets):,} Ray Tune trials, one per arm, sparsity and "
             f"seed group; seed groups {groups}; each seed group's dense models train fused too"]
    first = config.model_copy(update={"schedules": config.schedules[:1], "sparsities": config.sparsities[:1],
                                      "finetune": config.finetune.model_copy(update={"retrain": config.finetune.retrain[:1]})})
    for u in units(first, grouping)[:shown]:
        lines.append(f"  trial {u.label} trains {', '.join(u.labels)}")
    if cells * len(seed_sets) > shown:
        lines.append("  ... and so on for every arm and sparsity")
    return lines
