"""Statistics and identifiability of the synthetic tri-modal data set (``synthetic_msreid``).

Generates the default spec (or one given by ``--set key=value``) into a fresh temporary root
(or ``--root``), times the generation, and prints Markdown tables:

* counts (ids, samples and images per split, cameras);
* the raw-pixel nearest-neighbour baseline (non-learned) per modality set, evaluated with
  torchreid's ``evaluate_rank`` on the test split (query = gallery = test);
* the attribute oracle: the ceiling of a model that reads a modality set's attributes perfectly;
* with ``--probe EPOCHS``: a small learned probe (4-layer CNN shared by the modalities, ID loss
  on the train split, 64x32 input) ranked on the test split from each modality's feature alone
  and from the three concatenated: evidence that the data is learnable and needs all three.

    python benchmarks/synthetic_baseline.py                 # default spec, seed 0
    python benchmarks/synthetic_baseline.py --seeds 0 1 2   # mean +- std over seeds
    python benchmarks/synthetic_baseline.py --probe 6       # + learned probe (~1 min of CPU)
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore", message="Cython evaluation")  # before torchreid is imported
from synthetic_analysis import attribute_oracle, rank_scores, raw_pixel_baseline  # noqa: E402

from torchreid_sdtps.data import synthetic as syn  # noqa: E402


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if "," in text:
        return tuple(float(t) for t in text.split(","))
    return text


def _table(rows: dict[str, list[dict[str, float]]], keys: list[str]) -> str:
    head = "| modalities | " + " | ".join(keys) + " |"
    lines = [head, "|" + "---|" * (len(keys) + 1)]
    for name, runs in rows.items():
        cells = []
        for k in keys:
            vals = np.array([r[k] for r in runs])
            pct = k in ("mAP", "rank1", "rank5", "unique_fraction")
            scale, fmt = (100.0, "{:.1f}") if pct else (1.0, "{:.2f}")
            cell = fmt.format(scale * vals.mean())
            if len(vals) > 1:
                cell += " ± " + fmt.format(scale * vals.std())
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chance(spec: syn.SyntheticSpec, seed: int = 0) -> dict[str, float]:
    """Rank scores of random distances on the test split (the floor)."""
    files = syn.expected_files(spec)["test"]
    pids = np.array([f[0] for f in files])
    cams = np.array([f[1] for f in files])
    dist = np.random.default_rng(seed).random((len(files), len(files)))
    return rank_scores(dist, pids, cams)


def learned_probe(folder: str, epochs: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """Train a small CNN (shared by the modalities, one BN-neck ID head on the concatenation)
    with label-smoothed cross-entropy on the train split; rank the test split with each
    modality's L2-normalised feature alone and with the three concatenated."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from PIL import Image

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    h, w = 64, 32

    def load(split: str):
        names = sorted(os.listdir(os.path.join(folder, split, syn.MODALITIES[0])))
        def read(m: str, n: str) -> np.ndarray:
            with Image.open(os.path.join(folder, split, m, n)) as im:
                return np.asarray(im.convert("RGB").resize((w, h), Image.Resampling.BILINEAR))

        arr = np.stack([np.stack([read(m, n) for m in syn.MODALITIES]) for n in names])
        x = torch.from_numpy(arr).permute(0, 1, 4, 2, 3).float().div(255).sub(0.5).div(0.25)
        return x, np.array([int(n[:6]) for n in names]), np.array([int(n[10]) - 1 for n in names])

    x_tr, p_tr, _ = load("train")
    x_te, p_te, c_te = load("test")
    labels = {p: i for i, p in enumerate(sorted(set(p_tr)))}
    y_tr = torch.tensor([labels[p] for p in p_tr])

    def block(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o),
                             nn.ReLU(), nn.MaxPool2d(2))

    trunk = nn.Sequential(block(3, 32), block(32, 64), block(64, 96), block(96, 128),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
    m = len(syn.MODALITIES)
    head = nn.Sequential(nn.BatchNorm1d(m * 128), nn.Linear(m * 128, len(labels)))
    params = [*trunk.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, 1e-3, weight_decay=5e-4)

    def feats(x: torch.Tensor) -> torch.Tensor:
        return trunk(x.flatten(0, 1)).view(x.shape[0], m, -1)

    for _ in range(epochs):
        trunk.train()
        head.train()
        for idx in torch.randperm(len(x_tr)).split(32):
            x = x_tr[idx]
            dy, dx = (int(v) for v in rng.integers(-3, 4, 2))
            x = torch.roll(x, (dy, dx), (3, 4))          # same shift/flip for all modalities
            if rng.random() < 0.5:
                x = x.flip(4)
            loss = F.cross_entropy(head(feats(x).flatten(1)), y_tr[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
    trunk.eval()
    with torch.no_grad():
        f = F.normalize(torch.cat([feats(b) for b in x_te.split(128)]), dim=2)
    out = {}
    for name, idx in [*((mod, [i]) for i, mod in enumerate(syn.MODALITIES)),
                      ("+".join(syn.MODALITIES), list(range(m)))]:
        g = f[:, idx].flatten(1) / len(idx) ** 0.5
        out[name] = rank_scores((2 - 2 * g @ g.T).numpy(), p_te, c_te)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=None, help="data root (default: a fresh temp dir)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--size", type=int, nargs=2, default=[32, 16], metavar=("H", "W"),
                        help="thumbnail size of the raw-pixel baseline")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="spec fields, e.g. --set num_test_ids=20 noise=0.05,0.05,0.05")
    parser.add_argument("--probe", type=int, default=0, metavar="EPOCHS",
                        help="also train the small learned probe for EPOCHS epochs (0: off)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    fields = {k: _parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}

    raw_runs: dict[str, list] = {}
    oracle_runs: dict[str, list] = {}
    probe_runs: dict[str, list] = {}
    chance_runs: dict[str, list] = {"random distances": []}
    times, probe_times = [], []
    for seed in args.seeds:
        spec = syn.SyntheticSpec(**{**fields, "seed": seed})
        root = args.root or tempfile.mkdtemp(prefix="synthetic_baseline-")
        try:
            t0 = time.perf_counter()
            folder = syn.ensure_generated(root, spec, progress=False)
            times.append(time.perf_counter() - t0)
            for name, res in raw_pixel_baseline(folder, size=tuple(args.size)).items():
                raw_runs.setdefault(name, []).append(res)
            if args.probe:
                t0 = time.perf_counter()
                for name, res in learned_probe(folder, args.probe, seed).items():
                    probe_runs.setdefault(name, []).append(res)
                probe_times.append(time.perf_counter() - t0)
        finally:
            if args.root is None:
                shutil.rmtree(root, ignore_errors=True)
        for name, res in attribute_oracle(spec).items():
            oracle_runs.setdefault(name, []).append(res)
        chance_runs["random distances"].append(chance(spec, seed))

    n_tr, n_te = spec.num_train_ids, spec.num_test_ids
    per_id = spec.num_cameras * spec.images_per_camera
    print(f"## synthetic_msreid, seeds {args.seeds}\n")
    print("spec:", {k: v for k, v in spec.to_dict().items() if k != "seed"}, "\n")
    print("| split | ids | samples | images (x3 modalities) | cameras |\n|---|---|---|---|---|")
    for split, n in (("train", n_tr), ("query = gallery (test)", n_te)):
        print(f"| {split} | {n} | {n * per_id} | {3 * n * per_id} | {spec.num_cameras} |")
    print(f"\ngeneration time (s, fresh tree, wall clock): {np.mean(times):.2f} "
          f"(min {np.min(times):.2f}, max {np.max(times):.2f})\n")
    print(f"### raw-pixel NN baseline ({args.size[0]}x{args.size[1]} thumbnails), test split, %\n")
    print(_table(raw_runs, ["mAP", "rank1", "rank5"]))
    print("\n### attribute oracle (perfect attribute reader), test split\n")
    print(_table(oracle_runs, ["mAP", "rank1", "ids_per_value", "unique_fraction"]))
    print("\n### chance, test split, %\n")
    print(_table(chance_runs, ["mAP", "rank1", "rank5"]))
    if args.probe:
        print(f"\n### learned probe ({args.probe} epochs, {np.mean(probe_times):.0f} s per seed), "
              "test split, %\n")
        print(_table(probe_runs, ["mAP", "rank1", "rank5"]))


if __name__ == "__main__":
    main()
