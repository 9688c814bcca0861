"""Generation of the ``synthetic_msreid`` tree: layout, completeness check, atomic write.

Every spec has its own folder, ``<root>/synthetic_msreid/<key>/`` with ``key`` =
:func:`spec_key` (a readable prefix and a hash of the spec and the generator version), holding
``{train,test}/{RGB,NI,TI}/<pid:06d>_cam<c>_<k:04d>.jpg`` (RGBNT201 style, cameras 1-based in
the names). So no command rewrites the data another spec's command (or a feature store, or an
index) uses. A folder is generated into a temporary folder beside it and moved into place with
``os.replace``; later calls reuse it; only a damaged copy of the same spec (a file missing, an
unreadable ``spec.json``) is generated again, with a warning that says so.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import os.path as osp
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np
from filelock import FileLock
from PIL import Image

from . import localized, render
from .spec import DATASET_DIR, MODALITIES, SyntheticSpec, as_spec, default_spec

logger = logging.getLogger(__name__)

__all__ = ["GENERATOR_VERSION", "SPLITS", "SPEC_FILE", "IDENTITY_FILE", "CUE_FILE",
           "identity_attributes", "split_pids", "expected_files", "is_complete", "ensure_generated",
           "read_cues", "spec_key", "spec_folder", "damage"]

SPLITS = ("train", "test")
GENERATOR_VERSION = 1  # bump when the rendering changes: old trees are then regenerated
SPEC_FILE = "spec.json"
IDENTITY_FILE = "identities.json"
CUE_FILE = "cues.json"  # cue="localized" only: the cue cells of every image
TAG_DISTRACTOR = 4  # seed-sequence tag of the distractor identities (render's tags are 1-3)


def identity_attributes(spec: SyntheticSpec) -> np.ndarray:
    """``(num_ids, 3)`` int array: attribute value of each identity (row ``pid - 1``) per modality.

    Triples are drawn without replacement from ``values_per_modality ** 3``, so they are unique.
    Train identities are pids ``1..num_train_ids``, test identities the following ones.
    """
    v = spec.values_per_modality
    codes = render.seeded_rng(spec.seed, render.TAG_IDS).permutation(v ** 3)[: spec.num_ids]
    return np.stack([codes // (v * v), (codes // v) % v, codes % v], axis=1)


def split_pids(spec: SyntheticSpec) -> dict[str, range]:
    return {"train": range(1, spec.num_train_ids + 1),
            "test": range(spec.num_train_ids + 1, spec.num_ids + 1)}


def _file_name(pid: int, cam: int, k: int) -> str:
    return f"{pid:06d}_cam{cam + 1}_{k:04d}.jpg"


def expected_files(spec: SyntheticSpec) -> dict[str, list[tuple[int, int, int, str]]]:
    """Per split: ``(pid, cam0, k, file name)`` of every sample (same name in all modalities)."""
    return {
        split: [(pid, cam, k, _file_name(pid, cam, k))
                for pid in pids for cam in range(spec.num_cameras)
                for k in range(spec.images_per_camera)]
        for split, pids in split_pids(spec).items()
    }


def _spec_record(spec: SyntheticSpec) -> dict[str, Any]:
    return {"generator_version": GENERATOR_VERSION, "dataset": DATASET_DIR, "spec": spec.to_dict()}


def spec_key(spec: SyntheticSpec | Mapping[str, Any]) -> str:
    """Folder name of ``spec`` under ``<root>/synthetic_msreid/``: readable fields and a hash of
    the whole spec and the generator version, e.g. ``spread-60+40ids-seed0-1a2b3c4d5e``."""
    spec = as_spec(spec)
    blob = json.dumps(_spec_record(spec), sort_keys=True).encode()
    digest = hashlib.sha256(blob).hexdigest()[:10]
    return f"{spec.cue}-{spec.num_train_ids}+{spec.num_test_ids}ids-seed{spec.seed}-{digest}"


def spec_folder(root: str | os.PathLike, spec: SyntheticSpec | Mapping[str, Any] | None = None
                ) -> str:
    """The folder of ``spec``'s tree under ``root`` (generated or not)."""
    spec = default_spec() if spec is None else as_spec(spec)
    return osp.join(osp.abspath(osp.expanduser(root)), DATASET_DIR, spec_key(spec))


def damage(dataset_dir: str, spec: SyntheticSpec) -> str:
    """Why ``dataset_dir`` does not hold the tree ``spec`` describes ("" when it does)."""
    path = osp.join(dataset_dir, SPEC_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as exc:
        return f"{SPEC_FILE} unreadable ({type(exc).__name__})"
    if record != _spec_record(spec):
        return f"{SPEC_FILE} describes another spec"
    missing = [name for name in _record_files(spec) if not osp.isfile(osp.join(dataset_dir, name))]
    for split, files in expected_files(spec).items():
        names = {name for *_, name in files}
        for modality in MODALITIES:
            try:
                present = set(os.listdir(osp.join(dataset_dir, split, modality)))
            except OSError:
                present = set()
            missing += [f"{split}/{modality}/{n}" for n in sorted(names - present)]
    if missing:
        return f"{len(missing)} file(s) missing, e.g. {missing[0]}"
    return ""


def is_complete(dataset_dir: str, spec: SyntheticSpec) -> bool:
    """True when ``dataset_dir`` holds the tree ``spec`` describes (spec.json + every file)."""
    return not damage(dataset_dir, spec)


def _record_files(spec: SyntheticSpec) -> tuple[str, ...]:
    return (IDENTITY_FILE, CUE_FILE) if spec.cue == "localized" else (IDENTITY_FILE,)


def read_cues(dataset_dir: str) -> dict[str, Any] | None:
    """The ``cues.json`` of a localized tree, or None when the tree has none (spread cue).

    ``{"patch_size": P, "grid": [rows, cols], "modalities": [...], "cues": {"<split>/<name>":
    [[cell, ...] per modality]}}`` with row-major cell indices of the patch grid.
    """
    path = osp.join(dataset_dir, CUE_FILE)
    if not osp.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    missing = {"patch_size", "grid", "modalities", "cues"} - set(record)
    if missing:
        raise ValueError(f"{path}: missing key(s) {sorted(missing)}")
    return record


def _distractor_attrs(spec: SyntheticSpec, attrs: np.ndarray, split: str, pid: int, cam: int,
                      k: int) -> np.ndarray:
    """Attribute triples ``(spec.distractors, M)`` of the other identities of ``split`` shown in
    sample ``(pid, cam, k)``: distinct, drawn from their own stream (the other draws of the
    sample, and every tree without distractors, stay as they were)."""
    if not spec.distractors:
        return np.zeros((0, len(MODALITIES)), np.int64)
    pool = np.array([q for q in split_pids(spec)[split] if q != pid])
    rng = render.seeded_rng(spec.seed, TAG_DISTRACTOR, pid, cam, k)
    return attrs[rng.choice(pool, spec.distractors, replace=False) - 1]


def _write_tree(out_dir: str, spec: SyntheticSpec, progress: bool) -> None:
    """Render every sample of ``spec`` into ``out_dir`` (which must be a fresh folder).

    Serial on purpose: the default tree takes ~4-5 s of CPU, and every sample has its own seed,
    so the bytes would not change if this were split across processes.
    """
    from tqdm import tqdm

    attrs = identity_attributes(spec)
    cams = render.camera_params(spec)
    cam_params = [{key: v[c] for key, v in cams.items()} for c in range(spec.num_cameras)]
    files = expected_files(spec)
    for split in SPLITS:
        for modality in MODALITIES:
            os.makedirs(osp.join(out_dir, split, modality))
    cues: dict[str, list[list[int]]] = {}
    with tqdm(total=sum(map(len, files.values())), desc=f"generating {DATASET_DIR}",
              unit="sample", disable=not progress, leave=False) as bar:
        for split in SPLITS:
            for pid, cam, k, name in files[split]:
                rng = render.seeded_rng(spec.seed, render.TAG_IMG, pid, cam, k)
                if spec.cue == "localized":
                    arr, cells = localized.render_localized_sample(
                        spec, attrs[pid - 1], cam_params[cam], rng,
                        _distractor_attrs(spec, attrs, split, pid, cam, k))
                    cues[f"{split}/{name}"] = cells.tolist()
                else:
                    arr = render.render_sample(spec, attrs[pid - 1], cam_params[cam], rng)
                for modality, pixels in zip(MODALITIES, arr):
                    Image.fromarray(pixels).save(osp.join(out_dir, split, modality, name),
                                                 quality=spec.jpeg_quality)
                bar.update(1)
    identities = {f"{pid:06d}": {"split": split, **dict(zip(MODALITIES, map(int, attrs[pid - 1])))}
                  for split, pids in split_pids(spec).items() for pid in pids}
    with open(osp.join(out_dir, IDENTITY_FILE), "w", encoding="utf-8") as f:
        json.dump(identities, f, indent=0)
    if spec.cue == "localized":
        with open(osp.join(out_dir, CUE_FILE), "w", encoding="utf-8") as f:
            json.dump({"patch_size": spec.patch_size, "grid": list(spec.grid),
                       "modalities": list(MODALITIES), "cues": cues}, f)
    with open(osp.join(out_dir, SPEC_FILE), "w", encoding="utf-8") as f:   # written last
        json.dump(_spec_record(spec), f, indent=2)


def ensure_generated(root: str | os.PathLike = "",
                     spec: SyntheticSpec | Mapping[str, Any] | None = None,
                     progress: bool = True) -> str:
    """Generate ``spec``'s folder :func:`spec_folder` ``(root, spec)`` unless it is complete;
    returns the folder.

    Generation writes into a temporary folder beside the target and swaps it in with
    ``os.replace``; on any error the temporary folder is removed and an existing tree is left
    untouched. A lock file per spec (``filelock``) serialises concurrent processes generating
    the same spec; the second one reuses what the first generated. Other specs' folders are
    never touched.
    """
    spec = default_spec() if spec is None else as_spec(spec)
    target = spec_folder(root, spec)
    if is_complete(target, spec):
        return target
    parent = osp.dirname(target)
    os.makedirs(parent, exist_ok=True)
    key = osp.basename(target)
    with FileLock(osp.join(parent, f".{key}.lock")):
        reason = damage(target, spec) if osp.lexists(target) else ""
        if osp.lexists(target) and not reason:
            return target
        counts = (f"{spec.num_train_ids} train + {spec.num_test_ids} test ids, "
                  f"{spec.num_cameras} cameras, {spec.images_per_camera} images/id/camera, "
                  f"{spec.height}x{spec.width}")
        if reason:
            logger.warning("regenerating the damaged copy %s (%s): %s", target, reason, counts)
        else:
            logger.info("generating %s (%s)", target, counts)
        tmp = tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=parent)
        try:
            _write_tree(tmp, spec, progress)
            _swap_in(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _swap_in(tmp: str, target: str) -> None:
    """Move ``tmp`` to ``target``; an existing target is moved aside first, then deleted."""
    if not osp.lexists(target):
        os.replace(tmp, target)
        return
    old = f"{osp.join(osp.dirname(target), '.' + osp.basename(target))}.old-{uuid.uuid4().hex[:8]}"
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    if osp.isdir(old) and not osp.islink(old):
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.remove(old)
