"""The ``torchreid-sdtps-*`` commands: one runner (:mod:`.runner`: override convention, error
policy) and one module per command (:mod:`.train`, :mod:`.test`, :mod:`.extract`,
:mod:`.search`, :mod:`.index`, :mod:`.export`, :mod:`.visualize`), each defining ``COMMAND``,
its console-script entry ``console`` and ``main(argv)``. ``tools/<command>.py`` are three-line
wrappers of :func:`run`.
"""
from __future__ import annotations

from .runner import COMMANDS, Command, main, run

__all__ = ["COMMANDS", "Command", "main", "run"]
