"""``CfgNode``: a yacs ``CfgNode`` whose merges are strict, explain themselves and inherit.

yacs does the merging (``merge_from_other_cfg``, one leaf at a time so an error names its key);
this class adds, in front of it:

- a key that names HDM/ATM/MoE in any node and any case is refused
  (:func:`torchreid_sdtps.choices.refuse_removed_stages`), because SDTPS replaces those DeMo
  stages (review R3);
- an unknown key raises :class:`~torchreid_sdtps.errors.UnknownConfigKeyError` naming the key,
  the file (or "command-line override"), the nearest valid key and the keys valid there;
- ``lr: 1`` against a float default is a float, ``data.sources rgbnt201`` a one-item list,
  and a bool is never silently read as a number (nor a number as a bool);
- a YAML file may start from others: ``_BASE_: base.yaml`` (or a list of files) is merged
  first, relative to the including file, recursively; a cycle is an error (as fast-reid's
  ``fastreid/config/config.py`` does, but merging file by file so errors name the right file).
"""
from __future__ import annotations

import ast
import difflib
import os.path as osp
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml
from yacs.config import CfgNode as _YacsNode

from ..choices import refuse_removed_stages
from ..errors import ConfigError, NotFoundError, UnknownConfigKeyError

__all__ = ["CfgNode", "BASE_KEY", "iter_keys"]

#: YAML key listing the file(s) a config file starts from
BASE_KEY = "_BASE_"


def _literal(value: Any) -> Any:
    """A command-line / YAML string read as a Python literal when it is one (``"[1, 5]"`` ->
    ``[1, 5]``, ``"True"`` -> ``True``); any other value, and plain words, unchanged."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _leaves(mapping: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _all_keys(mapping: Any, prefix: str = "") -> Iterable[str]:
    if isinstance(mapping, Mapping):
        for key, value in mapping.items():
            yield f"{prefix}{key}"
            yield from _all_keys(value, f"{prefix}{key}.")


class CfgNode(_YacsNode):
    """The project's configuration node (see the module doc for what its merges add)."""

    # ------------------------------------------------------------------ merging

    def merge_from_dict(self, mapping: Mapping[str, Any], source: str = "a mapping") -> CfgNode:
        """Strictly merge a nested mapping into this node; returns ``self``."""
        if self.is_frozen():
            raise ConfigError("the configuration is frozen; merge before freeze()")
        refuse_removed_stages(_all_keys(mapping), "config key", f" in {source}")
        self._check_shape(mapping, source, "")
        for full_key, value in _leaves(mapping):
            self._merge_leaf(full_key, value, source)
        return self

    def merge_from_file(self, cfg_filename: str, _stack: tuple[str, ...] = ()) -> CfgNode:
        """Strictly merge the YAML file (after its ``_BASE_`` files); errors name the file."""
        path = osp.abspath(cfg_filename)
        if path in _stack:
            chain = " -> ".join(list(_stack) + [path])
            raise ConfigError(f"config file '{cfg_filename}' includes itself through "
                              f"{BASE_KEY}: {chain}")
        loaded = _read_yaml(cfg_filename)
        bases = loaded.pop(BASE_KEY, [])
        for base in [bases] if isinstance(bases, str) else bases:
            if not isinstance(base, str) or not base:
                raise ConfigError(f"config file '{cfg_filename}': {BASE_KEY} must be a file name "
                                  f"or a list of them, got {bases!r}")
            base = osp.expanduser(base)
            if not osp.isabs(base):
                base = osp.join(osp.dirname(path), base)
            if not osp.isfile(base):
                raise NotFoundError(f"config file '{cfg_filename}': {BASE_KEY} file not "
                                    f"found: '{base}'")
            self.merge_from_file(base, _stack + (path,))
        return self.merge_from_dict(loaded, source=f"config file '{cfg_filename}'")

    def merge_from_list(self, cfg_list: Sequence[str],
                        source: str = "command-line override") -> CfgNode:
        """Merge ``KEY VALUE`` pairs (``train.lr 0.01 data.sources "['x']"``) strictly."""
        opts = list(cfg_list or [])
        if len(opts) % 2:
            raise ConfigError(f"{source}s must be KEY VALUE pairs; got an odd list {opts}")
        for full_key, value in zip(opts[0::2], opts[1::2], strict=True):
            if full_key == BASE_KEY:
                raise ConfigError(f"{BASE_KEY} is only valid in a config file, not in a {source}")
            nested: dict[str, Any] = {}
            node = nested
            parts = str(full_key).split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
            self.merge_from_dict(nested, source=f"{source} '{full_key} {value}'")
        return self

    # ------------------------------------------------------------------ helpers

    def _check_shape(self, mapping: Mapping[str, Any], source: str, prefix: str) -> None:
        """Every key exists, sections get mappings and values get values."""
        for key, value in mapping.items():
            full_key = f"{prefix}{key}"
            if not isinstance(key, str) or key not in self:
                raise _unknown_key(full_key, self, source)
            original = self[key]
            if isinstance(original, CfgNode):
                if not isinstance(value, Mapping):
                    raise ConfigError(f"config key '{full_key}' in {source} is a section; "
                                      f"expected a mapping of its keys, got {value!r}")
                original._check_shape(value, source, full_key + ".")
            elif isinstance(value, Mapping):
                raise ConfigError(f"config key '{full_key}' in {source} is a value, not a "
                                  f"section (got a mapping {dict(value)!r})")

    def _merge_leaf(self, full_key: str, value: Any, source: str) -> None:
        """Coerce one value as the module doc says, then let yacs merge it."""
        parts = full_key.split(".")
        node: Any = self
        for part in parts[:-1]:
            node = node[part]
        original = node[parts[-1]]
        value = _literal(value)

        def wrong_type() -> ConfigError:
            return ConfigError(
                f"config key '{full_key}' in {source} expects {type(original).__name__} "
                f"(default {original!r}), got {type(value).__name__} {value!r}")

        if isinstance(original, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(original, (list, tuple)) and isinstance(value, (str, int, float)) \
                and not isinstance(value, bool):
            value = [value]
        if original is not None and value is not None \
                and isinstance(original, bool) != isinstance(value, bool):
            raise wrong_type()
        nested: dict[str, Any] = {parts[-1]: value}
        for part in reversed(parts[:-1]):
            nested = {part: nested}
        try:
            self.merge_from_other_cfg(type(self)(nested))
        except (ValueError, AssertionError):  # yacs: type mismatch / not a config type
            raise wrong_type() from None


def _unknown_key(full_key: str, node: CfgNode, source: str) -> UnknownConfigKeyError:
    parent, _, leaf = full_key.rpartition(".")
    valid = sorted(node.keys())
    close = difflib.get_close_matches(leaf, valid, n=1)
    hint = f"; did you mean '{(parent + '.') if parent else ''}{close[0]}'?" if close else ""
    where = f"under '{parent}'" if parent else "at the top level"
    return UnknownConfigKeyError(f"unknown config key '{full_key}' in {source}{hint} "
                                 f"(valid keys {where}: {', '.join(valid)})")


def _read_yaml(path: str) -> dict[str, Any]:
    """The mapping in the YAML file ``path`` (empty for an empty file)."""
    if not osp.isfile(path):
        raise NotFoundError(f"config file not found: '{path}'")
    with open(path, encoding="utf-8") as fh:
        try:
            loaded = yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections, got "
                          f"{type(loaded).__name__}")
    return dict(loaded)


def iter_keys(cfg: CfgNode, prefix: str = "") -> Iterable[str]:
    """All leaf keys of ``cfg`` as dotted names."""
    for key, value in cfg.items():
        if isinstance(value, _YacsNode):
            yield from iter_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"
