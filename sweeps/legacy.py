"""What exists only so that experiments written by older prunesweep versions still open: in one place."""
from __future__ import annotations

LEGACY_KEEP = "checkpoints_to_keep"  # before checkpoint.keep; experiments that recorded it still resume


def upgrade_config(raw: dict) -> dict:
    """A raw config with the fields of older versions renamed to today's (a ValueError names a clash)."""
    if not isinstance(raw, dict) or LEGACY_KEEP not in raw:
        return raw
    raw = dict(raw)
    keep = raw.pop(LEGACY_KEEP)
    section = raw.get("checkpoint")
    if isinstance(section, dict) and "keep" in section:
        raise ValueError(f"{LEGACY_KEEP}: give checkpoint.keep only ({LEGACY_KEEP} is its old name)")
    raw["checkpoint"] = {**(section if isinstance(section, dict) else {}), "keep": keep}
    return raw
