"""torchreid-sdtps: multi-modal (RGB/NI/TI) re-identification with SDTPS token selection.

Importing the package registers its datasets, models, losses and engines with torchreid;
:func:`load_plugins` also registers every third-party entry of the same entry-point groups.
"""
from __future__ import annotations

import logging

from ._version import __version__  # noqa: E402

logging.getLogger(__name__).addHandler(logging.NullHandler())

from .plugins import ENGINES, LOSSES, get_engine, get_loss, load_plugins, register  # noqa: E402

__all__ = ["__version__", "register", "load_plugins", "get_loss", "get_engine", "LOSSES", "ENGINES"]

register()
from . import patches as _patches  # noqa: E402

_patches.install_hooks()  # safe-loader allow-list, sampler check
from .viz import visrank as _visrank  # noqa: E402

_visrank.install()  # multi-modal rank lists in torchreid's visrank
