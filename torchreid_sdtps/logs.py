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
from .io import absent_dirs

__all__ = ["console_logging", "ConsoleFormatter", "run_logging", "RunLog", "SHOW", "silenced"]


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
    """stdout into a log file, and to the console when ``echo`` (like torchreid's ``Logger``,
    which however closes the console on ``close()``/garbage collection: fatal for in-process
    callers)."""

    def __init__(self, console: Any, path: str, echo: bool = True) -> None:
        os.makedirs(osp.dirname(path) or ".", exist_ok=True)
        self.console = console
        self.echo = echo
        self.file = open(path, "w", encoding="utf-8")

    def write(self, msg: str) -> int:
        if self.echo:
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
    refused or interrupted before that leaves no log and no folder behind, its one line says
    it all); :meth:`note` writes to the file alone (the config, not worth a screen)."""

    path: str
    kept: bool = False
    file: Any = None

    def keep(self) -> None:
        self.kept = True

    def note(self, text: str) -> None:
        """Write ``text`` (one or more lines) to the log file only, not to the console."""
        if self.file is not None and not self.file.closed:
            self.file.write(text.rstrip("\n") + "\n")


#: ``logger.info(..., extra=SHOW)``: a result (a table, the checkpoint path) shown on stdout by
#: :func:`run_logging` besides the log file (the rest of a run's chatter goes to the file only)
SHOW = {"show": True}


class _Shown(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return bool(getattr(record, "show", False)) and record.levelno < logging.WARNING


@contextlib.contextmanager
def run_logging(save_dir: str, name: str, echo: bool = False) -> Iterator[RunLog]:
    """Send stdout (torchreid's progress prints) and the log records to
    ``<save_dir>/<name>.log-<time>``; undone on exit. The console shows the records logged
    with ``extra=SHOW`` (results) on stdout and warnings on stderr; everything else only with
    ``echo``. Yields the :class:`RunLog`; when the block fails with a user error or an
    interrupt before :meth:`RunLog.keep`, the file and the folders made for it are removed."""
    log = RunLog(osp.join(save_dir, f"{name}.log-" + time.strftime("%Y-%m-%d-%H-%M-%S")))
    created = absent_dirs(save_dir)
    old_stdout = sys.stdout
    tee = _Tee(old_stdout, log.path, echo=echo)
    log.file = tee.file
    sys.stdout = tee
    handler = logging.StreamHandler(tee)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handlers: list[logging.Handler] = [handler]
    if not echo:
        shown = logging.StreamHandler(old_stdout)
        shown.setFormatter(logging.Formatter("%(message)s"))
        shown.addFilter(_Shown())
        warned = logging.StreamHandler(sys.stderr)
        warned.setFormatter(ConsoleFormatter("%(message)s"))
        warned.setLevel(logging.WARNING)
        handlers += [shown, warned]
    root = logging.getLogger()
    old_level = root.level
    for h in handlers:
        root.addHandler(h)
    root.setLevel(logging.INFO)
    failed = False
    try:
        yield log
    except (SDTPSError, KeyboardInterrupt):
        failed = True
        raise
    finally:
        for h in handlers:
            root.removeHandler(h)
        root.setLevel(old_level)
        sys.stdout = old_stdout
        tee.close()
        if failed and not log.kept:  # refused (or interrupted) before the run began
            if osp.isfile(log.path):
                os.remove(log.path)
            for folder in created:  # the run folders this call made, if nothing else is there
                with contextlib.suppress(OSError):
                    os.rmdir(folder)


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
