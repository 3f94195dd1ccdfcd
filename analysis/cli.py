"""``prunesweep analyze`` (also ``python -m analysis``)."""
from __future__ import annotations

import argparse
import math
import sys

from .experiment_file import NotAnExperiment
from . import storage
from .messages import one_line
from .report import write_report
from .schema import TEST_ACCURACY
from .stats import ERROR_BARS


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number; got {text!r}")
    return value


def _lease(experiment: str) -> str | None:
    """Who holds the experiment's lease (a live driver running it, :mod:`analysis.lease`), or None."""
    from .lease import judge, lease_file

    try:
        found = judge(lease_file(storage.normalise(experiment)))
    except Exception:  # storage that cannot be read: the report is written, nothing to add
        return None
    return f"{found.holder} holds its lease" if found.live else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="prunesweep analyze",
                                description="Summaries, paired tests, plots and report.md of an experiment.")
    p.add_argument("experiment", help="the experiment: <storage>/<name>, a local folder or a URI (s3://bucket/...)")
    p.add_argument("--out", help="output folder or URI (default: <experiment>/analysis)")
    p.add_argument("--metric", default=TEST_ACCURACY, help="metric to compare (default: test_accuracy)")
    p.add_argument("--error", default="ci95", choices=list(ERROR_BARS), help="error bars (default: ci95)")
    p.add_argument("--effect", type=_positive, metavar="PTS",
                   help="a difference worth detecting, in points: percentage points for a percent metric such as "
                        "test_accuracy (--effect 1: one point of accuracy), else the metric's own units; the report "
                        "also says how many seeds would detect it")
    args = p.parse_args(argv)
    try:
        files = write_report(args.experiment, args.out, args.metric, args.error, args.effect)
    except (NotAnExperiment, ValueError, OSError) as exc:
        print(f"prunesweep analyze: error: {one_line(exc, 1000)}", file=sys.stderr)
        return 2
    running = _lease(args.experiment)
    if running:
        print(f"note: {running}: a driver may still be running the experiment (or was killed); the report "
              "covers the trials finished so far", file=sys.stderr)
    print(f"report: {files['report']}")
    for key in ("summary", "comparison"):
        print(f"{key}: {files[key]}")
    print("plots: " + ", ".join(v for k, v in files.items() if v.endswith(".png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
