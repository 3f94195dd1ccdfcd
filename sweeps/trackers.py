"""Experiment trackers for ``--log``: Ray Tune's own logger callbacks, offline into the experiment
folder unless the user's environment points them elsewhere."""
from __future__ import annotations

import importlib.util
import os
import sys

from analysis import storage

from .config import ConfigError

# tracker: (the modules it needs, the pip extra that installs them)
TRACKERS = {"tensorboard": (("tensorboardX",), "tensorboard"),
            "mlflow": (("mlflow", "sqlalchemy", "alembic"), "mlflow"),
            "wandb": (("wandb",), "wandb")}
MLFLOW_DB = "mlflow.db"           # in the experiment folder: MLflow's offline store (SQLite)
MLFLOW_URI_ENV = "MLFLOW_TRACKING_URI"
WANDB_MODE_ENV, WANDB_KEY_ENV = "WANDB_MODE", "WANDB_API_KEY"
WANDB_DIR = "wandb"               # in the experiment folder: W&B's offline runs


def check(names: list[str], experiment: str) -> None:
    """Refuse (ConfigError, one line naming the pip extra) a tracker whose package is missing, or
    one that cannot write offline where the experiment lives, or one it does not know (a damaged
    ``provenance.trackers``); before Ray starts."""
    for name in dict.fromkeys(names):
        if name not in TRACKERS:
            raise ConfigError(f"provenance.trackers: {name!r} is not a tracker; known: {', '.join(TRACKERS)}")
        modules, extra = TRACKERS[name]
        needed = modules if name != "mlflow" or not os.environ.get(MLFLOW_URI_ENV) else modules[:1]
        missing = [m for m in needed if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(f"--log {name}: needs the {', '.join(missing)} package(s); "
                              f"install them with: pip install 'prunesweep[{extra}]'")
        if name == "mlflow" and storage.is_uri(experiment) and not os.environ.get(MLFLOW_URI_ENV):
            raise ConfigError(f"--log mlflow: MLflow's offline store is a local file and {experiment} is not local; "
                              f"set {MLFLOW_URI_ENV} to your MLflow server")


def callbacks(names: list[str], experiment: str) -> list:
    """Ray Tune callbacks for the trackers ``names`` of the experiment at ``experiment``:

    - ``tensorboard``: tensorboardX event files in every trial folder (``tensorboard --logdir <experiment>``);
    - ``mlflow``: one MLflow run per trial, in the MLflow experiment named after the experiment, stored
      in ``<experiment>/mlflow.db`` (or at ``$MLFLOW_TRACKING_URI``);
    - ``wandb``: one W&B run per trial in the project named after the experiment, offline
      (:func:`environment`) unless ``WANDB_MODE`` or ``WANDB_API_KEY`` says otherwise, into
      ``<experiment>/wandb`` for a local experiment, else into ``./wandb`` where prunesweep runs
      (W&B writes only to local files).
    """
    out = []
    name = storage.name(experiment)
    for tracker in dict.fromkeys(names):
        if tracker == "tensorboard":
            from ray.tune.logger import TBXLoggerCallback

            out.append(TBXLoggerCallback())
        elif tracker == "mlflow":
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            uri = os.environ.get(MLFLOW_URI_ENV) or f"sqlite:///{storage.join(experiment, MLFLOW_DB)}"
            out.append(MLflowLoggerCallback(tracking_uri=uri, experiment_name=name))
        elif tracker == "wandb":
            from ray.air.integrations.wandb import WandbLoggerCallback

            mode = _wandb_mode()
            options = {"mode": mode} if mode else {}
            # W&B writes local files only: beside a local experiment, else here (never in Tune's staging folder)
            options["dir"] = os.path.abspath(WANDB_DIR if storage.is_uri(experiment) else storage.join(experiment, WANDB_DIR))
            os.makedirs(options["dir"], exist_ok=True)
            if os.environ.get(WANDB_KEY_ENV):
                print(f"warning: {WANDB_KEY_ENV} is set: Ray's WandbLoggerCallback passes it to its logging actor in "
                      "a runtime env, which Ray's agent writes in plain text to its session logs; authenticate with "
                      "`wandb login` (~/.netrc) instead and unset it", file=sys.stderr, flush=True)
            out.append(WandbLoggerCallback(project=name, **options))
    return out


def _wandb_mode() -> str | None:
    """W&B's mode: the user's ``WANDB_MODE``; else offline, unless ``WANDB_API_KEY`` is set (online)."""
    return os.environ.get(WANDB_MODE_ENV) or (None if os.environ.get(WANDB_KEY_ENV) else "offline")


def environment(names: list[str]) -> dict[str, str]:
    """The environment the trackers ``names`` need while the sweep runs (offline W&B: its mode, so
    that Ray's callback asks for no API key on this driver)."""
    mode = _wandb_mode() if "wandb" in names else None
    return {WANDB_MODE_ENV: mode} if mode else {}
