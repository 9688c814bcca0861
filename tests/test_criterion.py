"""The loss composition: ``EngineOptions`` (the one list of engine options and their config
keys) and ``SDTPSCriterion`` (model outputs -> ``(loss, summary)``)."""
from __future__ import annotations

import pytest
import torch

from torchreid_sdtps import config
from torchreid_sdtps.engine.options import EngineOptions
from torchreid_sdtps.errors import ConfigError
from torchreid_sdtps.losses.criterion import SDTPSCriterion


def test_every_option_has_its_config_key_with_the_same_default():
    cfg = config.get_default_config()
    defaults = EngineOptions.config_defaults()
    assert set(defaults) == set(EngineOptions.keys().values())
    for key, value in defaults.items():
        assert config.config_value(cfg, key) == value, key
    # the config values build the options (use_amp/dropout_subsets differ from the Python ones)
    built = EngineOptions.from_dict(config.engine_kwargs(cfg))
    assert built.replace(use_amp=False, dropout_subsets=None) == EngineOptions()
    assert set(EngineOptions.plain_values()) <= set(EngineOptions.field_names())


@pytest.mark.parametrize("changes, match", [
    ({"weight_align": -1.0}, r"sdtps\.weight_align -1\.0: loss weights must be >= 0"),
    ({"margin": 0.3, "soft_margin": True}, "soft_margin uses no margin"),
    ({"dropout_triplet": "some"}, r"train\.modality_dropout\.triplet \(dropout_triplet\)"),
    ({"head_reduction": "max"}, r"loss\.head_reduction must be one of"),
    ({"modality_dropout": 1.0}, r"\[0, 1\)"),
    ({"nonsense": 1}, "unknown engine option"),
])
def test_bad_options_name_their_key(changes, match):
    with pytest.raises(ConfigError, match=match):
        EngineOptions().replace(**changes)


def _outputs(b: int = 8, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = [torch.randn(b, classes, generator=g, requires_grad=True) for _ in range(2)]
    feats = [torch.randn(b, 6, generator=g, requires_grad=True) for _ in range(2)]
    aux = {"soft_masks": torch.rand(b, 3, 10, generator=g), "ratio": 0.5,
           "tokens": torch.randn(b, 3, 4, 6, generator=g),
           "global": torch.randn(b, 3, 5, generator=g, requires_grad=True)}
    return ((logits, feats), aux), torch.arange(classes).repeat_interleave(b // classes)


def test_loss_is_the_weighted_sum_of_the_reported_terms():
    opts = EngineOptions(weight_t=0.7, weight_x=0.3, weight_ratio=2.0, weight_align=0.5,
                         weight_partial=1.5)
    crit = SDTPSCriterion(opts, num_classes=4)
    outputs, pids = _outputs()
    loss, summary = crit(outputs, pids)
    assert set(summary) == {"loss_t", "loss_x", "acc", "loss_ratio", "loss_align", "loss_partial"}
    expected = (0.7 * summary["loss_t"] + 0.3 * summary["loss_x"]
                + 2.0 * summary["loss_ratio"] + 0.5 * summary["loss_align"]
                + 1.5 * summary["loss_partial"])
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # a zero weight computes (and reports) nothing
    _, summary = SDTPSCriterion(opts.replace(weight_ratio=0.0, weight_t=0.0, weight_partial=0.0),
                                4)(outputs, pids)
    assert set(summary) == {"loss_x", "acc", "loss_align"}


def test_partial_match_triplet_ranks_every_two_modalities_as_the_presence_match_does():
    """The partial term is the mean over the three two-modality subsets of the triplet on
    exactly the ranking feature ``missing_match present`` builds with that modality absent;
    its gradient reaches the guides; under dropout only complete samples take part."""
    from torchreid_sdtps.models.missing import presence_match_feature

    crit = SDTPSCriterion(EngineOptions(), num_classes=4)
    (_, aux), pids = _outputs()
    glob = aux["global"]
    loss = crit.partial(glob, pids)
    expected = 0.0
    for drop in range(3):
        present = torch.ones(len(pids), 3, dtype=torch.bool)
        present[:, drop] = False
        feature = presence_match_feature(glob.flatten(1), present, glob.shape[-1])
        expected += crit.triplet(feature, pids).item() / 3  # zero blocks add no distance
    assert loss.item() == pytest.approx(expected, rel=1e-5) and loss.item() > 0
    loss.backward()
    assert glob.grad.abs().sum(-1).gt(0).all()
    # modality dropout: a sample missing a modality is left out
    present = torch.ones(len(pids), 3, dtype=torch.bool)
    present[0, 1] = False
    keep = torch.arange(1, len(pids))
    assert crit.partial(glob, pids, present).item() == pytest.approx(
        crit.partial(glob[keep], pids[keep]).item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"guides \(B, M, C\)"):
        crit.partial(glob[:, :1], pids)


def test_head_reduction_sums_or_averages_the_heads():
    outputs, pids = _outputs()
    mean = SDTPSCriterion(EngineOptions(), 4)
    total = SDTPSCriterion(EngineOptions(head_reduction="sum"), 4)
    feats = outputs[0][1]
    assert total.head_loss(total.triplet, feats, pids).item() == pytest.approx(
        2 * mean.head_loss(mean.triplet, feats, pids).item(), rel=1e-6)


def test_training_model_outputs_are_required():
    outputs, pids = _outputs()
    with pytest.raises(ValueError, match="loss='triplet'"):
        SDTPSCriterion(EngineOptions(), 4)((outputs[0][0], outputs[1]), pids)
