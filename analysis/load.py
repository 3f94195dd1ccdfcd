"""Reading a Ray Tune experiment directory from disk (no Ray needed) into tidy DataFrames."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

KEYS = ["trial_id", "schedule", "target_sparsity", "seed"]


class NotAnExperiment(ValueError):
    """The path holds no Ray Tune experiment."""


def _trial_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("*/result.json"))


def load_experiment(path) -> pd.DataFrame:
    """One row per report of every trial: ``trial_id``, metrics, and ``config.*`` fields flattened.

    Reads Ray Tune's ``result.json`` files; works on a copied directory with Ray neither
    running nor imported. Reports repeated by a restarted trial are kept once (the last).
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise NotAnExperiment(f"{root}: no such directory")
    has_state = any(root.glob("experiment_state-*.json")) or (root / "tuner.pkl").exists()
    trials = _trial_dirs(root)
    if not has_state and not trials:
        raise NotAnExperiment(f"{root}: not a Ray Tune experiment (no experiment_state-*.json, tuner.pkl or trial result.json)")
    rows = []
    for folder in trials:
        with open(folder / "result.json") as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue  # a line cut off by a killed process
    if not rows:
        return pd.DataFrame(columns=KEYS + ["epoch"])
    df = pd.json_normalize(rows, sep=".")
    if "epoch" in df:
        df = df.drop_duplicates(subset=["trial_id", "target_sparsity", "epoch"], keep="last")
    return df.sort_values(["trial_id", "training_iteration"]).reset_index(drop=True)


def final_results(df: pd.DataFrame) -> pd.DataFrame:
    """The last report of each trial at each target sparsity (one row per rung for a ladder)."""
    if df.empty:
        return df
    order = df.sort_values(["trial_id", "target_sparsity", "epoch"])
    return order.groupby(["trial_id", "target_sparsity"], as_index=False, sort=True).tail(1).reset_index(drop=True)


def expected_trials(path) -> int | None:
    """How many trials the experiment's ``prunesweep.yaml`` asks for (None if it has none)."""
    file = Path(path) / "prunesweep.yaml"
    if not file.exists():
        return None
    cfg = yaml.safe_load(file.read_text())
    seeds = cfg["seeds"] if isinstance(cfg["seeds"], int) else len(cfg["seeds"])
    per_seed = sum(1 if s["kind"] == "ladder" else len(cfg["sparsities"]) for s in cfg["schedules"])
    return per_seed * seeds


def completion(df: pd.DataFrame, path=None) -> dict:
    """Counts of trials expected, started and finished (reached their full epoch budget)."""
    started = df["trial_id"].nunique() if not df.empty else 0
    finished = 0
    if not df.empty and "budget_epochs" in df:
        last = df.groupby("trial_id")[["epoch", "budget_epochs"]].max()
        finished = int((last["epoch"] >= last["budget_epochs"]).sum())
    expected = expected_trials(path) if path is not None else None
    expected = expected if expected is not None else started
    return {"expected": expected, "started": started, "finished": finished, "missing": expected - finished}
