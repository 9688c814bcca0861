"""`pip install .` (not only -e) gives a working install; the sdist ships configs and README."""
from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from torchreid_sdtps._entry_points import ENTRY_POINTS

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ("setup.py", "MANIFEST.in", "README.md", "Makefile", "torchreid_sdtps", "configs", "tools")


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory) -> Path:
    """A copy of the source tree, so builds leave nothing in the checkout."""
    dst = tmp_path_factory.mktemp("src") / "torchreid-sdtps"
    dst.mkdir()
    for name in SHIPPED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dst / name)
    return dst


def test_sdist_ships_configs_readme_and_tools(source_copy, tmp_path):
    out = tmp_path / "dist"
    code = f"from setuptools import build_meta; print(build_meta.build_sdist({str(out)!r}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=source_copy,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (sdist,) = out.glob("*.tar.gz")
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    assert "README.md" in names
    assert "torchreid_sdtps/_entry_points.py" in names
    configs = {p.name for p in (REPO / "configs").glob("*.yaml")}
    assert configs, "configs/ holds the yaml configs"
    assert {f"configs/{c}" for c in configs} <= names


def test_the_build_prints_no_setuptools_warning(source_copy, tmp_path):
    """Every install builds a wheel: its log has no setuptools packaging warning (the data
    folder torchreid_sdtps/configs is declared, MANIFEST.in names only files that exist)."""
    out = tmp_path / "wheel"
    code = f"from setuptools import build_meta; print(build_meta.build_wheel({str(out)!r}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=source_copy,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = proc.stdout + proc.stderr
    assert "absent from the `packages` configuration" not in log, log[-3000:]
    assert "no files found matching" not in log, log[-3000:]
    (wheel,) = out.glob("*.whl")
    import zipfile

    assert "torchreid_sdtps/configs/synthetic_demo.yaml" in zipfile.ZipFile(wheel).namelist()


def test_pip_install_dot_registers_from_its_own_metadata(source_copy, tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(source_copy)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (dist_info,) = site.glob("torchreid_sdtps-*.dist-info")
    parser = configparser.ConfigParser()
    parser.optionxform = str
    parser.read(dist_info / "entry_points.txt")
    for group, entries in ENTRY_POINTS.items():
        assert dict(parser[group]) == entries
    # the commands, and the demo config they read, come with the install
    assert dict(parser["console_scripts"]) == {  # one module per command, one runner
        f"torchreid-sdtps-{name}": f"torchreid_sdtps.cli.{name}:console"
        for name in ("train", "test", "extract", "search", "export", "visualize", "index")}
    assert (site / "torchreid_sdtps" / "configs" / "synthetic_demo.yaml").is_file()
    script = ("import torchreid_sdtps, torchreid_sdtps.plugins as p; "
              "print(torchreid_sdtps.__file__); print(sorted(p.model_names()))")
    env = dict(os.environ, PYTHONPATH=str(site))
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, models = proc.stdout.strip().splitlines()[-2:]
    assert first.startswith(str(site))
    for name in ENTRY_POINTS["torchreid.models"]:
        assert name in models
