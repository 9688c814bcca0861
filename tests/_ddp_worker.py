"""One rank of the 2-process DDP checks of tests/test_distributed.py (gloo, CPU).

Started by the test with ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` set (no
torchrun agent: faster). ``python _ddp_worker.py OUT_DIR``. With ``WORLD_SIZE=1`` (no env) the
same code is the single-process reference. Writes, from rank 0 only, ``OUT_DIR/result.pt``:
the parameters after :data:`STEPS` training steps and the evaluation results; both ranks
call ``save_model`` into ``OUT_DIR/save_rank<rank>`` (only rank 0 may write).

``python _ddp_worker.py --losses OUT_DIR``: :func:`losses_main`, the global-batch losses alone
(no model), each rank writing ``OUT_DIR/losses_rank<rank>.pt``.
"""
from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import torch
from torch.utils.data import DataLoader, Dataset

from torchreid_sdtps import config, dist
from torchreid_sdtps.checkpoint import unwrap_model
from torchreid_sdtps.engine import ImageSDTPSEngine, ddp
from torchreid_sdtps.losses import CrossModalAlignmentLoss, GlobalBatchLoss, SoftMarginTripletLoss
from torchreid_sdtps.models import sync_bn
from torchreid_sdtps.models.net import sdtps_vit_tiny

P, K, STEPS, SIZE = 4, 2, 3, (64, 32)  # global batch B = P x K = 8, two ranks x 4


def global_batch(step: int) -> dict:
    """The global P x K batch of ``step`` (the same on every rank and in the reference)."""
    g = torch.Generator().manual_seed(100 + step)
    return {"img": torch.randn(P * K, 3, 3, *SIZE, generator=g),
            "pid": torch.arange(P).repeat_interleave(K),
            "cam_label": torch.randint(0, 2, (P * K,), generator=g)}


class ToySplit(Dataset):
    """A seeded evaluation split of ``n`` samples (torchreid's item dicts)."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.img = torch.randn(n, 3, 3, *SIZE, generator=g)
        self.pid = torch.randint(0, 5, (n,), generator=g)
        self.cam = torch.randint(0, 2, (n,), generator=g)
        self.camid = self.cam + 2 * (seed % 2)  # query and gallery cameras differ

    def __len__(self) -> int:
        return len(self.pid)

    def __getitem__(self, i: int) -> dict:
        return {"img": self.img[i], "pid": int(self.pid[i]), "camid": int(self.camid[i]),
                "cam_label": int(self.cam[i])}


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_distributed()
    world, rank = dist.world_size(), dist.rank()
    torch.manual_seed(0)
    model = sdtps_vit_tiny(num_classes=P, loss="triplet", pretrained=False, img_size=SIZE,
                           num_cameras=2, drop_path=0.0)
    if world > 1:
        model = sync_bn.convert_sync_batchnorm(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    test_loader = {"toy": {"query": DataLoader(ToySplit(7, 1), batch_size=3),
                           "gallery": DataLoader(ToySplit(23, 2), batch_size=3)}}
    dm = SimpleNamespace(train_loader=None, test_loader=test_loader, num_train_pids=P,
                         sources=["toy"], targets=["toy"])
    engine = ddp.make_engine(ImageSDTPSEngine, config.get_default_config(), dm,
                             ddp.wrap_model(model), optimizer, use_gpu=False,
                             weight_ratio=0.0, weight_align=0.5)
    engine.set_model_mode("train")
    share = P * K // world
    losses = []
    for step in range(STEPS):
        batch = global_batch(step)
        local = {k: v[rank * share:(rank + 1) * share] for k, v in batch.items()}
        losses.append(engine.forward_backward(local))
    engine.test(ranks=[1, 5, 10])
    engine.save_model(0, 0.0, os.path.join(out_dir, f"save_rank{rank}"))
    if dist.is_main_process():
        plain = unwrap_model(engine.model)
        torch.save({"params": {n: p.detach() for n, p in plain.named_parameters()},
                    "buffers": {n: b for n, b in plain.named_buffers()},
                    "losses": losses, "results": engine.last_results["toy"],
                    "world": world}, os.path.join(out_dir, "result.pt"))
    dist.cleanup()


def loss_inputs() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Global P x K inputs of each batch-mining loss: name -> (inputs, pids)."""
    g = torch.Generator().manual_seed(7)
    pids = torch.arange(P).repeat_interleave(K)
    return {"soft_margin_triplet": (torch.randn(P * K, 16, generator=g), pids),
            "alignment": (torch.randn(P * K, 3, 5, 16, generator=g), pids)}


def loss_criteria() -> dict:
    """The criteria of :func:`loss_inputs` (DeMo's soft-margin triplet, the alignment loss)."""
    return {"soft_margin_triplet": SoftMarginTripletLoss(),
            "alignment": CrossModalAlignmentLoss(margin=0.2, center=True)}


def losses_main(out_dir: str) -> None:
    """Every loss of :func:`loss_criteria` wrapped in GlobalBatchLoss on this rank's share;
    saves the loss value and the gradient of the share's inputs."""
    torch.set_num_threads(1)
    dist.init_distributed()
    world, rank = dist.world_size(), dist.rank()
    out = {}
    for name, crit in loss_criteria().items():
        x, pids = loss_inputs()[name]
        share = len(pids) // world
        local = x[rank * share:(rank + 1) * share].clone().requires_grad_(True)
        loss = GlobalBatchLoss(crit)(local, pids[rank * share:(rank + 1) * share])
        loss.backward()
        out[name] = {"loss": loss.detach(), "grad": local.grad.detach()}
    os.makedirs(out_dir, exist_ok=True)
    torch.save({"world": world, "rank": rank, "losses": out},
               os.path.join(out_dir, f"losses_rank{rank}.pt"))
    dist.cleanup()


if __name__ == "__main__":
    if sys.argv[1] == "--losses":
        losses_main(sys.argv[2])
    else:
        main(sys.argv[1])
