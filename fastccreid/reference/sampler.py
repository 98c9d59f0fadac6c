"""The seed's P x K identity sampler (FIRe-CCReID ``data_process/samplers.py``: ``RandomIdentitySampler`` for
(path, pid, camid) triples and the identical ``RandomIdentitySampler_cc`` for (path, pid, clothid, camid)).

Per epoch (each ``iter``): for every pid (in order of first appearance), copy its indices; fewer than K -> K
drawn with replacement by ``np.random.choice``; ``random.shuffle``; cut into chunks of K (remainder dropped).
Then, while at least P = batch_size // K pids still have chunks, ``random.sample`` P of them and append one
chunk of each. Randomness: the GLOBAL ``random`` and ``numpy.random`` RNGs, as the seed (seeded by
``set_random_seed``). Not distributed, not optimised.
"""

from __future__ import annotations

import copy
import random
from collections import defaultdict

import numpy as np
from torch.utils.data.sampler import Sampler

from fastccreid.data.records import ImageRecord


def _pid_of(item) -> int:
    if isinstance(item, ImageRecord):
        return item.pid
    if isinstance(item, (tuple, list)) and len(item) in (3, 4):
        return item[1]
    raise TypeError("data_source items must be ImageRecord or (path, pid, camid[, clothes]) tuples, "
                    f"got {type(item).__name__}")


class RandomIdentitySampler(Sampler):
    """Yields dataset indices, P identities x K instances per consecutive batch of ``batch_size``.

    ``data_source``: a list of ``ImageRecord`` or of the seed's tuples (path, pid, camid) /
    (path, pid, clothid, camid); only the pid (field 1) is read. ``len()`` is the seed's estimate before the
    first epoch and the last epoch's actual length afterwards (as the seed)."""

    def __init__(self, data_source, batch_size: int, num_instances: int):
        if num_instances < 1 or batch_size < num_instances:
            raise ValueError(f"need 1 <= num_instances <= batch_size, got num_instances={num_instances}, "
                             f"batch_size={batch_size}")
        self.data_source = data_source
        self.batch_size = batch_size
        self.num_instances = num_instances
        self.num_pids_per_batch = self.batch_size // self.num_instances
        self.index_dic = defaultdict(list)
        for index, item in enumerate(self.data_source):
            self.index_dic[_pid_of(item)].append(index)
        self.pids = list(self.index_dic.keys())
        self.length = 0
        for pid in self.pids:
            num = max(len(self.index_dic[pid]), self.num_instances)
            self.length += num - num % self.num_instances

    def __iter__(self):
        batch_idxs_dict = defaultdict(list)
        for pid in self.pids:
            idxs = copy.deepcopy(self.index_dic[pid])
            if len(idxs) < self.num_instances:
                idxs = np.random.choice(idxs, size=self.num_instances, replace=True)
            random.shuffle(idxs)
            batch_idxs = []
            for idx in idxs:
                batch_idxs.append(int(idx))
                if len(batch_idxs) == self.num_instances:
                    batch_idxs_dict[pid].append(batch_idxs)
                    batch_idxs = []

        avai_pids = copy.deepcopy(self.pids)
        final_idxs = []
        while len(avai_pids) >= self.num_pids_per_batch:
            selected_pids = random.sample(avai_pids, self.num_pids_per_batch)
            for pid in selected_pids:
                batch_idxs = batch_idxs_dict[pid].pop(0)
                final_idxs.extend(batch_idxs)
                if len(batch_idxs_dict[pid]) == 0:
                    avai_pids.remove(pid)
        self.length = len(final_idxs)
        return iter(final_idxs)

    def __len__(self) -> int:
        return self.length
