"""One driver per experiment: ``run``, ``resume`` and ``extend`` hold the experiment's lease
(:data:`analysis.schema.LOCK_FILE` in its folder, local or on an object store) from before they
write anything until they exit, so that two drivers never train into one experiment and count its
trials twice.

The lease names its holder (command, host, process and when it started) and is renewed every
:data:`HEARTBEAT_S` seconds. A held lease is refused in one line naming the holder; it is broken only
when provably stale (the rule of :mod:`analysis.lease`, by which ``prunesweep status`` and
``analyze`` read it too): its process is gone (a holder on this machine), or it has not been renewed
for :data:`STALE_S` seconds (any holder), or when the user says so (``--force``).

A local lease is created with ``O_EXCL``, which the file system makes atomic. An object store
offers no create-if-absent through pyarrow: a lease there is written, then read back to check that
no other driver's replaced it within :data:`SETTLE_S` seconds.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time

from analysis import lease as leases, storage
from analysis.messages import one_line

from .config import ConfigError

HEARTBEAT_S = leases.HEARTBEAT_S  # how often a driver renews its lease
STALE_S = leases.STALE_S  # a lease not renewed for this long is stale
SETTLE_S = 1.0  # on an object store: how long a driver waits before it reads its new lease back
_me = leases.new  # the lease this driver holds


class ExperimentInUse(ConfigError):
    """Another driver holds the experiment's lease."""


def _interrupt() -> None:
    """Stop this driver the graceful way a sweep stops on Ctrl-C (SIGINT)."""
    os.kill(os.getpid(), signal.SIGINT)


class Lease:
    """The lease on the experiment at ``path``, held for ``command``."""

    def __init__(self, path: str, command: str):
        self.path, self.command = path, command
        self.file = leases.lease_file(path)
        self.mine = _me(command)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False
        self.on_lost = _interrupt  # what a driver does when another took its lease

    def read(self) -> dict | None:
        """The lease as stored (None: there is none; ``{}``: one that cannot be parsed)."""
        return leases.read(self.file)

    def acquire(self, force: bool = False) -> None:
        """Take the lease, or raise :class:`ExperimentInUse` naming its holder; ``force`` takes it anyway.
        Storage that cannot be read or written is a ConfigError."""
        try:
            self._take(force)
        except ConfigError:
            raise
        except Exception as exc:  # an unreachable or refusing store, a read-only folder
            raise ConfigError(f"{self.command} {self.path}: cannot take the experiment's lease {self.file} "
                              f"({one_line(exc)})") from None
        self._thread = threading.Thread(target=self._renew, name="prunesweep-lease", daemon=True)
        self._thread.start()

    def _take(self, force: bool) -> None:
        for _ in range(5):  # each try loses only to another driver that took it meanwhile
            found = leases.judge(self.file)
            if found.lease is None:
                if self._create():
                    break
                continue
            if found.live and not force:
                raise ExperimentInUse(in_use(self.command, self.path, found.holder))
            print(f"{self.command}: taking over the lease of {self.path} from "
                  f"{found.holder if found.lease else 'an unreadable lease'}: {found.stale or '--force'}",
                  file=sys.stderr, flush=True)
            if self._replace():
                break
        else:
            raise ExperimentInUse(f"{self.command} {self.path}: other drivers keep taking the experiment's lease")
        if storage.is_uri(self.file):  # no create-if-absent there: the last writer wins, and says so on reading
            time.sleep(SETTLE_S)
            found = self.read() or {}
            if found.get("token") != self.mine["token"]:
                raise ExperimentInUse(f"{self.command} {self.path}: another driver took the experiment at the same "
                                      f"moment: {leases.holder(found, time.time())}")

    def _create(self) -> bool:
        """Create the lease, whole, if there is none; False if another driver's appeared first."""
        if storage.is_uri(self.file):
            self._write()
            return True
        os.makedirs(os.path.dirname(self.file), exist_ok=True)
        tmp = f"{self.file}.{self.mine['token']}"
        with open(tmp, "wb") as f:
            f.write(json.dumps(self.mine).encode())
        try:
            os.link(tmp, self.file)  # atomic, and fails if the lease exists: never an empty or half lease
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True

    def _replace(self) -> bool:
        """Replace a stale (or forced) lease by this driver's; False if another driver replaced it first."""
        if storage.is_uri(self.file):
            self._write()
            return True
        broken = f"{self.file}.broken-{self.mine['token']}"
        try:
            os.rename(self.file, broken)  # of two drivers breaking one lease, one renames it
        except FileNotFoundError:
            return False
        os.unlink(broken)
        return self._create()

    def _write(self) -> None:
        self.mine["heartbeat"] = time.time()
        storage.write_bytes(self.file, json.dumps(self.mine).encode())

    def _renew(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if (self.read() or {}).get("token") != self.mine["token"]:
                    self.lost = True
                    print(f"error: another driver took over the lease of {self.path} (--force): stopping this one, "
                          "so that no trial is trained twice", file=sys.stderr, flush=True)
                    self.on_lost()
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
    found = leases.judge(leases.lease_file(path))
    return found.holder if found.live else None


WAIT = "wait until it ends (or stop it); if it is gone, pass --force"


def in_use(command: str, path: str, who: str, then: str = WAIT) -> str:
    """The one line that refuses ``command`` on the experiment at ``path`` that ``who`` runs."""
    return f"{command} {path}: the experiment is in use by {who}; two drivers would train its trials twice: {then}"


def refuse_if_held(path: str, command: str, then: str = WAIT) -> None:
    """Refuse (:class:`ExperimentInUse`) ``command`` while a live driver holds the experiment at ``path``:
    a check before long ones; :meth:`Lease.acquire` is the one that counts."""
    running = holder(path)
    if running:
        raise ExperimentInUse(in_use(command, path, running, then))


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
