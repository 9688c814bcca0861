"""DeMo's real-data recipe as the shipped configs build it (issue 8, docs/recipe.md).

Optimizer groups and the per-epoch lrs are checked on a real ``sdtps_clip_vit_b16`` (random
weights) built from each config; the expected values come from DeMo's formulas
(``make_optimizer``, timm's ``CosineLRScheduler`` with ``scheduler.step(epoch)`` before epoch
``epoch = 1..max_epoch``), written out here independently of the code under test.
"""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import torchreid_sdtps
from torchreid_sdtps import config
from torchreid_sdtps.data.multimodal import apply_synchronized
from torchreid_sdtps.data.transforms import build_demo_train_transform
from torchreid_sdtps.engine import ImageSDTPSEngine
from torchreid_sdtps.losses import SoftMarginTripletLoss
from torchreid_sdtps.models.net import sdtps_clip_vit_b16, sdtps_vit_tiny
from torchreid_sdtps.optim import EpochScheduler, build_lr_scheduler, build_optimizer, group_lrs

REPO = Path(__file__).resolve().parents[1]
RECIPES = {  # data set: (H, W, batch, K, epochs, warm-up, ori head) from DeMo's yml files
    "rgbnt201": (256, 128, 64, 8, 50, 10, "concat"),
    "rgbnt100": (128, 256, 128, 16, 30, 5, "per_modality"),
    "msvr310": (128, 256, 64, 4, 50, 10, "per_modality"),
}
BASE_LR, BACKBONE_LR = 3.5e-4, 5e-6
GROUP_BASE = {"backbone_weight": BACKBONE_LR, "backbone_bias": BACKBONE_LR,
              "head_weight": BASE_LR, "head_bias": 2 * BASE_LR}


def _cfg(name: str, *opts: str):
    return config.load_config(str(REPO / "configs" / f"{name}_sdtps_clip.yaml"), list(opts))


def _model(cfg, num_classes: int = 8):
    kwargs = config.model_kwargs(cfg, num_cameras=3)
    kwargs.update(pretrained=False)
    kwargs.pop("use_gpu")
    return sdtps_clip_vit_b16(num_classes=num_classes, **kwargs)


@pytest.fixture(scope="module", params=sorted(RECIPES))
def built(request):
    torch.manual_seed(0)
    cfg = _cfg(request.param)
    return request.param, cfg, _model(cfg)


def demo_lr(base: float, t: int, epochs: int, warmup: int) -> float:
    """DeMo's lr of a group with initial lr ``base`` at timm step ``t`` (noise off)."""
    init, floor = 0.1 * BASE_LR, 0.001 * BASE_LR  # absolute, shared by every group
    if t < warmup:
        return init + t * (base - init) / warmup
    if t >= epochs:
        return floor
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * t / epochs))


def test_configs_state_demo_per_dataset_values(built):
    name, cfg, _ = built
    h, w, batch, k, epochs, warmup, head = RECIPES[name]
    assert (cfg.data.height, cfg.data.width) == (h, w)
    assert (cfg.train.batch_size, cfg.sampler.num_instances) == (batch, k)
    assert (cfg.train.max_epoch, cfg.train.warmup_epoch) == (epochs, warmup)
    assert cfg.sdtps.ori_head == head
    assert cfg.sdtps.sie_coe == 1.0 and cfg.sdtps.drop_path is None  # the backbone's DeMo value
    assert cfg.test.amp is False and cfg.sdtps.use_sdtps is True
    assert cfg.data.norm_mean == [0.5] * 3 and cfg.data.norm_std == [0.5] * 3
    assert cfg.data.sync_modalities and not cfg.test.rerank and not cfg.test.best_on_test


def test_optimizer_groups_follow_demo_rules(built):
    name, cfg, model = built
    opt = build_optimizer(model, **config.optimizer_kwargs(cfg))
    assert isinstance(opt, torch.optim.Adam)
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == set(GROUP_BASE)
    for gname, base in GROUP_BASE.items():
        assert groups[gname]["initial_lr" if "initial_lr" in groups[gname] else "lr"] \
            == pytest.approx(base)
        assert groups[gname]["weight_decay"] == pytest.approx(1e-4)
    ids = {gname: {id(p) for p in g["params"]} for gname, g in groups.items()}
    params = dict(model.named_parameters())
    assert id(params["backbone.vit.blocks.0.attn.qkv.weight"]) in ids["backbone_weight"]
    assert id(params["backbone.vit.blocks.0.attn.qkv.bias"]) in ids["backbone_bias"]
    assert id(params["backbone.proj.weight"]) in ids["backbone_weight"]
    assert id(params["guide.proj.weight"]) in ids["head_weight"]
    assert id(params["guide.proj.bias"]) in ids["head_bias"]
    assert id(params["neck_ori.classifier.weight"]) in ids["head_weight"]
    # the SIE embedding sits outside DeMo's "base" (its cv_embed): head lr
    assert id(params["backbone.sie_embed"]) in ids["head_weight"]
    # every trainable parameter is in exactly one group; frozen BNNeck biases in none
    grouped = [i for s in ids.values() for i in s]
    assert len(grouped) == len(set(grouped)) == sum(p.requires_grad for p in params.values())
    assert id(params["neck_ori.bn.bias"]) not in set(grouped)


def test_clip_backbone_as_demos(built):
    """DeMo's CLIP tower: no drop-path, SIE on the class token, bilinear position resize."""
    _, _, model = built
    bb = model.backbone
    assert bb.drop_path_rate == 0.0
    assert all(isinstance(b.drop_path1, torch.nn.Identity) for b in bb.vit.blocks)
    assert bb.sie_tokens == "cls" and bb.pos_interpolation == "bilinear"


def test_backbone_params_default_to_the_models_backbone():
    """The RGBNT201 recipe builds its optimizer for any backbone: an empty
    ``train.backbone_params`` means the prefixes the model declares."""
    cfg = _cfg("rgbnt201", "model.name", "sdtps_vit_tiny")
    assert list(cfg.train.backbone_params) == []
    torch.manual_seed(0)
    tiny = sdtps_vit_tiny(num_classes=4, loss="triplet", pretrained=False, num_cameras=2)
    assert tiny.backbone_param_prefixes() == ("backbone.vit",)
    opt = build_optimizer(tiny, **config.optimizer_kwargs(cfg))
    groups = {g["name"]: g for g in opt.param_groups}
    params = dict(tiny.named_parameters())
    in_backbone = {id(p) for k in ("backbone_weight", "backbone_bias") for p in groups[k]["params"]}
    assert in_backbone == {id(p) for n, p in params.items() if n.startswith("backbone.vit.")}
    assert groups["backbone_weight"]["lr"] == groups["backbone_bias"]["lr"]
    assert id(params["backbone.sie_embed"]) in {id(p) for p in groups["head_weight"]["params"]}
    # an explicit list is used as given, and still refuses a name that matches nothing
    explicit = dict(config.optimizer_kwargs(cfg), backbone_params=["backbone.vit.blocks"])
    opt = build_optimizer(tiny, **explicit)
    n_explicit = sum(p.numel() for g in opt.param_groups if g["name"].startswith("backbone")
                     for p in g["params"])
    assert n_explicit == sum(p.numel() for n, p in params.items()
                             if n.startswith("backbone.vit.blocks."))
    with pytest.raises(config.ConfigError, match="'backbone.proj' names no parameter"):
        build_optimizer(tiny, **dict(explicit, backbone_params=["backbone.vit", "backbone.proj"]))


def test_backbone_params_of_the_clip_model(built):
    _, _, model = built
    assert model.backbone_param_prefixes() == ("backbone.vit", "backbone.proj")


def test_no_sdtps_option_builds_the_ori_only_baseline():
    """``sdtps.use_sdtps False``: DeMo without HDM/ATM (the ori head only, eval feature ori)."""
    cfg = _cfg("rgbnt201", "sdtps.use_sdtps", "False", "sdtps.weight_align", "0.0")
    kwargs = config.model_kwargs(cfg, num_cameras=2)
    kwargs.update(pretrained=False)
    kwargs.pop("use_gpu")
    torch.manual_seed(0)
    model = sdtps_vit_tiny(num_classes=4, **dict(kwargs, img_size=(64, 32))).eval()
    assert model.sdtps is None and model.neck_sdtps is None and model.test_feature == "ori"
    x = torch.randn(2, 3, 3, 64, 32)
    with torch.no_grad():
        feat = model(x, cam_label=torch.tensor([0, 1]))
        ori = model.forward_features(x, cam_label=torch.tensor([0, 1]))["ori"]
    assert torch.equal(feat, ori)  # neck_feat before: DeMo's `return ori`
    with pytest.raises(config.ConfigError, match="weight_align"):
        _cfg("rgbnt201", "sdtps.use_sdtps", "False")
    for key, value in (("sdtps.test_feature", "sdtps"), ("sdtps.selection", "gumbel")):
        with pytest.raises(config.ConfigError, match=key):
            _cfg("rgbnt201", "sdtps.use_sdtps", "False", "sdtps.weight_align", "0.0", key, value)


@pytest.mark.parametrize("noise", [False, True])
def test_lr_at_first_warmup_end_and_last_epoch(built, noise):
    name, cfg, model = built
    _, _, _, _, epochs, warmup, _ = RECIPES[name]
    cfg = cfg.clone()
    cfg.defrost()
    cfg.train.lr_noise = noise
    opt = build_optimizer(model, **config.optimizer_kwargs(cfg))
    sched = build_lr_scheduler(opt, **config.lr_scheduler_kwargs(cfg))
    assert isinstance(sched, EpochScheduler)
    seen = {}
    for epoch in range(epochs):  # torchreid: train epoch `epoch`, then scheduler.step()
        seen[epoch] = group_lrs(opt)
        sched.step()
    checks = {0: 1, warmup - 2: warmup - 1, warmup - 1: warmup, epochs - 1: epochs}
    for epoch, t in checks.items():
        expected = {g: demo_lr(b, t, epochs, warmup) for g, b in GROUP_BASE.items()}
        ratios = {g: seen[epoch][g] / expected[g] for g in expected}
        if not noise or t >= epochs:  # timm's noise range is [0, epochs)
            assert ratios == pytest.approx({g: 1.0 for g in expected}, rel=1e-6), (epoch, seen)
        else:  # one noise factor per epoch, shared by every group, |noise| < noise_pct
            assert max(ratios.values()) == pytest.approx(min(ratios.values()), rel=1e-6)
            assert 0.33 < ratios["head_weight"] < 1.67
    # DeMo's backbone group warms *down* from 3.5e-5 to its 5e-6, and every group ends at the
    # same absolute floor 3.5e-7
    if not noise:
        assert seen[0]["backbone_weight"] > seen[warmup - 2]["backbone_weight"] > BACKBONE_LR
        assert list(seen[epochs - 1].values()) == pytest.approx([0.001 * BASE_LR] * 4)


def test_scheduler_resumes_at_the_saved_epoch(built):
    name, cfg, model = built
    opt = build_optimizer(model, **config.optimizer_kwargs(cfg))
    sched = build_lr_scheduler(opt, **config.lr_scheduler_kwargs(cfg))
    for _ in range(7):
        sched.step()
    state, lrs = sched.state_dict(), group_lrs(opt)
    opt2 = build_optimizer(model, **config.optimizer_kwargs(cfg))
    sched2 = build_lr_scheduler(opt2, **config.lr_scheduler_kwargs(cfg))
    sched2.load_state_dict(state)
    assert group_lrs(opt2) == pytest.approx(lrs)


def test_eval_feature_is_before_the_bnneck_and_normalised_for_ranking(built):
    name, cfg, model = built
    h, w = RECIPES[name][:2]
    assert cfg.sdtps.neck_feat == "before" and cfg.test.normalize_feature
    assert config.engine_run_kwargs(cfg)["normalize_feature"] is True
    model.train()
    x = torch.randn(4, 3, 3, h, w)
    model(x)  # move the BN running stats away from (0, 1)
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x[:2])
        out = model(x[:2])
    raw = torch.cat([feats["ori"], feats["sdtps"]], dim=1)
    assert torch.allclose(out, raw, atol=1e-5)
    after = torch.cat([model.neck_ori(feats["ori"]), model.neck_sdtps(feats["sdtps"])], dim=1)
    assert not torch.allclose(out, after, atol=1e-3)


def _engine(cfg, model, num_classes: int = 4) -> ImageSDTPSEngine:
    dm = SimpleNamespace(train_loader=None, test_loader={}, num_train_pids=num_classes)
    opt = build_optimizer(model, **config.optimizer_kwargs(cfg))
    kwargs = dict(config.engine_kwargs(cfg), use_gpu=False, use_amp=False)
    return ImageSDTPSEngine(dm, model, opt, **kwargs)


def test_engine_losses_are_demos():
    cfg = _cfg("msvr310", "train.backbone_params", "[]", "train.backbone_lr", "None")
    torch.manual_seed(0)
    model = sdtps_vit_tiny(num_classes=4, loss="triplet", pretrained=False,
                           ori_head=cfg.sdtps.ori_head)
    engine = _engine(cfg, model)
    assert engine.weight_x == pytest.approx(0.25) and engine.weight_t == pytest.approx(1.0)
    crit = engine.criterion
    assert isinstance(crit.triplet, SoftMarginTripletLoss)
    assert crit.xent.eps == pytest.approx(0.1)  # label smoothing
    feats = [torch.randn(8, 6) for _ in range(3)]
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    # soft margin on the hardest positive / negative, Euclidean distances
    d = torch.cdist(feats[0], feats[0])
    same = pids[:, None] == pids[None]
    d_ap = torch.where(same, d, torch.zeros_like(d)).max(1).values
    d_an = torch.where(same, torch.full_like(d, 1e9), d).min(1).values
    manual = torch.log1p(torch.exp(-(d_an - d_ap))).mean()
    assert crit.triplet(feats[0], pids) == pytest.approx(manual.item(), rel=1e-5)
    # every head's term is summed, not averaged
    summed = crit.head_loss(crit.triplet, feats, pids)
    assert summed == pytest.approx(sum(crit.triplet(f, pids) for f in feats).item())
    logits = [torch.randn(8, 4) for _ in range(4)]
    assert crit.head_loss(crit.xent, logits, pids) == pytest.approx(
        sum(crit.xent(z, pids) for z in logits).item())


def test_per_modality_head_trains_one_term_per_modality():
    torch.manual_seed(0)
    model = sdtps_vit_tiny(num_classes=4, loss="triplet", pretrained=False,
                           ori_head="per_modality")
    x = torch.randn(8, 3, 3, 128, 64)
    torch.manual_seed(1)  # same drop-path draws in both passes
    logits, feats = model(x)
    assert len(logits) == len(feats) == 4  # fused (SDTPS) + RGB, NI, TI
    torch.manual_seed(1)
    full = model.forward_features(x)
    for m in range(3):  # each modality head sees its own g'_m, through its own BN slice
        assert torch.equal(feats[1 + m], full["global"][:, m])
    # the grouped classifier equals three separate bias-free linear layers
    neck, c = model.neck_ori, full["global"].shape[-1]
    bn = neck(full["ori"])
    weight = neck.classifier.weight.squeeze(-1).unflatten(0, (3, 4))  # (M, K, C)
    for m in range(3):
        ref = bn[:, m * c:(m + 1) * c] @ weight[m].t()
        assert torch.allclose(logits[1 + m], ref, atol=1e-5)
    engine_cfg = _cfg("msvr310", "train.backbone_params", "[]", "train.backbone_lr", "None")
    engine = _engine(engine_cfg, model)
    batch = {"img": x, "pid": torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]),
             "cam_label": torch.zeros(8, dtype=torch.long)}
    summary = engine.forward_backward(batch)
    assert {"loss_t", "loss_x"} <= set(summary) and math.isfinite(summary["loss_t"])


def test_demo_transform_and_independent_modalities():
    tf = build_demo_train_transform(32, 16, ["random_flip", "random_crop", "random_erase"],
                                    [0.5] * 3, [0.5] * 3, flip_prob=0.5, pad=10, erase_prob=1.0)
    names = [type(t).__name__ for t in tf.transforms]
    assert names == ["Resize", "RandomHorizontalFlip", "Pad", "RandomCrop", "ToTensor",
                     "Normalize", "RandomErasing"]
    assert tf.transforms[0].interpolation.value == "bicubic"
    assert tf.transforms[-1].mode == "pixel"
    imgs = [Image.new("RGB", (16, 32), (128, 128, 128)) for _ in range(3)]
    torch.manual_seed(0)
    sync = apply_synchronized(tf, imgs)
    assert torch.equal(sync[0], sync[1]) and torch.equal(sync[1], sync[2])
    torch.manual_seed(0)
    indep = apply_synchronized(tf, imgs, synchronized=False)
    assert not torch.equal(indep[0], indep[1])  # each modality erased with its own noise
    with pytest.raises(ValueError, match="color_jitter"):
        build_demo_train_transform(32, 16, ["color_jitter"], [0.5] * 3, [0.5] * 3)


def test_build_gives_the_training_set_the_recipe_transform():
    from torchreid_sdtps.build import set_train_transform

    cfg = _cfg("rgbnt201", "data.sync_modalities", "False")
    dataset = SimpleNamespace(transform=None, sync_modalities=True)
    set_train_transform(dataset, cfg)
    assert type(dataset.transform.transforms[-1]).__name__ == "RandomErasing"
    assert dataset.sync_modalities is False
    with pytest.raises(config.ConfigError, match="multi-modal"):
        set_train_transform(SimpleNamespace(transform=None), cfg)


def test_stock_engine_refuses_recipe_options_it_cannot_honour():
    from torchreid_sdtps import build, compat

    cfg = _cfg("rgbnt201", "sdtps.engine", "triplet")
    torchreid_sdtps.load_plugins()
    dm = SimpleNamespace(train_loader=None, test_loader={}, num_train_pids=4)
    model = sdtps_vit_tiny(num_classes=4, loss="triplet", pretrained=False)
    opt = build_optimizer(model, optim="adam", lr=1e-3)
    with pytest.raises(config.ConfigError, match="soft_margin"):
        build.build_engine(cfg, dm, model, opt, None)
    plain = _cfg("rgbnt201", "sdtps.engine", "triplet", "loss.triplet.soft_margin", "False",
                 "loss.triplet.margin", "0.3", "loss.head_reduction", "mean")
    engine = build.build_engine(plain, dm, model, opt, None)
    assert isinstance(engine, compat.engine().ImageTripletEngine)


def test_gpu_check_script_smoke(tmp_path, capsys):
    """benchmarks/gpu_check.py end to end on the CPU (--smoke): recipe config, DeMo transforms,
    timm schedule, summed soft-margin losses, ranking; without --smoke it needs CUDA."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    if not torch.cuda.is_available():
        assert gpu_check.main(["--root", str(tmp_path)]) == 2
        assert "needs an NVIDIA GPU" in capsys.readouterr().err
    rc = gpu_check.main(["--smoke", "--epochs", "1", "--root", str(tmp_path / "data"),
                         "--save-dir", str(tmp_path / "log")])
    out = capsys.readouterr().out
    assert rc == 0 and "samples/s" in out and "sdtps_vit_tiny (1 epochs, last epoch)" in out


def test_recipe_options_are_checked():
    with pytest.raises(config.ConfigError, match="margin 0"):
        _cfg("rgbnt201", "loss.triplet.margin", "0.3")
    with pytest.raises(config.ConfigError, match="transform_style demo only"):
        config.load_config(opts=["data.pad", "4"])
    with pytest.raises(config.ConfigError, match="timm_cosine"):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        build_lr_scheduler(opt, "warmup_cosine", max_epoch=3, warmup_epoch=1, lr_noise=True)
    model = sdtps_vit_tiny(num_classes=4, loss="triplet", pretrained=False)
    with pytest.raises(config.ConfigError, match="names no parameter"):
        build_optimizer(model, backbone_params=["encoder"], backbone_lr=1e-5)
    with pytest.raises(config.ConfigError, match="staged_lr"):
        build_optimizer(model, backbone_params=["backbone"], backbone_lr=1e-5, staged_lr=True)
    # stock torchreid optimizer when no group option is used
    plain = build_optimizer(model, optim="adam", lr=1e-3)
    assert len(plain.param_groups) == 1


def test_base_key_merges_the_base_first(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  lr: 0.5\n  max_epoch: 7\n")
    (tmp_path / "child.yaml").write_text("_BASE_: base.yaml\ntrain:\n  max_epoch: 3\n")
    cfg = config.load_config(str(tmp_path / "child.yaml"))
    assert cfg.train.lr == 0.5 and cfg.train.max_epoch == 3
    (tmp_path / "bad.yaml").write_text("_BASE_: missing.yaml\n")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        config.load_config(str(tmp_path / "bad.yaml"))
