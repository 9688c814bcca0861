"""How a feature file was made, and whether two feature files can be compared.

Distances between features mean something only when both sides come from the same weights,
the same preprocessing and the same head: an SIE model with and without its camera term, or
L2-normalised against raw features, gives distances off by orders of magnitude without any
error. :func:`record` writes what decides the features into the feature file (``info
["provenance"]``); :func:`provenance_of` reads it back from a feature set or store;
:func:`check` (:func:`check_comparable` for two feature sets or stores) compares a query's
record with a gallery's before a search and refuses a difference (or, when the user explicitly
allows it, warns).

Compared (:data:`COMPARED`): model, checkpoint content (SHA-256 prefix, so a copied or renamed
checkpoint still matches), normalisation, camera term, input size, modalities, feature
dimension and test feature. Recorded only: checkpoint path, backend (PyTorch or ONNX Runtime;
the export's parity check bounds their difference) and where the camera ids came from.
"""
from __future__ import annotations

import hashlib
import logging
import os.path as osp
from typing import Any

from ..errors import SDTPSError

__all__ = ["ProvenanceError", "COMPARED", "FORMAT", "CAMERA_TERMS", "file_digest", "record",
           "provenance_of", "differences", "check", "check_comparable", "check_missing"]

logger = logging.getLogger(__name__)

FORMAT = 1
#: fields that must be equal for query and gallery features to be comparable
COMPARED: tuple[str, ...] = ("model", "checkpoint_sha256", "normalized", "camera_term",
                             "input_size", "modalities", "feature_dim", "test_feature")
#: ``camera_term``: the SIE camera embedding was added (camera ids given), left out (an SIE
#: model without camera ids), or the model has none
CAMERA_TERMS: tuple[str, ...] = ("used", "off", "none")
_DIGEST_CHARS = 16


class ProvenanceError(SDTPSError, ValueError):
    """Query and gallery features were made differently (or a record is malformed)."""


def file_digest(path: str, chunk: int = 1 << 20) -> str:
    """The first 16 hex digits of the SHA-256 of ``path``'s content."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()[:_DIGEST_CHARS]


def record(extractor: Any, checkpoint: str, feature_dim: int, cameras_given: bool,
           camera_source: str = "", backend: str = "torch") -> dict[str, Any]:
    """The provenance of features made by ``extractor`` (a
    :class:`~torchreid_sdtps.deploy.extractor.FeatureExtractor`) from ``checkpoint``;
    ``cameras_given``: whether camera ids reached the model, ``camera_source`` where they came
    from (e.g. ``"dataset labels"``, ``"--cam 2"``)."""
    meta = extractor.meta
    sie = bool(getattr(extractor, "num_cameras", 0))
    return {
        "format": FORMAT,
        "model": str(meta["model_name"]),
        "checkpoint": osp.abspath(checkpoint) if checkpoint else "",
        "checkpoint_sha256": file_digest(checkpoint) if checkpoint else "",
        "normalized": bool(extractor.normalize),
        "camera_term": ("used" if cameras_given else "off") if sie else "none",
        "camera_source": camera_source if (sie and cameras_given) else "",
        "input_size": [int(meta["height"]), int(meta["width"])],
        "modalities": list(extractor.modalities),
        "feature_dim": int(feature_dim),
        "test_feature": str(meta.get("model_kwargs", {}).get("test_feature", "")),
        # "present": an absent modality is left out of the match (models/missing.py)
        "missing_match": str(meta.get("model_kwargs", {}).get("missing_match", "plain")),
        "backend": backend,
    }


def differences(query: dict[str, Any], gallery: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{field: (query value, gallery value)}`` of the :data:`COMPARED` fields that differ."""
    return {k: (query.get(k), gallery.get(k)) for k in COMPARED
            if query.get(k) != gallery.get(k)}


def _describe(diff: dict[str, tuple[Any, Any]], names: tuple[str, str]) -> str:
    return "; ".join(f"{k}: {names[0]} {q!r} vs {names[1]} {g!r}" for k, (q, g) in diff.items())


def check(query: dict[str, Any] | None, gallery: dict[str, Any] | None,
          names: tuple[str, str] = ("query", "gallery"), allow_mismatch: bool = False) -> list[str]:
    """Refuse (:class:`ProvenanceError`) query and gallery features made differently; returns
    the warnings given instead (with ``allow_mismatch``, or when a side has no record: files
    written before provenance was recorded)."""
    warnings = []
    for rec, name in ((query, names[0]), (gallery, names[1])):
        if rec is None:
            warnings.append(f"{name}: provenance unknown (a feature file written before "
                            "provenance was recorded); cannot check that it matches the other "
                            "side; re-extract it to be sure")
    if query is not None and gallery is not None:
        diff = differences(query, gallery)
        if diff:
            msg = f"{names[0]} and {names[1]} features were made differently ({_describe(diff, names)})"
            if not allow_mismatch:
                raise ProvenanceError(f"{msg}; their distances are not comparable: extract both "
                                      "with the same checkpoint and options (or pass "
                                      "--allow-mismatch to search anyway)")
            warnings.append(msg + "; searching anyway (--allow-mismatch)")
    for w in warnings:
        logger.warning("%s", w)
    return warnings


def provenance_of(features: Any) -> dict[str, Any] | None:
    """The provenance record of a feature set or store (its ``info["provenance"]``); None for
    features without one (files written before it was recorded, bare tensors or arrays)."""
    info = getattr(features, "info", None)
    rec = info.get("provenance") if isinstance(info, dict) else None
    return rec if isinstance(rec, dict) else None


def check_comparable(query: Any, gallery: Any, allow_mismatch: bool = False,
                     names: tuple[str, str] = ("query", "gallery")) -> list[str]:
    """:func:`check` on the records of two feature sets or stores: refuse to compare features
    made differently; returns the warnings given instead."""
    return check(provenance_of(query), provenance_of(gallery), names, allow_mismatch)


def check_missing(query: Any, gallery: Any, names: tuple[str, str] = ("query", "gallery")
                  ) -> None:
    """Refuse a search in which a sample marked as lacking a modality (``info["missing_
    modalities"]``: one list of modality names per row, written by ``extract_samples`` for
    ``None`` inputs, or by hand) would be compared through a zero block: only features of a
    model with ``sdtps.missing_match "present"`` (recorded here) leave an absent modality out
    of the match (``models/missing.py``)."""
    from .features import MISSING_KEY

    for fs, name in ((query, names[0]), (gallery, names[1])):
        info = getattr(fs, "info", None)
        marks = (info.get(MISSING_KEY) if isinstance(info, dict) else None) or []
        row = next((i for i, m in enumerate(marks) if m), None)
        if row is None:
            continue
        match = (provenance_of(fs) or {}).get("missing_match", "plain")
        if match != "present":
            raise ProvenanceError(
                f"{name}: sample {row} lacks modality {list(marks[row])}, and its features come "
                f"from a model with sdtps.missing_match {match!r}, which holds a zero block for an "
                "absent modality: the distances would compare that block with the other side's. "
                "Extract with a checkpoint built with sdtps.missing_match 'present' (the demo's "
                "default), which leaves absent modalities out of the match")
