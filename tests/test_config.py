"""yacs configuration: torchreid's key layout, strict merging, ``_BASE_`` inheritance, the
HDM/ATM refusal and the choices (one source each), the shipped configs, the kwargs helpers and
the warm-up schedules."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
import yaml

from torchreid_sdtps import choices, compat, config
from torchreid_sdtps.choices import removed_stage
from torchreid_sdtps.config import ConfigError
from torchreid_sdtps.errors import UnknownNameError
from torchreid_sdtps.optim import WarmupLambda, WarmupLR, build_lr_scheduler

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return str(path)


def test_torchreid_key_layout_is_present():
    keys = set(config.iter_keys(config.get_default_config()))
    required = [
        "model.name", "model.pretrained", "model.load_weights", "model.resume",
        "data.type", "data.root", "data.sources", "data.targets", "data.height", "data.width",
        "data.workers", "data.transforms", "data.norm_mean", "data.norm_std", "data.save_dir",
        "data.combineall", "sampler.train_sampler", "sampler.num_instances", "train.optim",
        "train.lr", "train.weight_decay", "train.max_epoch", "train.start_epoch",
        "train.batch_size", "train.lr_scheduler", "train.stepsize", "train.gamma", "train.seed",
        "train.print_freq", "train.warmup_epoch", "loss.name", "loss.softmax.label_smooth",
        "loss.triplet.margin", "loss.triplet.weight_t", "loss.triplet.weight_x",
        "test.batch_size", "test.dist_metric", "test.normalize_feature", "test.eval_freq",
        "test.rerank", "test.ranks", "test.missing_modalities",
    ] + [f"sdtps.{k}" for k in (
        "ratio", "aggr_ratio", "num_aggr", "beta", "selection", "gumbel_noise",
        "gumbel_tau", "score_grad", "test_feature", "weight_ratio", "weight_align",
        "align_margin", "use_amp", "backbone_weights", "engine")]
    assert not set(required) - keys, sorted(set(required) - keys)
    assert not any(w in k.lower() for k in keys for w in ("hdm", "atm", "moe"))


def test_unknown_key_in_yaml_names_key_file_and_suggestion(tmp_path):
    path = _write(tmp_path, "train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as exc:
        config.load_config(path)
    msg = str(exc.value)
    assert "'train.lrr'" in msg and path in msg and "did you mean 'train.lr'" in msg
    path = _write(tmp_path, "trian:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'trian'.*did you mean 'train'"):
        config.load_config(path)


def test_unknown_key_override_names_the_override():
    with pytest.raises(ConfigError, match=r"unknown config key 'sdtps\.rati' in command-line "
                                          r"override 'sdtps\.rati 0\.3'"):
        config.load_config(opts=["sdtps.rati", "0.3"])


@pytest.mark.parametrize("text", [
    "model:\n  hdm: true\n",
    "MODEL:\n  HDM: True\n",
    "sdtps:\n  use_atm: true\n",
    "test:\n  Atm_Layers: 2\n",
    "moe:\n  experts: 4\n",
])
def test_hdm_atm_in_yaml_refused(tmp_path, text):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        config.load_config(path)
    msg = str(exc.value)
    assert "SDTPS replaces HDM/ATM" in msg and path in msg


@pytest.mark.parametrize("opts", [["model.hdm", "True"], ["MODEL.ATM", "1"],
                                  ["sdtps.hdm_enabled", "False"]])
def test_hdm_atm_override_refused(opts):
    with pytest.raises(ConfigError, match=r"SDTPS replaces HDM/ATM") as exc:
        config.load_config(opts=opts)
    assert opts[0] in str(exc.value) and "command-line override" in str(exc.value)


def test_values_are_typed_and_coerced(tmp_path):
    cfg = config.load_config(opts=["train.lr", "1", "data.sources", "synthetic_msreid",
                                   "sdtps.num_aggr", "8", "test.ranks", "[1, 5]"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.data.sources == ["synthetic_msreid"] and cfg.sdtps.num_aggr == 8
    assert cfg.test.ranks == [1, 5] and cfg.is_frozen()
    with pytest.raises(ConfigError, match=r"'train\.lr'.*expects float"):
        config.load_config(opts=["train.lr", "fast"])
    with pytest.raises(ConfigError, match=r"'test\.evaluate'.*expects bool"):
        config.load_config(opts=["test.evaluate", "1"])
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        config.load_config(opts=["train.lr"])
    with pytest.raises(ConfigError, match="sdtps.selection"):
        config.load_config(opts=["sdtps.selection", "soft"])
    with pytest.raises(ConfigError, match="is a section"):
        config.load_config(_write(tmp_path, "train: 3\n"))
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        config.load_config(str(tmp_path / "nope.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    cfg = config.load_config(str(path))
    assert cfg.sdtps.engine == "sdtps" and cfg.loss.name == "triplet"
    if path.name != "synthetic_demo.yaml":
        assert cfg.train.optim == "adam" and cfg.train.lr == pytest.approx(3.5e-4)
        assert cfg.train.warmup_epoch > 0 and cfg.train.max_epoch in (30, 50)
        assert cfg.train.backbone_lr == pytest.approx(5e-6)  # DeMo's CLIP backbone lr
        assert cfg.sampler.train_sampler == "RandomIdentitySampler"
        assert cfg.loss.softmax.label_smooth and cfg.loss.triplet.weight_x > 0
        # the shared base file alone is RGBNT201-shaped (torchreid's default data set)
        person = "rgbnt201" in path.name or path.name.startswith("base_")
        assert (cfg.data.height, cfg.data.width) == ((256, 128) if person else (128, 256))


def test_real_dataset_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"rgbnt201_sdtps_clip.yaml", "rgbnt100_sdtps_clip.yaml", "msvr310_sdtps_clip.yaml",
            "synthetic_demo.yaml"} <= names


def test_synthetic_demo_yaml_equals_embedded_demo():
    from_yaml = config.load_config(str(REPO / "configs" / "synthetic_demo.yaml"))
    embedded = config.load_config(demo=True)
    assert from_yaml == embedded
    # the demo's values live in the package data file the repository's yaml starts from
    assert Path(config.DEMO_CONFIG).is_file()
    raw = yaml.safe_load(Path(config.DEMO_CONFIG).read_text())
    assert raw["model"]["name"] == "sdtps_vit_tiny"


def test_synthetic_node_mirrors_the_spec():
    from torchreid_sdtps.data.synthetic import SyntheticSpec

    cfg = config.load_config(opts=["synthetic.num_train_ids", "5", "synthetic.noise",
                                   "[0.0, 0.1, 0.2]"])
    spec = config.synthetic_spec(cfg)
    assert spec == SyntheticSpec(num_train_ids=5, noise=(0.0, 0.1, 0.2))


def test_kwargs_helpers_match_torchreid_signatures():
    cfg = config.load_config(str(REPO / "configs" / "rgbnt201_sdtps_clip.yaml"))
    dm_params = inspect.signature(compat.data().ImageDataManager.__init__).parameters
    assert set(config.imagedata_kwargs(cfg)) <= set(dm_params)
    from torchreid_sdtps import optim

    torchreid_params = set(inspect.signature(compat.optim().build_optimizer).parameters)
    opt_params = set(inspect.signature(optim.build_optimizer).parameters)
    group_keys = {"backbone_params", "backbone_lr", "bias_lr_factor", "weight_decay_bias"}
    assert set(config.optimizer_kwargs(cfg)) <= torchreid_params | group_keys
    assert group_keys <= opt_params
    run_params = inspect.signature(compat.engine().Engine.run).parameters
    assert set(config.engine_run_kwargs(cfg)) <= set(run_params)
    factory = compat.model_factory()["sdtps_clip_vit_b16"]
    model_kwargs = config.model_kwargs(cfg, num_cameras=4)
    assert model_kwargs["img_size"] == (256, 128) and model_kwargs["num_cameras"] == 4
    assert model_kwargs["pretrained"] is True and model_kwargs["loss"] == "triplet"
    assert "num_classes" in inspect.signature(factory).parameters
    from torchreid_sdtps.engine import ImageSDTPSEngine
    from torchreid_sdtps.engine.options import EngineOptions

    assert set(config.engine_kwargs(cfg)) == set(EngineOptions.field_names())
    assert "options" in inspect.signature(ImageSDTPSEngine.__init__).parameters
    local = config.load_config(opts=["sdtps.backbone_weights", "/w/clip.pt"])
    assert config.model_kwargs(local)["options"].backbone_weights == "/w/clip.pt"


def test_warmup_schedules():
    cos = WarmupLambda("cosine", max_epoch=10, warmup_epoch=2, warmup_factor=0.1,
                       min_lr_factor=0.0)
    assert [round(cos(e), 4) for e in (0, 1, 2)] == [0.1, 0.55, 1.0]
    assert cos(10) == pytest.approx(0.0) and 0 < cos(6) < 1
    multi = WarmupLambda("multi_step", 50, warmup_epoch=5, stepsize=[30, 40], gamma=0.1)
    assert multi(4) < 1 and multi(5) == 1 and multi(30) == pytest.approx(0.1)
    assert multi(45) == pytest.approx(0.01)
    step = WarmupLambda("single_step", 50, stepsize=[20], gamma=0.5)
    assert (step(0), step(19), step(20), step(40)) == (1.0, 1.0, 0.5, 0.25)
    with pytest.raises(ValueError, match="stepsize"):
        WarmupLambda("multi_step", 10, stepsize=[])
    with pytest.raises(ConfigError, match="lr_scheduler"):
        build_lr_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1), "poly")


def test_torchreid_scheduler_without_warmup_and_resumable_warmup():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    plain = build_lr_scheduler(opt, "multi_step", stepsize=[3], gamma=0.1, max_epoch=5,
                               warmup_epoch=0, min_lr_factor=0.0)
    assert type(plain) is torch.optim.lr_scheduler.MultiStepLR  # torchreid's own
    # warm-up + cosine: the checkpoint keeps the position, the config keeps the schedule
    opt = torch.optim.SGD([param], lr=1.0)
    short = build_lr_scheduler(opt, "warmup_cosine", max_epoch=2, warmup_epoch=1,
                               warmup_factor=0.1)
    assert isinstance(short, WarmupLR) and opt.param_groups[0]["lr"] == pytest.approx(0.1)
    opt.step()
    short.step()
    state = short.state_dict()
    torch.save(state, "/dev/null")  # plain data only
    opt2 = torch.optim.SGD([param], lr=1.0)
    longer = build_lr_scheduler(opt2, "warmup_cosine", max_epoch=10, warmup_epoch=1,
                                warmup_factor=0.1)
    longer.load_state_dict(state)
    assert longer.last_epoch == 1 and longer.lr_lambdas[0].max_epoch == 10
    opt2.step()
    longer.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(WarmupLambda("cosine", 10, 1, 0.1)(2))


def test_base_inheritance_is_relative_recursive_and_names_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text("train:\n  lr: 0.01\n  max_epoch: 7\n")
    (tmp_path / "sub" / "child.yaml").write_text(
        "_BASE_: ../base.yaml\ntrain:\n  max_epoch: 3\n")
    (tmp_path / "grand.yaml").write_text("_BASE_: [sub/child.yaml]\ndata:\n  height: 64\n")
    cfg = config.load_config(str(tmp_path / "grand.yaml"))
    assert (cfg.train.lr, cfg.train.max_epoch, cfg.data.height) == (0.01, 3, 64)
    # an error in a base file names that file, not the including one
    (tmp_path / "base.yaml").write_text("train:\n  lrr: 0.01\n")
    with pytest.raises(ConfigError, match=r"'train\.lrr' in config file '.*base\.yaml'"):
        config.load_config(str(tmp_path / "grand.yaml"))
    (tmp_path / "orphan.yaml").write_text("_BASE_: nope.yaml\n")
    with pytest.raises(FileNotFoundError, match=r"orphan\.yaml.*nope\.yaml"):
        config.load_config(str(tmp_path / "orphan.yaml"))
    with pytest.raises(ConfigError, match="only valid in a config file"):
        config.load_config(opts=["_BASE_", str(tmp_path / "base.yaml")])


def test_base_cycle_is_a_clear_error(tmp_path):
    (tmp_path / "a.yaml").write_text("_BASE_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_BASE_: a.yaml\n")
    with pytest.raises(ConfigError, match=r"includes itself through _BASE_: .*a\.yaml -> .*b\.yaml"
                                          r" -> .*a\.yaml"):
        config.load_config(str(tmp_path / "a.yaml"))


def test_unknown_key_is_a_readable_key_error_and_a_config_error():
    with pytest.raises(KeyError) as exc:
        config.load_config(opts=["train.lrr", "1"])
    assert isinstance(exc.value, ConfigError) and isinstance(exc.value, UnknownNameError)
    assert str(exc.value).startswith("unknown config key 'train.lrr'")  # no KeyError quoting


def test_one_rule_refuses_removed_stages_in_config_and_model():
    from torchreid_sdtps.models.net import reject_moe_options

    for name in ("use_hdm", "MODEL.ATM", "MoE_experts", "hdm_moe", "sdtps.Atm_Layers"):
        assert removed_stage(name) is not None, name
        with pytest.raises(ConfigError, match="SDTPS replaces HDM/ATM in this project"):
            reject_moe_options({name: True})
    for name in ("atmosphere", "schmoe", "thdm", "selection"):  # words that merely contain them
        assert removed_stage(name) is None, name
        reject_moe_options({name: True})


def test_choices_are_defined_once():
    from torchreid_sdtps.engine.sdtps_engine import DEFAULT_MISSING_SETTINGS
    from torchreid_sdtps.models import net, sdtps

    assert sdtps.SELECTIONS is choices.SELECTIONS and net.TEST_FEATURES is choices.TEST_FEATURES
    assert DEFAULT_MISSING_SETTINGS is choices.MISSING_SETTINGS
    cfg = config.get_default_config()
    assert tuple(cfg.test.missing_settings) == choices.MISSING_SETTINGS
    with pytest.raises(ConfigError, match=r"sdtps\.test_feature must be one of \['concat', "
                                          r"'sdtps', 'ori'\], got 'both'"):
        config.load_config(opts=["sdtps.test_feature", "both"])
    demo = config.get_demo_config()
    assert list(demo.data.sources) == [choices.SYNTHETIC_DATASET]


def test_sdtps_node_mirrors_the_options_dataclass():
    """One key per SDTPSOptions field plus the engine's name and keys, nothing else."""
    from torchreid_sdtps.engine.options import EngineOptions
    from torchreid_sdtps.models.options import SDTPSOptions

    node = set(config.get_default_config().sdtps)
    fields = set(SDTPSOptions.field_names())
    engine_keys = {"engine"} | {k.split(".", 1)[1] for k in EngineOptions.keys().values()
                                if k.startswith("sdtps.")}
    assert not fields & engine_keys
    assert node - engine_keys == fields
    assert engine_keys <= node
    defaults = config.get_default_config()
    assert config.model_options(defaults) == SDTPSOptions()
    assert {k: defaults.sdtps[k] for k in fields} == SDTPSOptions().to_dict()


def test_option_route_is_one_name_from_config_to_the_sdtps_block(builders, make_cfg):
    cfg = make_cfg("sdtps.ratio", "0.25", "sdtps.drop_path", "0.0", "sdtps.gumbel_tau", "0.3")
    assert config.model_options(cfg).ratio == 0.25
    dm = builders.build_datamanager(cfg)
    model = builders.build_model(cfg, dm)
    assert model.options.ratio == model.sdtps.ratio == 0.25
    assert model.sdtps.gumbel_tau == 0.3
    assert all(b.drop_path1.__class__.__name__ == "Identity" for b in model.backbone.vit.blocks)


def test_unknown_model_option_is_refused():
    from torchreid_sdtps.models.net import sdtps_vit_tiny
    from torchreid_sdtps.models.options import SDTPSOptions

    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['sdtps_ratio'\]"):
        sdtps_vit_tiny(4, pretrained=False, sdtps_ratio=0.5)
    with pytest.raises(ConfigError, match=r"unknown SDTPS model option\(s\) \['rati'\]"):
        SDTPSOptions.from_dict({"rati": 0.5})
    with pytest.raises(ConfigError, match=r"sdtps.ratio=1.5: expected in \(0, 1\]"):
        SDTPSOptions(ratio=1.5)
    with pytest.raises(ConfigError, match="did you mean 'sdtps.ratio'"):
        config.load_config(opts=["sdtps.sdtps_ratio", "0.3"])


def test_a_setting_the_engine_cannot_honour_is_refused(builders, make_cfg):
    cfg = make_cfg("sdtps.engine", "triplet", "sdtps.weight_align", "0.9")
    with pytest.raises(ConfigError, match=r"has no option 'weight_align', but "
                       r"sdtps.weight_align=0.9 asks for it"):
        builders.build_all(cfg)


def test_sdtps_option_on_a_stock_model_is_refused(builders, make_cfg):
    cfg = make_cfg("model.name", "osnet_x0_25", "model.pretrained", "False", "sdtps.ratio", "0.3",
                   "sdtps.engine", "triplet")
    dm = builders.build_datamanager(cfg)
    with pytest.raises(ConfigError, match=r"'osnet_x0_25' is not an SDTPS model; sdtps.ratio"):
        builders.build_model(cfg, dm)
