"""What an experiment was started with (config hash, prunesweep version, a hash of its code, the
git revision), so that ``resume`` can refuse to mix results of a different config or code."""
from __future__ import annotations

import hashlib
import json
import subprocess
import time
from importlib import metadata
from pathlib import Path

from analysis.schema import FUSION

from .config import ConfigError, SweepConfig

CONFIG_HASH, VERSION, CODE_HASH, GIT_REVISION = "config_sha256", "prunesweep_version", "code_sha256", "git_revision"
STARTED_AT, FORCED_RESUMES, EXTENSIONS = "started_at", "forced_resumes", "extensions"
LEGACY, TRACKERS = "legacy", "trackers"
MODEL_CODE_HASH = "model_code_sha256"
PROJECT = Path(__file__).resolve().parent.parent
CODE = ("pruning_core", "sweeps", "analysis")


def config_hash(config: SweepConfig) -> str:
    """SHA-256 of the validated config (defaults filled in, keys sorted)."""
    text = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def code_hash() -> str:
    """SHA-256 over the code that computes results: every ``.py`` and ``.yaml`` file of
    pruning_core, sweeps and analysis, by path and content (docs, tests and notebooks excluded)."""
    digest = hashlib.sha256()
    for package in CODE:
        for file in sorted((PROJECT / package).rglob("*")):
            if file.suffix in (".py", ".yaml") and "__pycache__" not in file.parts:
                digest.update(file.relative_to(PROJECT).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def model_code_hash(config: SweepConfig) -> str | None:
    """SHA-256 over the ``.py`` files of the user's model builder (the code Ray ships to the
    workers), by path and content; None for built-in and torchvision models."""
    from .models import ModelError, builder_source

    try:
        source = builder_source(config.model)
    except ModelError as exc:
        raise ConfigError(f"model {config.model!r}: {exc}") from None
    if source is None:
        return None
    root = Path(source)
    files = [root] if root.is_file() else sorted(f for f in root.rglob("*.py") if "__pycache__" not in f.parts)
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(root.parent).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def git_revision() -> str | None:
    """``HEAD``'s commit when prunesweep runs from a git checkout (``+dirty`` with uncommitted
    changes to tracked files), else None. Recorded for information; :func:`code_hash` decides."""
    if not (PROJECT / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(PROJECT), "rev-parse", "HEAD"], capture_output=True, timeout=10,
                              check=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(PROJECT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, timeout=10, check=True, text=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if dirty else head


def version() -> str:
    try:
        return metadata.version("prunesweep")
    except metadata.PackageNotFoundError:
        return "unknown"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def record(config: SweepConfig) -> dict:
    """The provenance block written into the experiment's ``prunesweep.yaml``."""
    recorded = {CONFIG_HASH: config_hash(config), VERSION: version(), CODE_HASH: code_hash(),
                GIT_REVISION: git_revision(), STARTED_AT: _now()}
    model = model_code_hash(config)
    return {**recorded, MODEL_CODE_HASH: model} if model else recorded


def config_changed(config: SweepConfig, recorded: dict) -> str | None:
    """How ``config`` differs from the config the experiment ``recorded`` (its hash), or None (also
    when nothing was recorded)."""
    now = config_hash(config)
    if not recorded or recorded.get(CONFIG_HASH) == now:
        return None
    return (f"the config differs from the one the run started with (sha256 "
            f"{str(recorded.get(CONFIG_HASH))[:12]} recorded, {now[:12]} now)")


def differences(config: SweepConfig, recorded: dict) -> list[str]:
    """How the config and the code here differ from what the experiment ``recorded`` at its start
    (only the config for a :data:`LEGACY` record: what code ran before is unknown; nothing when
    nothing was recorded)."""
    found = [c for c in [config_changed(config, recorded)] if c]
    if not recorded or recorded.get(LEGACY):
        return found
    if recorded.get(VERSION) != version():
        found.append(f"prunesweep {version()} here, {recorded.get(VERSION)} at the start")
    code = code_hash()
    if recorded.get(CODE_HASH) != code:
        found.append(f"the code differs from the run's start (sha256 {str(recorded.get(CODE_HASH))[:12]} at git "
                     f"revision {recorded.get(GIT_REVISION) or 'none'} then, {code[:12]} at "
                     f"{git_revision() or 'none'} now)")
    model = model_code_hash(config)
    if recorded.get(MODEL_CODE_HASH) != model:
        found.append(f"the code of model {config.model} differs from the run's start (sha256 "
                     f"{str(recorded.get(MODEL_CODE_HASH))[:12]} then, {str(model)[:12]} now)")
    return found


def unknown(recorded: dict) -> bool:
    """Whether the experiment started before prunesweep recorded its code (nothing to check it by)."""
    return not recorded or bool(recorded.get(LEGACY))


def legacy(config: SweepConfig) -> dict:
    """The record of an experiment from before provenance: its config's hash, its code unknown."""
    return {LEGACY: "started before prunesweep recorded its code", CONFIG_HASH: config_hash(config)}


def with_trackers(recorded: dict, names) -> dict:
    """``recorded`` listing the trackers ``names`` too (``--log``: every later resume and extend logs
    to the trackers an experiment has logged to)."""
    known = list(recorded.get(TRACKERS, []))
    more = [n for n in dict.fromkeys(names) if n not in known]
    return {**recorded, TRACKERS: known + more} if more else recorded


def with_fusion(recorded: dict, grouping) -> dict:
    """``recorded`` with the experiment's grouping (:class:`sweeps.groups.Grouping`; nothing for an
    experiment whose points train alone and that measured nothing)."""
    if not grouping.fused and grouping.measured is None:
        return recorded
    return {**recorded, FUSION: grouping.record()}


def forced(recorded: dict, config: SweepConfig, changed: list[str]) -> dict:
    """``recorded`` with one more entry in its list of resumes forced past ``changed``, and the hash
    of ``config``, the config the experiment's ``prunesweep.yaml`` holds from then on."""
    entry = {"at": _now(), "differences": changed, "config_sha256_before": recorded.get(CONFIG_HASH),
             CODE_HASH: code_hash(), GIT_REVISION: git_revision()}
    return {**recorded, CONFIG_HASH: config_hash(config), FORCED_RESUMES: [*recorded.get(FORCED_RESUMES, []), entry]}


def extended(recorded: dict, old: SweepConfig, new: SweepConfig, added: dict, changed: list[str]) -> dict:
    """``recorded`` for the grown config ``new``: its hash, and one more entry in the list of
    extensions (when, the hash before, what was added; the differences a ``--force`` went past)."""
    entry = {"at": _now(), "config_sha256_before": config_hash(old), "added": added,
             CODE_HASH: code_hash(), GIT_REVISION: git_revision(), **({"forced_past": changed} if changed else {})}
    base = recorded or legacy(old)
    return {**base, CONFIG_HASH: config_hash(new), EXTENSIONS: [*base.get(EXTENSIONS, []), entry]}
