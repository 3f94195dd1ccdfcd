"""The contract between ``sweeps`` (which writes experiments) and ``analysis`` (which reads them).

One place for: the files of an experiment, the trial point (what one trial is), the trial grid
and how many trials a config asks for, the name and meaning of every reported metric, and the
rule for a finished trial. Plain Python (no torch, no Ray, no pandas), so both sides import it;
``sweeps`` may import ``analysis``, never the other way round.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Optional

# ------------------------------------------------------------------ files of an experiment
CONFIG_FILE = "prunesweep.yaml"   # the validated sweep config, as the run started it, and its provenance
PROVENANCE = "provenance"         # in CONFIG_FILE: config hash, prunesweep version, git revision
DENSE_DIR = "dense"               # the shared dense models, one file per seed
DENSE_LOG = "trainings.jsonl"     # in DENSE_DIR: one line per dense training actually run
ANALYSIS_DIR = "analysis"         # where ``prunesweep analyze`` writes by default
TRIAL_RESULTS_FILE = "results.parquet"  # in each trial folder: all its reports, one row per epoch (written by the
                                        # trial at each checkpoint and at its end; the analysis reads these)
PRUNED_MODEL_FILE = "pruned_model.pt"   # in each finished trial's folder: its final model (pruning_core.save_pruned);
                                        # a fused group's folder holds one per member (:func:`pruned_model_file`)
# Ray Tune's own files
RESULT_FILE = "result.json"       # in each trial folder: one JSON line per report of the few TUNE_METRICS
TUNER_FILE = "tuner.pkl"
LOCK_FILE = ".prunesweep-lease.json"  # while a driver runs the experiment: who it is (sweeps.lock)
EXPERIMENT_STATE_GLOB = "experiment_state-*.json"


def split_provenance(experiment_file: Mapping[str, Any]) -> tuple[dict, dict]:
    """``(config, provenance)`` of a parsed :data:`CONFIG_FILE` (provenance empty when the
    experiment predates it)."""
    config = dict(experiment_file)
    return config, config.pop(PROVENANCE, None) or {}


def dense_checkpoint_file(seed: int) -> str:
    """The dense training of ``seed`` in progress (its last epoch), inside :data:`DENSE_DIR`; removed
    once :func:`dense_file` is written."""
    return f"seed_{seed}.checkpoint.pt"


def dense_file(seed: int) -> str:
    """The dense model of ``seed``, inside :data:`DENSE_DIR`."""
    return f"seed_{seed}.pt"


def dense_group_checkpoint_file(seeds) -> str:
    """The fused dense training of ``seeds`` in progress, inside :data:`DENSE_DIR` (one seed:
    :func:`dense_checkpoint_file`)."""
    seeds = list(seeds)
    return dense_checkpoint_file(seeds[0]) if len(seeds) == 1 else f"seeds_{'_'.join(map(str, seeds))}.checkpoint.pt"


def pruned_model_file(label: str | None = None) -> str:
    """A finished trial's pruned model in its folder: :data:`PRUNED_MODEL_FILE` for a trial that
    trained alone, ``pruned_model.<point label>.pt`` for each member of a fused group."""
    return PRUNED_MODEL_FILE if label is None else f"pruned_model.{label}.pt"


# ------------------------------------------------------------------ datasets
IMAGEFOLDER = "imagefolder"       # the dataset read from root/train/<class>/* and root/test/<class>/*
# the classes of each named dataset, where the name decides them (an image folder's: its class folders);
# sweeps.datasets.SPECS reads them from here, and so does the analysis (which cannot import torch)
DATASET_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "mnist": 10, "fashion_mnist": 10, "svhn": 10}


# ------------------------------------------------------------------ the trial point
PARAM = "trial"                   # the trial point's key in each trial's Tune config
INSTANT = "instant"               # the schedule kind the other schedules are compared against
LADDER = "ladder"                 # one trial per seed that walks up every sparsity in order
FINETUNE = "finetune"             # the retraining regime the other regimes are compared against
LR_REWIND, WEIGHT_REWIND, REINIT = "lr_rewind", "weight_rewind", "reinit"
# the retraining regimes (Renda, Frankle & Carbin 2020) and what each means: the report says these words,
# and ``sweeps.regimes`` gives each its behaviour
REGIME_MEANINGS = {
    FINETUNE: "fine-tuning: the pruned weights train on at the fine-tuning optimizer's learning rate",
    LR_REWIND: "learning-rate rewinding: each prune's P epochs replay the dense run's last P learning rates, "
               "with the dense optimizer",
    WEIGHT_REWIND: "weight rewinding: as learning-rate rewinding, from the dense weights of epoch T − P",
    REINIT: "random reinitialisation of the kept weights (the lottery-ticket control), retrained as "
            "learning-rate rewinding",
}
CUMULATIVE, PER_PRUNE = "cumulative", "per_prune"  # finetune.ladder_budget: what other schedules train at a rung
# ------------------------------------------------------------------ fused groups
# A fused group is one Ray Tune trial that trains several trial points (its members) of one architecture
# as one computation (``sweeps.fused``), each member exactly what it would be alone up to float32 rounding.
# Its Tune config holds the members' points under MEMBERS (a single trial's holds its point under PARAM);
# its folder holds one results file with every member's rows, each row carrying its own point, its member
# id (:func:`member_trial_id`) as ``trial_id`` and the group's Tune trial id as GROUP, and one pruned
# model per member (:func:`pruned_model_file`). An experiment is fused or not as a whole (FUSION in its
# provenance: the group size and the seed groups, kept by resume and extend), so that a comparison
# never pairs a fused member with a point that trained alone.
MEMBERS = "members"               # a fused group's trial points in its Tune config
GROUP = "group"                   # the column naming the Tune trial that trained a row's point fused
FUSION = "fusion"                 # in the provenance: {FUSION_SIZE: group size, FUSION_SEEDS: [[seed, ...], ...],
                                  # FUSION_DENSE: the dense trainings' groups of seeds}
FUSION_SIZE, FUSION_SEEDS, FUSION_DENSE, FUSION_MEASURED = "members", "seed_groups", "dense_groups", "measured_speedup"


def member_trial_id(group_trial_id: str, label: str) -> str:
    """The ``trial_id`` of a fused group's member: the group's Tune trial id and its point's label."""
    return f"{group_trial_id}:{label}"


def tune_points(tune_config: Mapping[str, Any]) -> list["TrialPoint"]:
    """The trial points a Ray Tune trial trains: its point (PARAM), or a fused group's members (MEMBERS)."""
    if MEMBERS in tune_config:
        return [TrialPoint.from_dict(p) for p in tune_config[MEMBERS]]
    return [TrialPoint.from_dict(tune_config[PARAM])]


# Ray Tune's own columns
TRIAL_ID = "trial_id"
TRAINING_ITERATION = "training_iteration"


@dataclass(frozen=True)
class TrialPoint:
    """What one trial is: which schedule, retrained how, at which target sparsity, from which seed.

    ``target_sparsity`` is None for a ladder, which reports at every rung.
    """

    schedule: str
    schedule_kind: str
    steps: int
    target_sparsity: Optional[float]
    seed: int
    retrain: str = FINETUNE

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrialPoint":
        if "schedule_kind" not in values and "kind" in values:  # experiments begun before this contract
            values = {**values, "schedule_kind": values["kind"]}
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values or f.name != RETRAIN})

    @property
    def arm(self) -> str:
        """What the analysis compares: :func:`arm`."""
        return arm(self.schedule, self.retrain)

    @property
    def label(self) -> str:
        """Readable and unique within a sweep: ``gradual4_s0.9_seed3``, ``ladder_ladder_seed0``,
        ``instant+lr_rewind_s0.9_seed3``. The target is written as ``:g`` writes it where that reads
        back as the same number (``s0``, ``s0.9``), else in full (``s0.5000001``), so that two
        targets never share a label (Ray Tune's searcher knows trials by it)."""
        if self.target_sparsity is None:
            target = LADDER
        else:
            x = self.target_sparsity
            target = f"s{x:g}" if float(f"{x:g}") == x else f"s{x!r}"
        return f"{self.arm}_{target}_seed{self.seed}"

    def report_fields(self, target_sparsity: float) -> dict:
        """The point's fields every report carries; ``target_sparsity`` is the one reported at
        (a ladder's current rung, else the point's own)."""
        return {SCHEDULE: self.schedule, SCHEDULE_KIND: self.schedule_kind, RETRAIN: self.retrain,
                TARGET_SPARSITY: target_sparsity, SEED: self.seed}


def arm(schedule: str, retrain: str = FINETUNE) -> str:
    """The arm of an experiment that the analysis compares: the schedule's name, followed by
    ``+<regime>`` when its trials are not retrained by plain fine-tuning (``ladder+lr_rewind``)."""
    return schedule if retrain in (None, FINETUNE) or retrain != retrain else f"{schedule}+{retrain}"


def regimes(retrain):
    """A config's ``finetune.retrain`` as a list: it names one regime or lists several."""
    return [retrain] if isinstance(retrain, str) else retrain


def seed_list(seeds) -> list[int]:
    """A config's ``seeds``: a count N (seeds 0..N-1) or an explicit list."""
    return list(range(seeds)) if isinstance(seeds, int) else list(seeds)


def trial_points(config: Mapping[str, Any]) -> list[TrialPoint]:
    """Every trial of a sweep config (the validated config as plain data, as in
    :data:`CONFIG_FILE`): one per (schedule, retraining regime, sparsity, seed), one per
    (regime, seed) for a ladder."""
    points = []
    for schedule in config["schedules"]:
        kind = schedule["kind"]
        for retrain in regimes(config["finetune"].get(RETRAIN, FINETUNE)):
            for seed in seed_list(config["seeds"]):
                if kind == LADDER:
                    points.append(TrialPoint(schedule["name"], kind, len(config["sparsities"]), None, seed, retrain))
                    continue
                for target in config["sparsities"]:
                    points.append(TrialPoint(schedule["name"], kind, schedule["steps"], target, seed, retrain))
    return points


# ------------------------------------------------------------------ metrics
@dataclass(frozen=True)
class Metric:
    """A reported name: what it means, its type in the per-trial results file, whether Ray Tune
    sees it too, and for quality measures which way is better."""

    name: str
    meaning: str
    better: Optional[str] = None  # "higher", "lower", or None where neither is a goal
    percent: bool = False         # a fraction shown in percent
    per_layer: bool = False       # reported as {layer: value}; columns ``<name>.<layer>``
    dtype: str = "float64"        # float64, int64, bool, string or list<string> (per layer: each layer's)
    tune: bool = False            # also reported to Ray Tune (its progress table and its finished/failed
                                  # bookkeeping); every other name goes only to the per-trial results file


SCHEDULE, SCHEDULE_KIND, TARGET_SPARSITY, SEED = "schedule", "schedule_kind", "target_sparsity", "seed"
RETRAIN, ARM = "retrain", "arm"
EPOCH, BUDGET_EPOCHS, TEST_ACCURACY, LAYER_SPARSITY = "epoch", "budget_epochs", "test_accuracy", "layer_sparsity"
SPARSITY, STEP = "sparsity", "step"  # measured, of all prunable weights; the prune step of an epoch
DIVERGED, DIVERGED_EPOCH = "diverged", "diverged_epoch"

METRICS: tuple[Metric, ...] = (
    Metric(SCHEDULE, "the schedule's name from the config", dtype="string"),
    Metric(SCHEDULE_KIND, "`instant`, `gradual`, `cubic` or `ladder`", dtype="string"),
    Metric(RETRAIN, "how the trial retrains after each prune: `finetune`, `lr_rewind`, `weight_rewind` or `reinit` "
                    "(`finetune.retrain`); the analysis compares arms, a schedule with its regime", dtype="string"),
    Metric(TARGET_SPARSITY, "the point this trial is compared at: the final target (a gradual trial's too, "
                            "during its early steps), or a ladder's current rung"),
    Metric(SEED, "the trial's seed", dtype="int64"),
    Metric(SPARSITY, "measured: fraction of all prunable weights (every conv/linear `weight` and attention "
                       "Q/K/V projection, also those a config's `pruning.exclude` keeps dense) that are exactly "
                       "zero; equals `target_sparsity` to the weight when nothing is excluded (unstructured)"),
    Metric("compression_ratio", "1 / (1 − `sparsity`)"),
    Metric(STEP, "which prune step (1..k) the epoch belongs to; a ladder's rung number",
           dtype="int64"),
    Metric(EPOCH, "fine-tuning epochs done so far in this trial (1..`budget_epochs`)", dtype="int64", tune=True),
    Metric(BUDGET_EPOCHS, "the trial's whole fine-tuning budget", dtype="int64", tune=True),
    Metric("lr", "learning rate used in this epoch"),
    Metric("train_loss", "mean cross-entropy over the epoch's training batches", better="lower"),
    Metric("train_accuracy", "accuracy over the epoch's training batches", better="higher", percent=True),
    Metric("test_loss", "mean cross-entropy on the test split, in eval mode", better="lower"),
    Metric(TEST_ACCURACY, "accuracy on the test split, in eval mode", better="higher", percent=True, tune=True),
    Metric("val_loss", "mean cross-entropy on the held-out validation split, in eval mode (only with "
                       "`dataset.validation` > 0)", better="lower"),
    Metric("val_accuracy", "accuracy on the held-out validation split, in eval mode (only with "
                           "`dataset.validation` > 0)", better="higher", percent=True),
    Metric("dense_test_accuracy", "the seed's dense model before pruning", better="higher", percent=True),
    Metric("nonzero_params", "nonzero entries over all parameters (weights, biases, norm layers)", dtype="int64"),
    Metric("prunable_params", "number of prunable weights", dtype="int64"),
    Metric("compact_macs", "multiply-accumulates of one sample through the model with its pruned filters "
                           "physically removed (`pruning_core.compact`); only with `pruning.structure: filters`",
           better="lower", dtype="int64"),
    Metric("epoch_time_s", "training time of the epoch", better="lower"),
    Metric("samples_per_s", "training throughput of the epoch (images per second)", better="higher"),
    Metric(LAYER_SPARSITY, "sparsity of each prunable layer", per_layer=True),
    Metric(DIVERGED, "true in a diverged trial's last report: its loss or weights became NaN or infinite, so it "
                     "stopped there (never retried); analyses leave it out of means and paired tests and count it",
           dtype="bool", tune=True),
    Metric(DIVERGED_EPOCH, "the epoch in which a diverged trial's loss or weights stopped being finite (found "
                           "before a prune: the epoch that prune would have begun)", dtype="int64", tune=True),
    Metric(GROUP, "the Ray Tune trial that trained this point fused with others (a fused group; its `trial_id` is "
                  "`<group>:<point label>`); empty for a trial that trained alone", dtype="string"),
    Metric("node_id", "the Ray node the trial ran on", dtype="string"),
    Metric("device", "the torch device it trained on", dtype="string"),
    Metric("gpu_ids", "the GPUs Ray assigned it", dtype="list<string>"),
)
BY_NAME = {m.name: m for m in METRICS}
# What Ray Tune is told: only what its progress table and its finished/failed bookkeeping need. Tune
# keeps running statistics of every numeric name of every trial in its experiment state, which it
# rewrites at every snapshot, so everything else goes to the per-trial results file.
TUNE_METRICS = tuple(m.name for m in METRICS if m.tune)


def compression_ratio(sparsity: float) -> float:
    """``compression_ratio``: 1 / (1 - sparsity), how many times fewer nonzero prunable weights
    (infinite when all are pruned)."""
    return 1.0 / (1.0 - sparsity) if sparsity < 1 else float("inf")


def for_tune(report: Mapping[str, Any]) -> dict:
    """The part of a report that Ray Tune gets (:data:`TUNE_METRICS`; the diverged fields only
    when a trial diverged, so healthy trials cost Tune no statistics for them)."""
    return {k: report[k] for k in TUNE_METRICS if k in report and (k not in (DIVERGED, DIVERGED_EPOCH)
                                                                     or report.get(DIVERGED))}


def undeclared(report: Mapping[str, Any]) -> list[str]:
    """Names in ``report`` that :data:`METRICS` does not declare (an empty list if none)."""
    return sorted(k for k in report if k not in BY_NAME)


def higher_is_better(metric: str) -> bool:
    """Which way a metric improves; names not declared here (Tune's own) by their name."""
    known = BY_NAME.get(metric)
    if known is not None and known.better is not None:
        return known.better == "higher"
    return "loss" not in metric and not metric.endswith("_s")


def is_percent(metric: str) -> bool:
    """Whether ``metric`` is a fraction best shown in percent (the accuracies)."""
    known = BY_NAME.get(metric)
    return known.percent if known is not None else metric.endswith("accuracy")


def is_diverged(report):
    """Whether a report (a mapping or a frame row) says its trial diverged; on a pandas frame, one
    bool per row. Reports from before this field never diverged."""
    frame = hasattr(report, "columns")
    if DIVERGED not in (report.columns if frame else report):
        return report.assign(**{DIVERGED: False})[DIVERGED] if frame else False
    flag = report[DIVERGED]
    if frame:
        return flag.fillna(False).astype(bool)
    return flag == flag and bool(flag)  # a frame row of an older trial holds NaN


def is_finished(report):
    """The one rule for a finished trial: its last report has used the whole epoch budget, or
    says it diverged (a diverged trial has ended and is never run again), or has no budget (NaN:
    a trial of an older experiment, read from Ray Tune's ``result.json``: it ended long ago).

    ``report`` is one report (a mapping) or a pandas frame of last reports (then one bool per row).
    """
    budget = report[BUDGET_EPOCHS]
    return (report[EPOCH] >= budget) | (budget != budget) | is_diverged(report)


def metrics_table() -> str:
    """The README's metrics reference, as a Markdown table."""
    rows = ["| metric | type | Tune | meaning |", "| --- | --- | --- | --- |"]
    for m in METRICS:
        name = f"`{m.name}.<layer>`" if m.per_layer else f"`{m.name}`"
        rows.append(f"| {name} | {m.dtype} | {'✓' if m.tune else ''} | {m.meaning} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(metrics_table())
