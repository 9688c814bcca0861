"""Entry-point discovery and registration into torchreid (and the plugin's own registries).

Four entry-point groups are read from the installed package metadata:
``torchreid.datasets`` and ``torchreid.models`` register straight into torchreid's own
registries (``register_image_dataset`` and the dict behind ``build_model``);
``torchreid.losses`` and ``torchreid.engines`` go to the small registries below, because
torchreid has none for them. Third-party packages can add entries to any group.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import logging
from typing import Any, Callable, Iterable

from . import compat
from ._entry_points import ENTRY_POINTS
from .errors import UnknownNameError

logger = logging.getLogger(__name__)

GROUPS: tuple[str, ...] = tuple(ENTRY_POINTS)
LOSSES: dict[str, Any] = {}
ENGINES: dict[str, Any] = {}


def _register_local(registry: dict, kind: str, name: str, obj: Any) -> bool:
    if registry.get(name) is obj:
        return False
    if name in registry:
        raise ValueError(f"{kind} name '{name}' is already registered to {registry[name]!r}")
    registry[name] = obj
    return True


_REGISTRARS: dict[str, Callable[[str, Any], bool]] = {
    "torchreid.datasets": compat.register_image_dataset,
    "torchreid.models": compat.register_model,
    "torchreid.losses": lambda n, o: _register_local(LOSSES, "loss", n, o),
    "torchreid.engines": lambda n, o: _register_local(ENGINES, "engine", n, o),
}


def _load(value: str) -> Any:
    """Import ``"pkg.module:attr"`` like ``EntryPoint.load``."""
    module, _, attr = value.partition(":")
    obj = importlib.import_module(module)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


def _register_entries(group: str, entries: Iterable[tuple[str, str]], own: bool) -> list[str]:
    done = []
    for name, value in entries:
        try:
            obj = _load(value)
        except Exception as exc:  # third-party code may fail in any way; ours must not
            if own:
                raise
            logger.warning("skipping %s entry '%s' = %s: %s: %s",
                           group, name, value, type(exc).__name__, exc)
            continue
        try:
            if _REGISTRARS[group](name, obj):
                done.append(name)
        except ValueError as exc:
            if own:
                raise
            logger.warning("skipping %s entry '%s' = %s: %s", group, name, value, exc)
    return done


def register() -> dict[str, list[str]]:
    """Register the plugin's own datasets, models, losses and engines (idempotent).

    Works without installed metadata (e.g. a source checkout on ``PYTHONPATH``). Returns the
    names newly registered per group.
    """
    return {g: _register_entries(g, ENTRY_POINTS[g].items(), own=True) for g in GROUPS}


def discover(group: str) -> list[md.EntryPoint]:
    """Installed entry points of ``group`` (ours and any third party's)."""
    return list(md.entry_points(group=group))


def load_plugins(groups: Iterable[str] = GROUPS) -> dict[str, list[str]]:
    """Discover every installed entry of ``groups`` and register it; idempotent.

    A third-party entry that fails to import or clashes with a taken name gives one warning
    naming it and is skipped; the others still register. Returns the names newly registered
    per group (empty lists on a second call).
    """
    result = register()
    for group in groups:
        if group not in _REGISTRARS:
            raise ValueError(f"unknown entry-point group '{group}'; expected one of {GROUPS}")
        eps = discover(group)
        own = [(ep.name, ep.value) for ep in eps if ep.value.startswith("torchreid_sdtps")]
        other = [(ep.name, ep.value) for ep in eps if not ep.value.startswith("torchreid_sdtps")]
        result[group] = (result.get(group, []) + _register_entries(group, own, own=True)
                         + _register_entries(group, other, own=False))
    return result


def _lookup(registry: dict, kind: str, name: str) -> Any:
    if name not in registry:
        raise UnknownNameError(f"unknown {kind} '{name}'; registered {kind}s: {sorted(registry)}")
    return registry[name]


def get_loss(name: str) -> Any:
    """The loss class registered as ``name``."""
    return _lookup(LOSSES, "loss", name)


def get_engine(name: str) -> Any:
    """The engine class registered as ``name``."""
    return _lookup(ENGINES, "engine", name)


def dataset_names() -> list[str]:
    """Every dataset name torchreid's ``ImageDataManager`` accepts now."""
    return sorted(compat.image_dataset_registry())


def model_names() -> list[str]:
    """Every model name torchreid's ``build_model`` accepts now."""
    return sorted(compat.model_factory())
