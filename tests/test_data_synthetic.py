"""Tests of the synthetic tri-modal data set (generation, caching, atomicity, protocol, design)."""
from __future__ import annotations

import importlib.util
import json
import multiprocessing as mp
import os
import re

import numpy as np
import pytest
from PIL import Image

import torchreid_sdtps  # noqa: F401  (registers synthetic_msreid with torchreid)
from torchreid_sdtps import compat
from torchreid_sdtps.data import RGBNT201
from torchreid_sdtps.data import synthetic as syn
from torchreid_sdtps.data.synthetic import render

# 6 train + 4 test ids, 2 cameras, 2 images per id and camera: 24 + 16 samples.
TINY = syn.SyntheticSpec(num_train_ids=6, num_test_ids=4, num_cameras=2, images_per_camera=2)
NAME_RE = re.compile(r"^(\d{6})_cam(\d)_(\d{4})\.jpg$")


def _snapshot(folder: str) -> dict[str, tuple[int, bytes]]:
    """Relative path -> (mtime_ns, bytes) of every file below ``folder``."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = (os.stat(path).st_mtime_ns, f.read())
    return out


def _leftovers(root) -> list[str]:
    """Temporary or moved-aside folders left under ``<root>/synthetic_msreid/``."""
    parent = os.path.join(str(root), syn.DATASET_DIR)
    if not os.path.isdir(parent):
        return []
    return [n for n in os.listdir(parent) if n.startswith(".") and not n.endswith(".lock")]


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    a = _snapshot(syn.ensure_generated(tmp_path / "a", TINY, progress=False))
    b = _snapshot(syn.ensure_generated(tmp_path / "b", TINY, progress=False))
    assert len(a) == 3 * (24 + 16) + 2  # images + spec.json + identities.json
    assert {k: v[1] for k, v in a.items()} == {k: v[1] for k, v in b.items()}
    other = syn.SyntheticSpec(**{**TINY.to_dict(), "seed": 1})
    c = _snapshot(syn.ensure_generated(tmp_path / "c", other, progress=False))
    assert a.keys() == c.keys()
    images = [k for k in a if k.endswith(".jpg")]
    differing = sum(a[k][1] != c[k][1] for k in images)
    assert differing == len(images)


def test_rendering_does_not_depend_on_order():
    cams = render.camera_params(TINY)
    attrs = syn.identity_attributes(TINY)
    cam1 = {k: v[1] for k, v in cams.items()}
    first = render.render_sample(TINY, attrs[2], cam1, render.seeded_rng(TINY.seed, render.TAG_IMG, 3, 1, 0))
    render.render_sample(TINY, attrs[0], cam1, render.seeded_rng(TINY.seed, render.TAG_IMG, 1, 1, 1))
    again = render.render_sample(TINY, attrs[2], cam1, render.seeded_rng(TINY.seed, render.TAG_IMG, 3, 1, 0))
    assert first.shape == (3, TINY.height, TINY.width, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    # NI and TI are grey images; RGB is not
    assert (first[1:, ..., 0] == first[1:, ..., 2]).all()
    assert not (first[0, ..., 0] == first[0, ..., 2]).all()


def test_second_construction_reuses_the_tree(tmp_path):
    ds = syn.SyntheticMSReID(root=str(tmp_path), spec=TINY, verbose=False)
    folder = syn.spec_folder(tmp_path, TINY)
    assert ds.dataset_path == folder
    assert os.path.dirname(folder) == os.path.join(str(tmp_path), syn.DATASET_DIR)
    before = _snapshot(folder)
    inode = os.stat(folder).st_ino
    again = syn.SyntheticMSReID(root=str(tmp_path), spec=TINY, mode="query", verbose=False)
    assert _snapshot(folder) == before  # mtimes and bytes unchanged
    assert os.stat(folder).st_ino == inode
    assert [s[0] for s in again.query] == [s[0] for s in ds.query]
    assert all(p.startswith(folder + os.sep) for s in ds.query for p in s[0])
    assert _leftovers(tmp_path) == []


def test_two_specs_coexist_and_never_rewrite_each_other(tmp_path, caplog):
    first = syn.ensure_generated(tmp_path, TINY, progress=False)
    before = _snapshot(first)
    changed = syn.SyntheticSpec(**{**TINY.to_dict(), "noise": (0.1, 0.1, 0.1)})
    assert syn.spec_key(changed) != syn.spec_key(TINY)
    with caplog.at_level("INFO"):
        second = syn.ensure_generated(tmp_path, changed, progress=False)
    assert second != first and os.path.dirname(second) == os.path.dirname(first)
    assert not any("regenerating" in r.getMessage() for r in caplog.records)
    assert _snapshot(first) == before            # the other spec's tree: bytes and mtimes kept
    assert syn.is_complete(first, TINY) and syn.is_complete(second, changed)
    with open(os.path.join(second, syn.SPEC_FILE)) as f:
        assert syn.SyntheticSpec.from_dict(json.load(f)["spec"]) == changed
    other = _snapshot(second)
    images = [k for k in before if k.endswith(".jpg")]
    assert all(before[k][1] != other[k][1] for k in images)
    # both data sets read at once, each from its own folder
    a = syn.SyntheticMSReID(root=str(tmp_path), spec=TINY, verbose=False)
    b = syn.SyntheticMSReID(root=str(tmp_path), spec=changed, verbose=False)
    assert a.dataset_path == first and b.dataset_path == second
    assert _snapshot(first) == before and _leftovers(tmp_path) == []


def test_only_a_damaged_copy_is_regenerated_and_it_says_so(tmp_path, caplog):
    folder = syn.ensure_generated(tmp_path, TINY, progress=False)
    first = _snapshot(folder)
    victim = os.path.join(folder, "test", "TI", "000007_cam2_0001.jpg")
    os.remove(victim)
    assert syn.damage(folder, TINY) == "1 file(s) missing, e.g. test/TI/000007_cam2_0001.jpg"
    assert not syn.is_complete(folder, TINY)
    with caplog.at_level("INFO"):
        assert syn.ensure_generated(tmp_path, TINY, progress=False) == folder
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "regenerating the damaged copy" in warned[0]
    assert "test/TI/000007_cam2_0001.jpg" in warned[0]
    with open(victim, "rb") as f:
        assert f.read() == first[os.path.relpath(victim, folder)][1]
    # an unreadable spec.json too
    with open(os.path.join(folder, syn.SPEC_FILE), "w") as f:
        f.write("{not json")
    assert "unreadable" in syn.damage(folder, TINY)
    syn.ensure_generated(tmp_path, TINY, progress=False)
    assert syn.is_complete(folder, TINY)
    assert {k: v[1] for k, v in _snapshot(folder).items()} == {k: v[1] for k, v in first.items()}
    assert _leftovers(tmp_path) == []


def test_failure_mid_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    real = render.render_sample
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(render, "render_sample", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        syn.ensure_generated(tmp_path, TINY, progress=False)
    assert not os.path.exists(syn.spec_folder(tmp_path, TINY))
    assert _leftovers(tmp_path) == []

    # with a damaged tree in place, a failed regeneration keeps the old tree as it was
    monkeypatch.setattr(render, "render_sample", real)
    folder = syn.ensure_generated(tmp_path, TINY, progress=False)
    os.remove(os.path.join(folder, "train", "NI", "000001_cam1_0000.jpg"))
    before = _snapshot(folder)
    calls["n"] = 0
    monkeypatch.setattr(render, "render_sample", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        syn.ensure_generated(tmp_path, TINY, progress=False)
    assert _snapshot(folder) == before
    assert _leftovers(tmp_path) == []


def _generate_in_child(root: str) -> None:
    syn.ensure_generated(root, TINY, progress=False)


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_concurrent_processes_share_one_tree(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_generate_in_child, args=(str(tmp_path),)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    folder = syn.spec_folder(tmp_path, TINY)
    assert syn.is_complete(folder, TINY)
    assert sorted(n for n in os.listdir(os.path.dirname(folder)) if not n.endswith(".lock")) \
        == [os.path.basename(folder)]
    assert _leftovers(tmp_path) == []


def test_layout_matches_rgbnt201_names(tmp_path):
    folder = syn.ensure_generated(tmp_path, TINY, progress=False)
    assert sorted(os.listdir(folder)) == ["identities.json", "spec.json", "test", "train"]
    expected_pids = {"train": set(range(1, 7)), "test": set(range(7, 11))}
    for split, n in (("train", 24), ("test", 16)):
        listings = [sorted(os.listdir(os.path.join(folder, split, m))) for m in syn.MODALITIES]
        assert listings[0] == listings[1] == listings[2] and len(listings[0]) == n
        parsed = [NAME_RE.match(name) for name in listings[0]]
        assert all(parsed)
        assert {int(p.group(1)) for p in parsed} == expected_pids[split]
        assert {int(p.group(2)) for p in parsed} == {1, 2}   # cameras 1-based in names
        assert {int(p.group(3)) for p in parsed} == {0, 1}
    with open(os.path.join(folder, syn.IDENTITY_FILE)) as f:
        ids = json.load(f)
    triples = [(v["RGB"], v["NI"], v["TI"]) for v in ids.values()]
    assert len(ids) == 10 and len(set(triples)) == 10     # unique attribute triple per id
    assert {v["split"] for k, v in ids.items() if int(k) <= 6} == {"train"}


def test_dataset_protocol(tmp_path):
    ds = syn.SyntheticMSReID(root=str(tmp_path), spec=TINY, verbose=False)
    assert isinstance(ds, RGBNT201)
    assert ds.num_train_pids == 6 and len(ds.train) == 24
    assert sorted({s[1] for s in ds.train}) == list(range(6))          # relabelled
    assert ds.query == ds.gallery and len(ds.query) == 16
    assert {s[1] for s in ds.query} == set(range(7, 11))               # disjoint from train
    assert {s[2] for s in ds.query} == {0, 1}                          # 0-based cameras
    for paths, pid, camid, _ in ds.query:
        assert [os.path.basename(os.path.dirname(p)) for p in paths] == list(syn.MODALITIES)
        assert any(g[1] == pid and g[2] != camid for g in ds.gallery)  # a true cross-camera match
    item = ds[0]
    assert tuple(item["img"].shape) == (3, 3, 128, 64)


def test_image_data_manager_batch(tmp_path):
    with syn.using_spec(TINY):
        dm = compat.data().ImageDataManager(
            root=str(tmp_path), sources="synthetic_msreid", height=128, width=64, use_gpu=False,
            workers=0, batch_size_train=8, batch_size_test=8,
            train_sampler="RandomIdentitySampler", num_instances=2,
        )
    assert syn.default_spec() == syn.SyntheticSpec()   # restored on exit
    assert dm.num_train_pids == 6
    batch = next(iter(dm.train_loader))
    assert tuple(batch["img"].shape) == (8, 3, 3, 128, 64)
    assert len(set(batch["pid"].tolist())) == 4        # 4 ids x 2 instances
    loaders = dm.test_loader["synthetic_msreid"]
    assert len(loaders["query"].dataset) == len(loaders["gallery"].dataset) == 16


def test_default_spec_api_and_validation():
    original = syn.default_spec()
    prev = syn.set_default_spec(num_test_ids=3, seed=2)
    try:
        assert prev == original
        assert syn.default_spec() == syn.SyntheticSpec(num_test_ids=3, seed=2)
        syn.set_default_spec(seed=4)   # fields apply over the package defaults
        assert syn.default_spec() == syn.SyntheticSpec(seed=4)
        with syn.using_spec({"num_train_ids": 2}) as spec:
            assert syn.default_spec() == spec == syn.SyntheticSpec(num_train_ids=2)
        assert syn.default_spec() == syn.SyntheticSpec(seed=4)
    finally:
        syn.set_default_spec(original)
    assert syn.default_spec() == original
    with pytest.raises(ValueError, match="num_cameras"):
        syn.SyntheticSpec(num_cameras=1)
    with pytest.raises(ValueError, match="noise"):
        syn.SyntheticSpec(noise=(0.1, 0.1))
    with pytest.raises(ValueError, match="unique attribute triples"):
        syn.SyntheticSpec(num_train_ids=30, values_per_modality=3)
    with pytest.raises(ValueError, match="unknown field"):
        syn.SyntheticSpec.from_dict({"num_ids": 3})
    assert syn.SyntheticSpec.from_dict(TINY.to_dict()) == TINY


def _analysis():
    """``benchmarks/synthetic_analysis.py`` (the raw-pixel baseline and the attribute oracle)."""
    bench = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
    spec = importlib.util.spec_from_file_location("synthetic_analysis",
                                                  os.path.join(bench, "synthetic_analysis.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_spec_module_is_light():
    """spec.py imports only the standard library and the package's two plain modules
    (``choices`` for the modality names, ``errors``), which import nothing heavy either."""
    import ast

    light = {"__future__", "contextlib", "dataclasses", "collections.abc", "typing", "re"}
    pkg = os.path.dirname(os.path.dirname(os.path.dirname(syn.__file__)))
    for path, own in ((os.path.join(os.path.dirname(syn.__file__), "spec.py"),
                       {"...choices", "...errors"}),
                      (os.path.join(pkg, "choices.py"), {".errors"}),
                      (os.path.join(pkg, "errors.py"), set())):
        tree = ast.parse(open(path, encoding="utf-8").read())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {"." * n.level + (n.module or "") for n in ast.walk(tree)
                  if isinstance(n, ast.ImportFrom)}
        assert names <= light | own, (path, sorted(names - light - own))
    assert syn.SyntheticMSReID.__module__ == "torchreid_sdtps.data.synthetic.dataset"


def test_evidence_is_split_across_modalities(tmp_path):
    """Raw-pixel NN: the three modalities together beat every single one, none is near perfect."""
    analysis = _analysis()
    spec = syn.SyntheticSpec(num_train_ids=1, num_test_ids=12, num_cameras=2,
                             images_per_camera=3, values_per_modality=3)
    folder = syn.ensure_generated(tmp_path, spec, progress=False)
    raw = analysis.raw_pixel_baseline(folder)
    singles = [raw[m]["mAP"] for m in syn.MODALITIES]
    assert raw["RGB+NI+TI"]["mAP"] > max(singles) + 0.05
    assert max(r["mAP"] for r in raw.values()) < 0.7
    oracle = analysis.attribute_oracle(spec)
    for m in syn.MODALITIES:   # one modality never identifies everyone...
        assert oracle[m]["unique_fraction"] < 0.5 and oracle[m]["mAP"] < 0.6
    assert oracle["RGB+NI+TI"]["unique_fraction"] == 1.0   # ...the triple does
    assert oracle["RGB+NI+TI"]["mAP"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- localized cue
LOCAL = syn.SyntheticSpec(num_train_ids=2, num_test_ids=12, num_cameras=2, images_per_camera=3,
                          height=96, width=48, cue="localized", clutter=16)


def test_localized_generator_records_cue_patches_that_carry_the_identity(tmp_path):
    """The recorded cells hold the framed cue: in RGB their colour is the identity's palette
    entry (b of its attribute), in NI their brightness orders like b; a random other cell's
    colour is unrelated to the identity."""
    ds = syn.SyntheticMSReID(root=str(tmp_path), spec=LOCAL, mode="query", verbose=False)
    assert ds.cue_grid == (6, 3)
    attrs = syn.identity_attributes(LOCAL)
    pairs = np.asarray(render.PAIRS)
    rng = np.random.default_rng(0)
    hits = {"cue": 0, "other": 0}
    ni_level: dict[int, list[float]] = {0: [], 1: [], 2: []}
    positions = set()
    for paths, pid, _, _ in ds.query:
        cells = ds.cue_patches(paths)
        assert cells.shape == (3, 2) and (cells[:, 1] == cells[:, 0] + 1).all()  # 1x2 region
        positions.add(tuple(cells[:, 0]))
        rgb, ni = (np.asarray(Image.open(p).convert("RGB"), np.float32) for p in paths[:2])
        b_rgb, b_ni = pairs[attrs[pid - 1, 0], 1], pairs[attrs[pid - 1, 1], 1]

        def interior(img, cell):
            r, c = divmod(int(cell), 3)
            return img[r * 16 + 4:r * 16 + 12, c * 16 + 4:c * 16 + 12].reshape(-1, 3).mean(0)

        hits["cue"] += int(np.argmax(interior(rgb, cells[0, 0])) == b_rgb)
        other = rng.choice(np.setdiff1d(np.arange(18), cells[0]))
        hits["other"] += int(np.argmax(interior(rgb, other)) == b_rgb)
        ni_level[int(b_ni)].append(float(interior(ni, cells[1, 0]).mean()))
        # the frame: the region's top border row is brighter than its interior
        r, c = divmod(int(cells[0, 0]), 3)
        assert rgb[r * 16, c * 16 + 2:c * 16 + 30].mean() > interior(rgb, cells[0, 0]).mean()
    n = len(ds.query)
    assert hits["cue"] >= 0.9 * n and hits["other"] <= 0.6 * n
    means = [np.mean(ni_level[b]) for b in range(3) if ni_level[b]]
    assert means == sorted(means) and len(means) >= 2
    assert len(positions) > n // 2          # the cue moves from image to image
    # the spread design has no ground truth
    spread = syn.SyntheticMSReID(root=str(tmp_path / "s"), spec=TINY, mode="query", verbose=False)
    assert spread.cue_grid is None and spread.cue_patches(spread.query[0][0]) is None


def test_localized_spec_validation_and_cue_file(tmp_path):
    with pytest.raises(ValueError, match="cue="):
        syn.SyntheticSpec(cue="everywhere")
    with pytest.raises(ValueError, match="patch_size"):
        syn.SyntheticSpec(cue="localized", height=100)
    with pytest.raises(ValueError, match="cue_size"):
        syn.SyntheticSpec(cue="localized", cue_size=(9, 1))
    folder = syn.ensure_generated(tmp_path, LOCAL, progress=False)
    cues = syn.read_cues(folder)
    assert cues["grid"] == [6, 3] and len(cues["cues"]) == sum(map(len, syn.expected_files(LOCAL).values()))
    os.remove(os.path.join(folder, syn.CUE_FILE))
    assert not syn.is_complete(folder, LOCAL)   # a missing cues.json regenerates the tree


# distractor identities (issue 18): other identities of the split shown in unframed cells
PLAIN = dict(height=64, width=32, cue="localized", cue_size=(1, 2), noise=(0.0, 0.0, 0.0),
             camera_shift=0.0, pose_jitter=0.0, jpeg_quality=95)


def test_distractor_spec_validation():
    with pytest.raises(ValueError, match="distractors"):
        syn.SyntheticSpec(distractors=1)                      # spread cue: no distractors
    with pytest.raises(ValueError, match="distractors"):
        syn.SyntheticSpec(**PLAIN, distractors=4)             # 5 regions of 2 cells > 8 cells
    with pytest.raises(ValueError, match="distractors"):
        syn.SyntheticSpec(**PLAIN, distractors=-1)
    assert syn.SyntheticSpec(**PLAIN, distractors=3).distractors == 3


def test_distractors_paint_other_identities_of_the_split():
    from torchreid_sdtps.data.synthetic import generate, localized

    spec = syn.SyntheticSpec(num_train_ids=5, num_test_ids=4, **PLAIN, clutter=0, distractors=2)
    attrs = generate.identity_attributes(spec)
    others = generate._distractor_attrs(spec, attrs, "test", 7, 1, 0)
    again = generate._distractor_attrs(spec, attrs, "test", 7, 1, 0)
    np.testing.assert_array_equal(others, again)               # seeded per sample
    rows = {tuple(a) for a in attrs[[5, 7, 8]]}                # test pids 6, 8, 9 (not 7)
    assert others.shape == (2, 3) and {tuple(o) for o in others} <= rows
    assert len({tuple(o) for o in others}) == 2                # two distinct identities
    cam = {k: v[0] for k, v in render.camera_params(spec).items()}
    img, cue = localized.render_localized_sample(spec, attrs[6], cam, render.seeded_rng(0, 1),
                                                 others)
    # clutter 0, no noise: a cell is either the flat scene or a pattern; cue + 2 x 2 cells
    cells = img.astype(np.float32).reshape(3, 4, 16, 2, 16, 3).transpose(0, 1, 3, 2, 4, 5)
    patterned = cells.reshape(3, 8, -1, 3).std(2).max(-1) > 1.0   # spatial std per channel
    assert (patterned.sum(1) == 2 * (1 + 2)).all()
    assert patterned[np.arange(3)[:, None], cue].all()
    with pytest.raises(ValueError, match="others"):
        localized.render_localized_sample(spec, attrs[6], cam, render.seeded_rng(0, 1), None)


def test_zero_distractors_leave_the_localized_tree_unchanged(tmp_path):
    from torchreid_sdtps.data.synthetic import localized

    spec = syn.SyntheticSpec(num_train_ids=4, num_test_ids=4, **PLAIN, clutter=3)
    cam = {k: v[0] for k, v in render.camera_params(spec).items()}
    a, cue_a = localized.render_localized_sample(spec, np.array([1, 2, 3]), cam,
                                                 render.seeded_rng(0, 2))
    b, cue_b = localized.render_localized_sample(spec, np.array([1, 2, 3]), cam,
                                                 render.seeded_rng(0, 2), np.zeros((0, 3), int))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(cue_a, cue_b)
