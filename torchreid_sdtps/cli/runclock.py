"""Run state across attempts: the whole run's time, and partial files of killed writes.

A run may take several attempts (torchrun ``--max-restarts``, a rerun with
``train.auto_resume True``). :class:`RunClock` keeps ``<save_dir>/run_state.json``: one entry
per attempt (start, end, log file). An attempt killed without ending is counted up to its last
sign of life (the last write to its log, or the last checkpoint it wrote), so the reported
time is the whole run's, with the last attempt's time given separately.

:func:`remove_stale_partials` deletes the temporary files :func:`torchreid_sdtps.io.atomic_path`
leaves when a process is killed mid-write; only files of that exact pattern, for the files a
run writes, directly in ``save_dir`` or its model folders.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import os.path as osp
import re
import time
from typing import Any

from .. import dist
from ..io import write_json

__all__ = ["RunClock", "remove_stale_partials", "RUN_STATE", "PARTIAL_PATTERN"]

logger = logging.getLogger(__name__)

RUN_STATE = "run_state.json"
#: ``.<name>.<mkstemp's 8 characters>.partial`` of the files a run writes
PARTIAL_PATTERN = re.compile(r"^\.(model\.pth\.tar-\d+|model-best\.pth\.tar|results\.json|"
                             r"test_results\.json|run_state\.json)\.[a-z0-9_]{8}\.partial$")


def remove_stale_partials(save_dir: str) -> list[str]:
    """Remove partial files of interrupted writes in ``save_dir`` and ``save_dir/*/`` (rank 0
    only, before anything is written); returns the removed paths."""
    if not dist.is_main_process() or not osp.isdir(save_dir):
        return []
    removed = []
    for path in glob.glob(osp.join(save_dir, ".*.partial")) + \
            glob.glob(osp.join(save_dir, "*", ".*.partial")):
        if PARTIAL_PATTERN.match(osp.basename(path)) and osp.isfile(path):
            os.remove(path)
            removed.append(path)
    if removed:
        logger.info("removed %d partial file(s) of an interrupted write: %s", len(removed),
                    ", ".join(removed))
    return removed


def _mtime(path: str | None) -> float:
    try:
        return osp.getmtime(path) if path else 0.0
    except OSError:
        return 0.0


class RunClock:
    """Wall time of this attempt and of the whole run (see the module doc).

    ``resumed``: the attempt continues a checkpoint, so earlier attempts recorded in
    ``save_dir`` count; otherwise the record starts afresh. ``start``: when this attempt began
    (default: now).
    """

    def __init__(self, save_dir: str, resumed: bool, log: str | None = None,
                 start: float | None = None) -> None:
        self.path = osp.join(save_dir, RUN_STATE)
        self.start = time.time() if start is None else float(start)
        self.previous: list[dict[str, Any]] = self._read() if resumed else []
        self._close_killed(save_dir)
        self.current = {"started": self.start, "ended": None, "log": log}
        self._write([*self.previous, self.current])

    def _read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                attempts = json.load(fh)["attempts"]
            return [a for a in attempts if isinstance(a, dict) and "started" in a]
        except (OSError, ValueError, KeyError, TypeError):
            return []

    def _close_killed(self, save_dir: str) -> None:
        """An attempt without an end was killed: its last sign of life is the last write to
        its log or the newest checkpoint written after it started."""
        checkpoints = glob.glob(osp.join(save_dir, "*", "model.pth.tar-*"))
        for a in self.previous:
            if a.get("ended") is None:
                later = [m for m in map(_mtime, checkpoints) if m >= a["started"]]
                a["ended"] = max([a["started"], _mtime(a.get("log")), *later])
                a["killed"] = True

    def _write(self, attempts: list[dict[str, Any]]) -> None:
        if dist.is_main_process():
            write_json({"attempts": attempts}, self.path)

    @property
    def attempt_s(self) -> float:
        return time.time() - self.start

    @property
    def total_s(self) -> float:
        return sum(a["ended"] - a["started"] for a in self.previous) + self.attempt_s

    def finish(self) -> dict[str, Any]:
        """Record the end of this attempt; the timing keys of the results summary."""
        self.current["ended"] = time.time()
        self._write([*self.previous, self.current])
        return {"wall_s": round(self.total_s, 1), "wall_s_last_attempt": round(self.attempt_s, 1),
                "attempts": len(self.previous) + 1}

    def describe(self) -> str:
        """``"69 s"``, or ``"69 s in 2 attempts, the last 26 s"``."""
        if not self.previous:
            return f"{self.total_s:.0f} s"
        return (f"{self.total_s:.0f} s in {len(self.previous) + 1} attempts, the last "
                f"{self.attempt_s:.0f} s")
