"""The plugin inside torchreid's own code paths, in whichever torchreid layout is installed.

``make test`` runs this file twice: in ``.venv`` (PyPI's ``torchreid==0.2.5``, modules under
``torchreid.reid.*``) and in ``.venv-upstream`` (upstream deep-person-reid 1.4 from
``../shared/upstream``, modules under ``torchreid.*``). Covered: layout detection, the
single-image probe (``compute_model_complexity``, torchreid's ``FeatureExtractor``), stock
checkpoints under torch's safe loader in torchreid's own loaders, multi-modal ``visrank`` in
every engine and in ``tools/test.py``, the P x K sampler check, and the ``import torchreid``
autoload hook installed from a real ``pip install`` (wheel) of this checkout.
"""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchreid_sdtps import build, compat, patches
from torchreid_sdtps.cli.test import test as run_test
from torchreid_sdtps.data.checks import SamplerConfigError, check_train_sampler
from torchreid_sdtps.viz import visrank

sys.path.insert(0, str(Path(__file__).parent))
from _trees import make_msvr310_tree, make_rgbnt201_tree, write_jpeg  # noqa: E402
from conftest import tiny_cfg  # noqa: E402

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(synthetic_root, tmp_path_factory):
    """(cfg, datamanager, model, engine) of the tiny synthetic set with the SDTPS engine."""
    cfg = tiny_cfg(synthetic_root, tmp_path_factory.mktemp("compat_log"))
    dm, model, _, _, engine = build.build_all(cfg)
    return cfg, dm, model, engine


# ----------------------------------------------------------------------------- layouts

def test_layout_is_detected_from_the_installed_package():
    tr = compat.torchreid()
    if hasattr(tr, "reid"):  # PyPI's repackaging: torchreid.models is not a module there
        assert compat.layout() == "pypi"
        assert compat.data() is tr.reid.data and compat.models() is tr.reid.models
    else:
        assert compat.layout() == "upstream"
        assert importlib.import_module("torchreid.models") is compat.models()
        assert importlib.import_module("torchreid.engine.engine") is \
            sys.modules[compat.engine().Engine.__module__]


def test_every_accessor_reaches_torchreid_and_a_missing_name_says_which():
    tr = compat.torchreid()
    base = tr.reid if hasattr(tr, "reid") else tr
    for name in ("data", "models", "engine", "losses", "metrics", "optim", "utils"):
        assert getattr(compat, name)() is getattr(base, name)
    assert compat.datasets() is base.data.datasets
    assert compat.image_dataset_base() is base.data.ImageDataset
    assert compat.model_factory() is getattr(base.models, "__model_factory")
    with pytest.raises(ImportError, match=r"no attribute 'data.nope' \('nope' missing\)"):
        compat._accessor("data.nope", "")()


def test_compat_imports_nothing_of_the_plugin_above_the_ground_floor():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(compat))
    relative = {node.module for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.level}
    assert relative <= {"registry", "errors"}  # ground-floor modules only


def test_importing_the_plugin_registers_everything():
    names = set(compat.image_dataset_registry())
    assert {"rgbnt201", "rgbnt100", "msvr310", "synthetic_msreid"} <= names
    assert {"sdtps_vit_tiny", "sdtps_vit_b16", "sdtps_clip_vit_b16"} <= set(compat.model_factory())


# ----------------------------------------------------------------------------- probe

def test_complexity_probe_reports_the_multimodal_model(built):
    _, _, model, _ = built
    utils = compat.utils()
    params, flops = utils.compute_model_complexity(model, (1, 3, 64, 32))
    params_mm, flops_mm = utils.compute_model_complexity(model, (1, 3, 3, 64, 32))
    # torchreid counts the parameters of the leaf layers the inference forward runs: all but
    # the classifiers (training only) and a few non-leaf tensors (e.g. pos-embeddings)
    inference = sum(p.numel() for n, p in model.named_parameters() if ".classifier." not in n)
    assert params == params_mm > 0.99 * inference
    assert flops == flops_mm > 0
    # the backbone runs once per modality: at least 3x one image's backbone FLOPs
    backbone_1 = utils.compute_model_complexity(model.backbone, (1, 3, 64, 32))[1]
    assert flops >= 3 * backbone_1 > 0


def test_single_image_batch_is_shown_to_every_modality(built):
    _, _, model, _ = built
    model.eval()
    img = torch.rand(2, 3, 64, 32)
    with torch.no_grad():
        single = model(img)
        stacked = model(img.unsqueeze(1).expand(-1, 3, -1, -1, -1).contiguous())
    torch.testing.assert_close(single, stacked)
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 32\), shown to every modality"):
        model(torch.rand(2, 1, 64, 32))


def test_torchreid_feature_extractor_accepts_the_model(tmp_path):
    model = compat.models().build_model("sdtps_vit_tiny", num_classes=4, pretrained=False)
    weights = tmp_path / "w.pth"
    torch.save({"state_dict": model.state_dict()}, weights)
    fe = compat.utils().FeatureExtractor(model_name="sdtps_vit_tiny", model_path=str(weights),
                                         image_size=(128, 64), device="cpu", verbose=True)
    arr = np.random.RandomState(0).randint(0, 256, (128, 64, 3)).astype(np.uint8)
    feats = fe([arr, arr])
    assert feats.shape == (2, model.feature_dim)
    model.eval()
    with torch.no_grad():  # the same as the real multi-modal input with the image in each slot
        x = fe.preprocess(fe.to_pil(arr))[None, None].expand(2, 3, -1, -1, -1)
        torch.testing.assert_close(feats, model(x.contiguous()))


# ----------------------------------------------------------------------------- checkpoints

def test_stock_checkpoints_load_in_torchreids_own_loaders(built, tmp_path):
    """torchreid's stock engines save ``rank1`` as a NumPy scalar; torch>=2.6 loads with
    ``weights_only=True``. The plugin allow-lists exactly those NumPy types."""
    _, _, model, engine = built
    utils = compat.utils()
    state = {"state_dict": model.state_dict(), "epoch": 3, "rank1": np.float32(0.25),
             "optimizer": engine.optimizer.state_dict()}
    utils.save_checkpoint(state, str(tmp_path), remove_module_from_keys=True)
    path = str(tmp_path / "model.pth.tar-3")
    with patches.checkpoint_loading():  # the plugin's own loads leave the global list in place
        utils.load_checkpoint(path)
    utils.load_pretrained_weights(model, path)  # no context manager: the global allow-list
    assert utils.resume_from_checkpoint(path, model, optimizer=engine.optimizer) == 3
    added = set(torch.serialization.get_safe_globals())
    assert set(patches.checkpoint_safe_globals()) <= added


# ----------------------------------------------------------------------------- visrank

def _image_size(path: str) -> tuple[int, int]:
    with Image.open(path) as im:
        im.load()
        return im.size


def test_visrank_patch_is_bound_in_torchreids_engine_module():
    engine_mod = sys.modules[compat.engine().Engine.__module__]
    for fn in (engine_mod.visualize_ranked_results, compat.utils().visualize_ranked_results):
        assert fn.__wrapped__.__module__.endswith("utils.reidtools")


def _expected_size(topk: int, width: int, height: int, m: int = 3) -> tuple[int, int]:
    return (visrank.LABEL_W + width + visrank.QUERY_GAP + topk * (width + visrank.SPACING),
            visrank.HEADER_H + m * height)


def test_sdtps_engine_test_visrank_writes_one_picture_per_query(built, tmp_path):
    _, dm, _, engine = built
    engine.test(visrank=True, visrank_topk=3, save_dir=str(tmp_path))
    out = tmp_path / "visrank_synthetic_msreid"
    files = sorted(out.glob("*.jpg"))
    assert len(files) == len(dm.fetch_test_loaders("synthetic_msreid")[0])
    assert _image_size(str(files[0])) == _expected_size(3, 32, 64)


def test_stock_engine_and_test_cli_draw_rank_lists(synthetic_root, built, tmp_path):
    cfg, _, model, _ = built
    weights = tmp_path / "w.pth.tar"
    torch.save({"state_dict": model.state_dict()}, weights)
    for engine in ("triplet", "sdtps"):
        save = tmp_path / engine
        # an impossible P x K sampler (8 // 1 = 8 identities > 6): evaluation does not need it
        cfg = tiny_cfg(synthetic_root, save, "sdtps.engine", engine, "model.load_weights",
                       str(weights), "test.visrank", "True", "test.visrank_topk", "2",
                       "sampler.num_instances", "1")
        summary = run_test(cfg)
        assert summary["results"]["synthetic_msreid"]["num_query"] > 0
        files = list((save / "visrank_synthetic_msreid").glob("*.jpg"))
        assert len(files) == summary["results"]["synthetic_msreid"]["num_query"], engine
        assert _image_size(str(files[0])) == _expected_size(2, 32, 64)


def test_single_image_data_still_goes_to_torchreids_original(tmp_path):
    paths = [write_jpeg(str(tmp_path / "img" / f"{i}.jpg"),
                        np.full((20, 10, 3), 40 * i, np.uint8)) for i in range(4)]
    query = [(paths[0], 1, 0), (paths[1], 2, 0)]
    gallery = [(paths[2], 1, 1), (paths[3], 2, 1)]
    out = tmp_path / "vis"
    compat.utils().visualize_ranked_results(np.random.rand(2, 2), (query, gallery), "image",
                                            width=10, height=20, save_dir=str(out), topk=2)
    # torchreid's layout: (topk + 1) columns, 10 px spacing, 90 px extra after the query
    assert _image_size(str(out / "0.jpg")) == (3 * 10 + 2 * 10 + 90, 20)


def test_visrank_excludes_what_the_protocol_excludes_msvr310_scene(tmp_path):
    """MSVR310 drops gallery samples of the same vehicle in the same *scene*; its query and
    gallery camid is the scene, so torchreid's rule (same pid and camid) is exactly that."""
    from torchreid_sdtps.data.msvr310 import MSVR310, parse_msvr310_name

    root = make_msvr310_tree(tmp_path, num_ids=2, cams=2, per_cam=2, scenes=2)
    ds = MSVR310(root=root, verbose=False)
    for paths, _pid, camid, *_ in ds.query + ds.gallery:
        assert camid == parse_msvr310_name(paths[0])[1]  # scene
    rng = np.random.RandomState(0)
    for q in ds.query:
        order = rng.permutation(len(ds.gallery))
        kept = visrank.ranked_gallery(order, q[1], q[2], ds.gallery, topk=len(ds.gallery))
        kept_idx = {i for i, _ in kept}
        for i, g in enumerate(ds.gallery):
            same_scene = parse_msvr310_name(g[0][0])[1] == parse_msvr310_name(q[0][0])[1]
            assert (i in kept_idx) == (not (g[1] == q[1] and same_scene))
        assert [i for i, _ in kept] == [i for i in order if i in kept_idx]  # rank order kept
        assert all(m == (ds.gallery[i][1] == q[1]) for i, m in kept)
        # same vehicle in the other scene (other camera or not) is a true match
        assert any(m for _, m in kept)


def test_visrank_reads_side_by_side_samples(tmp_path):
    side = write_jpeg(str(tmp_path / "sbs.jpg"), np.concatenate(
        [np.full((32, 24, 3), v, np.uint8) for v in (0, 160, 255)], axis=1))
    query = [((side,), 1, 0)]
    gallery = [((side,), 1, 1), ((side,), 2, 0)]
    (path,) = visrank.visualize_ranked_results(np.array([[0.2, 0.1]]), (query, gallery),
                                              width=24, height=32, save_dir=str(tmp_path / "v"),
                                              topk=2)
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB")).astype(int)
    x0, y0 = visrank.LABEL_W, visrank.HEADER_H
    centres = [arr[y0 + i * 32 + 16, x0 + 12] for i in range(3)]  # query tile: RGB, NI, TI
    assert [int(c.mean() // 64) for c in centres] == [0, 2, 3]
    for rank, (red, green) in enumerate([(True, False), (False, True)]):
        # rank 1 = gallery 1 (other pid): red frame; rank 2 = gallery 0 (same pid): green
        r, g, _ = arr[y0 + 1, x0 + 24 + visrank.QUERY_GAP + rank * (24 + visrank.SPACING) + 12]
        assert (r > 150, g > 150) == (red, green)


# ----------------------------------------------------------------------------- sampler

def test_pk_sampler_error_states_the_numbers(tmp_path):
    root = make_rgbnt201_tree(tmp_path, num_ids=3, cams=2, per_cam=2, size=(32, 16))
    dm_cls = compat.data().ImageDataManager
    with pytest.raises(SamplerConfigError, match=r"has 3 identities.*train\.batch_size / "
                                                 r"sampler\.num_instances = 32 / 4 = 8 identities"):
        dm_cls(root=root, sources="rgbnt201", height=32, width=16, use_gpu=False, workers=0,
               batch_size_train=32, num_instances=4, train_sampler="RandomIdentitySampler")
    with pytest.raises(SamplerConfigError, match=r"train\.batch_size=6 is not a multiple of "
                                                 r"sampler\.num_instances=4"):  # torchreid's path
        dm_cls(root=root, sources="rgbnt201", height=32, width=16, use_gpu=False, workers=0,
               batch_size_train=6, num_instances=4, train_sampler="RandomIdentitySampler")
    check_train_sampler([("a", 1, 0)] * 4, "RandomSampler", 32, 4)  # other samplers: no check
    with pytest.raises(SamplerConfigError, match=r"train\.batch_size=2 is not a multiple of "
                                                 r"sampler\.num_instances=4"):
        check_train_sampler([("a", 1, 0)], "RandomIdentitySampler", 2, 4)
    with pytest.raises(SamplerConfigError, match=r"train\.batch_size=4 / sampler\.num_instances=4 "
                                                 r"gives P = 1 identity"):
        check_train_sampler([("a", 1, 0)] * 8, "RandomIdentitySampler", 4, 4)


# ----------------------------------------------------------------------------- autoload

AUTOLOAD_CHECK = textwrap.dedent("""
    import site, sys
    site.addsitedir(sys.argv[1])              # processes the installed .pth, like at start-up
    import json                               # an unrelated import costs nothing
    assert "torch" not in sys.modules and "torchreid_sdtps" not in sys.modules
    import torchreid                          # the user's script imports torchreid only
    reg = torchreid.data.datasets.__dict__["__image_datasets"]
    print("AUTOLOAD", "torchreid_sdtps" in sys.modules, "synthetic_msreid" in reg)
""")


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory) -> Path:
    """This checkout installed by ``pip install`` (a wheel) into a folder."""
    src = tmp_path_factory.mktemp("src") / "torchreid-sdtps"
    src.mkdir()
    for name in ("setup.py", "MANIFEST.in", "README.md", "torchreid_sdtps"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(
            REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                        if (REPO / name).is_dir() else {}))
    site = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                           "--no-build-isolation", "--target", str(site), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return site


def _autoload_run(site: Path, **env: str) -> str:
    full = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    full.update(env, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", AUTOLOAD_CHECK, str(site)], cwd=str(site),
                          env=full, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_wheel_installs_the_autoload_pth(wheel_site):
    from torchreid_sdtps import _autoload

    pth = wheel_site / _autoload.PTH_NAME
    assert pth.read_text().strip() == _autoload.PTH_LINE
    assert "import torchreid_sdtps" not in pth.read_text()  # only the stdlib-only module


def test_import_torchreid_registers_the_installed_plugin(wheel_site):
    assert "AUTOLOAD True True" in _autoload_run(wheel_site)


def test_autoload_env_var_switches_it_off(wheel_site):
    code = ("import site, sys; site.addsitedir(sys.argv[1]); "
            "print('HOOKS', [type(f).__name__ for f in sys.meta_path].count('TorchreidHook'))")
    for value, hooks in (("0", 0), ("1", 1)):
        full = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc = subprocess.run([sys.executable, "-c", code, str(wheel_site)], cwd=str(wheel_site),
                              env=dict(full, TORCHREID_SDTPS_AUTOLOAD=value),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"HOOKS {hooks}" in proc.stdout  # installed once, even if already at start-up


def test_importing_the_plugin_first_does_not_recurse(wheel_site):
    code = ("import site, sys; site.addsitedir(sys.argv[1]); import torchreid_sdtps, torchreid; "
            "print('OK', 'synthetic_msreid' in torchreid.data.datasets.__dict__"
            "['__image_datasets'])")
    full = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code, str(wheel_site)], cwd=str(wheel_site),
                          env=dict(full, PYTHONWARNINGS="ignore"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK True" in proc.stdout


def test_autoload_failure_names_the_switch(monkeypatch):
    from torchreid_sdtps import _autoload

    def broken(name):
        raise RuntimeError(f"cannot import {name}")

    monkeypatch.setattr(_autoload.importlib, "import_module", broken)
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))  # uninstall() edits it
    with pytest.raises(ImportError, match="RuntimeError: cannot import torchreid_sdtps.*"
                                          "TORCHREID_SDTPS_AUTOLOAD=0"):
        _autoload.TorchreidHook().on_torchreid_loaded()
