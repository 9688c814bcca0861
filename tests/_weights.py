"""Tiny source checkpoints in every published layout, shared by the weights tests.

An OpenAI CLIP model (a small copy of openai/CLIP `clip/model.py`'s VisionTransformer, with
text-tower keys beside it) and a timm ViT, both moved off their init, plus the backbones that
load them.
"""
from collections import OrderedDict

import timm
import torch
from torch import nn

from torchreid_sdtps.models.factory import build_backbone

C, DEPTH, HEADS, PROJ = 64, 2, 2, 32
SMALL = dict(embed_dim=C, depth=DEPTH, num_heads=HEADS)
SRC = 64  # source checkpoints are trained at 64x64: a 4x4 patch grid


def _jitter(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # move every parameter (LayerNorms too) off its init
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()




class _QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class _ResBlock(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, h)
        self.ln_1 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(OrderedDict(
            [("c_fc", nn.Linear(d, 4 * d)), ("gelu", _QuickGELU()), ("c_proj", nn.Linear(4 * d, d))]))
        self.ln_2 = nn.LayerNorm(d)

    def forward(self, x):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, d, layers, h):
        super().__init__()
        self.resblocks = nn.Sequential(*[_ResBlock(d, h) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class _OpenAIVisual(nn.Module):
    """openai/CLIP VisionTransformer, returning every token after ln_post @ proj."""

    def __init__(self, res, patch, width, layers, heads, out):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        s = width ** -0.5
        self.class_embedding = nn.Parameter(s * torch.randn(width))
        self.positional_embedding = nn.Parameter(s * torch.randn((res // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = _Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(s * torch.randn(width, out))

    def forward(self, x):
        x = self.conv1(x).flatten(2).permute(0, 2, 1)
        cls = self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)  # NLD -> LND -> NLD
        return self.ln_post(x) @ self.proj


class _OpenAICLIP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.visual = _OpenAIVisual(SRC, 16, C, DEPTH, HEADS, PROJ)
        self.token_embedding = nn.Embedding(10, 16)  # text tower keys must be ignored
        self.logit_scale = nn.Parameter(torch.ones([]))

    def forward(self, image):
        return self.visual(image)


def make_openai_src():
    return _jitter(_OpenAICLIP())


def _clip_backbone(hw=(SRC, SRC), **kw):
    return build_backbone("clip_vit_b16", img_size=hw, proj_dim=PROJ, **dict(SMALL, **kw)).eval()


def _tokens(backbone, x):
    with torch.no_grad():
        cls, patches = backbone(x)
    return torch.cat([cls[:, None], patches], dim=1)


X = torch.randn(2, 3, SRC, SRC, generator=torch.Generator().manual_seed(3))



def make_timm_src():
    torch.manual_seed(2)
    return _jitter(timm.create_model("vit_base_patch16_224", img_size=SRC, num_classes=10, **SMALL), seed=2)


def _timm_tokens(model, x):
    with torch.no_grad():
        return model.forward_features(x)


def _vit_backbone(variant="vit_b16", hw=(SRC, SRC), **kw):
    return build_backbone(variant, img_size=hw, **dict(SMALL, **kw)).eval()
