"""Registration through installed entry-point metadata, idempotency and third-party entries."""
from __future__ import annotations

import importlib.metadata as md
import logging
import sys
import textwrap

import pytest

import torchreid_sdtps
from torchreid_sdtps import compat, plugins
from torchreid_sdtps._entry_points import ENTRY_POINTS


def test_installed_metadata_matches_entry_point_table():
    """`pip install` wrote exactly the table that register() uses (setup.py reads it)."""
    for group, entries in ENTRY_POINTS.items():
        installed = {ep.name: ep.value for ep in md.entry_points(group=group)
                     if ep.value.startswith("torchreid_sdtps")}
        assert installed == entries, group


def test_import_registers_everything_in_torchreid():
    torchreid_sdtps.register()
    for name in ENTRY_POINTS["torchreid.datasets"]:
        assert name in compat.image_dataset_registry(), name
    for name in ENTRY_POINTS["torchreid.models"]:
        assert name in compat.model_factory(), name
    assert set(ENTRY_POINTS["torchreid.losses"]) <= set(plugins.LOSSES)
    assert set(ENTRY_POINTS["torchreid.engines"]) <= set(plugins.ENGINES)
    # the stock engines are torchreid's own classes, unmodified
    assert plugins.get_engine("triplet") is compat.engine().ImageTripletEngine
    assert plugins.get_engine("softmax") is compat.engine().ImageSoftmaxEngine


def test_load_plugins_is_idempotent():
    first = torchreid_sdtps.load_plugins()
    assert set(first) == set(ENTRY_POINTS)
    again = torchreid_sdtps.load_plugins()
    assert again == {g: [] for g in ENTRY_POINTS}


def test_registered_objects_come_from_the_entry_points():
    for ep in md.entry_points(group="torchreid.models"):
        if ep.value.startswith("torchreid_sdtps"):
            assert compat.model_factory()[ep.name] is ep.load()
    for ep in md.entry_points(group="torchreid.datasets"):
        if ep.value.startswith("torchreid_sdtps"):
            assert compat.image_dataset_registry()[ep.name] is ep.load()


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """An installed third-party distribution with one good and two broken entries."""
    (tmp_path / "tp_sdtps_plugin.py").write_text(textwrap.dedent("""
        import torch.nn as nn
        def tiny_model(num_classes, loss="softmax", pretrained=True, use_gpu=True, **kw):
            return nn.Linear(4, num_classes)
        class TinyLoss(nn.Module):
            pass
    """))
    dist = tmp_path / "tp_sdtps_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tp-sdtps-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""
        [torchreid.models]
        tp_tiny = tp_sdtps_plugin:tiny_model
        tp_missing = tp_no_such_module:model
        tp_badattr = tp_sdtps_plugin:does_not_exist
        [torchreid.losses]
        tp_loss = tp_sdtps_plugin:TinyLoss
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    compat.model_factory().pop("tp_tiny", None)
    plugins.LOSSES.pop("tp_loss", None)
    sys.modules.pop("tp_sdtps_plugin", None)


def test_third_party_entries_register_and_broken_ones_warn(third_party, caplog):
    with caplog.at_level(logging.WARNING, logger="torchreid_sdtps.plugins"):
        result = torchreid_sdtps.load_plugins()
    assert result["torchreid.models"] == ["tp_tiny"]
    assert result["torchreid.losses"] == ["tp_loss"]
    model = compat.models().build_model("tp_tiny", 7)
    assert model.out_features == 7
    assert plugins.get_loss("tp_loss").__name__ == "TinyLoss"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert any("tp_missing" in w and "tp_no_such_module" in w for w in warnings)
    assert any("tp_badattr" in w and "does_not_exist" in w for w in warnings)
    # our own entries are all still there
    assert set(ENTRY_POINTS["torchreid.models"]) <= set(compat.model_factory())


def test_name_clash_with_a_different_object_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        compat.register_model("sdtps_vit_tiny", lambda *a, **k: None)
    with pytest.raises(ValueError, match="already registered"):
        compat.register_image_dataset("rgbnt201", object)


def test_unknown_names_list_the_registered_ones():
    with pytest.raises(KeyError, match="sdtps"):
        plugins.get_engine("nope")
    with pytest.raises(KeyError, match="selection_ratio"):
        plugins.get_loss("nope")
    with pytest.raises(ValueError, match="rgbnt201"):
        compat.data().datasets.init_image_dataset("no_such_dataset", root="x")


def test_a_broken_entry_of_our_own_raises(monkeypatch):
    """Our own entries must never be skipped silently (unlike third-party ones)."""
    monkeypatch.setitem(plugins.ENTRY_POINTS["torchreid.losses"], "broken",
                        "torchreid_sdtps.losses.no_such_module:Loss")
    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        plugins.register()
    assert "broken" not in plugins.LOSSES


def test_every_registry_refuses_a_clash_the_same_way():
    """Datasets, models, losses and engines share one rule: same object again is a no-op, a
    different object under a taken name is refused naming both."""
    other = object()
    cases = [
        (compat.register_image_dataset, "rgbnt201", compat.image_dataset_registry(), "dataset"),
        (compat.register_model, "sdtps_vit_tiny", compat.model_factory(), "model"),
        (plugins._REGISTRARS["torchreid.losses"], "selection_ratio", plugins.LOSSES, "loss"),
        (plugins._REGISTRARS["torchreid.engines"], "sdtps", plugins.ENGINES, "engine"),
    ]
    for register, name, registry, kind in cases:
        taken = registry[name]
        assert register(name, taken) is False
        with pytest.raises(ValueError, match=rf"^{kind} name '{name}' is already registered "
                                             r"to .*; refusing to replace it with <object"):
            register(name, other)
        assert registry[name] is taken
