"""What an experiment was started with (config hash, prunesweep version, git revision), so that
``resume`` can refuse to mix results of a different config or different code."""
from __future__ import annotations

import hashlib
import json
import subprocess
import time
from importlib import metadata
from pathlib import Path

from .config import SweepConfig

CONFIG_HASH, VERSION, GIT_REVISION, STARTED_AT = "config_sha256", "prunesweep_version", "git_revision", "started_at"
CHECKOUT = Path(__file__).resolve().parent.parent


def config_hash(config: SweepConfig) -> str:
    """SHA-256 of the validated config (defaults filled in, keys sorted)."""
    text = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(CHECKOUT), *args], capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode(errors="replace")


def git_revision() -> str | None:
    """``HEAD``'s commit when prunesweep runs from a git checkout, with ``+dirty.<hash of the
    uncommitted diff>`` when tracked files changed; None when installed from a package."""
    if not (CHECKOUT / ".git").exists():
        return None
    head = _git("rev-parse", "HEAD")
    if head is None:
        return None
    diff = _git("diff", "HEAD", "--", ".") or ""
    head = head.strip()
    return f"{head}+dirty.{hashlib.sha256(diff.encode()).hexdigest()[:12]}" if diff else head


def version() -> str:
    try:
        return metadata.version("prunesweep")
    except metadata.PackageNotFoundError:
        return "unknown"


def record(config: SweepConfig) -> dict:
    """The provenance block written into the experiment's ``prunesweep.yaml``."""
    return {CONFIG_HASH: config_hash(config), VERSION: version(), GIT_REVISION: git_revision(),
            STARTED_AT: time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def differences(config: SweepConfig, recorded: dict) -> list[str]:
    """How the config and the code here differ from what the experiment ``recorded`` at its start."""
    found = []
    now = config_hash(config)
    if recorded.get(CONFIG_HASH) != now:
        found.append(f"the config differs from the one the run started with (sha256 {str(recorded.get(CONFIG_HASH))[:12]} "
                     f"recorded, {now[:12]} now)")
    if recorded.get(VERSION) != version():
        found.append(f"prunesweep {version()} here, {recorded.get(VERSION)} at the start")
    revision = git_revision()
    if recorded.get(GIT_REVISION) != revision:
        found.append(f"code at git revision {revision or 'none (not a checkout)'} here, "
                     f"{recorded.get(GIT_REVISION) or 'none (not a checkout)'} at the start")
    return found
