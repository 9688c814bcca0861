"""Where a run's text goes: log records on the console while a command runs
(:func:`console_logging`), stdout and log records teed into a file in the run dir on rank 0
(:func:`run_logging`), stdout and records below ERROR silenced on the other ranks
(:func:`silenced`). One home, so the commands and the benchmarks log runs the same way.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import os.path as osp
import sys
import time
from collections.abc import Iterator
from typing import Any

from .errors import SDTPSError

__all__ = ["console_logging", "ConsoleFormatter", "run_logging", "RunLog", "silenced"]


class ConsoleFormatter(logging.Formatter):
    """The record's message; warnings and errors prefixed with their level (``warning: ...``)."""

    def format(self, record: logging.LogRecord) -> str:
        msg = super().format(record)
        return msg if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {msg}"


@contextlib.contextmanager
def console_logging(level: int) -> Iterator[None]:
    """Log records of ``level`` and above to stderr while the command runs."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ConsoleFormatter("%(message)s"))
    handler.setLevel(level)
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(min(level, old) if old else level)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


class _Tee:
    """stdout tee into a log file (like torchreid's ``Logger``, which however closes the
    console on ``close()``/garbage collection: fatal for in-process callers)."""

    def __init__(self, console: Any, path: str) -> None:
        os.makedirs(osp.dirname(path) or ".", exist_ok=True)
        self.console = console
        self.file = open(path, "w", encoding="utf-8")

    def write(self, msg: str) -> int:
        self.console.write(msg)
        if not self.file.closed:
            self.file.write(msg)
        return len(msg)

    def flush(self) -> None:
        self.console.flush()
        if not self.file.closed:
            self.file.flush()

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        self.file.close()


@dataclasses.dataclass
class RunLog:
    """The text log of a run: ``path``; :meth:`keep` once the inputs are validated (a run
    refused before that leaves no log behind, its one-line error says it all)."""

    path: str
    kept: bool = False

    def keep(self) -> None:
        self.kept = True


@contextlib.contextmanager
def run_logging(save_dir: str, name: str) -> Iterator[RunLog]:
    """Tee stdout (torchreid's progress prints) into ``<save_dir>/<name>.log-<time>`` and send
    log records to it as well; undone on exit. Yields the :class:`RunLog`; the file is removed
    when the block fails with a user error before :meth:`RunLog.keep`."""
    log = RunLog(osp.join(save_dir, f"{name}.log-" + time.strftime("%Y-%m-%d-%H-%M-%S")))
    old_stdout = sys.stdout
    tee = _Tee(old_stdout, log.path)
    sys.stdout = tee
    handler = logging.StreamHandler(tee)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    failed = False
    try:
        yield log
    except SDTPSError:
        failed = True
        raise
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        sys.stdout = old_stdout
        tee.close()
        if failed and not log.kept and osp.isfile(log.path):
            os.remove(log.path)


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """For ranks other than 0: stdout (torchreid's prints) to devnull, log records below
    ERROR dropped; yields ``None`` (no log file)."""
    old = sys.stdout
    with open(os.devnull, "w", encoding="utf-8") as null:
        sys.stdout = null
        logging.disable(logging.WARNING)
        try:
            yield None
        finally:
            logging.disable(logging.NOTSET)
            sys.stdout = old
