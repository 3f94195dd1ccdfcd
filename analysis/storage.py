"""Experiment files on a local disk or an object store (``s3://...``), through ``pyarrow.fs`` as
Ray Tune does: every read and write of an experiment, by the sweeps and by the analysis, goes
through here.

S3 and S3-compatible stores (MinIO, Ceph, ...) are configured the standard AWS way: credentials
from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (or a profile, or an instance role), the
region from ``AWS_REGION``/``AWS_DEFAULT_REGION``, another endpoint from ``AWS_ENDPOINT_URL``.
"""
from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from . import messages


def is_uri(path: str) -> bool:
    return "://" in str(path)


def normalise(path: str) -> str:
    """Local paths become absolute (Ray Tune requires it); URIs lose a trailing slash. A URI
    written with one slash (``s3:/bucket``) is refused, not taken for a local folder named ``s3:``."""
    if not is_uri(path):
        scheme, colon, rest = str(path).partition(":")
        if colon and len(scheme) > 1 and scheme.isalnum() and rest.startswith("/"):
            meant = f"file://{rest}" if scheme == "file" else f"{scheme}://{rest.lstrip('/')}"  # file:///x
            raise ValueError(f"{path!r}: a URI takes two slashes after {scheme}: (did you mean {meant}?)")
        return os.path.abspath(os.path.expanduser(str(path)))
    scheme, _, rest = str(path).partition("://")
    if not rest.strip("/"):
        raise ValueError(f"{path!r} names no bucket or location after {scheme}://")
    return str(path).rstrip("/")


def join(base: str, *parts: str) -> str:
    return "/".join([str(base).rstrip("/"), *parts]) if is_uri(base) else os.path.join(base, *parts)


def split(path: str) -> tuple[str, str]:
    """``(parent, name)`` of a local path or a URI."""
    path = normalise(path)
    return tuple(path.rsplit("/", 1)) if is_uri(path) else os.path.split(path)


def name(path: str) -> str:
    return split(path)[1]


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """``(pyarrow filesystem, path within it)`` for a local path or a URI."""
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), normalise(path)


def within(path: str) -> str:
    """The path inside its filesystem (:func:`filesystem`'s second item) without building one:
    ``bucket/key`` for ``s3://bucket/key``, the absolute path for a local one."""
    return str(path).split("://", 1)[1].rstrip("/") if is_uri(path) else normalise(path)


def exists(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def is_dir(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.get_file_info(p).type == pafs.FileType.Directory


def is_file(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.get_file_info(p).type == pafs.FileType.File


def files_named(path: str, *names: str) -> dict[str, list[str]]:
    """``{name: paths}`` of every ``<path>/<entry>/<name>`` file, sorted (:func:`files_written`)."""
    return {name: list(found) for name, found in files_written(path, *names).items()}


def files_written(path: str, *names: str) -> dict[str, dict[str, float | None]]:
    """``{name: {path: when written}}`` of every ``<path>/<entry>/<name>`` file, sorted by path: one
    listing of the whole prefix on an object store (not a request per entry and name), which says
    when each was written (None where it does not), one level of folders on a local disk."""
    fs, p = filesystem(path)
    if is_uri(path):
        infos = fs.get_file_info(pafs.FileSelector(p, recursive=True, allow_not_found=True))
        prefix = p.rstrip("/") + "/"
        found = {i.path[len(prefix):]: (i.mtime.timestamp() if i.mtime is not None else None)
                 for i in infos if i.type == pafs.FileType.File and i.path.startswith(prefix)}
        return {name: {join(path, rel): found[rel] for rel in sorted(found)
                       if rel.count("/") == 1 and rel.endswith("/" + name)} for name in names}
    out = {}
    for name in names:
        out[name] = {}
        for f in sorted(Path(p).glob(f"*/{name}"), key=str):
            try:
                info = f.stat()
            except FileNotFoundError:  # removed since the listing
                continue
            if stat.S_ISREG(info.st_mode):
                out[name][str(f)] = info.st_mtime
    return out


def list_dir(path: str) -> list[str]:
    """Names of the entries directly inside ``path`` (sorted; empty if it does not exist)."""
    fs, p = filesystem(path)
    infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
    return sorted(info.base_name for info in infos)


def modified(path: str) -> float:
    """When the file at ``path`` was last written (seconds since the epoch)."""
    fs, p = filesystem(path)
    return fs.get_file_info(p).mtime.timestamp()


def read_bytes(path: str) -> bytes:
    fs, p = filesystem(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    """Write atomically on local disks (temp file + rename); an object store's put is atomic."""
    fs, p = filesystem(path)
    if is_uri(path):
        with fs.open_output_stream(p) as f:
            f.write(data)
        return
    os.makedirs(os.path.dirname(p), exist_ok=True)
    tmp = f"{p}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, p)
    except BaseException:  # a full disk, an interrupt: the old file stays whole, no half-written one remains
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def delete(path: str) -> None:
    """Remove one file."""
    fs, p = filesystem(path)
    fs.delete_file(p)


def remove_if_empty(path: str) -> None:
    """Remove the folder ``path`` if it holds nothing (on an object store: the marker that pyarrow
    leaves for a prefix whose last object was deleted)."""
    fs, p = filesystem(path)
    if is_uri(path):
        if fs.get_file_info(p).type == pafs.FileType.Directory and not list_dir(path):
            fs.delete_dir(p)
        return
    try:
        os.rmdir(p)
    except OSError:  # not empty, or gone
        pass


def check_writable(storage: str) -> str | None:
    """None if ``storage`` can hold experiments, else why not. An object store is asked by
    writing and deleting a probe object (a bucket that is missing or refuses writes fails
    here); a local folder by its permissions. Nothing is left behind either way."""
    if is_uri(storage):
        probe = join(storage, f".prunesweep-probe-{uuid.uuid4().hex}")
        try:
            existed = exists(storage)
            write_bytes(probe, b"")
            delete(probe)
            if not existed:
                remove_if_empty(storage)
        except Exception as exc:  # pyarrow raises OSError, ValueError, ... for the same refusals
            return messages.one_line(exc)
        return None
    probe = normalise(storage)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        return f"{probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None
