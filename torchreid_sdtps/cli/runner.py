"""The one runner of every ``torchreid-sdtps-*`` command: argument conventions, error policy,
logging.

A command is one module of this package defining ``COMMAND = Command(...)`` (its arguments and
the function that runs it) and ``console = COMMAND.console``; its name in
:data:`.names.COMMAND_NAMES` makes it a command here and a console script in setup.py
(``torchreid_sdtps.cli.<name>:console``). The rules are
the runner's, so they are the same in every command:

* **Config overrides**: trailing ``KEY VALUE`` pairs, as in torchreid's ``scripts/main.py``
  (``train.max_epoch 5 sdtps.selection gumbel``), before or after the options;
  ``--opts KEY VALUE ...`` is accepted as an alias.
* **Errors**: a user error (:class:`~torchreid_sdtps.errors.SDTPSError` and subclasses) prints
  one line ``<prog>: error: <message>`` on stderr and exits 2 (a failed ONNX parity check: 1);
  anything else is a bug and keeps its traceback.
* **Names**: ``--help`` and the error lines show the console-script name,
  ``torchreid-sdtps-<command>`` (also for ``tools/<command>.py``).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ConfigError, SDTPSError
from ..logs import console_logging
from .names import COMMAND_NAMES

__all__ = ["Command", "COMMANDS", "InputNotFoundError", "get_command", "prog_name", "parse",
           "main", "run", "add_model_arguments", "add_opts_argument", "build_parser"]

logger = logging.getLogger(__name__)

#: command name -> module defining ``COMMAND`` (the names: :mod:`.names`)
COMMANDS: dict[str, str] = {name: f"torchreid_sdtps.cli.{name}" for name in COMMAND_NAMES}

OVERRIDES_HELP = ("Further words are KEY VALUE config overrides, as in torchreid's "
                  "scripts/main.py (e.g. train.max_epoch 5 sdtps.selection gumbel), before or "
                  "after the options; --opts KEY VALUE ... is the same. After an option that "
                  "takes several values, give them with --opts.")


class InputNotFoundError(ConfigError, FileNotFoundError):
    """A file or folder the command needs does not exist (names it)."""


@dataclasses.dataclass(frozen=True)
class Command:
    """One command: ``add_arguments(parser)`` declares its options, ``run(args)`` does the work
    and returns a summary; ``args.opts`` holds the config overrides."""

    name: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Any]
    #: level of the log records shown on stderr (train/test log into save_dir themselves)
    log_level: int = logging.WARNING
    console_logging: bool = True

    @property
    def prog(self) -> str:
        return prog_name(self.name)

    def console(self) -> int:
        """The console-script entry point: ``sys.argv[1:]``, exit status."""
        return run(self)

    def main(self, argv: Sequence[str] | None = None) -> Any:
        """Parse ``argv`` and run in-process; returns the command's summary (errors propagate)."""
        return main(self, argv)


def prog_name(name: str) -> str:
    """The console-script name of command ``name``."""
    return f"torchreid-sdtps-{name}"


def get_command(command: str | Command) -> Command:
    """The :class:`Command` of ``command`` (a name of :data:`COMMANDS` or a Command)."""
    if isinstance(command, Command):
        return command
    if command not in COMMANDS:
        raise KeyError(f"unknown command '{command}'; commands: {sorted(COMMANDS)}")
    return importlib.import_module(COMMANDS[command]).COMMAND


def build_parser(cmd: Command, prog: str | None = None) -> argparse.ArgumentParser:
    """The command's parser (its options, ``--opts``, the overrides epilog)."""
    parser = argparse.ArgumentParser(prog=prog or cmd.prog, description=cmd.description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     epilog=OVERRIDES_HELP)
    cmd.add_arguments(parser)
    add_opts_argument(parser)
    return parser


def add_opts_argument(parser: argparse.ArgumentParser) -> None:
    """``--opts KEY VALUE ...`` (also on a subcommand's parser)."""
    parser.add_argument("--opts", nargs="*", default=argparse.SUPPRESS, metavar="KEY VALUE",
                        help="config overrides (alias of the trailing KEY VALUE pairs)")


def parse(cmd: Command, argv: Sequence[str] | None = None, prog: str | None = None
          ) -> argparse.Namespace:
    """Options anywhere; the remaining words plus ``--opts`` are the ``KEY VALUE`` overrides
    (``args.opts``). A stray option or an odd count is a usage error (exit 2)."""
    parser = build_parser(cmd, prog)
    args, rest = parser.parse_known_args(argv)
    if rest and rest[0] == "--":
        rest = rest[1:]
    for key in rest[0::2]:
        if key.startswith("-"):
            parser.error(f"unrecognized option '{key}' (overrides are KEY VALUE pairs)")
    opts = [*rest, *getattr(args, "opts", [])]
    if len(opts) % 2:
        parser.error(f"config overrides must be KEY VALUE pairs; got {len(opts)} words: {opts}")
    args.opts = opts
    return args


def main(command: str | Command, argv: Sequence[str] | None = None, prog: str | None = None
         ) -> Any:
    """Parse ``argv`` and run the command; returns its summary. Errors propagate."""
    import torchreid_sdtps

    cmd = get_command(command)
    args = parse(cmd, argv, prog)
    args.prog = prog or cmd.prog
    torchreid_sdtps.load_plugins()
    logs = console_logging(cmd.log_level) if cmd.console_logging else contextlib.nullcontext()
    with logs:
        return cmd.run(args)


def _one_line(exc: BaseException) -> str:
    msg = exc.args[0] if isinstance(exc, KeyError) and len(exc.args) == 1 else str(exc)
    return " ".join(str(msg).split())


def run(command: str | Command, argv: Sequence[str] | None = None, prog: str | None = None
        ) -> int:
    """:func:`main` under the error policy: a user error (:class:`SDTPSError`) prints one line
    ``<prog>: error: ...`` and returns its ``exit_code`` (2 unless the class says otherwise);
    anything else propagates with its traceback."""
    cmd = get_command(command)
    prog = prog or cmd.prog
    try:
        main(cmd, argv, prog)
    except SDTPSError as exc:
        sys.stderr.write(f"{prog}: error: {_one_line(exc)}\n")
        return int(getattr(exc, "exit_code", 2))
    return 0


def add_model_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--weights``, ``--config-file``, ``--device``, ``--batch-size`` of the commands that
    run a trained model."""
    parser.add_argument("--weights", required=required, default="",
                        help="checkpoint (model.pth.tar-N of torchreid-sdtps-train)")
    parser.add_argument("--config-file", default="",
                        help="training config, for checkpoints without meta (stock engines)")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda if present)")
    parser.add_argument("--batch-size", type=int, default=32)
