"""How prunesweep words things: an exception as one line of a message, a value cut short, a count
with its noun, a list of seeds."""
from __future__ import annotations

import reprlib

SHORT = 80  # characters of a value that a message echoes

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxdict, _repr.maxlist, _repr.maxtuple, _repr.maxset = 2, 6, 6, 6, 6
_repr.maxstring = _repr.maxother = _repr.maxlong = SHORT


def short(value, limit: int = SHORT) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters with "…"; a deep or long container
    (a YAML file's nested aliases can stand for billions of items) is shown by its first items
    only, so the time this takes does not grow with the value."""
    try:
        text = " ".join(_repr.repr(value).split())
    except ValueError:  # an integer past Python's 4,300 digits for str()
        text = f"<a {type(value).__name__} too long to show>"
    return text if len(text) <= limit else text[:limit - 1] + "…"


def one_line(exc: BaseException, limit: int = 400) -> str:
    """An exception's message on one line, cut to ``limit`` characters (object stores can answer at length)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 1] + "…"


def count(n: int, plural: str) -> str:
    """``n`` and a noun in its number, the noun given in the plural: "1 sparsity", "2 sparsities", "3 seeds"."""
    if n != 1:
        return f"{n} {plural}"
    return f"{n} {plural[:-3]}y" if plural.endswith("ies") else f"{n} {plural[:-1]}"


def seed_text(seeds) -> str:
    """Seeds as runs: ``0-4, 7, 9-10``."""
    runs: list[list[int]] = []
    for s in sorted(seeds):
        if runs and s == runs[-1][1] + 1:
            runs[-1][1] = s
        else:
            runs.append([s, s])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)
