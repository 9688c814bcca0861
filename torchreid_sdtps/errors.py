"""The project's exception hierarchy: one base, a configuration error, an unknown-name error.

``ConfigError`` is also a ``ValueError`` and ``UnknownNameError`` also a ``KeyError``, so code
that caught the built-in types keeps working; the command-line tools catch ``SDTPSError``.
"""
from __future__ import annotations

__all__ = ["SDTPSError", "ConfigError", "NotFoundError", "InputShapeError", "UnknownNameError",
           "UnknownConfigKeyError"]


class SDTPSError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(SDTPSError, ValueError):
    """A configuration key or value is not acceptable (removed, wrong type, inconsistent)."""


class NotFoundError(SDTPSError, FileNotFoundError):
    """A file or folder the user named (config file, weights, data root) does not exist."""


class InputShapeError(SDTPSError, ValueError):
    """A tensor given to a model or loss has the wrong shape; the message says the expected one."""


class UnknownNameError(SDTPSError, KeyError):
    """A dataset, model, engine, loss or config key name that is not registered / defined.

    ``str()`` is the message itself (a plain ``KeyError`` would show its repr, quoted).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class UnknownConfigKeyError(UnknownNameError, ConfigError):
    """A config key that the defaults do not define (both a ``KeyError`` and a ``ConfigError``)."""
