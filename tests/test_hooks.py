"""Engine hooks: called after each step, epoch and evaluation of a run built by ``build_all``;
an engine without hooks refuses them; the hooks leave the trained weights unchanged."""
from __future__ import annotations

import pytest
import torch

from torchreid_sdtps import config
from torchreid_sdtps.engine import EngineHook
from torchreid_sdtps.engine.hooks import HookList
from torchreid_sdtps.errors import ConfigError


class Recorder(EngineHook):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def before_step(self, engine, epoch, batch_idx):
        self.calls.append(("before_step", epoch, batch_idx))

    def after_step(self, engine, epoch, batch_idx, summary):
        assert "loss_x" in summary
        self.calls.append(("after_step", epoch, batch_idx))

    def after_epoch(self, engine, epoch):
        self.calls.append(("after_epoch", epoch))

    def after_eval(self, engine, epoch, results):
        assert results is engine.last_results and "mAP" in next(iter(results.values()))
        self.calls.append(("after_eval", epoch))


def _run(builders, cfg, hooks=()):
    _, model, _, _, engine = builders.build_all(cfg, hooks=hooks)
    kwargs = config.engine_run_kwargs(cfg)
    kwargs.pop("test_only")
    engine.run(**kwargs)
    return model, engine


def test_hooks_see_every_step_epoch_and_evaluation(make_cfg, builders):
    cfg = make_cfg("train.max_epoch", "2", "test.eval_freq", "1")
    rec = Recorder()
    model, engine = _run(builders, cfg, hooks=[rec])
    assert engine.hooks == [rec]
    steps = [c[1:] for c in rec.calls if c[0] == "after_step"]
    for e in range(2):  # every batch of both epochs, in order
        batches = [b for ep, b in steps if ep == e]
        assert batches == list(range(len(batches))) and batches
    assert [c[1:] for c in rec.calls if c[0] == "before_step"] == steps
    assert [c for c in rec.calls if c[0] != "after_step" and c[0] != "before_step"] == [
        ("after_epoch", 0), ("after_eval", 0), ("after_epoch", 1), ("after_eval", 1)]
    # a run without hooks trains the same weights
    plain, _ = _run(builders, make_cfg("train.max_epoch", "2", "test.eval_freq", "1"))
    for (name, a), b in zip(model.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), name


def test_engine_without_hooks_refuses_them(make_cfg, builders):
    cfg = make_cfg("sdtps.engine", "softmax", "model.name", "osnet_x0_25", "loss.name", "softmax",
                   "sdtps.weight_ratio", "0", "sdtps.weight_align", "0")
    with pytest.raises(ConfigError, match="hooks"):
        builders.build_all(cfg, hooks=[EngineHook()])


def test_hook_list_refuses_other_objects():
    with pytest.raises(TypeError, match="EngineHook"):
        HookList([object()])
