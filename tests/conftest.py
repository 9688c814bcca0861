"""Fixtures shared by the test files: the tiny synthetic run (config overrides, one generated
data root per session, a config factory, built data manager/model/engine).

The builders (``build_all``, ``build_datamanager``, ``build_model``) come from
:mod:`torchreid_sdtps.build`.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from torchreid_sdtps import config

torch.set_num_threads(1)


def _builders() -> Any:
    """The module holding the data manager / model / engine builders (imported on use, so a
    move breaks only the tests that build)."""
    from torchreid_sdtps import build

    return build

#: a tiny synthetic set (6 + 6 ids, 2 cameras, 64x32) and small batches: seconds per epoch
TINY_OPTS: tuple[str, ...] = (
    "synthetic.num_train_ids", "6", "synthetic.num_test_ids", "6", "synthetic.num_cameras", "2",
    "synthetic.images_per_camera", "2", "synthetic.height", "64", "synthetic.width", "32",
    "data.height", "64", "data.width", "32", "train.batch_size", "8",
    "sampler.num_instances", "2", "test.batch_size", "64", "use_gpu", "False",
    # the demo ranks with its missing-modality method (issue 25); the tests keep the model's
    # plain ranking feature unless they ask for it (tests/test_missing.py, test_search.py)
    "sdtps.mask_missing", "False", "sdtps.missing_match", "plain", "sdtps.test_feature", "concat",
)


@pytest.fixture(scope="session")
def tiny_opts() -> list[str]:
    """``KEY VALUE`` overrides of the tiny synthetic run, for tests that call the CLI."""
    return list(TINY_OPTS)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data root for the tiny synthetic set, generated once per session by its first
    user (every user must keep the ``TINY_OPTS`` spec, or it is regenerated)."""
    return tmp_path_factory.mktemp("synthetic_data")


def tiny_cfg(root: str | Path, save_dir: str | Path, *opts: str) -> Any:
    """The demo config with ``TINY_OPTS``, ``data.root``/``data.save_dir`` and ``opts``
    (``KEY VALUE`` pairs, applied last) - for module-scoped fixtures and helpers that
    cannot use the function-scoped :func:`make_cfg`."""
    paths = ["data.root", str(root), "data.save_dir", str(save_dir)]
    return config.load_config(opts=[*TINY_OPTS, *paths, *opts], demo=True)


@pytest.fixture
def make_cfg(synthetic_root: Path, tmp_path: Path) -> Callable[..., Any]:
    """``make_cfg(*opts, root=synthetic_root, save_dir=tmp_path/"log")``: :func:`tiny_cfg`
    with those defaults."""

    def make(*opts: str, root: Path | None = None, save_dir: Path | None = None) -> Any:
        return tiny_cfg(root or synthetic_root, save_dir or tmp_path / "log", *opts)

    return make


@pytest.fixture
def built(make_cfg: Callable[..., Any]) -> tuple[Any, Any, torch.nn.Module, Any]:
    """``(cfg, datamanager, model, engine)`` of the tiny run with Gumbel selection, so every
    auxiliary loss is live."""
    cfg = make_cfg("sdtps.selection", "gumbel")
    dm, model, _, _, engine = _builders().build_all(cfg)
    return cfg, dm, model, engine


@pytest.fixture(scope="session")
def builders() -> Any:
    """The module with ``build_all``, ``build_datamanager`` and ``build_model``."""
    return _builders()


BENCH_DIR = str(Path(__file__).resolve().parent.parent / "benchmarks")


def load_benchmark(name: str) -> Any:
    """Import ``benchmarks/<name>.py`` as the script sees itself (its folder first on
    ``sys.path``, so ``_common`` resolves; registered in ``sys.modules`` for dataclasses)."""
    import importlib.util
    import sys

    if BENCH_DIR not in sys.path:
        sys.path.insert(0, BENCH_DIR)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, str(Path(BENCH_DIR) / f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def benchmark_module() -> Callable[[str], Any]:
    """:func:`load_benchmark`, as a fixture."""
    return load_benchmark


@pytest.fixture(scope="module")
def openai_src() -> Any:
    """A tiny checkpoint in OpenAI CLIP's format (tests/_weights.py), once per test module."""
    from _weights import make_openai_src

    return make_openai_src()


@pytest.fixture(scope="module")
def timm_src() -> Any:
    """A tiny checkpoint in timm's ViT format (tests/_weights.py), once per test module."""
    from _weights import make_timm_src

    return make_timm_src()
