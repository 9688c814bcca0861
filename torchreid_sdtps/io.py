"""Atomic file writes: a file appears complete under its name, or not at all."""
from __future__ import annotations

import contextlib
import json
import os
import os.path as osp
import tempfile
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ".partial") -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success move it onto ``path``.

    The caller writes the temporary file; if the block raises (or is interrupted), the
    temporary file is removed and ``path`` is left as it was, so no partial file is ever
    visible under the final name.
    """
    directory = osp.dirname(osp.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{osp.basename(path)}.", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def write_json(obj: Any, path: str) -> str:
    """Write ``obj`` as indented JSON to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2)
    return path
