"""The ``torchreid-sdtps-*`` commands: one runner (:mod:`.runner`: override convention, error
policy, logging) and one module per command (:mod:`.train`, :mod:`.test`, :mod:`.extract`,
:mod:`.search`, :mod:`.export`, :mod:`.visualize`), each defining ``COMMAND`` and its
console-script entry ``console``. ``tools/<command>.py`` are three-line wrappers of
:func:`run`.

The functions of the former ``cli.py`` keep their names here (resolved on first use):
``evaluate``, ``untrained_results``, ``run_logging``,
``main_train(argv)``, ``main_test(argv)``; ``train(cfg)`` and ``test(cfg)`` are in the modules
of the same names (``torchreid_sdtps.cli.train.train``).
"""
from __future__ import annotations

import importlib
from typing import Any

from .runner import COMMANDS, Command, main, run

#: the former name of :func:`run` (``cli("test", argv)``)
cli = run

__all__ = ["COMMANDS", "Command", "main", "run", "cli", "evaluate",
           "untrained_results", "run_logging", "main_train", "main_test"]

_EXPORTS = {
    "main_train": ("torchreid_sdtps.cli.train", "main"),
    "main_test": ("torchreid_sdtps.cli.test", "main"),
    "evaluate": ("torchreid_sdtps.cli.common", "evaluate"),
    "untrained_results": ("torchreid_sdtps.cli.common", "untrained_results"),
    "run_logging": ("torchreid_sdtps.cli.runner", "run_logging"),
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    return getattr(importlib.import_module(module), attr)
