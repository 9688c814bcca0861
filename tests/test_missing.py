"""Training for missing modalities: modality dropout, absent modalities in the model, the
alignment loss and the ONNX export (issue 20)."""
from __future__ import annotations

import copy
import itertools

import pytest
import torch

from torchreid_sdtps import compat
from torchreid_sdtps.engine import ImageSDTPSEngine
from torchreid_sdtps.engine import sdtps_engine as engine_module
from torchreid_sdtps.engine.modality_dropout import DEFAULT_DROPOUT_SUBSETS, ModalityDropout
from torchreid_sdtps.errors import ConfigError, SDTPSError
from torchreid_sdtps.losses import CrossModalAlignmentLoss
from torchreid_sdtps.models.sdtps import combine_scores
from torchreid_sdtps.utils import modalities as modalities_module
from torchreid_sdtps.utils.modalities import present_modalities, zero_modalities

MODS = ("RGB", "NI", "TI")


# ----------------------------------------------------------------------------- dropout draws

@pytest.mark.parametrize("subsets", [None, ["RGB", "NI", "TI"], ["RGB+NI", "NI+TI", "RGB+TI"],
                                     ["TI"]])
def test_dropout_never_removes_every_modality(subsets):
    torch.manual_seed(0)
    drop = ModalityDropout(0.95, subsets, MODS)
    removed = torch.cat([drop.sample(64) for _ in range(200)])  # 12800 draws
    assert removed.shape == (12800, 3) and removed.dtype == torch.bool
    assert not removed.all(dim=1).any()
    # every allowed subset occurs, nothing else does, and about prob of the samples lose one
    allowed = {tuple(row.tolist()) for row in drop.table}
    seen = {tuple(row.tolist()) for row in removed if row.any()}
    assert seen == allowed
    assert abs(removed.any(dim=1).float().mean().item() - 0.95) < 0.02
    assert drop.subsets == tuple(subsets or DEFAULT_DROPOUT_SUBSETS)


def test_dropout_refuses_bad_settings():
    for prob in (-0.1, 1.0):
        with pytest.raises(ConfigError, match=r"\[0, 1\)"):
            ModalityDropout(prob, None, MODS)
    with pytest.raises(ConfigError, match="zeroes every modality"):
        ModalityDropout(0.5, ["RGB", "RGB+NI+TI"], MODS)
    with pytest.raises(ConfigError, match="unknown modality 'IR'"):
        ModalityDropout(0.5, ["IR"], MODS)
    with pytest.raises(ConfigError, match="removes nothing"):
        ModalityDropout(0.5, ["none"], MODS)
    with pytest.raises(ConfigError, match="empty"):
        ModalityDropout(0.5, [], MODS)
    assert issubclass(ConfigError, SDTPSError) and issubclass(ConfigError, ValueError)


def test_zero_modalities_per_sample_mask_and_present():
    x = torch.randn(3, 3, 3, 4, 2)
    mask = torch.tensor([[True, False, False], [False, False, False], [False, True, True]])
    out = zero_modalities(x, mask)
    assert torch.equal(present_modalities(out), ~mask) and torch.equal(out[~mask], x[~mask])
    assert present_modalities(x).all()
    # the per-sample form and the per-setting form remove the same way
    assert torch.equal(zero_modalities(x, torch.tensor([[False, True, False]] * 3)),
                       zero_modalities(x, (1,)))
    with pytest.raises(ValueError, match=r"\(B, M\)"):
        zero_modalities(x, mask[:2])


# ----------------------------------------------------------------------------- engine

def _engine(dm, model, **kwargs):
    return ImageSDTPSEngine(dm, model, torch.optim.Adam(model.parameters(), lr=1e-3),
                            use_gpu=False, **kwargs)


def _train(engine, batches, seed=0):
    engine.set_model_mode("train")
    torch.manual_seed(seed)
    return [engine.forward_backward(b) for b in batches]


def test_probability_zero_is_bit_identical_to_no_option(make_cfg, builders):
    cfg = make_cfg("sdtps.selection", "gumbel")  # Gumbel noise + drop path: RNG-sensitive
    dm, model, _, _, _ = builders.build_all(cfg)
    batches = list(itertools.islice(iter(dm.train_loader), 3))
    models = [copy.deepcopy(model) for _ in range(4)]
    plain = _engine(dm, models[0])
    zero = _engine(dm, models[1], modality_dropout=0.0, dropout_subsets=["RGB", "NI+TI"])
    on = _engine(dm, models[2], modality_dropout=0.5)
    assert not zero.modality_dropout.active and on.modality_dropout.active
    losses = [_train(e, batches) for e in (plain, zero, on)]
    assert losses[0] == losses[1]
    for (n, p), (_, q) in zip(models[0].state_dict().items(), models[1].state_dict().items()):
        assert torch.equal(p, q), n
    # when on, the first step is a plain step on the batch with the drawn modalities zeroed
    # by hand (same RNG: the draw comes first); ID and triplet see the same features
    plain_again = _engine(dm, models[3])
    plain_again.set_model_mode("train")
    torch.manual_seed(0)
    removed = on.modality_dropout.sample(batches[0]["img"].shape[0])
    assert removed.any() and not removed.all(dim=1).any()
    manual = plain_again.forward_backward(
        {**batches[0], "img": zero_modalities(batches[0]["img"], removed)})
    for key in ("loss_x", "loss_t"):
        assert losses[2][0][key] == pytest.approx(manual[key], rel=1e-5), key
        assert abs(losses[2][0][key] - losses[0][0][key]) > 1e-4, key  # and it matters
    assert all(torch.isfinite(torch.tensor(list(s.values()))).all() for s in losses[2])


def test_training_and_evaluation_remove_through_the_same_function(built, monkeypatch):
    _, dm, model, _ = built
    calls = []
    original = modalities_module.zero_modalities

    def spy(imgs, zeroed):
        calls.append(zeroed)
        return original(imgs, zeroed)

    monkeypatch.setattr(engine_module, "zero_modalities", spy)
    engine = _engine(dm, model, modality_dropout=0.9, dropout_subsets=["NI"])
    _train(engine, [next(iter(dm.train_loader))])
    assert len(calls) == 1 and isinstance(calls[0], torch.Tensor)
    assert calls[0].any() and not calls[0][:, [0, 2]].any()  # only NI, per sample
    calls.clear()
    engine.evaluate_missing(["none", "NI"])
    loaders = engine.test_loader[next(iter(engine.test_loader))]
    # every NI batch of query and gallery, once each ("none" zeroes nothing)
    assert len(calls) == len(loaders["query"]) + len(loaders["gallery"])
    assert all(c == (1,) for c in calls)
    assert engine_module.zero_modalities is spy and original is zero_modalities


@pytest.mark.parametrize("selection", ["topk", "gumbel"])
def test_absent_modalities_train_without_nan(make_cfg, builders, selection):
    cfg = make_cfg("sdtps.selection", selection, "sdtps.mask_missing", "True",
                   "train.modality_dropout.prob", "0.9")
    dm, model, _, _, engine = builders.build_all(cfg)
    assert model.mask_missing and engine.modality_dropout.prob == 0.9
    engine.set_model_mode("train")
    torch.manual_seed(0)
    for batch in itertools.islice(iter(dm.train_loader), 3):
        summary = engine.forward_backward(batch)
        assert all(torch.isfinite(torch.tensor(v)) for v in summary.values()), summary
        for name, p in model.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), name


def test_complete_only_triplet_ranks_the_complete_samples(built):
    _, dm, model, _ = built
    engine = _engine(dm, model, modality_dropout=0.5, dropout_subsets=["RGB"],
                     dropout_triplet="complete")
    seen, original = [], engine.criterion.triplet

    def spy(features, pids):
        seen.append(len(pids))
        return original(features, pids)

    engine.criterion.triplet = spy
    batch = next(iter(dm.train_loader))
    torch.manual_seed(0)
    removed = engine.modality_dropout.sample(len(batch["pid"]))
    _train(engine, [batch])  # the same draw (seed 0) inside the step
    assert seen and all(n == int((~removed.any(1)).sum()) for n in seen)
    assert 0 < seen[0] < len(batch["pid"])
    with pytest.raises(ValueError, match="dropout_triplet"):
        _engine(dm, model, dropout_triplet="some")


def test_stock_engine_refuses_modality_dropout(make_cfg, builders):
    cfg = make_cfg("sdtps.engine", "triplet", "train.modality_dropout.prob", "0.3")
    with pytest.raises(ConfigError, match="train.modality_dropout.prob"):
        builders.build_all(cfg)


# ----------------------------------------------------------------------------- model, loss

def _tiny(mask_missing: bool = True, **kwargs):
    torch.manual_seed(0)
    return compat.model_factory()["sdtps_vit_tiny"](
        num_classes=4, loss="triplet", pretrained=False, img_size=(64, 32),
        mask_missing=mask_missing, **kwargs)


def test_cross_scores_leave_absent_guides_out():
    g = torch.Generator().manual_seed(0)
    s_pred, sim = torch.rand(2, 3, 5, generator=g), torch.rand(2, 3, 3, 5, generator=g)
    everyone = torch.ones(2, 3, dtype=torch.bool)
    assert torch.allclose(combine_scores(s_pred, sim, 0.25, everyone),
                          combine_scores(s_pred, sim, 0.25))
    present = torch.tensor([[True, False, True], [True, False, False]])
    out = combine_scores(s_pred, sim, 0.25, present)
    assert torch.isfinite(out).all()
    # sample 0, RGB: only TI's guide counts, with the full cross weight 2
    assert torch.allclose(out[0, 0], 0.5 * s_pred[0, 0] + 0.25 * (2 * sim[0, 0, 2] + 2 * sim[0, 0, 0]))
    # sample 1, RGB alone: no other guide, the modality guides itself
    assert torch.allclose(out[1, 0], 0.5 * s_pred[1, 0] + 0.25 * 4 * sim[1, 0, 0])
    # an absent guide changes nothing for the others
    sim2 = sim.clone()
    sim2[:, :, 1] = 7.0
    assert torch.equal(combine_scores(s_pred, sim2, 0.25, present)[:, [0, 2]], out[:, [0, 2]])


def test_model_masks_absent_modality_features():
    model = _tiny().eval()
    x = torch.randn(4, 3, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    cams = torch.zeros(4, dtype=torch.long)
    with torch.no_grad():
        feats = model.forward_features(zero_modalities(x, (1,)), cams)
        full = model.forward_features(x, cams)
    c = model.guide.proj.out_features
    assert torch.equal(feats["present"], torch.tensor([[True, False, True]] * 4))
    assert (feats["ori"][:, c:2 * c] == 0).all() and (feats["sdtps"][:, c:2 * c] == 0).all()
    assert torch.equal(feats["ori"][:, :c], full["ori"][:, :c])  # the guide is per modality
    assert full["present"].all()
    plain = _tiny(mask_missing=False).eval()
    with torch.no_grad():
        assert plain.forward_features(zero_modalities(x, (1,)))["present"] is None


def test_alignment_loss_with_absent_modalities():
    g = torch.Generator().manual_seed(0)
    pids = torch.arange(4).repeat_interleave(2)
    tok = torch.randn(8, 3, 5, 16, generator=g, requires_grad=True)
    loss = CrossModalAlignmentLoss()
    everyone = torch.ones(8, 3, dtype=torch.bool)
    assert torch.allclose(loss(tok, pids, everyone), loss(tok, pids))
    present = everyone.clone()
    present[::3, 1] = False
    present[1, [0, 2]] = False
    value = loss(tok, pids, present)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(tok.grad).all()
    # the absent tokens take no part: changing them changes neither the loss nor their gradient
    assert (tok.grad[~present] == 0).all()
    other = tok.detach().clone()
    other[~present] = 100.0
    assert torch.allclose(loss(other, pids, present), value)
    # only one modality anywhere: no pair left, loss 0 with a zero gradient
    single = torch.zeros(8, 3, dtype=torch.bool)
    single[:, 0] = True
    tok.grad = None
    zero = loss(tok, pids, single)
    zero.backward()
    assert zero.item() == 0 and (tok.grad == 0).all()
    with pytest.raises(ValueError, match="present must be"):
        loss(tok, pids, present[:, :2])


# ----------------------------------------------------------------------------- ONNX

def test_onnx_export_takes_an_absent_modality_the_same_way(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from torchreid_sdtps.deploy.onnx import PARITY_RTOL, OrtForward, export_onnx

    model = _tiny().eval()
    meta = {"modalities": list(MODS), "height": 64, "width": 32}
    ort = OrtForward(export_onnx(model, str(tmp_path / "m.onnx"), meta, cameras=False))
    x = torch.randn(5, 3, 3, 64, 32, generator=torch.Generator().manual_seed(2))
    removed = torch.tensor([[False, True, False], [True, False, False], [False, False, False],
                            [True, False, True], [False, True, False]])
    xs = zero_modalities(x, removed)  # per sample: NI, RGB, nothing, RGB+TI, NI
    with torch.no_grad():
        ref = model(xs)
    got = ort(xs)
    # the parity measure of deploy.onnx: max abs difference / largest feature norm
    assert (got - ref).abs().max() / ref.norm(dim=1).max() <= PARITY_RTOL
    # absent = the masked feature in the graph too: the slices of an absent modality are the
    # same for every sample that lacks it (the BNNeck of a zero feature)
    c, m = model.guide.proj.out_features, 3
    ori = got[:, :m * c].view(5, m, c)
    assert torch.allclose(ori[0, 1], ori[4, 1], atol=1e-5)
    assert torch.allclose(ori[1, 0], ori[3, 0], atol=1e-5)
    assert not torch.allclose(ori[2, 1], ori[0, 1], atol=1e-3)


def test_missing_study_table_mean_and_std(benchmark_module):
    study = benchmark_module("missing_study")
    row = dict.fromkeys(("none", "RGB", "NI", "TI", "RGB+NI", "RGB+TI", "NI+TI"), 0.5)
    runs = {"with": {1: {**row, "RGB": 0.2}, 2: {**row, "RGB": 0.4}}}
    md, summary = study.table(runs)
    assert summary["with"]["RGB"] == pytest.approx({"mean": 30.0, "std": 14.142135}, rel=1e-6)
    assert summary["with"]["single_missing_avg"]["mean"] == pytest.approx(100 * (0.3 + 1.0) / 3)
    assert "| with | 2 | 50.0 ± 0.0 | 30.0 ± 14.1 |" in md


# ----------------------------------------------------------------------------- issue 25

def test_presence_match_is_the_normalised_match_over_common_modalities():
    from torchreid_sdtps.models.missing import presence_match_feature

    g = torch.Generator().manual_seed(0)
    c, m = 4, 3
    raw = torch.randn(5, 2 * m * c, generator=g)  # [ori, sdtps], modality-major
    present = torch.tensor([[True, True, True], [True, False, True], [False, True, True],
                            [True, True, True], [False, False, True]])
    f = presence_match_feature(raw, present, c)
    blocks = raw.view(5, 2, m, c)
    unit = blocks / blocks.square().sum(dim=(1, 3), keepdim=True).sqrt()
    cos = torch.einsum("ipmc,jpmc->ijm", unit, unit)  # per-modality cosine of every pair
    common = (present[:, None, :] & present[None, :, :]).float()
    n = present.sum(1).float()
    expected = 2 - 2 * (cos * common).sum(-1) / (n[:, None] * n[None, :]).sqrt()
    assert torch.allclose(torch.cdist(f, f).square(), expected, atol=1e-5)
    assert torch.allclose(f.norm(dim=1), torch.ones(5))
    assert (f.view(5, 2, m, c)[~present[:, None, :].expand(5, 2, m)] == 0).all()
    # what an absent block held does not matter
    raw2 = blocks.clone()
    raw2[1, :, 1] = 1e3
    assert torch.equal(presence_match_feature(raw2.view(5, -1), present, c)[1], f[1])
    with pytest.raises(ValueError, match="presence match"):
        presence_match_feature(raw[:, :-1], present, c)


def test_learned_stand_in_replaces_absent_features_and_needs_the_mask():
    with pytest.raises(ConfigError, match="missing_standin needs sdtps.mask_missing"):
        _tiny(mask_missing=False, missing_standin=True)
    model = _tiny(missing_standin=True).eval()
    c = model.dim
    with torch.no_grad():
        model.standin.ori.copy_(torch.arange(3 * c, dtype=torch.float32).view(3, c))
        model.standin.sdtps.fill_(-2.0)
    x = torch.randn(2, 3, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = model.forward_features(zero_modalities(x, (2,)))
        full = model.forward_features(x)
    assert torch.equal(feats["global"][:, 2], model.standin.ori[2].expand(2, c))
    assert (feats["sdtps"][:, 2 * c:] == -2.0).all()
    assert torch.equal(feats["global"][:, :2], full["global"][:, :2])
    # trained end to end: the stand-in gets a gradient from samples that lack its modality
    model.train()
    removed = torch.tensor([[True, False, False], [False, False, False]] * 2)
    logits, metric = model(zero_modalities(x.repeat(2, 1, 1, 1, 1), removed))
    sum((v * torch.randn(v.shape, generator=torch.Generator().manual_seed(4))).sum()
        for v in logits).backward()
    assert model.standin.ori.grad[0].abs().sum() > 0 and model.standin.ori.grad[1:].eq(0).all()


def test_dropout_waits_for_its_start_epoch(built, monkeypatch):
    _, dm, model, _ = built
    calls = []
    original = modalities_module.zero_modalities
    monkeypatch.setattr(engine_module, "zero_modalities",
                        lambda imgs, zeroed: calls.append(zeroed) or original(imgs, zeroed))
    engine = _engine(dm, model, modality_dropout=0.9, dropout_start=2)
    batch = [next(iter(dm.train_loader))]
    for epoch, draws in ((0, 0), (1, 0), (2, 1), (5, 2)):
        engine.epoch = epoch
        _train(engine, batch)
        assert len(calls) == draws, epoch
    with pytest.raises(ValueError, match=r"start_epoch \(dropout_start\) -1: must be >= 0"):
        _engine(dm, model, dropout_start=-1)


def test_onnx_export_of_the_learned_presence_model(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from torchreid_sdtps.deploy.onnx import PARITY_RTOL, OrtForward, export_onnx

    model = _tiny(missing_match="present", missing_standin=True).eval()
    with torch.no_grad():
        model.standin.ori.normal_(generator=torch.Generator().manual_seed(3))
    meta = {"modalities": list(MODS), "height": 64, "width": 32}
    ort = OrtForward(export_onnx(model, str(tmp_path / "m.onnx"), meta, cameras=False))
    x = torch.randn(3, 3, 3, 64, 32, generator=torch.Generator().manual_seed(2))
    removed = torch.tensor([[False, True, False], [False, False, False], [True, False, True]])
    xs = zero_modalities(x, removed)
    with torch.no_grad():
        ref = model(xs)
    got = ort(xs)
    assert (got - ref).abs().max() / ref.norm(dim=1).max() <= PARITY_RTOL
    blocks = got.view(3, 2, 3, -1)
    assert blocks[:, :, 1][0].abs().max() == 0 and blocks[2, :, [0, 2]].abs().max() == 0
    assert torch.allclose(got.norm(dim=1), torch.ones(3), atol=1e-5)


def test_the_demo_ranks_with_the_missing_modality_method():
    """The demo's default (docs/engine.md, issue 25); the real-data configs keep DeMo parity."""
    from pathlib import Path

    from torchreid_sdtps import config

    demo = config.get_demo_config().sdtps
    assert (demo.mask_missing, demo.missing_match, demo.test_feature) == (True, "present", "ori")
    real = config.load_config(str(Path(__file__).resolve().parents[1] / "configs"
                                  / "rgbnt201_sdtps_clip.yaml")).sdtps
    assert (real.mask_missing, real.missing_match, real.missing_standin) == (False, "plain", False)


def test_mask_missing_trains_a_complete_batch_bit_for_bit():
    """The demo turns mask_missing on; without dropout its training is the plain one exactly."""
    x = torch.randn(4, 3, 3, 64, 32, generator=torch.Generator().manual_seed(5))
    outs = []
    for mask in (False, True):
        model = _tiny(mask_missing=mask).train()
        torch.manual_seed(0)
        logits, metric = model(x)
        outs.append(torch.cat([*logits, *metric], dim=1))
    assert torch.equal(outs[0], outs[1])
