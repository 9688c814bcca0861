"""Distributed P x K identity sampler: N ranks share one epoch-seeded list of global batches.

torchreid's ``RandomIdentitySampler`` draws from the global ``random`` module, so N processes
would each draw their own (or, seeded alike, the same) batches. Here every rank builds the
*same* list of global P x K batches from a generator seeded with ``seed + epoch`` (fast-reid's
identity samplers do the same with a shared seed), and rank r keeps identities
``[r * P/N, (r+1) * P/N)`` of each global batch, K instances each. Hence, step by step,

- the ranks' identities are disjoint and their union is the global P x K batch;
- N ranks with per-rank batch ``B/N`` see exactly the samples one process sees with batch
  ``B`` (``num_replicas=1``), in the same order once concatenated by rank.

Batch construction follows torchreid's sampler: each identity's indices are shuffled (drawn
with replacement up to K when it has fewer), cut into groups of K, and identities with groups
left are drawn P at a time until fewer than P remain. Call :meth:`set_epoch` before each epoch
(the engine wrapper in :mod:`torchreid_sdtps.engine.ddp` does), as with torch's
``DistributedSampler``.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from .. import dist
from ..errors import ConfigError

__all__ = ["DistributedIdentitySampler"]


class DistributedIdentitySampler(Sampler[int]):
    """This rank's share of global P x K batches (see the module doc).

    Args:
        data_source: samples ``(paths, pid, camid, ...)`` (torchreid's ``dataset.train``).
        batch_size: the *global* batch size B = P x K over all ranks.
        num_instances: K, instances per identity.
        num_replicas: number of ranks N (default: the process group's size).
        rank: this rank (default: the process's rank).
        seed: shared seed; epoch e uses ``seed + e``.
    """

    def __init__(self, data_source: Sequence, batch_size: int, num_instances: int,
                 num_replicas: int | None = None, rank: int | None = None,
                 seed: int = 0) -> None:
        self.num_replicas = dist.world_size() if num_replicas is None else int(num_replicas)
        self.rank = dist.rank() if rank is None else int(rank)
        if not 0 <= self.rank < self.num_replicas:
            raise ConfigError(f"DistributedIdentitySampler: rank {self.rank} outside "
                             f"[0, {self.num_replicas})")
        if num_instances < 1 or batch_size % num_instances:
            raise ConfigError(f"DistributedIdentitySampler: batch_size {batch_size} must be a "
                             f"multiple of num_instances {num_instances} (P x K)")
        self.num_instances = int(num_instances)
        self.num_pids_per_batch = batch_size // num_instances
        if self.num_pids_per_batch % self.num_replicas:
            raise ConfigError(
                f"DistributedIdentitySampler: P = batch_size / num_instances = "
                f"{self.num_pids_per_batch} identities per global batch must be divisible by "
                f"the {self.num_replicas} ranks (train.batch_size is the global batch)")
        self.pids_per_rank = self.num_pids_per_batch // self.num_replicas
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.epoch = 0
        self._cache: tuple[int, list] | None = None
        index: dict[int, list[int]] = defaultdict(list)
        for i, item in enumerate(data_source):
            index[int(item[1])].append(i)
        self.index = dict(sorted(index.items()))
        if len(self.index) < self.num_pids_per_batch:
            raise ConfigError(f"DistributedIdentitySampler: {len(self.index)} identities, fewer "
                             f"than P = {self.num_pids_per_batch} per batch")

    def set_epoch(self, epoch: int) -> None:
        """Use the permutation of ``epoch`` (the same on every rank)."""
        self.epoch = int(epoch)

    def global_batches(self) -> list[list[list[int]]]:
        """This epoch's global batches: ``[batch][identity] -> K indices`` (all ranks)."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        rng = np.random.RandomState((self.seed + self.epoch) % 2 ** 32)
        k = self.num_instances
        groups: dict[int, list[list[int]]] = {}
        for pid, idxs in self.index.items():
            arr = np.asarray(idxs)
            arr = rng.choice(arr, size=k, replace=True) if len(arr) < k else rng.permutation(arr)
            usable = len(arr) - len(arr) % k
            groups[pid] = [arr[j:j + k].tolist() for j in range(0, usable, k)]
        available = list(groups)
        batches = []
        while len(available) >= self.num_pids_per_batch:
            chosen = rng.choice(len(available), size=self.num_pids_per_batch, replace=False)
            pids = [available[c] for c in chosen]
            batches.append([groups[pid].pop(0) for pid in pids])
            available = [pid for pid in available if groups[pid]]
        self._cache = (self.epoch, batches)
        return batches

    def __iter__(self) -> Iterator[int]:
        lo = self.rank * self.pids_per_rank
        for batch in self.global_batches():
            for group in batch[lo:lo + self.pids_per_rank]:
                yield from group

    def __len__(self) -> int:
        """Exact: the number of indices this rank yields in the current epoch."""
        return len(self.global_batches()) * self.pids_per_rank * self.num_instances
