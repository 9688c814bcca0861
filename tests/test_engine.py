"""ImageSDTPSEngine on the CPU: one training step with both auxiliary losses, camera labels in
training and evaluation, ranking results, the missing-modality table, checkpoints and RNG."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchreid_sdtps
from torchreid_sdtps import compat, config, plugins
from torchreid_sdtps.engine import ImageSDTPSEngine
from torchreid_sdtps import build
from torchreid_sdtps.engine.sdtps_engine import (DEFAULT_MISSING_SETTINGS, format_table,
                                                 get_rng_state, parse_setting, rng_fork)

torch.set_num_threads(1)

TINY = ["synthetic.num_train_ids", "6", "synthetic.num_test_ids", "6",
        "synthetic.num_cameras", "2", "synthetic.images_per_camera", "2",
        "synthetic.height", "64", "synthetic.width", "32", "data.height", "64",
        "data.width", "32", "train.batch_size", "8", "sampler.num_instances", "2",
        "test.batch_size", "64", "use_gpu", "False"]


def _cfg(root, save_dir, *opts):
    return config.load_config(opts=TINY + ["data.root", str(root), "data.save_dir",
                                           str(save_dir), *opts], demo=True)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("engine_data")


@pytest.fixture()
def built(data_root, tmp_path):
    """(cfg, datamanager, model, engine) with Gumbel selection, so both aux losses are live."""
    cfg = _cfg(data_root, tmp_path / "log", "sdtps.selection", "gumbel")
    dm, model, _, _, engine = build.build_all(cfg)
    return cfg, dm, model, engine


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


def test_loss_weights_select_summary_entries(built, data_root, tmp_path):
    cfg = _cfg(data_root, tmp_path / "log", "sdtps.weight_ratio", "0.0",
               "sdtps.weight_align", "0.0")
    dm, model, _, _, engine = build.build_all(cfg)
    engine.set_model_mode("train")
    summary = engine.forward_backward(next(iter(dm.train_loader)))
    assert set(summary) == {"loss_x", "loss_t", "acc"}
    with pytest.raises(ValueError, match="weights must be >= 0"):
        ImageSDTPSEngine(dm, model, engine.optimizer, weight_align=-1.0, use_gpu=False)


def test_amp_is_off_on_cpu_with_a_note(built, caplog):
    _, dm, model, engine = built
    with caplog.at_level(logging.INFO, logger="torchreid_sdtps.engine.sdtps_engine"):
        eng = ImageSDTPSEngine(dm, model, engine.optimizer, use_amp=True, use_gpu=False)
    assert not eng.use_amp and not eng.scaler.is_enabled()
    assert any("use_amp=True ignored" in r.getMessage() for r in caplog.records)


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
    assert any(rows[s]["mAP"] != rows["none"]["mAP"] for s in DEFAULT_MISSING_SETTINGS[1:])
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


def test_zeroing_the_only_informative_modality_gives_chance(tmp_path_factory):
    root = tmp_path_factory.mktemp("only_rgb")
    # no camera shift / clutter: pooled RGB colours then identify the RGB attribute
    cfg = config.load_config(opts=TINY + [
        "data.root", str(root), "synthetic.num_test_ids", "12", "synthetic.camera_shift", "0.0",
        "synthetic.clutter", "0", "data.save_dir", str(root / "log")], demo=True)
    dm = build.build_datamanager(cfg)
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


def test_checkpoint_is_torchreid_format_and_resume_restores_rng(built, tmp_path):
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
    fresh = build.build_model(_cfg(tmp_path, tmp_path, "sdtps.selection", "gumbel"), dm)
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
