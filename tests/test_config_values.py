"""Config values checked in one place before anything is built: every numeric option of the
defaults, given a value out of its range, is refused with one line naming the key and the
value (the commands exit 2 with it, leaving no folder)."""
from __future__ import annotations

import pytest

from torchreid_sdtps import cli, config
from torchreid_sdtps.errors import ConfigError

#: numeric key of the defaults -> a value out of its range
BAD: dict[str, str] = {
    "data.workers": "-1", "data.split_id": "-1", "data.height": "100", "data.width": "0",
    "data.k_tfm": "0", "data.norm_mean": "[0.5, 0.5, 1.5]", "data.norm_std": "[0.2, 0.0, 0.2]",
    "data.flip_prob": "1.5", "data.pad": "-2", "data.erase_prob": "-0.1",
    "sampler.num_instances": "0", "sampler.num_cams": "0", "sampler.num_datasets": "0",
    "train.lr": "-1", "train.weight_decay": "-0.1", "train.max_epoch": "0",
    "train.start_epoch": "-1", "train.batch_size": "0", "train.fixbase_epoch": "-1",
    "train.base_lr_mult": "-0.5", "train.stepsize": "[0, 10]", "train.gamma": "0.0",
    "train.warmup_epoch": "-1", "train.warmup_factor": "0.0", "train.min_lr_factor": "1.5",
    "train.backbone_lr": "0.0", "train.bias_lr_factor": "-1.0", "train.weight_decay_bias": "-1.0",
    "train.lr_noise_pct": "0.0", "train.lr_noise_std": "0.0", "train.lr_noise_seed": "-1",
    "train.print_freq": "0", "train.seed": "-3", "train.modality_dropout.prob": "1.0",
    "sgd.momentum": "1.0", "sgd.dampening": "-0.1", "rmsprop.alpha": "1.0", "adam.beta1": "1.0",
    "adam.beta2": "-0.1", "loss.triplet.margin": "-0.3", "loss.triplet.weight_t": "-1.0",
    "loss.triplet.weight_x": "-1.0", "test.batch_size": "0", "test.ranks": "[0, 5]",
    "test.start_eval": "-1", "test.visrank_topk": "0", "sdtps.sie_coe": "-1.0",
    "sdtps.drop_path": "1.0", "sdtps.ratio": "0.0", "sdtps.aggr_ratio": "0.0",
    "sdtps.num_aggr": "0", "sdtps.beta": "0.75", "sdtps.gumbel_noise": "-0.1",
    "sdtps.gumbel_tau": "0.0", "sdtps.weight_ratio": "-1.0", "sdtps.weight_align": "-0.5",
    "sdtps.align_margin": "-0.2", "synthetic.num_train_ids": "0", "synthetic.num_test_ids": "0",
    "synthetic.num_cameras": "1", "synthetic.images_per_camera": "0", "synthetic.height": "16",
    "synthetic.width": "8", "synthetic.values_per_modality": "1",
    "synthetic.noise": "[0.03, -0.04, 0.05]", "synthetic.camera_shift": "-1.0",
    "synthetic.pose_jitter": "-1.0", "synthetic.clutter": "-1", "synthetic.jpeg_quality": "0",
    "synthetic.seed": "-1", "synthetic.cue_size": "[0, 2]", "synthetic.patch_size": "4",
    "synthetic.distractors": "-1", "sdtps.patch_size": "0",
    "train.modality_dropout.start_epoch": "-1", "sdtps.weight_partial": "-1.0",
}
#: numeric keys every value of which means something
UNBOUNDED = {"test.eval_freq": "any integer: <= 0 ranks only after the last epoch"}


def _numeric_keys(node, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        if isinstance(value, dict):
            keys += _numeric_keys(value, f"{prefix}{key}.")
        elif isinstance(value, bool):
            continue
        elif value is None or isinstance(value, (int, float)) or (
                isinstance(value, list) and value
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)):
            keys.append(prefix + key)
    return keys


def test_every_numeric_option_has_an_out_of_range_value_here():
    assert set(_numeric_keys(config.get_default_config())) == set(BAD) | set(UNBOUNDED)


@pytest.mark.parametrize("key", sorted(BAD))
def test_an_out_of_range_value_is_refused_naming_the_key(key):
    extra = []
    if key == "synthetic.cue_size":
        extra = ["synthetic.cue", "localized"]  # cue_size is used by the localized cue
    with pytest.raises(ConfigError) as info:
        config.load_config(opts=[*extra, key, BAD[key]])
    message = str(info.value)
    assert "\n" not in message
    field = key.rsplit(".", 1)[1]
    assert key in message or f"{key.split('.')[0]}.{field}" in message, message
    assert field in message


def test_the_patch_size_option_sets_the_size_multiple():
    """``sdtps.patch_size`` replaces the backbone's patch size in the image-size check."""
    cfg = config.load_config(opts=["sdtps.patch_size", "8", "data.height", "72"])
    assert cfg.data.height == 72
    with pytest.raises(ConfigError, match=r"data.height 76: must be a multiple of 8, "
                                          r"the patch size sdtps.patch_size gives "):
        config.load_config(opts=["sdtps.patch_size", "8", "data.height", "76"])


@pytest.mark.parametrize("key, value, says", [
    ("data.height", "100", "data.height 100: must be a multiple of 16, the patch size of "
                           "sdtps_vit_tiny"),
    ("train.lr", "-1", "train.lr -1.0: must be > 0"),
    ("train.max_epoch", "0", "train.max_epoch 0: must be >= 1"),
])
def test_commands_exit_2_with_one_line_before_anything_is_written(tmp_path, capsys, key, value,
                                                                   says):
    save = tmp_path / "run"
    code = cli.run("train", ["data.save_dir", str(save), "data.root", str(tmp_path / "data"),
                             key, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].endswith(says), err
    assert not save.exists() and not (tmp_path / "data").exists()
