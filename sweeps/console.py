"""What a sweep prints: prunesweep's own lines, and of Ray's and Ray Tune's only what a person acts on,
unless ``-v`` (``PRUNESWEEP_VERBOSE=1``) asks for everything."""
from __future__ import annotations

import contextlib
import logging
import os

VERBOSE_ENV = "PRUNESWEEP_VERBOSE"

# Ray Tune's table of trials: how often (seconds) and how many rows (Tune shares them among running,
# waiting and ended trials and counts the rest by status); the progress line (:mod:`sweeps.progress`)
# comes between
TABLE_EVERY_S, TABLE_ROWS = 120.0, 10
VERBOSE_TABLE_EVERY_S, VERBOSE_TABLE_ROWS = 20.0, 1000

# loggers whose INFO lines say what prunesweep says itself, or only Ray's internals: a checkpoint
# written ("Checkpoint successfully created", each epoch of each trial), result files synced, the
# run's total time
CHATTY_LOGGERS = ("ray.train", "ray.tune", "ray.air")


def verbose() -> bool:
    """Whether this sweep prints everything Ray and Ray Tune say (``-v``, ``PRUNESWEEP_VERBOSE=1``)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def verbose_while(loud: bool):
    """``-v`` for one command: ``PRUNESWEEP_VERBOSE=1`` while it runs (the driver reads it and passes
    it on to the trials), as it was afterwards."""
    before = os.environ.get(VERBOSE_ENV)
    if loud:
        os.environ[VERBOSE_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(VERBOSE_ENV, None)
        else:
            os.environ[VERBOSE_ENV] = before


def ray_logging_level(loud: bool) -> int:
    """The level of Ray's own loggers (``ray.init(logging_level=...)``, :data:`CHATTY_LOGGERS`)."""
    return logging.INFO if loud else logging.WARNING


def quiet_ray_loggers(loud: bool) -> None:
    """In this process (the driver, or a trial's worker), Ray's chatty INFO loggers at WARNING unless ``loud``."""
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(ray_logging_level(loud))


def table(loud: bool) -> tuple[float, int]:
    """Ray Tune's table: seconds between two, and rows shown."""
    return (VERBOSE_TABLE_EVERY_S, VERBOSE_TABLE_ROWS) if loud else (TABLE_EVERY_S, TABLE_ROWS)


# Ray Tune's words at the end of an interrupted fit that are not true of a prunesweep sweep: its own
# restore advice (prunesweep resumes from the experiment's files: the CLI prints the command), and
# the trials that never started having no results yet; {logger: what its dropped records say}
TUNE_ADVICE = {"ray.tune.tune": ("Tuner.restore(",),
               "ray.tune.analysis.experiment_analysis": ("Failed to fetch metrics", "Could not fetch metrics")}


class _Drop(logging.Filter):
    def __init__(self, words):
        super().__init__()
        self.words = words

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(word in text for word in self.words)


@contextlib.contextmanager
def driver(loud: bool):
    """While a sweep's driver runs: Ray's chatty loggers quiet (:func:`quiet_ray_loggers`) and Ray
    Tune's advice that does not apply dropped (:data:`TUNE_ADVICE`), unless ``loud``; as they were afterwards."""
    levels = {name: logging.getLogger(name).level for name in CHATTY_LOGGERS}
    filters = [] if loud else [(logging.getLogger(name), _Drop(words)) for name, words in TUNE_ADVICE.items()]
    quiet_ray_loggers(loud)
    for logger, drop in filters:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger, drop in filters:
            logger.removeFilter(drop)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
