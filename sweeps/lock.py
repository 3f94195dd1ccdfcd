"""One driver per experiment: ``run``, ``resume`` and ``extend`` hold the experiment's lease
(:data:`LOCK_FILE` in its folder, local or on an object store) from before they write anything
until they exit, so that two drivers never train into one experiment and count its trials twice.

The lease names its holder (command, host, process and when it started) and is renewed every
:data:`HEARTBEAT_S` seconds. A held lease is refused in one line naming the holder; it is broken only
when provably stale: its process is gone (a holder on this machine), or it has not been renewed for
:data:`STALE_S` seconds (any holder), or when the user says so (``--force``).

A local lease is created with ``O_EXCL``, which the file system makes atomic. An object store
offers no create-if-absent through pyarrow: a lease there is written, then read back to check that
no other driver's replaced it within :data:`SETTLE_S` seconds.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid

from analysis import storage
from analysis.messages import one_line
from analysis.schema import LOCK_FILE

from .config import ConfigError

HEARTBEAT_S = 15.0
STALE_S = 120.0  # a lease not renewed for this long is stale (eight missed heartbeats)
SETTLE_S = 1.0  # on an object store: how long a driver waits before it reads its new lease back


class ExperimentInUse(ConfigError):
    """Another driver holds the experiment's lease."""


def _machine() -> str:
    """This machine's boot: the host name alone may be shared (containers), a boot id is not."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f"{socket.gethostname()}/{f.read().strip()}"
    except OSError:
        return socket.gethostname()


def _process_started(pid: int) -> float | None:
    """When process ``pid`` of this machine started (None: there is no such process)."""
    import psutil

    try:
        return round(psutil.Process(pid).create_time(), 2)
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:  # another user's process: it exists
        return -1.0


def _me(command: str) -> dict:
    pid = os.getpid()
    return {"token": uuid.uuid4().hex, "command": command, "host": socket.gethostname(), "machine": _machine(),
            "pid": pid, "process_started": _process_started(pid), "since": time.time(), "heartbeat": time.time()}


def _stale(lease: dict, now: float) -> str | None:
    """Why ``lease`` is provably stale, or None."""
    if lease.get("machine") == _machine() and isinstance(lease.get("pid"), int):
        started = _process_started(lease["pid"])
        if started is None or (started >= 0 and started != lease.get("process_started")):
            return f"its process {lease['pid']} on this machine is gone"
        return None  # alive here: however late its heartbeat, it may still write
    beat = lease.get("heartbeat")
    if isinstance(beat, (int, float)) and now - beat > STALE_S:
        return f"not renewed for {now - beat:.0f} s (a live holder renews it every {HEARTBEAT_S:g} s)"
    return None


def _holder(lease: dict, now: float) -> str:
    since = lease.get("since")
    beat = lease.get("heartbeat")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    ago = f"{now - beat:.0f} s ago" if isinstance(beat, (int, float)) else "never"
    return (f"`prunesweep {lease.get('command', '?')}` (process {lease.get('pid', '?')} on {lease.get('host', '?')}, "
            f"since {when}, last heard from {ago})")


class Lease:
    """The lease on the experiment at ``path``, held for ``command``."""

    def __init__(self, path: str, command: str):
        self.path, self.command = path, command
        self.file = storage.join(path, LOCK_FILE)
        self.mine = _me(command)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def read(self) -> dict | None:
        """The lease as stored (None: there is none; ``{}``: one that cannot be parsed)."""
        try:
            data = storage.read_bytes(self.file)
        except FileNotFoundError:
            return None
        try:
            lease = json.loads(data)
        except ValueError:
            return {}
        return lease if isinstance(lease, dict) else {}

    def acquire(self, force: bool = False) -> None:
        """Take the lease, or raise :class:`ExperimentInUse` naming its holder; ``force`` takes it anyway."""
        found = self.read()
        if found is not None:
            now = time.time()
            why = _stale(found, now) if found else "it cannot be read"
            if why is None and not force:
                raise ExperimentInUse(
                    f"{self.command} {self.path}: the experiment is in use by {_holder(found, now)}; two drivers "
                    "would train its trials twice. Wait until it ends (or stop it); if it is gone, pass --force")
            print(f"{self.command}: taking over the lease of {self.path} from {_holder(found, now) if found else '?'}: "
                  f"{why or '--force'}", file=sys.stderr, flush=True)
            self._write()
        elif not self._create():
            return self.acquire(force)  # another driver created it between our look and our write
        if storage.is_uri(self.file):
            time.sleep(SETTLE_S)
            if (self.read() or {}).get("token") != self.mine["token"]:
                found = self.read() or {}
                raise ExperimentInUse(f"{self.command} {self.path}: another driver took the experiment at the same "
                                      f"moment: {_holder(found, time.time())}")
        self._thread = threading.Thread(target=self._renew, name="prunesweep-lease", daemon=True)
        self._thread.start()

    def _create(self) -> bool:
        """Create the lease if there is none; False if another driver's appeared first."""
        if storage.is_uri(self.file):
            self._write()
            return True
        os.makedirs(os.path.dirname(self.file), exist_ok=True)
        try:
            fd = os.open(self.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(self.mine).encode())
        return True

    def _write(self) -> None:
        self.mine["heartbeat"] = time.time()
        storage.write_bytes(self.file, json.dumps(self.mine).encode())

    def _renew(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if (self.read() or {}).get("token") != self.mine["token"]:
                    self.lost = True
                    print(f"warning: another driver took over the lease of {self.path} (--force): this one goes on, "
                          "but its trials may now be trained twice", file=sys.stderr, flush=True)
                    return
                self._write()
            except Exception as exc:  # a storage outage: the next heartbeat tries again
                print(f"warning: cannot renew the lease of {self.path} ({one_line(exc)})", file=sys.stderr, flush=True)

    def release(self) -> None:
        """Stop renewing and remove the lease, if it is still this driver's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(Exception):  # nothing to release, or storage gone: a stale lease is broken later
            if (self.read() or {}).get("token") == self.mine["token"]:
                storage.delete(self.file)


def holder(path: str) -> str | None:
    """Who holds the experiment at ``path`` now (:class:`Lease`), or None when no live driver does."""
    found = Lease(path, "?").read()
    now = time.time()
    return _holder(found, now) if found and _stale(found, now) is None else None


@contextlib.contextmanager
def held(path: str, command: str, force: bool = False):
    """Hold the lease of the experiment at ``path`` while the block runs (:class:`Lease`). Folders
    that the lease itself created and that hold nothing else afterwards are removed, so that a
    ``run`` refused or failed before writing anything leaves nothing behind."""
    made = _missing_folders(path)
    lease = Lease(path, command)
    lease.acquire(force)
    try:
        yield lease
    finally:
        lease.release()
        with contextlib.suppress(Exception):  # storage gone: an empty folder is all that stays
            for folder in made:
                storage.remove_if_empty(folder)


def _missing_folders(path: str) -> list[str]:
    """``path`` and those of its parents that do not exist (below a bucket), the deepest first."""
    missing = []
    while not storage.exists(path):
        missing.append(path)
        parent = storage.split(path)[0]
        if parent == path or (storage.is_uri(path) and "/" not in storage.within(parent)):
            break
        path = parent
    return missing
