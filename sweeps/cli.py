"""The ``prunesweep`` command: run, resume, extend, validate, analyze, status. What a command needs
is imported when it runs: ``status`` and ``analyze`` load no torch and no Ray."""
from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    from .trackers import TRACKERS

    p = argparse.ArgumentParser(prog="prunesweep", description="Gradual vs instant pruning sweeps on Ray Tune.")
    sub = p.add_subparsers(dest="command", required=True)

    def ray_options(sp):
        sp.add_argument("--address", help="Ray cluster to use: 'auto' or ray://host:10001 (default: start a local Ray)")
        sp.add_argument("--no-dashboard", action="store_true", help="do not start Ray's dashboard (local Ray only)")
        sp.add_argument("--dashboard-host", default="127.0.0.1", help="interface the local dashboard binds to")
        sp.add_argument("--node-ip-address", default="127.0.0.1",
                        help="address of the local Ray's node: 127.0.0.1 (default) keeps every Ray port on this "
                             "machine; 'auto' or an address of this machine opens them to the network")
        sp.add_argument("--autoscale", action="store_true",
                        help="the cluster adds nodes on demand: skip the GPU/CPU presence check and request them")
        sp.add_argument("--log", dest="trackers", action="append", default=[], choices=list(TRACKERS),
                        help="also log every trial to this tracker, through Ray Tune's callbacks (repeatable): "
                             "tensorboard and mlflow write into the experiment folder, wandb offline unless "
                             "WANDB_MODE or WANDB_API_KEY says otherwise")
        sp.add_argument("-v", "--verbose", action="store_true",
                        help="print everything Ray and Ray Tune say (their INFO lines, Tune's full table every 20 s "
                             "and each trial's results); by default prunesweep's own lines, Tune's table every "
                             "2 min and Ray's warnings")

    run = sub.add_parser("run", help="run a sweep from a YAML config")
    run.add_argument("config", help="YAML file, or a built-in config name (quickstart, gradual_pruning, ...)")
    run.add_argument("--storage", default="results", help="folder or URI (s3://...) that holds experiments")
    run.add_argument("--name", help="experiment name (default: the config's name)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config field by dotted path, value parsed as YAML (repeatable)")
    ray_options(run)

    res = sub.add_parser("resume", help="finish an interrupted experiment")
    res.add_argument("experiment", help="<storage>/<name> of the experiment (a folder or a URI)")
    res.add_argument("--force", action="store_true",
                     help="resume even though the config or the code changed since the experiment started, "
                          "or another driver holds it (its lease; see README, Nothing lost)")
    ray_options(res)

    ext = sub.add_parser("extend", help="grow an experiment by seeds, sparsities or schedules and run what it lacks")
    ext.add_argument("experiment", help="<storage>/<name> of the experiment (a folder or a URI)")
    ext.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="the grown grid: seeds=N, \"sparsities=[...]\", \"schedules=[...]\" (repeatable); "
                          "nothing else may change")
    ext.add_argument("--force", action="store_true",
                     help="extend even though the code changed since the experiment started, "
                          "or another driver holds it")
    ray_options(ext)

    val = sub.add_parser("validate", help="check a config, its data and checkpoint, and count its trials, "
                                          "without starting Ray")
    val.add_argument("config", help="YAML file, or a built-in config name (quickstart, gradual_pruning, ...)")
    val.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config field by dotted path, value parsed as YAML (repeatable), as run takes it")

    sub.add_parser("status", help="where an experiment stands, from its files (while it runs or after; no Ray)",
                   add_help=False).add_argument("rest", nargs=argparse.REMAINDER)

    ana = sub.add_parser("analyze", help="summaries, paired tests, plots and report.md of an experiment",
                         add_help=False)
    ana.add_argument("rest", nargs=argparse.REMAINDER)
    return p


def _summarise(outcome) -> int:
    """What the sweep ended with, counted from the experiment's own files (this session's trials and
    those finished before it); 0 when every trial has finished."""
    path = outcome.path
    errors = [r for r in outcome.results if r.error is not None]
    note = f" ({outcome.diverged} diverged: they end there and are not retried)" if outcome.diverged else ""
    print(f"\n{outcome.finished} of {outcome.trials} trial points finished{note}; results in {path}")
    print(f"analyse them with: prunesweep analyze {path}")
    for seed, why in sorted(outcome.dense_failed.items()):
        print(f"the dense model of seed {seed} could not be trained ({why}): its trials failed; "
              f"`prunesweep resume {path}` trains it again and runs them", file=sys.stderr)
    if errors:
        print(f"{len(errors)} trial(s) failed after all retries; `prunesweep resume {path}` retries them", file=sys.stderr)
    if outcome.finished < outcome.trials:
        print(f"unfinished trial points remain: continue with `prunesweep resume {path}`", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "analyze":
        from analysis.cli import main as analyze_main

        return analyze_main(argv[1:])
    if argv and argv[0] == "status":
        from .status import main as status_main

        return status_main(argv[1:])
    args = _parser().parse_args(argv)
    from analysis.messages import count

    from .config import ConfigError, load_config
    from .plan import epochs_to_train, trial_count
    from .preflight import dense_checkpoint, preflight, will_download

    try:
        if args.command == "validate":
            config = preflight(load_config(args.config, args.overrides), download=False)
            if config.dense.checkpoint:  # as run reads it, so that validate refuses what run refuses
                dense_checkpoint(config)
            trials = trial_count(config)
            regimes = len(config.finetune.retrain)
            dense, retraining = epochs_to_train(config)
            print(f"{args.config}: valid; {count(trials, 'trials')} ({count(len(config.schedules), 'schedules')}, "
                  + (f"{regimes} retraining regimes, " if regimes > 1 else "")
                  + f"{count(len(config.sparsities), 'sparsities')}, {count(config.seed_count, 'seeds')}); "
                  f"{dense + retraining:,} epochs to train ({dense:,} dense, {retraining:,} retraining)")
            from .groups import describe, planned

            if config.fuse == "auto":
                print("fuse: auto: `prunesweep run` measures whether fused steps pay for this model on the trials' "
                      "device, and fuses seed groups of up to 16 where they do")
            for line in describe(config, planned(config)):
                print(line)
            if will_download(config):
                print(f"run will download {config.dataset.name} into {config.dataset.root} first")
            return 0
        from . import runner
        from .console import verbose_while
        from .ray_connection import RayOptions

        options = RayOptions(address=args.address, dashboard=not args.no_dashboard,
                             dashboard_host=args.dashboard_host, autoscale=args.autoscale,
                             node_ip_address=args.node_ip_address)
        with verbose_while(args.verbose):
            if args.command == "run":
                config = load_config(args.config, args.overrides)
                outcome = runner.run(config, args.storage, args.name, options, args.trackers)
            elif args.command == "extend":
                outcome = runner.extend(args.experiment, args.overrides, options, args.force, args.trackers)
            else:
                outcome = runner.resume(args.experiment, options, force=args.force, trackers=args.trackers)
        return _summarise(outcome)
    except ConfigError as exc:
        print(f"prunesweep: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished trials and checkpoints are kept; continue with `prunesweep resume`",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
