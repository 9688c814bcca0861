"""Checks torchreid leaves to a bare ``assert`` or to a failure deep in training: P x K batches.

torchreid's ``RandomIdentitySampler`` asserts ``#identities >= batch_size // num_instances``
without a message, and accepts a batch size that is not a multiple of K or gives P = 1, which
trains until batch-hard mining meets a batch without a negative. :func:`check_run` (data-free)
runs before anything is built or written; :func:`check_train_sampler` runs again in front of
torchreid's ``build_train_sampler`` (:mod:`torchreid_sdtps.patches` binds it there, so torchreid's own scripts get
it too) and also counts the train identities. Each error names the config keys and values.
Evaluation-only runs build their data manager with
:data:`EVAL_TRAIN_SAMPLER`, so they never need a valid P x K sampler.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError

__all__ = ["SamplerConfigError", "check_batch_config", "check_train_sampler", "check_run",
           "EVAL_TRAIN_SAMPLER"]

#: the train sampler of evaluation-only runs (any train split fills it)
EVAL_TRAIN_SAMPLER = "RandomSampler"


class SamplerConfigError(ConfigError):
    """The train sampler cannot build a batch from the train split."""


_KEYS = "train.batch_size, sampler.num_instances"


def check_batch_config(train_sampler: str, batch_size: int, num_instances: int) -> None:
    """Raise :class:`SamplerConfigError` unless ``RandomIdentitySampler`` batches are whole
    P x K batches with P >= 2: ``batch_size`` a multiple of K = ``num_instances`` (else the
    loader cuts identities across batches and a batch can hold one identity), and P =
    batch_size / K >= 2 (batch-hard triplet mining needs a negative in every batch; torchreid's
    mining fails with ``min(): Expected reduction dim`` when a batch has none).

    Needs no data, so the commands run it before anything is written."""
    if train_sampler != "RandomIdentitySampler":
        return
    k, b = int(num_instances), int(batch_size)
    if k < 1 or b < 1:
        raise SamplerConfigError(f"RandomIdentitySampler: train.batch_size={b} and "
                                 f"sampler.num_instances={k} must be >= 1")
    hint = (f"e.g. train.batch_size {max(2, round(b / k)) * k} for sampler.num_instances {k}, "
            "or sampler.train_sampler RandomSampler (no P x K batches)")
    if b % k:
        raise SamplerConfigError(
            f"RandomIdentitySampler: train.batch_size={b} is not a multiple of "
            f"sampler.num_instances={k}; a P x K batch holds P identities of K images each, "
            f"so identities would be cut across batches ({_KEYS}); {hint}")
    if b // k < 2:
        raise SamplerConfigError(
            f"RandomIdentitySampler: train.batch_size={b} / sampler.num_instances={k} gives "
            f"P = {b // k} identity per batch; batch-hard triplet mining needs P >= 2 "
            f"(a negative in every batch) ({_KEYS}); {hint}")


def check_train_sampler(data_source: Sequence[Any], train_sampler: str, batch_size: int,
                        num_instances: int) -> None:
    """:func:`check_batch_config`, then: the train split (torchreid's ``(paths, pid, camid,
    ...)`` list) has at least P identities. Identities with fewer than K images count: torchreid's
    ``RandomIdentitySampler`` draws their K with replacement."""
    check_batch_config(train_sampler, batch_size, num_instances)
    if train_sampler != "RandomIdentitySampler":
        return
    available = len({item[1] for item in data_source})
    needed = batch_size // num_instances
    if available < needed:
        raise SamplerConfigError(
            f"RandomIdentitySampler: the train split has {available} identities, but a P x K "
            f"batch needs P = train.batch_size / sampler.num_instances = {batch_size} / "
            f"{num_instances} = {needed} identities; lower train.batch_size, raise "
            "sampler.num_instances, or set sampler.train_sampler RandomSampler")


def check_run(cfg: Any) -> None:
    """The data-free checks of a training config (:func:`check_batch_config`); value ranges
    are checked once, by ``config.checks`` when the config is loaded."""
    check_batch_config(cfg.sampler.train_sampler, cfg.train.batch_size,
                       cfg.sampler.num_instances)
