#!/usr/bin/env python
"""Can the retrieval loss teach SDTPS to keep a patch that the guide cosines rank last?

A toy for ``docs/model.md`` ("Why the selection missed the cue"): per sample and modality 16
patches share a common component (the clutter), one patch (index 5) is the evidence, unlike
the rest; the guide is the patches' mean, so the evidence has the lowest cosine to it. The
SDTPS block (K = 4, N_c = 2) is trained alone with Adam so that the mean of its aggregated
tokens equals the evidence; the table gives how often the evidence patch is kept afterwards
(eval, hard top-K), per ``beta`` and training selection.

    python benchmarks/selection_toy.py                  # ~1 min on one core
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from torchreid_sdtps.models.sdtps import SDTPS

__all__ = ["kept_share", "main"]


def kept_share(selection: str, beta: float, seed: int, steps: int = 400, lr: float = 1e-2
               ) -> float:
    """Share of (sample, modality) pairs whose evidence patch is kept after training."""
    torch.manual_seed(seed)
    b, m, n, c = 8, 3, 16, 16
    block = SDTPS(c, 2, num_modalities=m, ratio=0.25, beta=beta, selection=selection).train()
    common = torch.randn(c) * 2
    patches = common + torch.randn(b, m, n, c)
    cue = torch.randn(c) * 2
    patches[:, :, 5] = cue + 0.1 * torch.randn(b, m, c)
    guide = patches.mean(2)
    opt = torch.optim.Adam(block.parameters(), lr=lr)
    for _ in range(steps):
        out = block(patches, guide)
        loss = (out.tokens[:, :, :-1].mean(2) - cue).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    block.eval()
    with torch.no_grad():
        return float(block(patches, guide).mask[:, :, 5].mean())


def main(argv: Sequence[str] | None = None) -> dict[tuple[float, str], list[float]]:
    """Print the table; return ``{(beta, selection): [kept share per seed]}``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--betas", default="0.25,0.1,0.05,0.0")
    parser.add_argument("--selections", default="topk,ste")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = {}
    print("| beta | selection | evidence patch kept, per seed |\n| --- | --- | --- |")
    for beta in (float(x) for x in args.betas.split(",")):
        for sel in args.selections.split(","):
            out[beta, sel] = [kept_share(sel, beta, s, args.steps) for s in range(args.seeds)]
            print(f"| {beta} | {sel} | {', '.join(f'{v:.2f}' for v in out[beta, sel])} |",
                  flush=True)
    return out


if __name__ == "__main__":
    main()
