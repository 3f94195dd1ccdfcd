"""The experiment's lease (:data:`analysis.schema.LOCK_FILE` in its folder) as its file says: who
holds it, and whether that holder is alive. The one rule for it: :mod:`sweeps.lock` takes, renews
and breaks leases by it, ``prunesweep status`` (:mod:`sweeps.status`) and ``prunesweep analyze``
read them by it. Nothing here imports torch, Ray or pandas: it reads the file through
:mod:`analysis.storage`.

A lease names its holder (``command``, ``host``, ``pid``, ``process_started``, ``since``) and the
``machine`` where that pid means something, and is renewed (``heartbeat``) every
:data:`HEARTBEAT_S` seconds. It is *stale*, its holder provably gone, when its process is gone (a
holder on this machine) or when it has not been renewed for :data:`STALE_S` seconds (a holder
elsewhere). A lease that cannot be parsed (a writer killed mid-way on a store without atomic
writes) is held until its file is :data:`STALE_S` seconds old.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass

from . import storage
from .schema import LOCK_FILE

HEARTBEAT_S = 15.0
STALE_S = 120.0  # a lease not renewed for this long is stale (eight missed heartbeats)
UNREADABLE = "a driver whose lease cannot be read"  # the holder of a lease that cannot be parsed


def lease_file(path: str) -> str:
    """The lease file of the experiment at ``path``."""
    return storage.join(path, LOCK_FILE)


def machine() -> str:
    """Where this process's pids mean something: the host, its boot and its pid namespace (the host
    name alone may be shared by containers, and so may a boot)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{socket.gethostname()}/{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return socket.gethostname()


def process_started(pid: int) -> float | None:
    """When process ``pid`` of this machine started (None: there is no such process; -1: another
    user's, which exists)."""
    import psutil

    try:
        return round(psutil.Process(pid).create_time(), 2)
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:  # another user's process: it exists
        return -1.0


def new(command: str) -> dict:
    """The lease this process holds for ``command``, as written (a fresh ``token`` tells it apart)."""
    pid = os.getpid()
    now = time.time()
    return {"token": uuid.uuid4().hex, "command": command, "host": socket.gethostname(), "machine": machine(),
            "pid": pid, "process_started": process_started(pid), "since": now, "heartbeat": now}


def read(file: str) -> dict | None:
    """The lease in ``file`` as stored (None: there is none; ``{}``: one that cannot be parsed)."""
    try:
        data = storage.read_bytes(file)
    except FileNotFoundError:
        return None
    try:
        lease = json.loads(data)
    except ValueError:
        return {}
    return lease if isinstance(lease, dict) else {}


def stale(lease: dict, now: float) -> str | None:
    """Why the (parsed) ``lease`` is provably stale, or None while its holder may be alive."""
    if lease.get("machine") == machine() and isinstance(lease.get("pid"), int):
        started = process_started(lease["pid"])
        if started is None or (started >= 0 and started != lease.get("process_started")):
            return f"its process {lease['pid']} on this machine is gone"
        return None  # alive here: however late its heartbeat, it may still write
    beat = lease.get("heartbeat")
    if isinstance(beat, (int, float)) and now - beat > STALE_S:
        return f"not renewed for {now - beat:.0f} s (a live holder renews it every {HEARTBEAT_S:g} s)"
    return None


def holder(lease: dict, now: float) -> str:
    """Who holds ``lease``, in words: its command, process, host, since when and when last heard from."""
    if not lease:
        return UNREADABLE
    since, beat = lease.get("since"), lease.get("heartbeat")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    ago = f"{now - beat:.0f} s ago" if isinstance(beat, (int, float)) else "never"
    return (f"`prunesweep {lease.get('command', '?')}` (process {lease.get('pid', '?')} on {lease.get('host', '?')}, "
            f"since {when}, last heard from {ago})")


@dataclass(frozen=True)
class Judged:
    """A lease file as judged at one moment: ``lease`` as stored (None: there is none, ``{}``: one
    that cannot be parsed); ``live`` when its holder may be alive; ``holder`` in words; ``since``
    when its holder took it (seconds since the epoch; an unparsable one's: when it was written);
    ``stale`` why it no longer counts (empty while live or absent)."""

    lease: dict | None = None
    live: bool = False
    holder: str = ""
    since: float = 0.0
    stale: str = ""


def judge(file: str, now: float | None = None) -> Judged:
    """The lease in ``file`` and whether its holder is alive (see the module's notes). Storage that
    cannot be read raises, as :mod:`analysis.storage` does."""
    found = read(file)
    if found is None:
        return Judged()
    now = time.time() if now is None else now
    if not found:
        try:
            written = storage.modified(file)
        except (FileNotFoundError, AttributeError):  # removed since it was read (pyarrow: no mtime then)
            return Judged()
        if now - written > STALE_S:
            return Judged(found, False, UNREADABLE, written,
                          f"it cannot be read and was written {now - written:.0f} s ago")
        return Judged(found, True, UNREADABLE, written)
    since = found.get("since")
    since = float(since) if isinstance(since, (int, float)) else 0.0
    why = stale(found, now)
    return Judged(found, why is None, holder(found, now), since, why or "")
