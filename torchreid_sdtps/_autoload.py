"""Register the plugin whenever ``torchreid`` is imported, without the user importing us.

``pip install`` puts ``torchreid_sdtps_autoload.pth`` (the one line :data:`PTH_LINE`) into
site-packages. At interpreter start it loads *this file* by path (without importing the
``torchreid_sdtps`` package, torch or torchreid) and calls :func:`install`, which adds one
:class:`TorchreidHook` to ``sys.meta_path``. The hook ignores every import but ``torchreid``;
when ``torchreid`` has finished importing (either layout: upstream ``torchreid.*`` or PyPI's
``torchreid.reid.*``), it imports ``torchreid_sdtps`` and runs ``load_plugins()``, then removes
itself. A process that never imports torchreid pays one ``find_spec`` call per import.

``TORCHREID_SDTPS_AUTOLOAD=0`` switches it off. Stdlib only: this runs in every Python
process of the environment.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Any

ENV_VAR = "TORCHREID_SDTPS_AUTOLOAD"
PTH_NAME = "torchreid_sdtps_autoload.pth"
#: the .pth line: finds ``torchreid_sdtps/_autoload.py`` without importing the package and
#: runs its :func:`install` (``site`` executes .pth lines that start with ``import``)
PTH_LINE = (
    "import os, sys, importlib.util as u; "
    f"s = os.environ.get('{ENV_VAR}', '1') != '0' and u.find_spec('torchreid_sdtps'); "
    "p = s and s.submodule_search_locations and "
    "os.path.join(list(s.submodule_search_locations)[0], '_autoload.py'); "
    "f = p and os.path.isfile(p) and u.spec_from_file_location('_torchreid_sdtps_autoload', p); "
    "m = f and u.module_from_spec(f); "
    "m and (sys.modules.setdefault(f.name, m), f.loader.exec_module(m), m.install())"
)

__all__ = ["ENV_VAR", "PTH_NAME", "PTH_LINE", "TorchreidHook", "enabled", "install"]


def enabled() -> bool:
    """False when ``TORCHREID_SDTPS_AUTOLOAD=0``."""
    return os.environ.get(ENV_VAR, "1").strip() != "0"


class _Loader:
    """Wraps torchreid's loader: runs it, then registers the plugin."""

    def __init__(self, loader: Any, hook: TorchreidHook) -> None:
        self._loader, self._hook = loader, hook

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, ...
        return getattr(self._loader, name)

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)  # torchreid and all its subpackages are complete now
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._hook.on_torchreid_loaded()


class TorchreidHook:
    """``sys.meta_path`` finder that only acts on the top-level ``torchreid`` import."""

    def __init__(self) -> None:
        self._searching = False

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "torchreid" or self._searching:
            return None
        self._searching = True  # the finders below us must not call back into us
        try:
            spec = None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        finally:
            self._searching = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _Loader(spec.loader, self)
        return spec

    def on_torchreid_loaded(self) -> None:
        """Remove the hook; register the plugin unless its own import is in progress (that
        import registers the plugin's entries itself)."""
        uninstall()
        if not enabled():
            return
        pkg = sys.modules.get("torchreid_sdtps")
        if pkg is not None and getattr(getattr(pkg, "__spec__", None), "_initializing", False):
            return
        try:
            importlib.import_module("torchreid_sdtps").load_plugins()
        except Exception as exc:
            raise ImportError(
                f"torchreid-sdtps could not register with torchreid ({type(exc).__name__}: "
                f"{exc}); set {ENV_VAR}=0 to import torchreid without the plugin") from exc

    # importlib.invalidate_caches() calls this on every meta_path entry
    def invalidate_caches(self) -> None:
        return None


def _hooks() -> list[Any]:
    return [f for f in sys.meta_path if type(f).__name__ == "TorchreidHook"
            and type(f).__module__ in ("_torchreid_sdtps_autoload", __name__)]


def install() -> bool:
    """Add the hook (once). If torchreid is already imported, register right away.
    Returns True when the hook was added."""
    if not enabled() or _hooks():
        return False
    if "torchreid" in sys.modules:
        importlib.import_module("torchreid_sdtps").load_plugins()
        return False
    sys.meta_path.insert(0, TorchreidHook())
    return True


def uninstall() -> None:
    """Remove every autoload hook from ``sys.meta_path``."""
    for hook in _hooks():
        sys.meta_path.remove(hook)
