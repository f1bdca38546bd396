"""Atomic writes: a reader sees the old file/folder or the complete new one, never half of one."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def named(error: BaseException, path: str) -> None:
    """Raises `error` again naming `path` when it is an OSError that names no file (a write or
    fsync failing with ENOSPC names none), so the one-line report says which file; returns
    otherwise."""
    if isinstance(error, OSError) and error.errno and not error.filename:
        raise OSError(error.errno, error.strerror or os.strerror(error.errno), path) from error
    if (
        isinstance(error, OSError)
        and error.filename
        and os.path.basename(str(error.filename)).startswith(f".{os.path.basename(path)}.")
    ):  # our temporary file: name the real one
        raise OSError(error.errno, error.strerror, path) from error


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary path beside `path`; on success it is fsynced and renamed onto `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
        )
    except OSError as e:  # a read-only or full folder: name `path`, not the temporary file
        named(e, path)
        raise
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; user files get the usual permissions
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        named(e, path)
        raise


def write_bytes(path: str, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def append_line(path: str, line: str) -> None:
    """Appends one line and fsyncs; a crash can lose only the line being written, which readers
    of line-oriented logs (metrics.jsonl) must then ignore.

    A line torn by a crash (no final newline) is ended first, so the torn part stays a line of
    its own and never swallows the next record."""
    try:
        with open(path, "a+b") as f:
            torn = False
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
            f.write((b"\n" if torn else b"") + line.rstrip("\n").encode("utf-8") + b"\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        named(e, path)
        raise


@contextlib.contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """Yields a fresh temporary folder beside `path`; on success it replaces `path` whole.

    The old folder (if any) is moved aside first and deleted only after the new one is in place,
    so an interruption leaves either the old folder, or the new one, plus a `.old`/`.tmp` folder
    that no reader trusts (they are named with a leading dot and removed by the next run).
    """
    parent = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    for stale in os.listdir(parent):
        if stale.startswith(f".{base}.") and stale.endswith((".tmp", ".old")):
            shutil.rmtree(os.path.join(parent, stale), ignore_errors=True)
    tmp = tempfile.mkdtemp(prefix=f".{base}.", suffix=".tmp", dir=parent)
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.exists(path):
        old = tempfile.mkdtemp(prefix=f".{base}.", suffix=".old", dir=parent)
        os.rmdir(old)
        os.replace(path, old)
    os.replace(tmp, path)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def to_jsonable(obj: Any) -> Any:
    """The one JSON sanitizer: a copy that strict JSON accepts.

    numpy and jax scalars and arrays become Python numbers and lists, tuples become lists, dict
    keys become strings, and NaN or infinite floats become None (strict JSON has no NaN).
    Raises TypeError for anything else that JSON cannot hold.
    """
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "__array__") and not isinstance(obj, str | bytes):
        obj = np.asarray(obj)
        obj = obj.item() if obj.ndim == 0 else [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, str | int | float | bool | list):
        return obj
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
