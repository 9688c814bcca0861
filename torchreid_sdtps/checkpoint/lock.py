"""One run per run directory: a ``filelock`` lock held by a training run for its whole life.

The lock is an OS file lock (``fcntl``/``msvcrt`` through ``filelock``), so the operating
system drops it when the holding process ends in any way: a run killed with ``kill -9`` or by
torchrun leaves nothing that blocks the next run (elastic restarts, ``train.auto_resume``).
The holder writes who it is (pid, host, start time) beside the lock, so a refused run names it.
Under torchrun, rank 0 takes the lock for the whole group (every rank learns the outcome).
"""
from __future__ import annotations

import json
import logging
import os
import os.path as osp
import socket
import time
from types import TracebackType
from typing import Any

from filelock import FileLock, Timeout

from .. import dist
from ..errors import SDTPSError
from ..io import absent_dirs, remove_empty_dirs, write_json

__all__ = ["RunLock", "RunDirLockedError", "LOCK_FILE", "HOLDER_FILE"]

logger = logging.getLogger(__name__)

#: the lock file and the holder's description, in the run directory
LOCK_FILE = ".run.lock"
HOLDER_FILE = ".run.lock.holder.json"


class RunDirLockedError(SDTPSError):
    """Another run holds the run directory (exit 2, one line naming the holder)."""


class RunLock:
    """Context manager holding the lock of ``run_dir`` (created if needed) for a run.

    Refuses at once (:class:`RunDirLockedError`) when another live run holds it. Under DDP only
    rank 0 locks; the outcome is broadcast so every rank refuses or goes on together.
    """

    def __init__(self, run_dir: str) -> None:
        self.run_dir = str(run_dir)
        self.path = osp.join(self.run_dir, LOCK_FILE)
        self.holder_path = osp.join(self.run_dir, HOLDER_FILE)
        self._lock: FileLock | None = None
        self._created: list[str] = []

    def holder(self) -> dict[str, Any]:
        """What the holder wrote about itself (empty if unreadable)."""
        try:
            with open(self.holder_path, encoding="utf-8") as fh:
                info = json.load(fh)
            return info if isinstance(info, dict) else {}
        except (OSError, ValueError):
            return {}

    def _describe_holder(self) -> str:
        info = self.holder()
        if not info:
            return "another run"
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
        return (f"run pid {info.get('pid', '?')} on host {info.get('host', '?')}, started "
                f"{started}")

    def _acquire(self) -> str:
        """Take the lock (rank 0); the refusal message, or "" when taken."""
        self._created = absent_dirs(self.run_dir)
        os.makedirs(self.run_dir, exist_ok=True)
        lock = FileLock(self.path, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            return (f"data.save_dir '{self.run_dir}' is in use by {self._describe_holder()}; "
                    "wait for it to end, or give this run another data.save_dir")
        self._lock = lock
        write_json({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()},
                   self.holder_path)
        return ""

    def __enter__(self) -> RunLock:
        refused = self._acquire() if dist.is_main_process() else None
        refused = dist.broadcast_object(refused)
        if refused:
            raise RunDirLockedError(refused)
        return self

    def release(self) -> None:
        """Release the lock (rank 0); the holder file goes first, so no one reads a stale one."""
        if self._lock is None:
            return
        try:
            os.remove(self.holder_path)
        except OSError:
            pass
        self._lock.release()
        self._lock = None
        if self._created and os.listdir(self.run_dir) == [LOCK_FILE]:
            # a run refused or interrupted before it wrote anything: no trace of it is left
            try:
                os.remove(self.path)
            except OSError:
                pass
            remove_empty_dirs(self._created)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
