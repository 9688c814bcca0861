"""ImageSDTPSEngine on the CPU: one training step with both auxiliary losses, camera labels in
training and evaluation, ranking results, the missing-modality table, checkpoints and RNG."""
from __future__ import annotations

import contextlib
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _rank import reference_map
from torch import nn

import torchreid_sdtps
from torchreid_sdtps import compat, plugins
from torchreid_sdtps.engine import ImageSDTPSEngine
from torchreid_sdtps.engine.evaluation import (
    DEFAULT_MISSING_SETTINGS,
    format_table,
    parse_setting,
    rank_targets,
    results_summary,
)
from torchreid_sdtps.engine.state import get_rng_state, rng_fork


def test_engine_is_registered_and_subclasses_torchreid():
    torchreid_sdtps.register()
    assert plugins.get_engine("sdtps") is ImageSDTPSEngine
    assert issubclass(ImageSDTPSEngine, compat.engine().ImageTripletEngine)


def test_training_step_with_both_aux_losses_updates_params(built):
    _, dm, model, engine = built
    batch = next(iter(dm.train_loader))
    assert batch["img"].shape[1:] == (3, 3, 64, 32) and "cam_label" in batch
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    engine.set_model_mode("train")
    engine.two_stepped_transfer_learning(0, 0, None)
    summary = engine.forward_backward(batch)
    assert {"loss_x", "loss_t", "loss_ratio", "loss_align", "acc"} <= set(summary)
    assert summary["loss_ratio"] > 0 and summary["loss_align"] >= 0
    assert all(np.isfinite(v) for v in summary.values())
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    for prefix in ("backbone.", "guide.", "sdtps.", "neck_sdtps.classifier", "neck_ori.classifier"):
        assert any(n.startswith(prefix) for n in changed), prefix
    # the BNNeck biases the model froze stay frozen (torchreid's open_all_layers would not)
    assert not model.neck_sdtps.bn.bias.requires_grad
    assert "neck_sdtps.bn.bias" not in changed


def test_loss_weights_select_summary_entries(make_cfg, builders):
    cfg = make_cfg("sdtps.weight_ratio", "0.0", "sdtps.weight_align", "0.0")
    dm, model, _, _, engine = builders.build_all(cfg)
    engine.set_model_mode("train")
    summary = engine.forward_backward(next(iter(dm.train_loader)))
    assert set(summary) == {"loss_x", "loss_t", "acc"}
    with pytest.raises(ValueError, match="weights must be >= 0"):
        ImageSDTPSEngine(dm, model, engine.optimizer, weight_align=-1.0, use_gpu=False)


def test_amp_is_off_on_cpu_with_a_note(built, caplog):
    _, dm, model, engine = built
    with caplog.at_level(logging.INFO, logger=ImageSDTPSEngine.__module__):
        eng = ImageSDTPSEngine(dm, model, engine.optimizer, use_amp=True, use_gpu=False)
    assert not eng.use_amp and not eng.scaler.is_enabled()
    assert any("use_amp=True ignored" in r.getMessage() for r in caplog.records)


def test_evaluation_is_float32_unless_eval_amp(built, monkeypatch, caplog):
    """DeMo ranks in fp32: training AMP does not reach the evaluation features; ``test.amp``
    (``eval_amp``) asks for autocast explicitly."""
    from torchreid_sdtps import config

    _, dm, model, engine = built
    assert engine.eval_amp is False and config.get_default_config().test.amp is False
    calls: list = []

    def fake_autocast(device_type, dtype=None, **kw):
        calls.append((device_type, dtype))
        return contextlib.nullcontext()

    monkeypatch.setattr(torch, "autocast", fake_autocast)
    engine.use_amp = True  # as on CUDA with sdtps.use_amp: the training steps autocast
    model.eval()
    x = next(iter(next(iter(dm.test_loader.values()))["query"]))["img"]
    feats = engine.extract_features(x)
    assert calls == [] and feats.dtype == torch.float32
    engine.eval_amp = True
    engine.extract_features(x)
    assert calls == [("cuda", torch.float16)]
    with caplog.at_level(logging.INFO, logger=ImageSDTPSEngine.__module__):
        eng = ImageSDTPSEngine(dm, model, engine.optimizer, eval_amp=True, use_gpu=False)
    assert eng.eval_amp is False  # no CUDA: float32, with a note
    assert any("eval_amp=True ignored" in r.getMessage() for r in caplog.records)


class _Spy(nn.Module):
    """Records the cam_label of every call of the wrapped model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.cams: list = []

    def forward(self, x, cam_label=None, return_aux=False):
        self.cams.append(None if cam_label is None else cam_label.clone())
        return self.model(x, cam_label=cam_label, return_aux=return_aux)


def test_cam_label_reaches_the_model_in_training_and_evaluation(built):
    cfg, dm, model, engine = built
    spy = _Spy(model)
    eng = ImageSDTPSEngine(dm, spy, engine.optimizer, use_gpu=False)
    batch = next(iter(dm.train_loader))
    eng.set_model_mode("train")
    eng.forward_backward(batch)
    assert torch.equal(spy.cams[0], batch["cam_label"])
    spy.cams.clear()
    rank1 = eng.test(ranks=[1, 5, 10])
    name = cfg.data.targets[0]
    query = dm.test_loader[name]["query"].dataset
    gallery = dm.test_loader[name]["gallery"].dataset
    want = [query.camera_label(s) for s in query.query] + \
           [gallery.camera_label(s) for s in gallery.gallery]
    assert torch.cat(spy.cams).tolist() == want
    res = eng.last_results[name]
    assert rank1 == pytest.approx(res["R1"]) and 0 <= res["mAP"] <= 1
    assert {"mAP", "R1", "R5", "R10", "cmc", "num_query", "num_gallery"} <= set(res)
    assert res["R1"] <= res["R5"] <= res["R10"] and res["cmc"][0] == res["R1"]
    assert res["num_query"] == len(query.query) == 24


def test_evaluation_leaves_the_rng_untouched(built):
    _, _, _, engine = built
    torch.manual_seed(5)
    state = get_rng_state()
    engine.evaluate()
    after = get_rng_state()
    assert torch.equal(state["torch"], after["torch"]) and state["python"] == after["python"]
    assert torch.equal(state["numpy"][1], after["numpy"][1])


def test_missing_modality_table_contents(built):
    cfg, dm, model, engine = built
    rows = engine.evaluate_missing()
    assert list(rows) == list(DEFAULT_MISSING_SETTINGS)
    for res in rows.values():
        assert set(res) == {"mAP", "R1", "R5", "R10"}
        assert all(0 <= v <= 1 for v in res.values())
    full = engine.evaluate()
    assert rows["none"]["mAP"] == pytest.approx(full["mAP"])
    # every row is the ranking of features extracted with those modalities zeroed by hand in
    # query and gallery (an independent mAP / rank-1), and zeroing changes the features
    model.eval()
    target = cfg.data.targets[0]
    feats = {}
    for setting in DEFAULT_MISSING_SETTINGS:
        zeroed = parse_setting(setting, ("RGB", "NI", "TI"))
        for split in ("query", "gallery"):
            out, pids, cams = [], [], []
            for data in engine.test_loader[target][split]:
                imgs = data["img"].clone()
                imgs[:, list(zeroed)] = 0
                with torch.no_grad():
                    out.append(model(imgs, cam_label=data["cam_label"]))
                pids += data["pid"].tolist()
                cams += data["camid"].tolist()
            feats[split] = (torch.cat(out).numpy(), np.array(pids), np.array(cams))
        q, g = feats["query"], feats["gallery"]
        mean_ap, r1 = reference_map(q[0], g[0], q[1], g[1], q[2], g[2], normalize=False)
        assert rows[setting]["mAP"] == pytest.approx(mean_ap, abs=1e-6), setting
        assert rows[setting]["R1"] == pytest.approx(r1, abs=1e-6), setting
        if setting == "none":
            full_feats = q[0]
        else:
            assert np.abs(q[0] - full_feats).max() > 1e-3, setting
    table = format_table(rows, first="missing")
    for setting in DEFAULT_MISSING_SETTINGS:
        assert f"\n{setting} " in table
    with pytest.raises(ValueError, match=r"unknown modality 'IR'.*\('RGB', 'NI', 'TI'\)"):
        engine.evaluate_missing(["IR"])
    with pytest.raises(ValueError, match="zeroes every modality"):
        parse_setting("RGB+NI+TI", ("RGB", "NI", "TI"))
    assert parse_setting("ti+RGB", ("RGB", "NI", "TI")) == (0, 2)


class _OnlyRGB(nn.Module):
    """Features from the RGB images alone (pooled colours), plus a tiny random term, so with
    RGB zeroed the features are pure noise: the ranking is random."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x, cam_label=None, return_aux=False):
        rgb = F.adaptive_avg_pool2d(x[:, 0], (4, 2)).flatten(1)
        return rgb + 1e-4 * torch.randn_like(rgb)


def _chance_map(engine, name, draws=60):
    """mAP / R1 of random rankings under the data set's protocol (Monte Carlo)."""
    loaders = engine.test_loader[name]
    q = [(s[1], s[2]) for s in loaders["query"].dataset.query]
    g = [(s[1], s[2]) for s in loaders["gallery"].dataset.gallery]
    rng = np.random.default_rng(0)
    maps = []
    for _ in range(draws):
        dist = rng.random((len(q), len(g)))
        _, m = compat.metrics().evaluate_rank(dist, np.array([p for p, _ in q]),
                                              np.array([p for p, _ in g]),
                                              np.array([c for _, c in q]),
                                              np.array([c for _, c in g]), use_cython=False)
        maps.append(m)
    return float(np.mean(maps)), float(np.std(maps))


def test_zeroing_the_only_informative_modality_gives_chance(make_cfg, builders, tmp_path):
    # no camera shift / clutter: pooled RGB colours then identify the RGB attribute (its own
    # root: the spec differs from the shared tiny one)
    cfg = make_cfg("synthetic.num_test_ids", "12", "synthetic.camera_shift", "0.0",
                   "synthetic.clutter", "0", root=tmp_path / "only_rgb")
    dm = builders.build_datamanager(cfg)
    model = _OnlyRGB()
    engine = ImageSDTPSEngine(dm, model, torch.optim.SGD(model.parameters(), lr=0.0),
                              use_gpu=False)
    torch.manual_seed(0)
    rows = engine.evaluate_missing(["none", "RGB", "NI", "TI", "NI+TI"])
    chance, spread = _chance_map(engine, cfg.data.targets[0])
    assert rows["none"]["mAP"] > max(2 * chance, chance + 0.15), (rows["none"], chance)
    assert abs(rows["RGB"]["mAP"] - chance) < max(3 * spread, 0.03), (rows["RGB"], chance, spread)
    for other in ("NI", "TI", "NI+TI"):  # zeroing an unused modality changes nothing
        assert rows[other]["mAP"] == pytest.approx(rows["none"]["mAP"], abs=1e-3), other


def test_checkpoint_is_torchreid_format_and_resume_restores_rng(built, make_cfg, builders,
                                                                tmp_path):
    _, dm, model, engine = built
    engine.last_results = {"x": {"mAP": 0.5, "R1": 0.25, "cmc": [0.25]}}
    torch.manual_seed(11)
    engine.save_model(epoch=2, rank1=np.float32(0.25), save_dir=str(tmp_path))
    path = tmp_path / "model" / "model.pth.tar-3"
    assert path.is_file() and engine.last_checkpoint == str(path)
    assert not [p for p in (tmp_path / "model").iterdir() if p.name.startswith(".")]
    expected = torch.rand(3)
    utils = compat.utils()
    ckpt = utils.load_checkpoint(str(path))  # torch.load(weights_only=True) in torch >= 2.6
    assert ckpt["epoch"] == 3 and ckpt["rank1"] == 0.25 and ckpt["results"]["x"]["mAP"] == 0.5
    assert {"state_dict", "optimizer", "scheduler", "rng_state"} <= set(ckpt)
    fresh = builders.build_model(make_cfg("sdtps.selection", "gumbel"), dm)
    utils.load_pretrained_weights(fresh, str(path))
    for (n, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), n
    torch.manual_seed(99)
    assert engine.resume(str(path)) == 3
    assert torch.equal(torch.rand(3), expected)


def test_rng_fork_restores_state():
    torch.manual_seed(1)
    with rng_fork():
        torch.rand(5)
        np.random.rand(3)
    a = torch.rand(2)
    torch.manual_seed(1)
    assert torch.equal(a, torch.rand(2))


def test_stock_ranking_path_matches_the_engine_and_keeps_the_rng(built):
    """rank_targets (used for torchreid's stock engines) and the engine's own test() rank
    through one path: same numbers, RNG untouched."""
    cfg, _, _, engine = built
    engine.test(ranks=[1, 5, 10])
    own = engine.last_results[cfg.data.targets[0]]
    torch.manual_seed(3)
    before = torch.get_rng_state()
    stock = rank_targets(engine)[cfg.data.targets[0]]
    assert torch.equal(before, torch.get_rng_state())
    assert stock == own  # same model, same data, same path: identical numbers
    assert set(stock) == {"mAP", "R1", "R5", "R10", "cmc", "num_query", "num_gallery"}


def test_results_summary_drops_only_the_cmc_curve():
    results = {"a": {"mAP": 0.5, "R1": 0.25, "cmc": [0.25, 1.0], "num_query": 4},
               "b": {"mAP": 1.0, "R1": 1.0, "cmc": [1.0]}}
    assert results_summary(results) == {"a": {"mAP": 0.5, "R1": 0.25, "num_query": 4},
                                        "b": {"mAP": 1.0, "R1": 1.0}}
    assert "cmc" in results["a"]  # the input is left as it was
