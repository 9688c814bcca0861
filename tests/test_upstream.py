"""Upstream torchreid (deep-person-reid 1.4, ``../shared/upstream``) with its *unmodified*
``scripts/main.py``: the plugin is found without being imported, trains (softmax and
triplet), ranks, evaluates a stock checkpoint and draws multi-modal rank lists.

``make test`` runs this file in ``.venv-upstream`` (upstream torchreid + this checkout
installed with ``pip install -e``); in the PyPI-layout environment it is skipped.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from torchreid_sdtps import compat

sys.path.insert(0, str(Path(__file__).parent))
from _trees import make_rgbnt201_tree  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: upstream's source tarball; ``make`` passes its ``UPSTREAM_TGZ`` here
TARBALL = Path(os.environ.get("UPSTREAM_TGZ") or
               REPO.parent / "shared" / "upstream" / "deep-person-reid-f8cd150.tar.gz")

pytestmark = pytest.mark.skipif(
    compat.layout() != "upstream",
    reason="needs upstream torchreid (deep-person-reid 1.4) installed; `make test` runs this "
           "file in .venv-upstream")


@pytest.fixture(scope="module")
def scripts(tmp_path_factory) -> Path:
    """Upstream's ``scripts/`` folder (main.py, default_config.py), unpacked as shipped."""
    if not TARBALL.is_file():
        pytest.skip(f"upstream source not found at {TARBALL} (see ../shared/upstream/README.md)")
    dst = tmp_path_factory.mktemp("upstream")
    with tarfile.open(TARBALL) as tar:
        members = [m for m in tar.getmembers() if "/scripts/" in m.name and m.isfile()]
        tar.extractall(dst, members=members, filter="data")
    (main,) = dst.glob("*/scripts/main.py")
    return main.parent


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> str:
    """A tiny RGBNT201 tree at the model's default 128x64 (4 + 4 ids, 2 cameras)."""
    return make_rgbnt201_tree(tmp_path_factory.mktemp("rgbnt201"), num_ids=4, cams=2, per_cam=2,
                              size=(128, 64))


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "TORCHREID_SDTPS_AUTOLOAD")}
    return dict(env, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def _main(scripts: Path, tree: str, save: Path, *opts: str) -> str:
    cmd = [sys.executable, "main.py", "-s", "rgbnt201", "-t", "rgbnt201", "--root", tree,
           "model.name", "sdtps_vit_tiny", "model.pretrained", "False", "use_gpu", "False",
           "data.height", "128", "data.width", "64", "data.workers", "0",
           "data.save_dir", str(save), "train.batch_size", "8", "sampler.num_instances", "2",
           "test.batch_size", "32", "test.ranks", "[1, 5, 10]",
           "train.print_freq", "1", *opts]
    proc = subprocess.run(cmd, cwd=scripts, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    return proc.stdout


def test_import_torchreid_alone_registers_the_installed_plugin():
    code = ("import sys, torchreid; reg = torchreid.data.datasets.__dict__['__image_datasets']; "
            "print('REG', 'torchreid_sdtps' in sys.modules, 'synthetic_msreid' in reg, "
            "'sdtps_vit_tiny' in torchreid.models.__dict__['__model_factory'])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO.parent, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "REG True True True" in proc.stdout


@pytest.fixture(scope="module")
def trained(scripts, tree, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """``{loss: (save_dir, stdout)}`` of 1-epoch main.py runs."""
    out = {}
    for loss, sampler in (("softmax", "RandomSampler"), ("triplet", "RandomIdentitySampler")):
        save = tmp_path_factory.mktemp(loss)
        out[loss] = save, _main(scripts, tree, save, "loss.name", loss, "train.max_epoch", "1",
                                "sampler.train_sampler", sampler)
    return out


@pytest.mark.parametrize("loss", ["softmax", "triplet"])
def test_main_trains_one_epoch_and_ranks(trained, loss):
    save, out = trained[loss]
    assert f"Building {loss}-engine for image-reid" in out
    assert re.search(r"epoch: \[1/1\]\[\d+/\d+\]", out)
    assert re.search(r"mAP: \d+\.\d%", out) and re.search(r"Rank-1\s*: \d+\.\d%", out)
    assert (save / "model" / "model.pth.tar-1").is_file()
    # the complexity probe (1, 3, H, W) measured the whole multi-modal model
    params, flops = (int(v.replace(",", "")) for v in re.search(
        r"Model complexity: params=([\d,]+) flops=([\d,]+)", out).groups())
    model = compat.models().build_model("sdtps_vit_tiny", 4, loss=loss, pretrained=False)
    assert (params, flops) == compat.utils().compute_model_complexity(model, (1, 3, 3, 128, 64))


def test_main_evaluates_a_stock_checkpoint_and_draws_rank_lists(scripts, tree, trained,
                                                                tmp_path):
    ckpt = trained["softmax"][0] / "model" / "model.pth.tar-1"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert type(state["rank1"]).__module__ == "numpy"  # what the safe loader must accept
    out = _main(scripts, tree, tmp_path, "loss.name", "softmax", "test.evaluate", "True",
                "model.load_weights", str(ckpt), "test.visrank", "True",
                "test.visrank_topk", "3")
    assert f'Successfully loaded pretrained weights from "{ckpt}"' in out
    pictures = sorted((tmp_path / "visrank_rgbnt201").glob("*.jpg"))
    assert len(pictures) == 16  # one per query (4 test ids x 2 cameras x 2 images)
    from torchreid_sdtps.viz import visrank

    size = (visrank.LABEL_W + 64 + visrank.QUERY_GAP + 3 * (64 + visrank.SPACING),
            visrank.HEADER_H + 3 * 128)  # 3 modalities of 128 x 64, query + top-3
    for path in pictures:
        with Image.open(path) as im:
            im.load()
            assert im.size == size
