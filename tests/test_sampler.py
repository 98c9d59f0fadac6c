"""IdentitySampler: P x K blocks, determinism per (seed, epoch), rank sharding, and the seed's statistics."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from fastccreid.data.records import ImageRecord
from fastccreid.data.sampler import IdentitySampler
from fastccreid.reference.sampler import RandomIdentitySampler


def _pids(counts: list[int]) -> list[int]:
    """A label list where pid i has counts[i] images, interleaved so indices are not grouped by pid."""
    pids = [pid for pid, n in enumerate(counts) for _ in range(n)]
    random.Random(5).shuffle(pids)
    return pids


COUNTS = [1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 17, 3, 30, 6, 2, 11, 4, 4, 9, 20]


def _seed_epoch_length(pids: list[int], batch_size: int, k: int, rng: random.Random) -> tuple[int, Counter]:
    """The seed's RandomIdentitySampler loop, transcribed for the statistics: returns (#indices, per-pid counts)."""
    by_pid: dict[int, list[int]] = {}
    for i, p in enumerate(pids):
        by_pid.setdefault(p, []).append(i)
    chunks = {}
    for p, idxs in by_pid.items():
        idxs = list(idxs) if len(idxs) >= k else [rng.choice(idxs) for _ in range(k)]
        rng.shuffle(idxs)
        chunks[p] = [idxs[i:i + k] for i in range(0, len(idxs) - k + 1, k)]
    avail = list(by_pid)
    out: list[int] = []
    while len(avail) >= batch_size // k:
        for p in rng.sample(avail, batch_size // k):
            out.extend(chunks[p].pop(0))
            if not chunks[p]:
                avail.remove(p)
    return len(out), Counter(pids[i] for i in out)


@pytest.mark.parametrize("batch_size,k", [(16, 4), (12, 2), (8, 8)])
def test_blocks_are_p_distinct_ids_times_k(batch_size, k):
    pids = _pids(COUNTS)
    s = IdentitySampler(pids, batch_size, k, seed=3)
    for epoch in range(4):
        order = s.epoch_indices(epoch)
        assert len(order) > 0 and len(order) % batch_size == 0
        for start in range(0, len(order), batch_size):
            block = [pids[i] for i in order[start:start + batch_size]]
            ids = [block[j] for j in range(0, batch_size, k)]
            assert len(set(ids)) == batch_size // k
            for j, pid in enumerate(ids):
                assert block[j * k:(j + 1) * k] == [pid] * k
        # A pid with >= K images never repeats an image within an epoch; each chunk stays within its pid.
        per_pid = Counter(order)
        for i, c in per_pid.items():
            if COUNTS[pids[i]] >= k:
                assert c == 1


def test_deterministic_and_epochs_differ():
    pids = _pids(COUNTS)
    a = IdentitySampler(pids, 16, 4, seed=7)
    b = IdentitySampler(list(pids), 16, 4, seed=7)
    assert a.epoch_indices(2) == b.epoch_indices(2)
    a.set_epoch(5)
    b.set_epoch(5)
    assert list(a) == list(b) and len(a) == len(list(a))
    assert a.epoch_indices(0) != a.epoch_indices(1)
    assert IdentitySampler(pids, 16, 4, seed=8).epoch_indices(0) != a.epoch_indices(0)


def test_no_global_rng_use():
    pids = _pids(COUNTS)
    np.random.seed(0)
    random.seed(0)
    state_np, state_py = np.random.get_state()[1].copy(), random.getstate()
    IdentitySampler(pids, 16, 4, seed=1).epoch_indices(0)
    assert (np.random.get_state()[1] == state_np).all() and random.getstate() == state_py


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_partition_global_order(world_size):
    pids = _pids(COUNTS)
    batch_size, k = 32, 4
    global_order = IdentitySampler(pids, batch_size, k, seed=11).epoch_indices(3)
    shards = []
    for rank in range(world_size):
        s = IdentitySampler(pids, batch_size, k, seed=11, rank=rank, world_size=world_size)
        s.set_epoch(3)
        shards.append(list(s))
        assert len(s) == len(global_order) // world_size
    share = batch_size // world_size
    rebuilt = []
    for b in range(len(global_order) // batch_size):
        for rank in range(world_size):
            part = shards[rank][b * share:(b + 1) * share]
            # Whole identities per rank: each slice is (P / W) runs of K equal pids.
            assert all(len({pids[i] for i in part[j:j + k]}) == 1 for j in range(0, share, k))
            rebuilt.extend(part)
    assert rebuilt == global_order


def test_epoch_statistics_match_seed_algorithm():
    """The number of batches per epoch and each pid's count follow the seed's distribution."""
    pids = _pids(COUNTS)
    batch_size, k, epochs = 16, 4, 300
    ours = [IdentitySampler(pids, batch_size, k, seed=0).epoch_indices(e) for e in range(epochs)]
    rng = random.Random(0)
    seed_runs = [_seed_epoch_length(pids, batch_size, k, rng) for _ in range(epochs)]
    ours_len = np.array([len(o) for o in ours])
    seed_len = np.array([n for n, _ in seed_runs])
    # Same support (multiples of the batch) and same mean within sampling error.
    assert set(ours_len % batch_size) == {0}
    assert abs(ours_len.mean() - seed_len.mean()) <= 4 * (ours_len.std() + seed_len.std()) / np.sqrt(epochs) + 1e-9
    assert abs(ours_len.std() - seed_len.std()) <= 0.35 * max(ours_len.std(), seed_len.std()) + 1e-9
    assert ours_len.max() <= sum(max(c, k) // k * k for c in COUNTS)
    for pid, c in enumerate(COUNTS):
        ours_mean = np.mean([Counter(pids[i] for i in o)[pid] for o in ours])
        seed_mean = np.mean([cnt[pid] for _, cnt in seed_runs])
        assert abs(ours_mean - seed_mean) <= 0.25 * (max(c, k) // k * k) + 0.5, (pid, ours_mean, seed_mean)


@pytest.mark.parametrize("items", ["tuples", "records"])
def test_matches_reference_sampler(items):
    """The reference (seed) sampler's epoch length distribution agrees with ours; it takes the seed's
    (path, pid, clothes, cam) tuples and ImageRecords alike (an error there fails, never skips)."""
    pids = _pids(COUNTS)
    random.seed(0)
    np.random.seed(0)
    data = ([(f"img{i}.png", p, 0, 0) for i, p in enumerate(pids)] if items == "tuples"
            else [ImageRecord(f"img{i}.png", p, 0, 0) for i, p in enumerate(pids)])
    sampler = RandomIdentitySampler(data, batch_size=16, num_instances=4)
    seed_len = np.array([len(list(iter(sampler))) for _ in range(200)])
    ours_len = np.array([len(IdentitySampler(pids, 16, 4, seed=0).epoch_indices(e)) for e in range(200)])
    assert set(seed_len % 16) == {0}
    assert abs(ours_len.mean() - seed_len.mean()) <= 4 * (ours_len.std() + seed_len.std()) / np.sqrt(200) + 1e-9


def test_fewer_than_k_images_drawn_with_replacement():
    pids = [0, 1, 1, 2, 2, 2, 3]
    s = IdentitySampler(pids, 8, 4, seed=0)
    order = s.epoch_indices(0)
    assert len(order) == 16  # every pid gets one chunk of K=4 (drawn with replacement), P=2 -> 2 batches
    assert sorted(Counter(pids[i] for i in order).values()) == [4, 4, 4, 4]


@pytest.mark.parametrize(
    "kwargs,flag",
    [
        (dict(batch_size=30, num_instances=4), "--train_batch"),
        (dict(batch_size=32, num_instances=0), "--num_instances"),
        (dict(batch_size=32, num_instances=4, world_size=3), "--train_batch"),
        (dict(batch_size=32, num_instances=1), "identities"),
        (dict(batch_size=32, num_instances=4, rank=2, world_size=2), "rank"),
    ],
)
def test_invalid_arguments(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        IdentitySampler(_pids(COUNTS), **kwargs)
