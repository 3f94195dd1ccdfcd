"""A sweep's figures as Ray metrics (:mod:`ray.util.metrics`), so that the Ray dashboard's Metrics
view (with Prometheus and Grafana set up, as Ray documents) and any Prometheus that scrapes the
nodes' metrics endpoints follow it: per trial point its epoch, sparsity, test accuracy and state;
per dense training its epoch; per experiment its points by state. Prometheus sees each name with
Ray's ``ray_`` prefix (``ray_prunesweep_trial_epoch``); ``tune_trial`` is the Ray Tune trial's name
(its folder's), ``point`` the trial point's label."""
from __future__ import annotations

from analysis.attempts import point_label
from analysis.schema import DIVERGED, EPOCH, SPARSITY, TEST_ACCURACY

TRIAL_STATES = ("running", "finished", "diverged")
POINT_STATES = ("done", "running", "waiting", "failed")

# name: (description, tag keys)
GAUGES = {
    "prunesweep_trial_epoch": ("epochs a trial point has trained (fine-tuning, after its dense model)",
                               ("experiment", "tune_trial", "point")),
    "prunesweep_trial_sparsity": ("a trial point's sparsity now (fraction of prunable weights that are zero)",
                                  ("experiment", "tune_trial", "point")),
    "prunesweep_trial_test_accuracy": ("a trial point's test accuracy after its last epoch (fraction)",
                                       ("experiment", "tune_trial", "point")),
    "prunesweep_trial_state": ("1 for a trial point's state (running, finished, diverged), 0 for the others, as "
                               "its trial's worker trains it; the driver sets finished when the trial ends",
                               ("experiment", "tune_trial", "point", "state")),
    "prunesweep_dense_epoch": ("epochs a dense training (one seed, or a fused group of seeds) has trained",
                               ("experiment", "seeds")),
    "prunesweep_points": ("an experiment's trial points by state (done, running, waiting, failed), as its "
                          "progress line counts them", ("experiment", "state")),
}
_made: dict = {}


def gauge(name: str):
    """The Ray Gauge ``name`` of :data:`GAUGES`, made once per process."""
    if name not in _made:
        from ray.util.metrics import Gauge

        description, tags = GAUGES[name]
        _made[name] = Gauge(name, description=description, tag_keys=tags)
    return _made[name]


def _states(name: str, states, now: str, tags: dict) -> None:
    for state in states:
        gauge(name).set(1.0 if state == now else 0.0, tags={**tags, "state": state})


def trial_epoch(experiment: str, trial: str, reports: list[dict], finished: bool) -> None:
    """A trial's epoch ended with ``reports`` (one per point it trains); ``finished``: its last."""
    for r in reports:
        tags = {"experiment": experiment, "tune_trial": trial, "point": point_label(r)}
        gauge("prunesweep_trial_epoch").set(float(r[EPOCH]), tags=tags)
        for key, name in ((SPARSITY, "prunesweep_trial_sparsity"), (TEST_ACCURACY, "prunesweep_trial_test_accuracy")):
            if r.get(key) is not None:
                gauge(name).set(float(r[key]), tags=tags)
        state = "diverged" if r.get(DIVERGED) else "finished" if finished else "running"
        _states("prunesweep_trial_state", TRIAL_STATES, state, tags)


def trial_ended(experiment: str, trial: str, labels: list[str]) -> None:
    """From the driver: the trial ``trial`` of the points ``labels`` has ended (its worker may have
    exited before exporting its last values)."""
    for label in labels:
        tags = {"experiment": experiment, "tune_trial": trial, "point": label}
        gauge("prunesweep_trial_state").set(1.0, tags={**tags, "state": "finished"})
        gauge("prunesweep_trial_state").set(0.0, tags={**tags, "state": "running"})


def dense_epoch(experiment: str, seeds: list[int], epoch: int) -> None:
    """A dense training of ``seeds`` has trained ``epoch`` epochs."""
    gauge("prunesweep_dense_epoch").set(float(epoch), tags={"experiment": experiment,
                                                            "seeds": ",".join(map(str, seeds))})


def points(experiment: str, counts: dict[str, int]) -> None:
    """An experiment's trial points by state (:data:`POINT_STATES`), from the driver."""
    for state in POINT_STATES:
        gauge("prunesweep_points").set(float(counts.get(state, 0)), tags={"experiment": experiment, "state": state})
