"""Exact evaluation with the gallery sharded over the processes of a ``torch.distributed`` group (README, Evaluator
over N processes).

Every process holds the same queries and one contiguous shard of the gallery; the shards concatenated in rank order
are the gallery, so gallery index ``offset(rank) + j`` is what the single process calls it (ties break by it).
Per query chunk each process computes its shard's distances, the few true-match distances per query are
all-gathered (``[C, N·R]``) and sorted by (distance, global index) on every process, each process places its
shard's non-matches among them (the op of ``fastccreid.kernels.rank_stats``), and the per-query histograms are
summed (all_reduce). Memory per process O(G/N·D + Q·R) plus one [C, G/N] distance block; nothing Q×G.

Feature distances reproduce the single process's bits by construction: the query chunks are the single
process's, and the gallery is cut into the single process's column tiles (``seed_sqeuclidean_tiled``'s equal tiles
of at least ``MM_TILE`` columns over the whole gallery). A tile that a shard boundary cuts is computed at its full
width with the other shard's rows left zero, so the BLAS sees the very shapes (and column positions) it sees in
one process; only this shard's columns are kept.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from fastccreid.evaluation.engine import COMPILE_MIN_PAIRS
from fastccreid.evaluation.gallery import TILE
from fastccreid.evaluation.workspace import Workspace
from fastccreid.kernels.rank_stats import (
    Matches,
    PidIndex,
    RankStats,
    finish_stats,
    place,
    sorted_matches,
    stats_from_hist,
)
from fastccreid.kernels.seed_distance import CHUNK_BYTES, MM_TILE, chunk_rows, seed_normalize, sq_norms

CACHE_BYTES = 3 * CHUNK_BYTES  # a chunk's distance block is kept between the two passes up to this size


@dataclass(frozen=True)
class Shard:
    """This process's place in the group: rank, world size, its gallery rows [offset, offset + size) of ``total``."""

    rank: int
    world: int
    offset: int
    size: int
    total: int


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [lo, hi) of ``n`` that rank ``rank`` of ``world`` holds: contiguous, in rank order, sizes differing by
    at most one (what ``fastccreid eval-features --nproc`` reads from each file)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, world) with world >= 1, got rank {rank} of {world}")
    return n * rank // world, n * (rank + 1) // world


def resolve_group(process_group):
    """The group ``evaluate(process_group=...)`` names: True = the default (world) group; a ProcessGroup as is."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("process_group was given but torch.distributed is not initialised: call "
                         "torch.distributed.init_process_group first (or start the processes with torchrun / "
                         "'fastccreid eval-features --nproc N'); pass process_group=None for one process")
    if process_group is True:
        return dist.group.WORLD
    if process_group is False:
        raise ValueError("process_group must be None (one process), True (the default group) or a "
                         "torch.distributed ProcessGroup, got False")
    if not isinstance(process_group, dist.ProcessGroup):
        raise TypeError(f"process_group must be None, True or a torch.distributed ProcessGroup, got "
                        f"{type(process_group).__name__}")
    return process_group


class Comm:
    """The collectives of one sharded evaluation, on the tensors' device (NCCL needs CUDA tensors, gloo CPU)."""

    def __init__(self, group, device: torch.device):
        import torch.distributed as dist

        self.dist, self.group, self.device = dist, group, device
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        t = t.contiguous()
        parts = [torch.empty_like(t) for _ in range(self.world)]
        self.dist.all_gather(parts, t, group=self.group)
        return parts

    def gather_rows(self, t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Every process's row block of ``t`` (rank r holds ``sizes[r]`` rows, the other dims equal) concatenated
        in rank order, on every process: padded to the largest block for the collective (bool through uint8)."""
        if t.shape[0] != sizes[self.rank]:
            raise ValueError(f"rank {self.rank} holds {t.shape[0]} rows, the plan says {sizes[self.rank]}")
        src = t.to(torch.uint8) if t.dtype == torch.bool else t
        buf = src.new_zeros((max(1, max(sizes)),) + tuple(src.shape[1:]))
        buf[: src.shape[0]] = src
        out = torch.cat([p[:k] for p, k in zip(self.all_gather(buf), sizes, strict=True)])
        return out.to(torch.bool) if t.dtype == torch.bool else out

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        ops = {"sum": self.dist.ReduceOp.SUM, "max": self.dist.ReduceOp.MAX, "min": self.dist.ReduceOp.MIN}
        self.dist.all_reduce(t, op=ops[op], group=self.group)
        return t

    def agree(self, error: BaseException | None) -> None:
        """Every process raises when one does (a lone failure would leave the others waiting in a collective):
        the failing process raises its own error, the others a RuntimeError naming the failing ranks. Either
        exception carries ``failed_ranks`` (a CLI prints a rank's own message when rank 0 did not fail)."""
        flags = torch.tensor([0 if error is None else 1], dtype=torch.int64, device=self.device)
        failed = [r for r, f in enumerate(self.all_gather(flags)) if int(f.item())]
        if not failed:
            return
        if error is None:
            error = RuntimeError(f"sharded evaluation stopped: rank(s) {failed} of the process group rejected "
                                 "their inputs (see their error messages)")
        error.failed_ranks = failed
        try:
            raise error
        finally:
            error = None  # the traceback holds this frame: drop its reference to the exception (see sharded_stats)


def local_matches(index: PidIndex, lo: torch.Tensor, cnt: torch.Tensor, rpad: int, qc, gc, qcl, gcl, junk):
    """This shard's same-pid slots of a query chunk, padded to ``rpad`` (>= every count): idx [C, rpad] local
    gallery indices (0 in padding), same [C, rpad] (a same-pid entry: leaves the non-match pool), is_match
    [C, rpad] (same pid and not junk). A query may have no same-pid entry here (its row is all padding)."""
    ar = torch.arange(rpad, device=lo.device)
    same = ar[None, :] < cnt[:, None]
    pos = torch.where(same, lo[:, None] + ar[None, :], torch.zeros((), dtype=lo.dtype, device=lo.device))
    idx = index.order[pos]
    keep = same
    if junk == "market":
        keep = keep & (gc[idx] != qc[:, None])
    elif junk == "ltcc-cc":
        keep = keep & (gc[idx] != qc[:, None]) & (gcl[idx] != qcl[:, None])
    elif junk == "ltcc-sc":
        keep = keep & (gc[idx] != qc[:, None]) & (gcl[idx] == qcl[:, None])
    return idx, same, keep


def _tiles(total: int) -> int:
    """Columns per tile of ``seed_sqeuclidean_tiled`` over a whole gallery of ``total`` items (the single process's
    tiling, which the shards reproduce)."""
    return -(-total // max(1, total // MM_TILE))


class ShardDistances:
    """Squared euclidean distances of a query chunk to this shard's rows, with the single process's bits: the
    gallery is cut at the single process's tile boundaries (global indices), and a tile that the shard only partly
    covers is computed at full width with the rest left zero."""

    def __init__(self, g: torch.Tensor, shard: Shard, normalize: bool):
        self.g, self.shard, self.normalize = g, shard, normalize
        self.step = _tiles(shard.total)
        lo, hi = shard.offset, shard.offset + shard.size
        first, last = lo // self.step, (hi - 1) // self.step
        # (local start, local end, column of the local start inside its full tile, full tile width)
        self.pieces = []
        for t in range(first, last + 1):
            t0, t1 = t * self.step, min(shard.total, (t + 1) * self.step)
            a, b = max(t0, lo), min(t1, hi)
            self.pieces.append((a - lo, b - lo, a - t0, t1 - t0))
        self.buf = None

    def _tile(self, a: int, b: int, at: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The full-width tile [width, D] (this shard's rows a..b-1 at column ``at``, zeros elsewhere) and its
        squared norms [width]."""
        d = self.g.shape[1]
        if self.buf is None or self.buf.shape[0] < width:
            self.buf = torch.empty(width, d, dtype=torch.float32, device=self.g.device)
        t = self.buf[:width]
        if at > 0:
            t[:at].zero_()
        if at + (b - a) < width:
            t[at + (b - a):].zero_()
        rows = self.g[a:b]
        if self.normalize:
            seed_normalize(rows, out=t[at : at + (b - a)])
        else:
            t[at : at + (b - a)].copy_(rows)
        return t, sq_norms(t)

    def groups(self, c: int) -> list[tuple[int, int, int, int]]:
        """Runs of whole pieces (piece range, local column range) whose [c, columns] block fits ``CACHE_BYTES``."""
        cols = max(self.step, CACHE_BYTES // (4 * max(c, 1)))
        out, p0 = [], 0
        for p in range(1, len(self.pieces) + 1):
            if p == len(self.pieces) or self.pieces[p][1] - self.pieces[p0][0] > cols:
                out.append((p0, p, self.pieces[p0][0], self.pieces[p - 1][1]))
                p0 = p
        return out

    def block(self, q: torch.Tensor, qq: torch.Tensor, p0: int, p1: int, out: torch.Tensor) -> torch.Tensor:
        """Distances [C, columns] of the chunk ``q`` [C, D] (squared norms ``qq`` [C]) to the rows of pieces
        p0..p1-1, into ``out``."""
        c = q.shape[0]
        base = self.pieces[p0][0]
        for a, b, at, width in self.pieces[p0:p1]:
            t, gt = self._tile(a, b, at, width)
            full = at == 0 and b - a == width
            o = out[:, a - base : b - base] if full else torch.empty(c, width, dtype=q.dtype, device=q.device)
            torch.add(qq[:, None].expand(c, width), gt[None, :].expand(c, width), out=o)
            o.addmm_(q, t.t(), beta=1, alpha=-2)  # the seed's |q|^2 + |g|^2 - 2 q.g, as seed_sqeuclidean_tiled
            if not full:
                out[:, a - base : b - base] = o[:, at : at + (b - a)]
        return out


def sharded_rank_stats(dm, q, g, *, shard: Shard, comm: Comm, qp, gp, qc, gc, qcl, gcl, junk, normalize: bool,
                       chunk_size: int | None) -> RankStats:
    """Per-query first rank, AP and INP over the whole (sharded) gallery, identical on every process.

    ``dm`` [Q, size]: this shard's columns of a distance matrix; or features ``q`` [Q, D] (all queries) and ``g``
    [size, D] (this shard), squared euclidean in fp32 as the single process's. Labels: int64, the gallery's are
    this shard's."""
    device = qp.device
    nq, ng = qp.numel(), shard.total
    index = PidIndex(gp)
    lo, cnt = index.ranges(qp)
    glob_cnt = comm.all_reduce(cnt.clone(), "sum")  # same-pid entries over the whole gallery
    max_cnt = comm.all_reduce(cnt.clone(), "max")  # the exchange's padding per query
    first = torch.zeros(nq, dtype=torch.int64, device=device)
    ap = torch.zeros(nq, dtype=torch.float64, device=device)
    inp = torch.zeros(nq, dtype=torch.float64, device=device)
    nmatch = torch.zeros(nq, dtype=torch.int64, device=device)
    cand = torch.nonzero(glob_cnt > 0).squeeze(1)  # the same on every process
    tiled = ng > TILE
    if dm is not None:
        rows = chunk_size or chunk_rows(ng)
        qf = dists = None
    else:
        # the single process's query chunks (engine.rank_stats), so every product has its shape
        rows = chunk_size or (chunk_rows(ng) if not tiled else max(1, min(4096, CACHE_BYTES // (24 * TILE))))
        if tiled:
            cand = cand[torch.sort(qp[cand], stable=True).indices]
        qf = seed_normalize(q) if normalize else q.to(torch.float32)
        dists = ShardDistances(g, shard, normalize)
    env = os.environ.get("FASTCCREID_COMPILE", "").strip()
    use_compile = env == "1" or (env != "0" and device.type == "cpu" and nq * ng >= COMPILE_MIN_PAIRS)
    ws = Workspace(device)
    for s in range(0, cand.numel(), rows):
        qi = cand[s : s + rows]
        c = qi.numel()
        rpad = max(1, int(max_cnt[qi].max().item()))
        idx, same, keep = local_matches(index, lo[qi], cnt[qi], rpad, qc[qi] if qc is not None else None, gc,
                                        qcl[qi] if qcl is not None else None, gcl, junk)
        rows_c = torch.arange(c, device=device)[:, None].expand(idx.shape)
        inf = torch.full((), math.inf, dtype=torch.float32 if dm is None else dm.dtype, device=device)
        if dm is not None:
            blocks = [(0, shard.size, dm[qi].clone())]  # our own buffer: same-pid entries are overwritten below
            md = torch.where(keep, blocks[0][2][rows_c, idx], inf)
        else:
            qs = qf[qi]
            qq = sq_norms(qs)
            groups = dists.groups(c)
            md = torch.full(idx.shape, math.inf, dtype=torch.float32, device=device)
            blocks = []
            for p0, p1, a, b in groups:
                blk = dists.block(qs, qq, p0, p1, ws.get("dist", (c, b - a), torch.float32))
                inside = keep & (idx >= a) & (idx < b)
                md[inside] = blk[rows_c[inside], idx[inside] - a]
                if len(groups) == 1:
                    blocks.append((a, b, blk))  # one block: kept for placing (else recomputed there)
        gidx = torch.where(keep, idx + shard.offset, torch.full((), -1, dtype=idx.dtype, device=device))
        # the exchange: every process's match distances and global indices, in rank order, so a stable sort
        # orders equal distances by global gallery index (the single process's tie rule)
        md_all = torch.cat(comm.all_gather(md), 1)
        gi_all = torch.cat(comm.all_gather(gidx), 1)
        ms_pad, ms, msidx, nm = sorted_matches(md_all, Matches(idx=gi_all, is_match=gi_all >= 0))
        hist = torch.zeros(c, ms.shape[1] + 2, dtype=torch.int64, device=device)
        if not blocks:
            blocks = ((a, b, None) for _, _, a, b in groups)
            recompute = {(a, b): (p0, p1) for p0, p1, a, b in groups}
        for a, b, blk in blocks:
            if blk is None:  # a shard too wide for one [C, size] block: its distances again, group by group
                p0, p1 = recompute[(a, b)]
                blk = dists.block(qs, qq, p0, p1, ws.get("dist", (c, b - a), torch.float32))
            inside = same & (idx >= a) & (idx < b)
            blk[rows_c[inside], idx[inside] - a] = math.inf  # same-pid entries (matches, junk) leave the pool
            place(blk, shard.offset + a, ms_pad, ms, msidx, hist, nm, use_compile, ws)
        comm.all_reduce(hist, "sum")
        f, a, i, n = stats_from_hist(hist[:, : ms.shape[1]], nm)
        first[qi], ap[qi], inp[qi], nmatch[qi] = f, a, i, n
    return finish_stats(first, ap, inp, nmatch)


def sharded_stats(distmat, qf, gf, *, q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, protocol: str,
                  protocols, junk_of: dict, precision: str, precisions, max_rank, normalize: bool, rerank: bool,
                  chunk_size: int | None, backend: str, process_group, rerank_k1: int = 20, rerank_k2: int = 6,
                  rerank_lambda: float = 0.3) -> tuple[RankStats, int, int]:
    """``fastccreid.metrics.evaluate(..., process_group=...)``'s work: checks (every process raises when one does),
    then ``sharded_rank_stats`` (or ``sharded_reranked_stats`` with ``rerank``). Returns (stats, number of queries,
    whole gallery size), the same on every process.
    """
    from fastccreid.kernels.checks import check_distmat, check_eval_inputs, require_finite

    group = resolve_group(process_group)
    import torch.distributed as dist

    nccl = dist.get_backend(group) == "nccl"
    flag_device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    comm = Comm(group, flag_device)
    err, inp, dm = None, None, None
    try:
        if rerank and distmat is not None:
            raise ValueError("rerank=True needs features (qf, gf): k-reciprocal re-ranking also uses the "
                             "query-query and gallery-gallery distances")
        if protocol == "cuhk03":
            raise ValueError("protocol 'cuhk03' is not supported with process_group: its single-gallery-shot draws "
                             "consume one random stream along each query's whole ranked gallery, which no shard "
                             "holds; evaluate it in one process")
        if precision != "fp32":
            raise ValueError(f"precision={precision!r} is not supported with process_group: low-precision products "
                             "round by the matrix shape, so shards would not reproduce one process; use 'fp32'")
        if backend not in ("auto", "torch"):
            raise ValueError(f"backend={backend!r} is not supported with process_group: the sharded evaluation "
                             "runs the torch path; use 'auto' or 'torch'")
        inp = check_eval_inputs(distmat, qf, gf, q_pids=q_pids, g_pids=g_pids, q_camids=q_camids,
                                g_camids=g_camids, q_clothes=q_clothes, g_clothes=g_clothes, protocol=protocol,
                                protocols=protocols, junk_of=junk_of, precision=precision, precisions=precisions,
                                max_rank=max_rank)
        if inp.dm is not None:
            dm = check_distmat(inp.dm)
        else:
            if not rerank and (inp.q.dtype == torch.float64 or inp.g.dtype == torch.float64):
                raise ValueError("float64 features are not supported with process_group (their products are "
                                 "computed on the whole gallery at once); pass float32 features or a distance "
                                 "matrix")
            require_finite(inp.q)
            require_finite(inp.g)
        data_device = (dm if dm is not None else inp.q).device
        if nccl and data_device.type != "cuda":
            raise ValueError("the process group uses NCCL, which needs CUDA tensors: move the features (or the "
                             "distance matrix) to this process's GPU, or use a gloo group for CPU tensors")
    except (ValueError, TypeError) as exc:
        err = exc
    try:
        comm.agree(err)
    finally:
        # err's traceback holds this frame, whose local err holds err: a reference cycle that kept this frame (and
        # the process group in comm) alive until the cyclic GC ran, i.e. past the caller's destroy_process_group,
        # so gloo was torn down at interpreter exit and aborted about 1 exit in 6 ("terminate called without an
        # active exception"). Raising a stored exception holds it the same way in agree().
        err = None
    comm = Comm(group, data_device)
    d = -1 if dm is not None else inp.q.shape[1]
    qp = inp.qp
    ar = torch.arange(1, qp.numel() + 1, device=data_device)
    has = [int(t is not None) for t in (inp.gc, inp.gcl)]
    mine = torch.stack([torch.tensor(inp.nq, device=data_device), torch.tensor(d, device=data_device),
                        qp.sum(), (qp * ar).sum(), torch.tensor(has[0], device=data_device),
                        torch.tensor(has[1], device=data_device),
                        torch.tensor(inp.ng, device=data_device)]).to(torch.int64)
    parts = comm.all_gather(mine)
    diff = [r for r, p in enumerate(parts) if not torch.equal(p[:6], parts[0][:6])]
    if diff:
        raise ValueError(f"every process must pass the same queries (and feature dimension, and camera / clothes "
                         f"labels or none): rank(s) {diff} differ from rank 0 in the query count, feature dimension, "
                         "q_pids or which gallery labels they pass")
    sizes = [int(p[6].item()) for p in parts]
    shard = Shard(comm.rank, comm.world, sum(sizes[: comm.rank]), sizes[comm.rank], sum(sizes))
    if rerank:
        st = sharded_reranked_stats(inp, sizes, comm, junk=junk_of[protocol], normalize=normalize, k1=rerank_k1,
                                    k2=rerank_k2, lambda_value=rerank_lambda, chunk_size=chunk_size, backend=backend)
        return st, inp.nq, shard.total
    st = sharded_rank_stats(dm, inp.q, inp.g, shard=shard, comm=comm, qp=qp, gp=inp.gp, qc=inp.qc, gc=inp.gc,
                            qcl=inp.qcl, gcl=inp.gcl, junk=junk_of[protocol], normalize=normalize,
                            chunk_size=chunk_size)
    return st, inp.nq, shard.total


def sharded_reranked_stats(inp, sizes: list[int], comm: Comm, *, junk, normalize: bool, k1: int, k2: int,
                           lambda_value: float, chunk_size: int | None, backend: str) -> RankStats:
    """Re-ranked evaluation with the gallery sharded: the shards (features and labels) are gathered in rank order,
    so every process holds the whole gallery, O(G·D) (re-ranking needs every gallery-gallery neighbour), normalised
    as one process does it; then ``reranked_rank_stats`` splits the N×N neighbour search and the query chunks over
    the processes. Equals the one-process ``evaluate(rerank=True)``, bit for bit."""
    from fastccreid.evaluation.reranked import reranked_rank_stats
    from fastccreid.rerank import stack_features

    g = comm.gather_rows(inp.g, sizes)
    gp, gc, gcl = (None if t is None else comm.gather_rows(t, sizes) for t in (inp.gp, inp.gc, inp.gcl))
    q, g = stack_features(inp.q, g, normalize)  # as one process (metrics.evaluate)
    return reranked_rank_stats(q, g, k1=k1, k2=k2, lambda_value=lambda_value, q_pids=inp.qp, g_pids=gp,
                               q_camids=inp.qc, g_camids=gc, q_clothes=inp.qcl, g_clothes=gcl, junk=junk,
                               chunk_size=chunk_size, backend=backend, comm=comm)


__all__ = ["Comm", "Shard", "ShardDistances", "resolve_group", "shard_bounds", "sharded_rank_stats",
           "sharded_reranked_stats", "sharded_stats"]
