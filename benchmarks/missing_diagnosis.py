#!/usr/bin/env python
"""Where the mAP goes when one modality is missing: each branch of a trained checkpoint ranked
with one modality zeroed in query and gallery (issue 25, docs/engine.md "Missing modalities").

For each setting (none, RGB, NI, TI, the pairs) and with the model's absence mask off / on
(``sdtps.mask_missing``), from one forward pass per setting:

* **branch mAP**: the ranking feature (``concat``), ``ori`` alone, ``sdtps`` alone, and each
  present modality's ``ori`` block alone (after the BNNecks, as evaluation ranks);
* **mixing**: relative change ``|f_m(missing) - f_m(all)| / |f_m(all)|`` of the *present*
  modalities' ``ori`` and ``sdtps`` features (before the necks) when another is zeroed;
* **match**: the share of the squared distance that comes from the absent modality's blocks
  (mask off: a blank image's features, camera term included), and the mAP with the match
  restricted to the present blocks, raw and per-modality normalised
  (:func:`torchreid_sdtps.models.missing.presence_match_feature`).

    python benchmarks/missing_diagnosis.py --weights log/synthetic_demo/model/model.pth.tar-15 \\
        --root reid-data [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np
import torch

from torchreid_sdtps.choices import MISSING_SETTINGS
from torchreid_sdtps.data.samples import dataset_samples
from torchreid_sdtps.deploy.extractor import FeatureExtractor, synthetic_spec_of
from torchreid_sdtps.engine.evaluation import parse_setting, rank_features
from torchreid_sdtps.models.missing import presence_match_feature
from torchreid_sdtps.utils.modalities import zero_modalities

SETTINGS = MISSING_SETTINGS


def _map(qf: torch.Tensor, pids: Any, camids: Any) -> float:
    """mAP (%) of query = gallery = the test split under torchreid's protocol."""
    _, mean_ap, _ = rank_features((qf, pids, camids), (qf, pids, camids), "euclidean",
                                  False, False)
    return round(100 * float(mean_ap), 1)


@torch.no_grad()
def _features(model: Any, imgs: torch.Tensor, cams: torch.Tensor, zeroed: tuple[int, ...],
              mask: bool, batch: int = 64) -> dict[str, torch.Tensor]:
    """Pre-neck ``ori``/``sdtps`` (B, M, C) and post-neck (B, M*C) with ``zeroed`` removed."""
    model.mask_missing = mask
    out: dict[str, list[torch.Tensor]] = {"ori": [], "sdtps": [], "ori_bn": [], "sdtps_bn": []}
    for start in range(0, len(imgs), batch):
        x = zero_modalities(imgs[start:start + batch], zeroed)
        f = model.forward_features(x, cams[start:start + batch])
        for k in ("ori", "sdtps"):
            out[k].append(f[k].unflatten(1, (model.num_modalities, -1)))
        out["ori_bn"].append(model.neck_ori(f["ori"]))
        out["sdtps_bn"].append(model.neck_sdtps(f["sdtps"]))
    return {k: torch.cat(v) for k, v in out.items()}


def diagnose(weights: str, root: str) -> dict[str, Any]:
    """The three measurements above for every setting and mask state."""
    fx = FeatureExtractor(weights, device="cpu")
    model = fx.model.eval()
    paths, pids, camids, cam_labels = dataset_samples("synthetic_msreid", "query", root,
                                                      synthetic_spec_of(fx.meta))
    imgs = torch.cat(list(fx.batches(paths)))
    pids, camids = np.asarray(pids), np.asarray(camids)
    cams = torch.as_tensor(cam_labels)
    m, mods = model.num_modalities, fx.modalities
    out: dict[str, Any] = {}
    for mask in (False, True):
        full = _features(model, imgs, cams, (), mask)
        for setting in SETTINGS:
            zeroed = parse_setting(setting, mods)
            f = full if not zeroed else _features(model, imgs, cams, zeroed, mask)
            keep = [i for i in range(m) if i not in zeroed]
            ori, sdtps = f["ori_bn"], f["sdtps_bn"]
            concat = torch.cat([ori, sdtps], 1)
            blocks = concat.unflatten(1, (2, m, -1))  # (B, 2, M, C)
            present = torch.zeros(len(imgs), m, dtype=torch.bool)
            present[:, keep] = True
            row: dict[str, Any] = {
                "concat": _map(concat, pids, camids), "ori": _map(ori, pids, camids),
                "sdtps": _map(sdtps, pids, camids),
                **{f"ori_{mods[i]}": _map(blocks[:, 0, i], pids, camids) for i in keep},
                "restricted": _map(blocks[:, :, keep].flatten(1), pids, camids),
                "restricted_normalised": _map(
                    presence_match_feature(concat, present, blocks.shape[-1]), pids, camids),
                "ori_restricted_normalised": _map(
                    presence_match_feature(ori, present, blocks.shape[-1]), pids, camids),
            }
            if zeroed:
                absent = blocks[:, :, list(zeroed)].flatten(1)
                d_abs = torch.cdist(absent, absent).square()
                d_all = torch.cdist(concat, concat).square()
                row["absent_share_of_distance"] = round(float(d_abs.sum() / d_all.sum()), 3)
                for k in ("ori", "sdtps"):
                    change = ((f[k][:, keep] - full[k][:, keep]).norm(dim=-1)
                              / full[k][:, keep].norm(dim=-1).clamp_min(1e-12))
                    row[f"mixing_{k}"] = round(float(change.mean()), 3)
            out[f"{setting} mask={'on' if mask else 'off'}"] = row
    model.mask_missing = bool(fx.meta.get("model_kwargs", {}).get("mask_missing", False))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True)
    p.add_argument("--root", required=True, help="the data root the checkpoint was trained on")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    res = diagnose(args.weights, args.root)
    cols = sorted({k for r in res.values() for k in r}, key=lambda k: (k.startswith("mix"), k))
    print("| setting | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, row in res.items():
        print(f"| {name} | " + " | ".join(str(row.get(c, "")) for c in cols) + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
