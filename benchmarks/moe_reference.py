"""An HDM + ATM-style fusion (DeMo, AAAI 2025) as a reference for ``benchmarks/fusion_study.py``.

The package has no HDM/ATM/MoE code (SDTPS replaces them; configs refuse them). To measure what
SDTPS is claimed to replace, this benchmark-only module rebuilds DeMo's two fusion stages from
the paper and the facts of its public code (written here, not copied), at the width of the
backbone it is put on:

* **HDM** (hierarchical decoupling): one learnable query per non-empty subset of modalities
  (3 modality-specific: R, N, T; 4 shared: RN, RT, NT, RNT), each with its own multi-head
  cross-attention (``C // 64`` heads, dropout 0.1, as DeMo sets them) over the tokens of its
  subset: the global feature of each modality followed by its patch tokens. Output: 7 features.
* **ATM** (attention-triggered mixture of experts, DeMo's ``MoM``): the 7 features are split
  into ``heads`` (4 in DeMo's configs) chunks; per head and per feature an expert
  ``Linear -> QuickGELU -> BatchNorm`` transforms its chunk; the gates come from a cross
  attention whose query is the concatenation of the 7 features reduced to C
  (``Linear -> QuickGELU -> BatchNorm``) and whose keys are the 7 features, one softmax over
  the experts per head. Output: the gated expert outputs concatenated (7 C); the regulariser
  DeMo adds is 0 (``reg_weight=0``), so there is none here.

:class:`MoEReferenceNet` puts the two on the package's backbone and guide (an ``SDTPSNet``
built with ``use_sdtps=False``: backbone + global-local guide + ``ori`` BNNeck), in place of
SDTPS: ``moe`` BNNeck + classifier on the 7 C feature (as DeMo's ``bottleneck_moe`` /
``classifier_moe``), training outputs ``[moe, ori]`` like the SDTPS model's ``[sdtps, ori]``,
and the eval feature ``concat = [ori, moe]`` (DeMo ranks with ``cat([ori, moe_feat])``).
"""
from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import nn

from torchreid_sdtps import compat
from torchreid_sdtps.errors import ConfigError
from torchreid_sdtps.models import net as _net
from torchreid_sdtps.models.net import BNNeck, SDTPSNet

__all__ = ["HDM", "ATM", "MoEReferenceNet", "subsets", "fusion_parameters", "MODELS",
           "register_models"]


def subsets(num_modalities: int) -> list[tuple[int, ...]]:
    """Non-empty modality subsets in DeMo's expert order: singletons, then pairs, ..., all."""
    return [s for k in range(1, num_modalities + 1)
            for s in itertools.combinations(range(num_modalities), k)]


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)`` (CLIP's GELU approximation, which DeMo's fusion uses)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class HDM(nn.Module):
    """Hierarchical decoupling: one query + cross-attention per modality subset.

    ``forward(patches (B, M, N, C), glob (B, M, C)) -> (B, E, C)`` with ``E = 2**M - 1``.
    """

    def __init__(self, dim: int, num_modalities: int = 3, heads: int | None = None,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.subsets = subsets(num_modalities)
        heads = heads or max(1, dim // 64)
        self.queries = nn.Parameter(dim ** -0.5 * torch.randn(len(self.subsets), dim))
        self.attn = nn.ModuleList(nn.MultiheadAttention(dim, heads, dropout=dropout,
                                                        batch_first=True)
                                  for _ in self.subsets)

    def forward(self, patches: torch.Tensor, glob: torch.Tensor) -> torch.Tensor:
        b = patches.shape[0]
        tokens = torch.cat([glob.unsqueeze(2), patches], dim=2)  # (B, M, 1 + N, C)
        out = []
        for query, attn, subset in zip(self.queries, self.attn, self.subsets):
            kv = tokens[:, list(subset)].flatten(1, 2)            # (B, |S| (1 + N), C)
            q = query.expand(b, 1, -1)
            out.append(attn(q, kv, kv, need_weights=False)[0][:, 0])
        return torch.stack(out, dim=1)


class ATM(nn.Module):
    """Attention-triggered mixture of experts over ``E`` features of width C, ``heads`` chunks.

    The ``heads x E`` experts (``Linear(C/heads, C/heads) -> QuickGELU -> BatchNorm``) run as
    one batched matmul; one BatchNorm1d over all their channels equals one per expert.
    """

    def __init__(self, dim: int, num_experts: int = 7, heads: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"ATM: width {dim} is not divisible into {heads} heads")
        self.heads, self.num_experts, self.head_dim = heads, num_experts, dim // heads
        d = self.head_dim
        self.reduce = nn.Sequential(nn.Linear(num_experts * dim, dim), QuickGELU(),
                                    nn.BatchNorm1d(dim))
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        bound = 1 / math.sqrt(d)  # nn.Linear's default initialisation, per expert
        self.weight = nn.Parameter(torch.empty(heads, num_experts, d, d).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(heads, num_experts, d).uniform_(-bound, bound))
        self.bn = nn.BatchNorm1d(heads * num_experts * d)
        self.act = QuickGELU()

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax over the experts per head: ``(B, heads, E)``."""
        b, e, _ = x.shape
        h, d = self.heads, self.head_dim
        q = self.q(self.reduce(x.flatten(1))).view(b, h, 1, d)
        k = self.k(x).view(b, e, h, d).transpose(1, 2)            # (B, h, E, d)
        return ((q @ k.transpose(-2, -1)) * d ** -0.5).softmax(-1).squeeze(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:           # (B, E, C) -> (B, E * C)
        b, e, _ = x.shape
        h, d = self.heads, self.head_dim
        chunks = x.view(b, e, h, d).transpose(1, 2)               # (B, h, E, d)
        y = torch.einsum("bhei,heoi->bheo", chunks, self.weight) + self.bias
        y = self.bn(self.act(y).flatten(1)).view(b, h, e, d)
        y = y * self.gates(x).unsqueeze(-1)
        return y.transpose(1, 2).flatten(1)                       # DeMo's (E, heads, d) order


class MoEReferenceNet(nn.Module):
    """Backbone + guide + ``ori`` head of ``base`` (an ``SDTPSNet`` without SDTPS) with HDM +
    ATM and a ``moe`` BNNeck in place of SDTPS; the engine-facing interface of ``SDTPSNet``.

    ``test_feature``: ``"concat"`` (``[ori, moe]``), ``"moe"`` or ``"ori"``.
    """

    def __init__(self, base: SDTPSNet, num_classes: int, heads: int = 4,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if base.sdtps is not None:
            raise ValueError("MoEReferenceNet: build the base SDTPSNet with use_sdtps=False "
                             "(the MoE stages take the place of SDTPS)")
        self.base = base
        self.num_modalities, self.loss, self.neck_feat = base.num_modalities, base.loss, base.neck_feat
        self.img_size = base.img_size
        dim = int(base.backbone.out_dim)
        self.hdm = HDM(dim, base.num_modalities, dropout=dropout)
        self.atm = ATM(dim, len(self.hdm.subsets), heads)
        self.neck_moe = BNNeck(len(self.hdm.subsets) * dim, num_classes)
        self.test_feature = "concat"

    @property
    def backbone(self) -> nn.Module:
        return self.base.backbone

    def features(self, x: torch.Tensor, cam_label: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """``ori`` (B, M C) and ``moe`` (B, E C) before their BNNecks."""
        base = self.base
        x = base.as_multimodal(x)
        base._check_input(x)
        b, m = x.shape[:2]
        if cam_label is not None:
            cam_label = torch.as_tensor(cam_label, device=x.device).reshape(-1).repeat_interleave(m)
        cls, patches = base.backbone(x.flatten(0, 1), cam_label)
        cls, patches = cls.unflatten(0, (b, m)), patches.unflatten(0, (b, m))
        glob = base.guide(cls, patches)                           # g' (B, M, C)
        return glob.flatten(1), self.atm(self.hdm(patches, glob))

    def forward(self, x: torch.Tensor, cam_label: torch.Tensor | None = None,
                return_aux: bool = False) -> Any:
        """Train: ``([logits_moe, logits_ori], [moe, ori])``; eval: the ``test_feature``."""
        ori, moe = self.features(x, cam_label)
        if self.training:
            necks = (self.neck_moe, self.base.neck_ori)
            logits = [s for neck, f in zip(necks, (moe, ori)) for s in neck.logits(neck(f))]
            output: Any = logits if self.loss == "softmax" else (logits, [moe, ori])
        else:
            if self.neck_feat == "after":
                ori, moe = self.base.neck_ori(ori), self.neck_moe(moe)
            feats = {"ori": ori, "moe": moe, "concat": None}
            if self.test_feature not in feats:
                raise ValueError(f"MoEReferenceNet: unknown test_feature {self.test_feature!r}; "
                                 f"expected one of {list(feats)}")
            output = feats[self.test_feature]
            if output is None:
                output = torch.cat([ori, moe], dim=1)
        if not return_aux:
            return output
        return output, {"masks": None, "soft_masks": None, "scores": None, "tokens": None,
                        "ratio": None}


def fusion_parameters(model: nn.Module) -> int:
    """Parameters of the fusion part: SDTPS block and token-branch head (``SDTPSNet.sdtps``,
    ``SDTPSNet.head``) or HDM + ATM; 0 without."""
    parts = [getattr(model, name, None) for name in ("sdtps", "head", "hdm", "atm")]
    return sum(p.numel() for part in parts if part is not None for p in part.parameters())



def moe_reference_factory(name: str, base: Any) -> Any:
    """A model factory for ``build_all``: ``base``'s network without SDTPS (the config must say
    ``sdtps.use_sdtps False``) carrying HDM + ATM (:class:`MoEReferenceNet`)."""
    def factory(num_classes: int, options: Any = None, **kwargs: Any) -> MoEReferenceNet:
        if options is not None and options.use_sdtps:
            raise ConfigError(f"model '{name}': the HDM + ATM stages take the place of SDTPS; "
                              "set sdtps.use_sdtps False")
        return MoEReferenceNet(base(num_classes, options=options, **kwargs), num_classes)

    return factory


#: the reference on each backbone of the package, by model name (:func:`register_models`)
MODELS = {f"moe_reference_{variant}": moe_reference_factory(f"moe_reference_{variant}",
                                                            getattr(_net, f"sdtps_{variant}"))
          for variant in ("vit_tiny", "vit_b16", "clip_vit_b16")}


def register_models() -> None:
    """Register the reference as torchreid model names (idempotent), so that a study's
    setting builds it by name through ``build_all`` (``model.name moe_reference_vit_tiny``)."""
    for name, factory in MODELS.items():
        compat.register_model(name, factory)
