"""Experiment files on a local disk or a cloud URI (``s3://...``), through pyarrow.fs like Ray."""
from __future__ import annotations

import os
import uuid

import pyarrow.fs as pafs


def is_uri(path: str) -> bool:
    return "://" in str(path)


def normalise(path: str) -> str:
    """Local paths become absolute (Ray Tune requires it); URIs are kept."""
    return str(path).rstrip("/") if is_uri(path) else os.path.abspath(os.path.expanduser(str(path)))


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts]) if is_uri(base) else os.path.join(base, *parts)


def _fs(path: str):
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), path


def exists(path: str) -> bool:
    fs, p = _fs(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def read_bytes(path: str) -> bytes:
    fs, p = _fs(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    """Write atomically on local disks (temp file + rename), plainly on object stores."""
    fs, p = _fs(path)
    parent = p.rsplit("/", 1)[0] if is_uri(path) else os.path.dirname(p)
    fs.create_dir(parent, recursive=True)
    if is_uri(path):
        with fs.open_output_stream(p) as f:
            f.write(data)
        return
    tmp = f"{p}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, p)


def check_writable(storage: str) -> str | None:
    """None if ``storage`` can hold experiments, else why not (nothing is left behind)."""
    if is_uri(storage):
        try:
            _fs(storage)
        except Exception as exc:  # pyarrow raises several kinds for bad URIs
            return str(exc)
        return None
    probe = storage
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
