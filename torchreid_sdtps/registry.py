"""Name registries: register once, refuse a clash, list the choices on an unknown name.

torchreid's dataset and model registries and the plugin's own loss and engine registries
(:mod:`torchreid_sdtps.plugins`) all follow these rules, through these two functions.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import UnknownNameError

__all__ = ["register_once", "lookup"]


def register_once(registry: dict[str, Any], kind: str, name: str, obj: Any,
                  insert: Callable[[str, Any], Any] | None = None) -> bool:
    """Register ``obj`` as ``name``; idempotent. Returns True when newly registered.

    The same object under the same name again is skipped (False); a *different* object under a
    taken name raises ``ValueError`` naming both. ``insert(name, obj)`` does the insertion when
    the registry has its own function for it (torchreid's ``register_image_dataset``).
    """
    if registry.get(name) is obj:
        return False
    if name in registry:
        raise ValueError(f"{kind} name '{name}' is already registered to {registry[name]!r}; "
                         f"refusing to replace it with {obj!r}")
    if insert is None:
        registry[name] = obj
    else:
        insert(name, obj)
    return True


def lookup(registry: dict[str, Any], kind: str, name: str) -> Any:
    """``registry[name]``, or an :class:`UnknownNameError` (a ``KeyError``) listing the registered names of ``kind``."""
    if name not in registry:
        raise UnknownNameError(f"unknown {kind} '{name}'; registered {kind}s: {sorted(registry)}")
    return registry[name]
