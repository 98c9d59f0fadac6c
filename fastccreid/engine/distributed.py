"""torch.distributed set-up for ``torchrun``: NCCL on CUDA, gloo on CPU; rank-0 helpers and variable-size gathers.

Launch: ``torchrun --nproc_per_node=N -m fastccreid.cli train ...`` (or the ``fastccreid`` script via
``torchrun --nproc_per_node=N $(which fastccreid) train ...``). torchrun sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; without them this is a single process and nothing is initialised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

INIT_METHOD_ENV = "FASTCCREID_DIST_INIT"  # e.g. file:///tmp/x: a file-store rendezvous (tests, bench spawn)


@dataclass(frozen=True)
class DistContext:
    """Where this process runs: rank / world size (1 when not distributed), local rank and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


TIMEOUT_ENV = "FASTCCREID_DIST_TIMEOUT_S"  # collective timeout in seconds (default 3600)
DEFAULT_TIMEOUT_S = 3600.0  # NCCL's own default is 10 minutes: rank 0 evaluating a large gallery can take longer


def apply_visible_devices(gpu_devices: str = "0") -> None:
    """``--gpu_devices`` -> CUDA_VISIBLE_DEVICES, as the seed, except under torchrun / the launcher (WORLD_SIZE > 1)
    with the default "0", which would put every rank on one GPU: then the visible devices are left as they are.
    CUDA reads the variable once, when it first enumerates devices (``torch.cuda.is_available()`` is enough), so
    this must run before any CUDA query: the CLI calls it first thing for train / eval, ``run_train`` and ``setup``
    again (a no-op then)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or gpu_devices != "0":
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_devices


def collective_timeout() -> timedelta:
    """The process group's timeout: ``FASTCCREID_DIST_TIMEOUT_S`` seconds, default 3600."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds, got {text!r}") from None
    if seconds <= 0:
        raise ValueError(f"{TIMEOUT_ENV} must be > 0 seconds, got {text!r}")
    return timedelta(seconds=seconds)


def setup(use_cpu: bool = False, gpu_devices: str = "0", dist_backend: str = "auto") -> DistContext:
    """Pick the device (the seed's ``--use_cpu`` / ``--gpu_devices`` rules) and join the process group if torchrun
    started us (``apply_visible_devices`` first). ``dist_backend``: "auto" = NCCL on CUDA, gloo on CPU; "gloo" on
    CUDA keeps the tensors on the GPUs and lets several ranks share one GPU (rank r on visible GPU r mod count;
    NCCL refuses two ranks on one device), which is how a one-GPU machine runs the multi-process path."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    apply_visible_devices(gpu_devices)
    use_cuda = torch.cuda.is_available() and not use_cpu
    if dist_backend not in ("auto", "nccl", "gloo"):
        raise ValueError(f"--dist_backend must be one of auto, nccl, gloo; got {dist_backend!r}")
    if use_cuda:
        index = local_rank if world_size > 1 else 0
        if dist_backend == "gloo":
            index %= torch.cuda.device_count()
        if index >= torch.cuda.device_count():
            raise ValueError(f"local rank {local_rank} has no GPU: only {torch.cuda.device_count()} visible "
                             f"(--gpu_devices {gpu_devices!r}; --dist_backend gloo lets ranks share a GPU)")
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
    else:
        device = torch.device("cpu")
    backend = None
    if world_size > 1:
        if dist_backend == "nccl" and not use_cuda:
            raise ValueError("--dist_backend nccl needs CUDA devices; use gloo (or auto) on a CPU")
        backend = ("nccl" if use_cuda else "gloo") if dist_backend == "auto" else dist_backend
        if not dist.is_initialized():
            # torchrun / the elastic launcher: env:// (the agent's store); tests and bench spawn: a file store
            init_method = os.environ.get(INIT_METHOD_ENV) or "env://"
            kw: dict[str, Any] = {"init_method": init_method}
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
            if attempt is not None and init_method == "env://":
                # Under the elastic agent the workers of every restart share the agent's one store: keys of the
                # dead group (gloo's listening addresses) would be read by the new one (connection refused). A
                # prefix per restart attempt keeps each group's keys its own.
                store, _, _ = next(dist.rendezvous("env://", rank, world_size, timeout=collective_timeout()))
                kw = {"store": dist.PrefixStore(f"fastccreid/attempt_{attempt}", store)}
            dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                    device_id=device if backend == "nccl" else None, timeout=collective_timeout(),
                                    **kw)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device, backend=backend)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``t`` over ranks (returns a new tensor; the input is not modified)."""
    out = t.detach().clone()
    if ctx.distributed:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def shard_range(n: int, ctx: DistContext) -> tuple[int, int]:
    """This rank's contiguous slice [lo, hi) of n items; the slices of ranks 0..W-1 tile [0, n) in order."""
    return n * ctx.rank // ctx.world_size, n * (ctx.rank + 1) // ctx.world_size


def gather_rows(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenate every rank's [n_r, ...] tensor in rank order (n_r may differ): pad to the largest, all_gather,
    trim. Returned on this rank's device."""
    if not ctx.distributed:
        return t
    comm_device = ctx.device if ctx.backend == "nccl" else torch.device("cpu")
    local = t.to(comm_device).contiguous()
    sizes = [torch.zeros(1, dtype=torch.int64, device=comm_device) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], dtype=torch.int64, device=comm_device))
    counts = [int(s.item()) for s in sizes]
    biggest = max(counts)
    padded = torch.zeros((biggest, *local.shape[1:]), dtype=local.dtype, device=comm_device)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)]).to(t.device)


def broadcast_object(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    """Rank ``src``'s picklable object on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=ctx.device if ctx.backend == "nccl" else None)
    return box[0]


class _GatherRows(torch.autograd.Function):
    """all_gather of equal-sized rows with a gradient: forward concatenates every rank's [b, ...] in rank order;
    backward sums the gradient of the [W*b, ...] result over the ranks (one all-reduce, which gloo and NCCL both
    have) and returns this rank's rows."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:  # noqa: D102
        ctx.rank, ctx.rows = rank, t.shape[0]
        parts = [torch.empty_like(t) for _ in range(world_size)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows], None, None


def gather_batch(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Every rank's [b, ...] rows concatenated in rank order, [W*b, ...] (all ranks hold equal b: the sampler gives
    each P/W whole identities). Differentiable: the backward sums each row's gradient over the ranks, so a loss
    that every rank computes alike on the global batch gives each rank W times its rows' gradient, which DDP's
    gradient mean divides by W again: the single-process gradient of that loss, with no extra scaling."""
    if not ctx.distributed:
        return t
    return _GatherRows.apply(t, ctx.rank, ctx.world_size)


def gather_labels(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Every rank's equal-sized [b] labels concatenated in rank order (no gradient)."""
    if not ctx.distributed:
        return t
    parts = [torch.empty_like(t) for _ in range(ctx.world_size)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def broadcast_buffers(module: torch.nn.Module, ctx: DistContext, src: int = 0) -> None:
    """Give every rank rank ``src``'s buffers (BN running statistics): what the checkpoint holds and what the
    seed's DataParallel keeps, so every rank embeds with the same statistics."""
    if not ctx.distributed:
        return
    for buf in module.buffers():
        dist.broadcast(buf, src=src)
