"""``fastccreid bench train``: CSSC train-step throughput, fast path vs the seed's eager fp32 step, same batches.

Fast: AMP (bf16 on this CPU / recent GPUs), channels_last, fused label-smoothed CE over the stacked logits, the
kernels' fused batch-hard triplet loss, fused Adam, torch.compile where it is the default (CUDA; on CPU it did not
win). Reference: ``fastccreid.reference.train_step.reference_train_step`` with the seed's CrossEntropyLabelSmooth and
TripletLoss (eager fp32, contiguous, loss.item() per step). Both include the triplet term (epoch > 35).

Memory: peak memory per image = (peak during the timed steps - memory before them, model and optimizer state
already allocated) / batch: RSS sampled every 2 ms on CPU, ``max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import os
import threading
import time

import torch

from fastccreid.bench.common import BenchRow, keep_partial, peak_rss_bytes, time_median

NUM_CLASSES = 77  # LTCC's training identities


def _current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakMemory:
    """Peak memory above the level at entry while the block runs (CPU: sampled RSS; CUDA: allocator peak)."""

    def __init__(self, device: torch.device, interval: float = 0.002) -> None:
        self.device, self.interval = device, interval
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = _current_rss()
            self._max = self.base
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, _current_rss())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, _current_rss()) - self.base


def _batch(height: int, width: int, batch: int, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    imgs = torch.randn(batch, 3, height, width, generator=gen)
    k = 4
    pids = torch.arange(batch // k).repeat_interleave(k) * 7 % NUM_CLASSES
    return imgs.to(device), pids.to(device)


def make_fast_step(device: torch.device, amp_mode: str = "auto", compile_model: bool | None = None,
                   channels_last: bool = True):
    """Build a fresh CSSC and return (step(imgs, pids) -> loss, description dict)."""
    from fastccreid.engine.amp import resolve_amp
    from fastccreid.engine.loss import cssc_loss
    from fastccreid.engine.trainer import resolve_compile
    from fastccreid.models import CSSC

    torch.manual_seed(0)
    amp = resolve_amp(amp_mode, device)
    use_compile = resolve_compile(compile_model, device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = CSSC(NUM_CLASSES, pretrained=None).to(device).to(memory_format=fmt).train()
    opt = torch.optim.Adam([{"params": model.parameters(), "initial_lr": 3e-4}], lr=3e-4, weight_decay=5e-4,
                           fused=True)
    scaler = amp.grad_scaler()
    net = torch.compile(model, dynamic=False) if use_compile else model

    def step(imgs: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        x = imgs.contiguous(memory_format=fmt)
        with amp.autocast():
            feats, logits = net(x)
        loss = cssc_loss(feats, logits, pids, use_triplet=True, margin=0.3).total
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss.detach()

    return step, {"amp": amp.name, "compile": use_compile, "channels_last": channels_last}


def make_reference_step(device: torch.device):
    """The seed's step: eager fp32 CSSC, contiguous, CrossEntropyLabelSmooth + TripletLoss, Adam."""
    from fastccreid.models import CSSC
    from fastccreid.reference.losses import CrossEntropyLabelSmooth, TripletLoss
    from fastccreid.reference.train_step import reference_train_step

    torch.manual_seed(0)
    model = CSSC(NUM_CLASSES, pretrained=None).to(device).train()
    opt = torch.optim.Adam([{"params": model.parameters(), "initial_lr": 3e-4}], lr=3e-4, weight_decay=5e-4)
    ce = CrossEntropyLabelSmooth(NUM_CLASSES, epsilon=0.1, use_gpu=device.type == "cuda")
    tri = TripletLoss(margin=0.3)

    def step(imgs: torch.Tensor, pids: torch.Tensor) -> float:
        return reference_train_step(model, imgs, pids, opt, ce, tri, epoch=40, tri_start_epoch=35)

    return step


def _measure(path: str, step, imgs, pids, device, repeats: int, case: str, extra: dict) -> BenchRow:
    step(imgs, pids)  # warm-up (allocates optimizer state; compiles when compiled)
    if device.type == "cuda":
        torch.cuda.synchronize()

    def once():
        step(imgs, pids)
        if device.type == "cuda":
            torch.cuda.synchronize()

    with _PeakMemory(device) as mem:
        median = time_median(once, repeats=repeats, warmup=0)
    b = imgs.shape[0]
    extra = {**extra, "peak_mem_per_image_MiB": round(mem.peak / b / 2**20, 2), "batch": b,
             "device": str(device)}
    return BenchRow(suite="train", case=case, path=path, median_s=median, items_per_s=b / median,
                    peak_rss_bytes=peak_rss_bytes(), repeats=repeats, items=b, extra=extra)


def _fast_row(imgs, pids, device: torch.device, repeats: int, case: str) -> BenchRow:
    fast, desc = make_fast_step(device)
    return _measure("fast", fast, imgs, pids, device, repeats, case, desc)


def _reference_row(imgs, pids, device: torch.device, repeats: int, case: str) -> BenchRow:
    return _measure("reference", make_reference_step(device), imgs, pids, device, repeats, case,
                    {"amp": "fp32", "compile": False, "channels_last": False})


def run(quick: bool) -> list[BenchRow]:
    """Train-step rows at 384x192 for batches of 8 and 16 (32 too in full mode; on CUDA quick mode batch 32 only),
    ids x 4 images: for each batch size the fast path first on CPU (lower peak), then the reference; on CUDA first
    the fast step eager at batch 32 (``fast-eager``: bf16 + channels_last without torch.compile) and the reference,
    the compiled step last, so a compile that runs out of time still leaves the other rows."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    height, width = 384, 192
    repeats = 3 if quick else 8
    rows: list[BenchRow] = []
    if device.type == "cuda":  # batch 32 only in quick mode: one cold compile of CSSC, not one per batch size
        batches = (32,) if quick else (8, 16, 32)
        repeats = 10 if quick else 20
    else:
        batches = (8, 16) if quick else (8, 16, 32)
    for batch in batches:
        case = f"cssc-step-{height}x{width}-b{batch}-{device.type}"
        imgs, pids = _batch(height, width, batch, device)
        eager_row = None
        if device.type == "cuda" and batch == 32:  # the same step eager (what the compile buys), before the compile
            eager, desc_e = make_fast_step(device, compile_model=False)
            eager_row = _measure("fast-eager", eager, imgs, pids, device, repeats, case, desc_e)
            del eager
            rows.append(eager_row)
            keep_partial(rows)
        if device.type == "cuda":  # the compile last
            ref_row = _reference_row(imgs, pids, device, repeats, case)
            fast_row = _fast_row(imgs, pids, device, repeats, case)
        else:  # RSS does not shrink back: the fast path first, so the reference's peak does not hide its own
            fast_row = _fast_row(imgs, pids, device, repeats, case)
            ref_row = _reference_row(imgs, pids, device, repeats, case)
        fast_row.extra["speedup"] = round(ref_row.median_s / fast_row.median_s, 2)
        if eager_row is not None:
            eager_row.extra["compiled_speedup_over_eager"] = round(eager_row.median_s / fast_row.median_s, 2)
        rows += [fast_row, ref_row]
        keep_partial(rows)
    if device.type == "cpu":
        rows += run_ddp(quick)
    return rows


def _ddp_worker(rank: int, world: int, store: str, height: int, batch: int, repeats: int, out: str,
                bn: str = "per_rank") -> None:
    """One rank of the multi-process row: its P/W identities of the global batch, the trainer's loss (triplet mined
    over the gathered batch), DDP, fused Adam, BN per rank or over the global batch (``bn``, as ``--bn``); rank 0
    writes the median step time and the all-gather's share."""
    import json

    from fastccreid.bench.common import time_median
    from fastccreid.engine.distributed import INIT_METHOD_ENV, cleanup, gather_batch, setup
    from fastccreid.engine.global_bn import convert_batchnorm
    from fastccreid.engine.loss import cssc_loss
    from fastccreid.models import CSSC

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      **{INIT_METHOD_ENV: "file://" + os.path.join(store, "store")})
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    ctx = setup(use_cpu=True)
    try:
        torch.manual_seed(0)
        imgs, pids = _batch(height, height // 2, batch, torch.device("cpu"))
        b = batch // world
        rows = slice(rank * b, (rank + 1) * b)  # this rank's whole identities of the global batch
        x, y = imgs[rows].contiguous(memory_format=torch.channels_last), pids[rows]
        model = CSSC(NUM_CLASSES, pretrained=None).to(memory_format=torch.channels_last).train()
        model = convert_batchnorm(model, bn, ctx)
        net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
        opt = torch.optim.Adam(model.parameters(), lr=3e-4, weight_decay=5e-4, fused=True)

        def step() -> None:
            feats, logits = net(x)
            loss = cssc_loss(feats, logits, y, use_triplet=True, margin=0.3, ctx=ctx).total
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()  # warm-up
        median = time_median(step, repeats=repeats, warmup=0)
        block = torch.randn(b, 5, 2048, requires_grad=True)

        def gather() -> None:  # the step's all-gather, forward and backward, alone
            gather_batch(block, ctx).sum().backward()

        gather_s = time_median(gather, repeats=max(repeats, 5), warmup=1) if world > 1 else 0.0
        if rank == 0:
            with open(out, "w") as f:
                json.dump({"median_s": median, "gather_s": gather_s, "threads": torch.get_num_threads()}, f)
    finally:
        cleanup()


def run_ddp(quick: bool, world: int = 2) -> list[BenchRow]:
    """``world`` gloo processes vs one process on the same global batch (384x192, batch 8 = 2 ids x 4; each rank
    P/W whole identities), the CPU's cores split between the processes: images/s and the share of the step the
    features' all-gather takes (5 features x [b, 2048] fp32 forward, the same size all-reduced backward)."""
    import json
    import tempfile

    import torch.multiprocessing as mp

    height, batch, repeats = 384, 8, 2 if quick else 5
    rows: list[BenchRow] = []
    case = f"cssc-ddp-step-{height}x{height // 2}-b{batch}-cpu"
    results = {}
    variants = ((1, "per_rank"), (world, "per_rank"), (world, "global"))
    for n, bn in variants:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "result.json")
            mp.start_processes(_ddp_worker, args=(n, tmp, height, batch, repeats, out, bn), nprocs=n, join=True,
                               start_method="spawn")
            with open(out) as f:
                results[n, bn] = json.load(f)
    for n, bn in variants:
        r = results[n, bn]
        extra = {"processes": n, "threads_per_process": r["threads"], "global_batch": batch,
                 "allgather_share": round(r["gather_s"] / r["median_s"], 4), "bn": bn if n > 1 else "one process"}
        if n == world:
            extra["vs_1_process"] = round(results[1, "per_rank"]["median_s"] / r["median_s"], 2)
        if bn == "global":  # what BN over the global batch adds to a step (one all-gather per BN layer, eager)
            extra["global_bn_cost_s"] = round(r["median_s"] - results[world, "per_rank"]["median_s"], 4)
        path = f"ddp-{n}" + ("-global-bn" if bn == "global" else "")
        rows.append(BenchRow(suite="train", case=case, path=path, median_s=r["median_s"],
                             items_per_s=batch / r["median_s"], peak_rss_bytes=peak_rss_bytes(), repeats=repeats,
                             items=batch, extra=extra))
    rows.append(_launch_row(world, repeats=1 if quick else 3))
    return rows


_LAUNCHED = ("import os, time; from fastccreid.engine.distributed import barrier, cleanup, setup; "
             "ctx = setup(use_cpu=True); barrier(ctx); "
             "open(os.environ['FASTCCREID_BENCH_OUT'] + str(ctx.rank), 'w').write(repr(time.time())); cleanup()")


def _launch_row(world: int, repeats: int) -> BenchRow:
    """Time from calling the elastic launcher (``fastccreid train --nproc N``'s path) to every worker having joined
    the gloo process group: the agent, the c10d rendezvous, N fresh interpreters importing torch and fastccreid,
    init_process_group and a barrier (what precedes the first step, before the model and data are built)."""
    import statistics
    import tempfile

    from fastccreid.engine.launch import run_elastic

    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            prefix = os.path.join(tmp, "t")
            t0 = time.time()
            code = run_elastic(["-c", _LAUNCHED], world, prog="bench", env={"FASTCCREID_BENCH_OUT": prefix})
            if code != 0:
                raise RuntimeError(f"bench train: the elastic launch of {world} gloo workers exited with {code}")
            times.append(max(float(open(prefix + str(r)).read()) for r in range(world)) - t0)
    median = statistics.median(times)
    return BenchRow(suite="train", case=f"elastic-launch-{world}-gloo-cpu", path="launch-to-process-group",
                    median_s=median, items_per_s=world / median, peak_rss_bytes=peak_rss_bytes(), repeats=repeats,
                    items=world, extra={"processes": world, "what": "launcher call to every rank past its first "
                                        "barrier (torch + fastccreid imports, rendezvous, gloo init)"})
