"""Atomic file writes: a file appears complete under its name, or not at all, with the mode
the user's umask gives a new file (``0o666 & ~umask``), as ``open()`` would."""
from __future__ import annotations

import contextlib
import json
import os
import os.path as osp
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["atomic_path", "write_json", "current_umask", "new_file_mode", "absent_dirs",
           "remove_empty_dirs"]

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the system says it (Linux:
    ``/proc/self/status``); elsewhere ``os.umask`` is set to a strict 0o077 and restored at
    once under a lock, so a file created meanwhile is never more open than intended."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ".partial") -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success move it onto ``path``.

    The caller writes the temporary file; if the block raises (or is interrupted), the
    temporary file is removed and ``path`` is left as it was, so no partial file is ever
    visible under the final name. ``mkstemp`` creates the temporary file with mode 0600; it
    gets the umask's mode (:func:`new_file_mode`) before the rename, so other users of a
    shared file system read results as they read any file of this user.
    """
    directory = osp.dirname(osp.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{osp.basename(path)}.", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def write_json(obj: Any, path: str) -> str:
    """Write ``obj`` as indented JSON to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2)
    return path


def absent_dirs(path: str) -> list[str]:
    """``path`` and its parents that do not exist yet, deepest first (what a later
    ``os.makedirs(path)`` creates, so that a refused command can take it back)."""
    out: list[str] = []
    path = osp.abspath(path)
    while not osp.exists(path) and osp.dirname(path) != path:
        out.append(path)
        path = osp.dirname(path)
    return out


def remove_empty_dirs(dirs: list[str]) -> None:
    """Remove the folders of ``dirs`` (deepest first) that are empty; stop at the first that
    is not (a run that wrote anything keeps its folder)."""
    for d in dirs:
        try:
            os.rmdir(d)
        except OSError:
            break
