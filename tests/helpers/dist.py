"""Multi-process test runs: torch.multiprocessing.spawn with a deadline (a hang fails the test, never CI), and a
race-free rendezvous through a file store instead of a free TCP port."""

from __future__ import annotations

import os
import time

import torch.multiprocessing as mp

SPAWN_TIMEOUT_S = 300.0


def init_env(rank: int, world: int, store_dir: str) -> None:
    """What the launcher gives a rank: RANK / WORLD_SIZE / LOCAL_RANK and the file-store rendezvous."""
    from fastccreid.engine.distributed import INIT_METHOD_ENV

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      **{INIT_METHOD_ENV: "file://" + os.path.join(store_dir, "store")})


def spawn(fn, nprocs: int, args: tuple, timeout: float = SPAWN_TIMEOUT_S) -> None:
    """Run ``fn(rank, *args)`` in ``nprocs`` spawned processes; raise if one fails or all are not done in time
    (the stragglers are killed)."""
    ctx = mp.spawn(fn, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            raise TimeoutError(f"{nprocs} spawned processes still running after {timeout:.0f} s")
