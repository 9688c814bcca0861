"""Both torchreid layouts work: PyPI's ``torchreid.reid.*`` and upstream's ``torchreid.*``.

The upstream layout is rebuilt from the installed PyPI package, which is a repackaging of
deep-person-reid 1.4: its ``torchreid/reid`` tree is copied to ``<tmp>/torchreid`` with the
``torchreid.reid`` imports rewritten, giving upstream's module layout exactly.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from torchreid_sdtps import compat

REPO = Path(__file__).resolve().parents[1]


def test_installed_torchreid_is_the_pypi_layout():
    tr = compat.torchreid()
    assert compat.layout() == "pypi"
    assert compat.data() is tr.reid.data
    assert compat.models() is tr.reid.models


@pytest.fixture(scope="module")
def upstream_root(tmp_path_factory) -> Path:
    src = Path(compat.torchreid().__file__).parent / "reid"
    root = tmp_path_factory.mktemp("upstream")
    dst = root / "torchreid"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyx"))
    for py in dst.rglob("*.py"):
        text = py.read_text()
        new = re.sub(r"\btorchreid\.reid\b", "torchreid", text)
        if new != text:
            py.write_text(new)
    return root


SCRIPT = textwrap.dedent("""
    import importlib, sys, torch
    import torchreid
    assert not hasattr(torchreid, "reid"), "fake package must be the upstream layout"
    importlib.import_module("torchreid.models")      # a real module only upstream
    import torchreid_sdtps
    from torchreid_sdtps import compat, plugins
    assert compat.layout() == "upstream", compat.layout()
    assert compat.torchreid().__file__.startswith(sys.argv[1]), compat.torchreid().__file__
    res = torchreid_sdtps.load_plugins()
    for name in ("rgbnt201", "rgbnt100", "msvr310", "synthetic_msreid"):
        assert name in torchreid.data.datasets.__dict__["__image_datasets"], name
    assert plugins.get_engine("triplet") is torchreid.engine.ImageTripletEngine
    model = torchreid.models.build_model("sdtps_vit_tiny", 5, loss="softmax", pretrained=False,
                                         use_gpu=False)
    model.eval()
    with torch.no_grad():
        feat = model(torch.rand(2, 3, 3, 128, 64))
    assert feat.shape[0] == 2 and feat.dim() == 2, feat.shape
    sys.path.insert(0, sys.argv[2])
    from _trees import make_rgbnt201_tree
    root = make_rgbnt201_tree(sys.argv[3], num_ids=4, cams=2, per_cam=2, size=(64, 32))
    dm = torchreid.data.ImageDataManager(root=root, sources="rgbnt201", height=64, width=32,
                                         use_gpu=False, workers=0, batch_size_train=4,
                                         batch_size_test=4)
    batch = next(iter(dm.train_loader))
    assert tuple(batch["img"].shape) == (4, 3, 3, 64, 32), batch["img"].shape
    print("UPSTREAM-OK", compat.layout(), sorted(res))
""")


def test_upstream_layout_registers_builds_and_loads(upstream_root, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(upstream_root), str(REPO)]))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(upstream_root),
                           str(REPO / "tests"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "UPSTREAM-OK upstream" in proc.stdout
