"""Sweep configs: YAML validated into typed models, ``--set`` overrides, and the trial grid.

Validation here looks at the config alone; what is on disk (data, checkpoints) is checked once,
on the driver, by :mod:`sweeps.preflight`.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from analysis import schema
from analysis.messages import SHORT, one_line, short
from analysis.schema import CUMULATIVE, FINETUNE, INSTANT, LADDER, PER_PRUNE
from pruning_core import CRITERIA, SCHEDULE_KINDS, SCOPES, check_sparsity, nm_sparsity, parse_structure

from . import legacy
from .datasets import IMAGEFOLDER, SPECS, validation_problem
from .models import check_name
from .plan import seed_phases
from .regimes import REGIMES

CONFIG_DIR = Path(__file__).parent / "configs"
ModelName = Annotated[str, AfterValidator(check_name)]


class ConfigError(Exception):
    """A config or command-line value that cannot run; the message names the field."""


NAME_MAX = 128
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
NAME_RULE = (f"allowed: 1 to {NAME_MAX} letters, digits, '_', '.' or '-', not starting with '.' "
             "(an experiment is the folder <storage>/<name>)")


def _is_experiment_name(value) -> bool:
    return (isinstance(value, str) and 0 < len(value) <= NAME_MAX and _NAME_CHARS.issuperset(value)
            and not value.startswith("."))


def check_experiment_name(value: str, field: str) -> str:
    """``value`` as an experiment name (the config's ``name``, ``--name``: the folder under the
    storage), or a ConfigError naming ``field``; "." and ".." and paths are refused."""
    if not _is_experiment_name(value):
        raise ConfigError(f"{field} {short(value)}: {NAME_RULE}")
    return value


def _config_name(value: str) -> str:
    """The config's ``name``, by :func:`check_experiment_name`'s rule, in pydantic's terms."""
    if not _is_experiment_name(value):
        raise ValueError(f"{short(value)}: {NAME_RULE}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OptimizerConfig(_Strict):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    nesterov: bool = False


class DatasetConfig(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True)  # hashable: the per-process dataset cache's key

    name: Literal[tuple(SPECS)] = "digits"  # type: ignore[valid-type]
    root: Optional[str] = None
    download: bool = False
    augment: Optional[bool] = None
    train_subset: Optional[int] = Field(None, ge=1)
    validation: int = Field(0, ge=0)
    image_size: Optional[int] = Field(None, ge=8)
    channels: Optional[Literal[1, 3]] = None
    in_memory_max_gb: float = Field(4.0, gt=0)
    workers: int = Field(2, ge=0)

    @model_validator(mode="after")
    def _fits_dataset(self):
        spec = SPECS[self.name]
        problem = spec.train_size is not None and validation_problem(self.validation, spec.train_size, self.name)
        if problem:
            raise ValueError(problem)
        if self.name != "digits" and not self.root:
            raise ValueError(f"dataset.root is required for {self.name} (a folder holding {spec.files})")
        if self.name == IMAGEFOLDER:
            if self.image_size is None:
                raise ValueError("dataset.image_size is required for imagefolder (the side images are resized to)")
            if self.download:
                raise ValueError("dataset.download: an image folder cannot be downloaded; set it to false")
        else:
            for field in ("image_size", "channels"):
                if getattr(self, field) is not None:
                    raise ValueError(f"dataset.{field} is only for imagefolder ({self.name} images are "
                                     f"{spec.channels}x{spec.image_size}x{spec.image_size})")
        return self

    @property
    def augments(self) -> bool:
        return self.augment if self.augment is not None else SPECS[self.name].augment


class DenseConfig(_Strict):
    epochs: Optional[int] = Field(None, ge=0)
    checkpoint: Optional[str] = None
    optimizer: OptimizerConfig = OptimizerConfig()
    lr_schedule: Literal["constant", "cosine", "step"] = "cosine"
    batch_size: int = Field(128, ge=1)

    @model_validator(mode="after")
    def _one_source(self):
        if (self.epochs is None) == (self.checkpoint is None):
            raise ValueError("give exactly one of dense.epochs (train the dense model) or dense.checkpoint (load it)")
        return self


def _structure(value: str) -> str:
    parse_structure(value)
    return value.strip()


def _quoted_structure(value):
    if isinstance(value, int) and not isinstance(value, bool):  # YAML 1.1 reads 2:4 as 2 * 60 + 4
        raise ValueError(f"got the number {value}: YAML reads an unquoted N:M such as 2:4 as a base-60 number; "
                         "quote it: structure: \"2:4\"")
    return value


class PruningConfig(_Strict):
    criterion: Literal[CRITERIA] = "magnitude"  # type: ignore[valid-type]
    scope: Literal[SCOPES] = "global"  # type: ignore[valid-type]
    structure: Annotated[str, BeforeValidator(_quoted_structure), AfterValidator(_structure)] = "unstructured"
    include: Optional[list[str]] = None
    exclude: list[str] = []
    gradient_batches: int = Field(8, ge=1)


Regime = Literal[tuple(REGIMES)]  # type: ignore[valid-type]


class FinetuneConfig(_Strict):
    epochs: int = Field(..., ge=1)
    optimizer: OptimizerConfig = OptimizerConfig(name="adam", lr=1e-3, weight_decay=1e-4)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    batch_size: int = Field(128, ge=1)
    retrain: Annotated[list[Regime], BeforeValidator(schema.regimes), Field(min_length=1)] = [FINETUNE]
    ladder_budget: Literal[CUMULATIVE, PER_PRUNE] = CUMULATIVE


class ScheduleConfig(_Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal[(*SCHEDULE_KINDS, LADDER)]  # type: ignore[valid-type]
    steps: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _steps_fit_kind(self):
        if self.kind in (INSTANT, LADDER) and self.steps != 1:
            raise ValueError(f"steps is only for gradual and cubic schedules; {self.kind} prunes once per target")
        return self


class ResourcesConfig(_Strict):
    """What one Ray Tune trial asks for; a fused group (``fuse``) asks for the same unless
    ``group_cpu`` / ``group_gpu`` say more."""

    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)
    group_cpu: Optional[float] = Field(None, gt=0)
    group_gpu: Optional[float] = Field(None, ge=0)

    @model_validator(mode="after")
    def _whole_or_fraction(self):
        for name in ("gpu", "group_gpu"):
            value = getattr(self, name)
            if value is not None and value > 1 and value != int(value):
                raise ValueError(f"resources.{name} above 1 must be a whole number, got {value}")
        return self

    def of_group(self, fused: bool) -> tuple[float, float]:
        """``(cpu, gpu)`` one Ray Tune trial (``fused``: a fused group, or its dense training) asks for."""
        if not fused:
            return self.cpu, self.gpu
        return (self.group_cpu if self.group_cpu is not None else self.cpu,
                self.group_gpu if self.group_gpu is not None else self.gpu)


class CheckpointConfig(_Strict):
    """How often a trial checkpoints and how many checkpoints Ray Tune keeps per trial."""

    every_epochs: Optional[int] = Field(None, ge=1)
    keep: int = Field(2, ge=1)

    def every(self, budget_epochs: int) -> int:
        """Epochs between a trial's checkpoints: ``every_epochs``, else about ten per trial
        (``ceil(budget / 10)``: every epoch for short trials, every 12th of 120)."""
        return self.every_epochs or max(1, math.ceil(budget_epochs / AUTO_CHECKPOINTS))


AUTO_CHECKPOINTS = 10
Sparsity = Annotated[float, AfterValidator(lambda v: check_sparsity(v))]


def geometric_grid(value):
    """``sparsities: {geometric: r, levels: L}`` as its list ``[1 - (1 - r)^l for l = 1..L]`` (r = 0.2:
    iterative magnitude pruning's 20% of the remaining weights per round); a list stays as it is."""
    if not isinstance(value, dict):
        return value
    rate, levels = value.get("geometric"), value.get("levels")
    usage = "a grid is {geometric: r, levels: L} with 0 < r < 1 and a whole L >= 1"
    if set(value) != {"geometric", "levels"}:
        raise ValueError(f"{usage}, or give a list (got fields {short(list(value))})")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 1:
        raise ValueError(f"{usage} (got geometric: {short(rate)})")
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"{usage} (got levels: {short(levels)})")
    # rounded far below any weight count's resolution, so that 1 - 0.8**2 is 0.36, not 0.35999999999999999
    values = [round(1.0 - (1.0 - rate) ** level, 12) for level in range(1, levels + 1)]
    usable = next((i for i, v in enumerate(values) if v >= 1.0 or (i and v == values[i - 1])), levels)
    if usable < levels:
        raise ValueError(f"{usage}; with geometric: {rate}, level {usable + 1} rounds to the level before it or to 1 "
                         f"(allowed: levels up to {usable}, got {levels})")
    return values


def _listed(values: list, most: int = 8) -> str:
    """The first ``most`` of ``values``, each cut short, for a message."""
    more = f", ... ({len(values)} in all)" if len(values) > most else ""
    return ", ".join(short(v) for v in values[:most]) + more


SEED_LIMIT = 2 ** 63  # seeds stay below it, and below torch.manual_seed's 2**64 with plan's offsets added
SEEDS_RULE = "allowed: a count N >= 1 (seeds 0..N-1) or a list of distinct whole numbers >= 0, all below 2**63"


def _seeds(value):
    """``seeds`` checked whole: a bool, a float or a string is no count, and a negative seed no seed."""
    if isinstance(value, list):
        for i, seed in enumerate(value):
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
                raise ValueError(f"entry {i} is {short(seed)}; {SEEDS_RULE}")
        if not value:
            raise ValueError(f"got an empty list; {SEEDS_RULE}")
        dupes = sorted(s for s, n in Counter(value).items() if n > 1)
        if dupes:
            raise ValueError(f"duplicate seed(s) {_listed(dupes)}; {SEEDS_RULE}")
    elif isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= SEED_LIMIT:
        raise ValueError(f"got {short(value)}; {SEEDS_RULE}")
    return value


MODEL_ARGS_MAX = 10_000


FUSE_RULE = "allowed: off, auto, or the largest number of seeds fused into one group (a whole number >= 2)"


def _fuse(value):
    """``fuse``: off (YAML reads an unquoted off as false), auto, or a group size N >= 2."""
    if value is False or value == "off":
        return "off"
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ValueError(f"got {short(value)}; {FUSE_RULE}")
    return value


def _model_args(value):
    """Refuse ``model_args`` of more than :data:`MODEL_ARGS_MAX` values in all, counted as YAML's
    aliases expand them (a few nested aliases stand for billions): the model is built, and the config
    written and hashed, from the expanded value."""
    todo, seen = [value], 0
    while todo:
        node = todo.pop()
        seen += 1
        if seen > MODEL_ARGS_MAX:
            raise ValueError(f"more than {MODEL_ARGS_MAX:,} values in all (YAML aliases counted as they expand); "
                             f"allowed: up to {MODEL_ARGS_MAX:,}")
        if isinstance(node, dict):
            todo.extend(node.values())
        elif isinstance(node, (list, tuple)):
            todo.extend(node)
    return value


class SweepConfig(_Strict):
    name: Annotated[str, AfterValidator(_config_name)]
    model: ModelName
    model_args: Annotated[dict[str, Any], AfterValidator(_model_args)] = {}
    dataset: DatasetConfig = DatasetConfig()
    dense: DenseConfig
    pruning: PruningConfig = PruningConfig()
    finetune: FinetuneConfig
    schedules: list[ScheduleConfig] = Field(..., min_length=1)
    sparsities: Annotated[list[Sparsity], BeforeValidator(geometric_grid), Field(min_length=1)]
    seeds: Annotated[Union[int, list[int]], BeforeValidator(_seeds)] = 1
    resources: ResourcesConfig = ResourcesConfig()
    max_concurrent_trials: Optional[int] = Field(None, ge=1)
    max_failures: int = Field(3, ge=-1)
    checkpoint: CheckpointConfig = CheckpointConfig()
    fuse: Annotated[Union[Literal["off", "auto"], int], BeforeValidator(_fuse)] = "off"

    @model_validator(mode="after")
    def _consistent(self):
        names = [s.name for s in self.schedules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"schedules: duplicate name(s) {', '.join(dupes)}")
        dup_sp = sorted(s for s, n in Counter(self.sparsities).items() if n > 1)
        if dup_sp:
            raise ValueError(f"sparsities: duplicate value(s) {_listed(dup_sp)} (equal as floats)")
        for i, s in enumerate(self.schedules):
            if s.kind not in (INSTANT, LADDER) and self.finetune.epochs % s.steps:
                raise ValueError(
                    f"schedules.{i}.steps: {s.steps} does not divide finetune.epochs={self.finetune.epochs}; "
                    "every schedule must spend the same budget, split evenly after each prune"
                )
        fixed = nm_sparsity(self.pruning.structure)
        if fixed is not None and any(abs(s - fixed) > 1e-9 for s in self.sparsities):
            raise ValueError(f"sparsities: structure {self.pruning.structure!r} fixes every layer at sparsity {fixed:g}; "
                             f"got {short(self.sparsities)} (allowed: [{fixed:g}])")
        self._check_retraining()
        if self.fuse == "off":
            for name in ("group_cpu", "group_gpu"):
                if getattr(self.resources, name) is not None:
                    raise ValueError(f"resources.{name}: sizes fused groups, and fuse is off (set fuse, or drop it)")
        return self

    def _check_retraining(self) -> None:
        ft = self.finetune
        if len(set(ft.retrain)) != len(ft.retrain):
            raise ValueError(f"finetune.retrain: duplicate regime(s) in {ft.retrain}")
        compared = any(s.kind != LADDER for s in self.schedules)  # something to compare with a ladder's rungs
        if (FINETUNE in ft.retrain and self.has_ladder and compared and ft.lr_schedule == "cosine"
                and ft.ladder_budget == CUMULATIVE):
            raise ValueError(
                "finetune.lr_schedule: cosine with a ladder and finetune.ladder_budget: cumulative would compare "
                "different learning-rate curves at each rung (the ladder's cosine restarts every finetune.epochs, "
                "an instant trial's spans all its epochs); use finetune.ladder_budget: per_prune (the same curve "
                "after every prune) or finetune.lr_schedule: constant")
        rewinding = [r for r in ft.retrain if REGIMES[r].replays_dense]
        if not rewinding:
            return
        dense = self.dense.epochs or 0
        if dense == 0:
            raise ValueError(f"finetune.retrain: {rewinding[0]} replays the dense training's learning-rate schedule, "
                             "so it needs dense.epochs >= 1 (a dense.checkpoint comes without one)")
        longest = max(phase.epochs for _, phase in seed_phases(self))
        if longest > dense:
            raise ValueError(
                f"finetune.retrain: {rewinding[0]} rewinds a prune's {longest} retraining epochs to dense epoch "
                f"{dense} - {longest} < 0 (dense.epochs is {dense}); allowed: at most dense.epochs epochs after one "
                "prune (raise dense.epochs, or lower finetune.epochs)")

    @property
    def seed_list(self) -> list[int]:
        return schema.seed_list(self.seeds)

    @property
    def seed_count(self) -> int:
        """``len(seed_list)``, without listing them."""
        return self.seeds if isinstance(self.seeds, int) else len(self.seeds)

    @property
    def has_ladder(self) -> bool:
        return any(s.kind == LADDER for s in self.schedules)


# ---------------------------------------------------------------- loading and errors

def _fields_at(loc) -> list[str]:
    """Field names of the config section that ``loc`` (a pydantic error location) points into."""
    model = SweepConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        model = _section(field.annotation)[0] if field is not None else None
        if model is None:
            return []
    return list(model.model_fields)


ERRORS_SHOWN = 3


def _format_validation_error(err: ValidationError) -> str:
    """Pydantic's errors as one line: the unknown fields of a section together, then the first
    :data:`ERRORS_SHOWN` entries, each value cut short (:func:`analysis.messages.short`); never
    pydantic's own rendering, which echoes values whole (YAML aliases can make them billions long)."""
    entries, unknown = [], {}
    for e in err.errors():
        if e["type"] == "extra_forbidden":
            if e["loc"][:-1] not in unknown:
                entries.append(e["loc"][:-1])
            unknown.setdefault(e["loc"][:-1], []).append(e["loc"][-1])
        else:
            entries.append(e)
    lines = []
    for e in entries[:ERRORS_SHOWN]:
        if isinstance(e, tuple):  # the unknown fields of one section
            names = unknown[e]
            allowed = ", ".join(_fields_at((*e, names[0])))
            if len(names) == 1:
                loc, msg = _loc((*e, names[0])), f"unknown field; allowed here: {allowed}"
            else:
                loc, msg = _loc(e), f"unknown fields {_loc(names, ', ')}; allowed here: {allowed}"
        else:
            loc, msg = _loc(e["loc"]), e["msg"].removeprefix("Value error, ")
            shown = e.get("input")
            quiet = isinstance(shown, dict) or e["type"] in ("missing", "value_error")
            msg += "" if quiet else f" (got {short(shown)})"
        lines.append(f"{loc}: {msg}" if loc else msg)
    more = f"; ... ({len(entries)} errors in all)" if len(entries) > ERRORS_SHOWN else ""
    return "config error: " + "; ".join(lines) + more


def _loc(loc, sep: str = ".") -> str:
    """A pydantic error location as a dotted path (or other keys joined by ``sep``), cut short:
    a YAML key may be any scalar."""
    text = sep.join(p if isinstance(p, str) else short(p) for p in loc)
    return text if len(text) <= SHORT else text[:SHORT - 1] + "…"


def _section(annotation):
    """The config model inside an annotation (``X``, ``list[X]``, ``Optional[X]``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg, getattr(annotation, "__origin__", None) is list
    return None, False


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one ``--set a.b.c=VALUE`` (VALUE parsed as YAML) to the raw config dict.

    List entries are addressed by index: ``--set schedules.1.steps=8``.
    """
    if "=" not in assignment:
        raise ConfigError(f"--set {short(assignment)}: expected KEY=VALUE, e.g. --set finetune.epochs=2")
    path, _, text = assignment.partition("=")
    path = path.strip()
    shown = path if len(path) <= SHORT else short(path)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {shown}: value {short(text)} is not valid YAML ({exc.problem})") from None
    parts = path.split(".")
    model_cls, node, is_list = SweepConfig, raw, False
    for i, part in enumerate(parts):
        here = ".".join(parts[:i]) or "the config"
        last = i == len(parts) - 1
        if is_list:
            if not part.isdigit() or not isinstance(node, list) or int(part) >= len(node):
                size = len(node) if isinstance(node, list) else 0
                raise ConfigError(f"--set {shown}: {here} is a list of {size}; use an index 0..{size - 1}")
            if last:
                node[int(part)] = value
                return
            node, is_list = node[int(part)], False
            if not isinstance(node, dict):
                raise ConfigError(f"--set {shown}: {here}.{part} is not a mapping")
            continue
        fields = model_cls.model_fields
        if part not in fields:
            raise ConfigError(f"--set {shown}: {here} has no field {short(part)}; fields are: {', '.join(fields)}")
        if last:
            node[part] = value
            return
        child_cls, is_list = _section(fields[part].annotation)
        if child_cls is None:
            raise ConfigError(f"--set {shown}: {'.'.join(parts[:i + 1])} is not a section with fields")
        model_cls = child_cls
        child = node.get(part)
        if child is None and not is_list:
            child = node[part] = {}
        if not isinstance(child, list if is_list else dict):
            raise ConfigError(f"--set {shown}: {'.'.join(parts[:i + 1])} is not a {'list' if is_list else 'mapping'}")
        node = child


def resolve_config_path(path: str) -> Path:
    """A YAML path, or the name of a built-in config (``quickstart``)."""
    p = Path(path)
    if p.is_file():
        return p
    builtin = CONFIG_DIR / (path if path.endswith(".yaml") else f"{path}.yaml")
    if builtin.is_file():
        return builtin
    names = ", ".join(sorted(f.stem for f in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"config {short(path)}: no such file (built-in configs: {names})")


def load_config(path: str, overrides: list[str] = ()) -> SweepConfig:
    """Read, override and validate a sweep config; raises ConfigError naming the field."""
    file = resolve_config_path(path)
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {file}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                          "allowed: a YAML file encoded as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"config {file}: cannot be read ({one_line(exc)})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config {file}: malformed YAML at{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {file}: expected a mapping of fields at the top level, got {type(raw).__name__}")
    raw, _ = schema.split_provenance(raw)  # an experiment's prunesweep.yaml runs as it is
    for assignment in overrides:
        apply_override(raw, assignment)
    return validate(raw)


def validate(raw: dict) -> SweepConfig:
    """A raw config (a dict, as YAML gives it) validated; raises ConfigError naming the field."""
    try:
        raw = legacy.upgrade_config(raw)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        return SweepConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None
