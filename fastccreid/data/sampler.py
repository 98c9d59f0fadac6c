"""The P x K identity sampler (README "Input pipeline"), seeded per epoch and shardable across ranks.

Same algorithm as the seed's ``RandomIdentitySampler``, but every epoch's order is a pure function of
(seed, epoch) drawn from a private generator (never the global RNGs), so any rank can rebuild it and
a resumed run replays the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch


class IdentitySampler(torch.utils.data.Sampler[int]):
    """Yields dataset indices in blocks of ``batch_size`` = P identities x K instances.

    Per epoch: each pid's images are shuffled (fewer than K: K drawn with replacement) and cut into chunks of K
    (remainder dropped); then P random pids that still have chunks each give one chunk, until fewer than P remain.
    With ``world_size`` W > 1, rank r takes the contiguous slice [r*B/W, (r+1)*B/W) of every global block, i.e.
    P/W whole identities, so the union over ranks is exactly the single-process global batch.
    """

    def __init__(self, pids: Sequence[int], batch_size: int, num_instances: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        if num_instances <= 0:
            raise ValueError(f"--num_instances must be positive, got {num_instances}")
        if batch_size <= 0 or batch_size % num_instances != 0:
            raise ValueError(f"--train_batch ({batch_size}) must be a positive multiple of --num_instances "
                             f"({num_instances})")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.num_pids_per_batch = batch_size // num_instances
        if self.num_pids_per_batch % world_size != 0:
            raise ValueError(f"--train_batch / --num_instances = {self.num_pids_per_batch} identities per batch must "
                             f"be divisible by the number of processes ({world_size}) so each rank gets whole "
                             f"identities")
        index_by_pid: dict[int, list[int]] = {}
        for index, pid in enumerate(pids):
            index_by_pid.setdefault(int(pid), []).append(index)
        if len(index_by_pid) < self.num_pids_per_batch:
            raise ValueError(f"--train_batch / --num_instances = {self.num_pids_per_batch} identities per batch, but "
                             f"the training set has only {len(index_by_pid)} identities")
        # Sorted pids: the order must not depend on how the dataset was listed.
        self._groups = [np.asarray(index_by_pid[p], dtype=np.int64) for p in sorted(index_by_pid)]
        self.batch_size = batch_size
        self.num_instances = num_instances
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._cache: tuple[int, list[int]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order ``__iter__`` and ``__len__`` use."""
        self.epoch = epoch

    def epoch_indices(self, epoch: int) -> list[int]:
        """The global index order for ``epoch`` (all ranks): a pure function of (seed, epoch); length is a multiple
        of batch_size and each consecutive batch_size block holds P distinct pids x K indices."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))
        k, p = self.num_instances, self.num_pids_per_batch
        chunks: list[list[np.ndarray]] = []
        for idxs in self._groups:
            drawn = rng.choice(idxs, size=k, replace=True) if len(idxs) < k else rng.permutation(idxs)
            n = len(drawn) // k
            chunks.append([drawn[i * k:(i + 1) * k] for i in range(n)])
        remaining = [len(c) for c in chunks]
        available = [i for i, n in enumerate(remaining) if n > 0]
        out: list[np.ndarray] = []
        while len(available) >= p:
            picked = rng.choice(len(available), size=p, replace=False)
            exhausted = []
            for j in picked:
                g = available[j]
                out.append(chunks[g][len(chunks[g]) - remaining[g]])
                remaining[g] -= 1
                if remaining[g] == 0:
                    exhausted.append(j)
            # Drop exhausted pids from the highest position down so earlier positions stay valid.
            for j in sorted(exhausted, reverse=True):
                available.pop(j)
        order = np.concatenate(out).tolist() if out else []
        self._cache = (epoch, order)
        return order

    def rank_batches(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """This rank's batches of ``epoch``: (global positions in the epoch's order, dataset indices), both int64
        [batches, batch_size / world_size]; rank r takes columns [r*B/W, (r+1)*B/W) of every global batch."""
        order = np.asarray(self.epoch_indices(epoch), dtype=np.int64)
        share = self.batch_size // self.world_size
        positions = np.arange(0, len(order), self.batch_size)[:, None] + self.rank * share + np.arange(share)
        return positions, order[positions]

    def __iter__(self) -> Iterator[int]:
        yield from self.rank_batches(self.epoch)[1].reshape(-1).tolist()

    def __len__(self) -> int:
        return len(self.epoch_indices(self.epoch)) // self.world_size
