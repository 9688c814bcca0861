"""Checks torchreid leaves to a bare ``assert``: a P x K batch the train split cannot fill.

torchreid's ``RandomIdentitySampler`` asserts ``#identities >= batch_size // num_instances``
without a message. :func:`check_train_sampler` runs first (``compat`` binds it in front of
torchreid's ``build_train_sampler``) and says what is available, what is needed and which
config keys change it. Evaluation-only runs build their data manager with
:data:`EVAL_TRAIN_SAMPLER`, so they never need a valid P x K sampler.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError

__all__ = ["SamplerConfigError", "check_train_sampler", "EVAL_TRAIN_SAMPLER"]

#: the train sampler of evaluation-only runs (any train split fills it)
EVAL_TRAIN_SAMPLER = "RandomSampler"


class SamplerConfigError(ConfigError):
    """The train sampler cannot build a batch from the train split."""


def check_train_sampler(data_source: Sequence[Any], train_sampler: str, batch_size: int,
                        num_instances: int) -> None:
    """Raise :class:`SamplerConfigError` if ``RandomIdentitySampler`` cannot fill one P x K
    batch (P = ``batch_size // num_instances`` identities of K = ``num_instances`` samples)
    from ``data_source`` (torchreid's ``(paths, pid, camid, ...)`` list)."""
    if train_sampler != "RandomIdentitySampler":
        return
    keys = ("lower train.batch_size, raise sampler.num_instances, or set "
            "sampler.train_sampler RandomSampler (no P x K batches)")
    if num_instances < 1 or batch_size < num_instances:
        raise SamplerConfigError(
            f"RandomIdentitySampler: batch_size={batch_size} must be >= num_instances="
            f"{num_instances} >= 1 (train.batch_size, sampler.num_instances)")
    available = len({item[1] for item in data_source})
    needed = batch_size // num_instances
    if available < needed:
        raise SamplerConfigError(
            f"RandomIdentitySampler: the train split has {available} identities, but a P x K "
            f"batch needs P = batch_size // num_instances = {batch_size} // {num_instances} = "
            f"{needed} identities; {keys}")
