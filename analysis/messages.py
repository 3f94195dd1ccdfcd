"""How prunesweep words what went wrong: an exception as one line of a message."""
from __future__ import annotations


def one_line(exc: BaseException, limit: int = 400) -> str:
    """An exception's message on one line, cut to ``limit`` characters (object stores can answer at length)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 1] + "…"
