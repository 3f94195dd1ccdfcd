"""What ``prunesweep extend`` may change: an experiment grows by seeds, sparsities and schedules,
and nothing that would make its old and new trials incomparable."""
from __future__ import annotations

from analysis import schema

from .config import ConfigError, SweepConfig, apply_override, validate
from .plan import expand, phases, rewind_epochs

GROWABLE = ("seeds", "sparsities", "schedules")


def _first_difference(old, new, path: str) -> tuple[str, object, object] | None:
    """The first dotted path at which two plain-data configs differ, with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            found = _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            found = _first_difference(a, b, f"{path}.{i}")
            if found:
                return found
        return None
    return None if old == new else (path, old, new)


def _missing(what: str, old: list, new: list) -> None:
    lost = [v for v in old if v not in new]
    if lost:
        raise ConfigError(f"{what}: extend only adds; {', '.join(map(str, lost))} of the experiment would be "
                          f"dropped ({new} asked); keep every existing value")


def grow(old: SweepConfig, overrides: list[str]) -> tuple[SweepConfig, dict]:
    """The experiment's config ``old`` grown by ``--set`` ``overrides``, and what it adds
    (``{"seeds": [...], "sparsities": [...], "schedules": [...], "trials": n}``).

    Raises ConfigError naming the field for anything but added seeds, sparsities and schedules:
    a changed model, data, optimizer, budget, criterion or retraining regime, a dropped value, a
    changed schedule, a new weight-rewinding snapshot the existing dense models lack, a grid that
    would retrain any existing trial differently (a ladder walks every sparsity; a new ladder under
    ``ladder_budget: cumulative`` changes the others' budgets), or nothing added at all.
    """
    if not overrides:
        raise ConfigError("extend: nothing to add; give the grown grid with --set seeds=N, "
                          "--set \"sparsities=[...]\" or --set \"schedules=[...]\"")
    raw = old.model_dump(mode="json")
    for assignment in overrides:
        apply_override(raw, assignment)
    new = validate(raw)
    before, after = old.model_dump(mode="json"), new.model_dump(mode="json")
    fixed = {k: v for k, v in before.items() if k not in GROWABLE}
    changed = _first_difference(fixed, {k: v for k, v in after.items() if k not in GROWABLE}, "")
    if changed:
        field, was, now = changed
        raise ConfigError(f"{field}: {was!r} in the experiment, {now!r} asked; extend only adds seeds, sparsities "
                          "and schedules (any other change makes old and new trials incomparable: start a new "
                          "experiment)")
    _missing("seeds", old.seed_list, new.seed_list)
    _missing("sparsities", old.sparsities, new.sparsities)
    schedules = {s["name"]: s for s in after["schedules"]}
    _missing("schedules", [s["name"] for s in before["schedules"]], list(schedules))
    for s in before["schedules"]:
        if schedules[s["name"]] != s:
            raise ConfigError(f"schedules: {s['name']!r} is {s} in the experiment, {schedules[s['name']]} asked; "
                              "extend adds schedules under new names and never changes one")
    _same_trials(old, new)
    _same_snapshots(old, new)
    known = {s["name"] for s in before["schedules"]}
    added = {"seeds": [s for s in new.seed_list if s not in old.seed_list],
             "sparsities": [s for s in new.sparsities if s not in old.sparsities],
             "schedules": [s.name for s in new.schedules if s.name not in known],
             "trials": len(expand(new)) - len(expand(old))}
    if not added["trials"]:
        raise ConfigError(f"extend: {', '.join(overrides)} adds no trial to the experiment; "
                          "`prunesweep resume` finishes the trials it has")
    return new, added


def _same_trials(old: SweepConfig, new: SweepConfig) -> None:
    """Every trial of ``old`` is a trial of ``new`` and trains exactly as before."""
    points = set(expand(new))
    for point in expand(old):
        if point not in points:  # only a ladder's trial changes its point: it walks every sparsity
            raise ConfigError(f"sparsities: the ladder schedule {point.schedule!r} walks every sparsity in order, "
                              "so a new sparsity would change its existing trials; extend such an experiment by "
                              "seeds or schedules, or start a new one")
        if phases(old, point) != phases(new, point):
            raise ConfigError(
                f"schedules: the experiment's trial {point.label} would train differently in the grown grid "
                f"(with finetune.ladder_budget: {schema.CUMULATIVE}, a ladder sets every schedule's budget); "
                "extend it without that ladder, or start a new experiment")


def _same_snapshots(old: SweepConfig, new: SweepConfig) -> None:
    """The existing dense models hold every snapshot the grown grid rewinds to."""
    lacking = sorted(set(rewind_epochs(new)) - set(rewind_epochs(old)))
    if lacking:
        raise ConfigError(f"schedules: weight_rewind in the grown grid starts from dense epoch(s) "
                          f"{', '.join(map(str, lacking))}, which the experiment's dense models did not keep; "
                          "extend with schedules whose retraining phases have the existing lengths, or start a "
                          "new experiment")
