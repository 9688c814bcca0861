"""Run state across attempts: the whole run's time, and whether a folder holds another run.

A run may take several attempts (torchrun ``--max-restarts``, a rerun with
``train.auto_resume True``). :class:`RunClock` keeps ``<save_dir>/run_state.json``: one entry
per attempt (start, end, log file). An attempt killed without ending is counted up to its last
sign of life (the last write to its log, or the last checkpoint it wrote), so the reported
time is the whole run's, with the last attempt's time given separately.

:func:`refuse_other_run` keeps a new run from replacing another run's results or state (the
partial files of killed writes are :meth:`Checkpointer.remove_partials`'s).
"""
from __future__ import annotations

import json
import logging
import os.path as osp
import time
from typing import Any

from .. import dist
from ..checkpoint import Checkpointer
from ..errors import ConfigError
from ..io import write_json

__all__ = ["RunClock", "RunDirInUseError", "refuse_other_run"]

logger = logging.getLogger(__name__)


class RunDirInUseError(ConfigError):
    """``data.save_dir`` holds another run that this one would replace (exit 2)."""


def refuse_other_run(save_dir: str, resuming: bool) -> None:
    """Refuse a run that would replace another run's results or state in ``save_dir``: a fresh
    run (``resuming`` False: neither ``train.auto_resume`` nor a ``model.resume`` inside
    ``save_dir``) into a folder that holds checkpoints, ``results.json`` or ``run_state.json``.
    Reads only: nothing is written."""
    if resuming:
        return
    ck = Checkpointer(save_dir)
    found = [osp.relpath(p, save_dir) for p in sorted(ck.checkpoints())][-1:]
    found += [n for n in (ck.RESULTS, ck.RUN_STATE) if osp.isfile(ck.file(n))]
    if found:
        raise RunDirInUseError(
            f"data.save_dir '{save_dir}' holds another run ({', '.join(found)}); a new run does "
            "not replace it: continue it with train.auto_resume True, or give this run another "
            "data.save_dir")


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
        self.path = Checkpointer(save_dir).file(Checkpointer.RUN_STATE)
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
        checkpoints = Checkpointer(save_dir).checkpoints()
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
