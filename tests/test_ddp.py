"""Multi-process training on CPU (gloo) optimises what one process optimises on the same global batch: the triplet
loss mines over the gathered P x K batch, the gradients after DDP's mean equal the single-process gradients, the
one-command launcher trains and evaluates like a later one-process `fastccreid eval`, and a failing rank ends the
run with its error instead of a hang."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers.dist import init_env, spawn
from helpers.train_cases import make_tiny_ltcc, start_cli, tiny_argv, wait_for_file

from fastccreid.engine.loss import cssc_loss

H, W = 128, 32


# ------------------------------------------------------------------ global-batch triplet mining


def _loss_worker(rank: int, world: int, store: str, feats: torch.Tensor, pids: torch.Tensor, out: str) -> None:
    init_env(rank, world, store)
    from fastccreid.engine.distributed import cleanup, setup

    ctx = setup(use_cpu=True)
    try:
        b = pids.numel() // world
        rows = slice(rank * b, (rank + 1) * b)
        local = [f[rows].clone().requires_grad_(True) for f in feats]
        logits = [torch.zeros(b, 4, requires_grad=True) for _ in feats]
        parts = cssc_loss(local, logits, pids[rows], use_triplet=True, margin=0.3, ctx=ctx)
        grads = torch.autograd.grad(parts.total, local)
        torch.save({"tri": parts.tri_loss, "grads": [g.detach() for g in grads]}, os.path.join(out, f"{rank}.pt"))
    finally:
        cleanup()


@pytest.mark.parametrize("world", [2, 4])
def test_triplet_loss_mines_over_the_global_batch(world, tmp_path):
    """The seed's default batch (32 = 4 ids x 8): with 4 processes each holds one identity, so rank-local mining
    finds no negative; gathered, every rank computes the single-process loss on the whole batch, and each rank's
    rows get W x their single-process gradient (the gather's backward sums the W replicas; DDP's mean divides by
    W)."""
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(5, 32, 64, generator=g)
    pids = torch.arange(4).repeat_interleave(8)
    spawn(_loss_worker, world, (world, str(tmp_path), feats, pids, str(tmp_path)))
    single = [f.clone().requires_grad_(True) for f in feats]
    ref = cssc_loss(single, [torch.zeros(32, 4) for _ in feats], pids, use_triplet=True, margin=0.3)
    ref_grads = torch.autograd.grad(_tri_total(single, pids), single)
    assert ref.tri_loss > 0
    b = 32 // world
    for rank in range(world):
        got = torch.load(os.path.join(tmp_path, f"{rank}.pt"))
        torch.testing.assert_close(got["tri"], ref.tri_loss, rtol=1e-6, atol=0)
        for gl, gs in zip(got["grads"], ref_grads, strict=True):
            torch.testing.assert_close(gl / world, gs[rank * b:(rank + 1) * b], rtol=1e-5, atol=1e-8)
    # what rank-local mining would have given: no negative in a one-identity share, a zero loss
    if world == 4:
        local = cssc_loss([f[:8] for f in feats], [torch.zeros(8, 4) for _ in feats], pids[:8], use_triplet=True)
        assert float(local.tri_loss) == 0.0


def _tri_total(single: list[torch.Tensor], pids: torch.Tensor) -> torch.Tensor:
    from fastccreid.kernels import batch_hard_triplet_loss

    return sum(batch_hard_triplet_loss(f, pids, margin=0.3) for f in single)


# ------------------------------------------------------------------ DDP gradients vs one process


def _frozen_bn_model(num_classes: int, state: dict) -> torch.nn.Module:
    from fastccreid.models import CSSC

    model = CSSC(num_classes, last_stride=1, pretrained=None).double()  # fp64: rounding far below the tolerances
    model.load_state_dict(state)
    model.train()
    for m in model.modules():  # per-rank BN batches differ by design: freeze BN for an exact comparison
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


def _grad_worker(rank: int, world: int, store: str, x: torch.Tensor, pids: torch.Tensor, state: dict,
                 out: str) -> None:
    init_env(rank, world, store)
    torch.set_num_threads(1)
    from fastccreid.engine.distributed import all_reduce_sum, cleanup, setup

    ctx = setup(use_cpu=True)
    try:
        model = _frozen_bn_model(int(state["classifier.weight"].shape[0]), state)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        b = x.shape[0] // world
        rows = slice(rank * b, (rank + 1) * b)
        feats, logits = ddp(x[rows])
        parts = cssc_loss(feats, logits, pids[rows], use_triplet=True, margin=0.3, ctx=ctx)
        parts.total.backward()
        total = all_reduce_sum(parts.total.detach(), ctx) / world  # mean of the per-rank CE + the global triplet
        grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
        torch.save({"total": total, "grads": grads}, os.path.join(out, f"{rank}.pt"))
    finally:
        cleanup()


@pytest.mark.slow  # frozen BN; tests/test_global_bn.py checks the same step with BN in train mode (fp64, 1e-10)
def test_two_processes_on_half_batches_give_the_one_process_gradient(tmp_path):
    torch.manual_seed(0)
    num_classes = 4
    model = _frozen_bn_model(num_classes, _fresh_state(num_classes))
    x = torch.randn(16, 3, H, W, dtype=torch.float64)
    pids = torch.arange(4).repeat_interleave(4)  # P x K = 4 x 4: rank 0 gets ids 0-1, rank 1 ids 2-3
    state = {k: v.clone() for k, v in model.state_dict().items()}
    spawn(_grad_worker, 2, (2, str(tmp_path), x, pids, state, str(tmp_path)))
    feats, logits = model(x)
    ref = cssc_loss(feats, logits, pids, use_triplet=True, margin=0.3)
    ref.total.backward()
    assert float(ref.tri_loss) > 0
    for rank in range(2):
        got = torch.load(os.path.join(tmp_path, f"{rank}.pt"))
        torch.testing.assert_close(got["total"], ref.total.detach(), rtol=1e-10, atol=0)
        checked = 0
        for name, p in model.named_parameters():
            if p.grad is None:
                continue
            g = got["grads"][name]
            # relative 1e-5, plus an absolute floor for gradients that are 0 up to rounding
            diff, scale = float((g - p.grad).norm()), float(p.grad.norm())
            assert diff <= 1e-5 * scale + 1e-6, (name, diff, scale)
            checked += 1
        assert checked == len(got["grads"]) > 100


def _fresh_state(num_classes: int) -> dict:
    from fastccreid.models import CSSC

    return CSSC(num_classes, last_stride=1, pretrained=None).state_dict()


# ------------------------------------------------------------------ the one-command launcher


def _cli(*args: str, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastccreid", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, **kw)


_SETTING = re.compile(r"(general|clothes-changing)\s+mAP: ([\d.]+)%\s+R-1: ([\d.]+)%")


def _settings(text: str) -> dict[str, tuple[str, str]]:
    return {m.group(1): (m.group(2), m.group(3)) for m in _SETTING.finditer(text)}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> str:
    return make_tiny_ltcc(str(tmp_path_factory.mktemp("ddp") / "ltcc"))


@pytest.mark.slow  # 39 s; the default run has --nproc 2 vs 1 through the CLI in tests/test_elastic.py
def test_nproc_2_trains_and_its_evaluation_equals_a_one_process_eval(tiny_root, tmp_path):
    save = str(tmp_path / "run")
    res = _cli(*tiny_argv(tiny_root, save, "--nproc", "2", "--max_epoch", "1", "--save_checkpoint", "--amp", "off"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "started 2 processes" in res.stderr
    trained = _settings(open(os.path.join(save, "log_train.txt")).read())
    assert set(trained) == {"general", "clothes-changing"}
    log = open(os.path.join(save, "log_train.txt")).read()
    assert "(2 process(es))" in log
    ev = _cli(*tiny_argv(tiny_root, str(tmp_path / "eval"), "--resume", os.path.join(save, "checkpoint_last.pth"),
                         command="eval"))
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert _settings(open(tmp_path / "eval" / "log_test.txt").read()) == trained


def test_a_failing_rank_ends_every_process_with_its_error(tiny_root, tmp_path):
    """A corrupt image without --skip_bad_images: the rank that reads it exits 2 naming the file; the launcher
    stops the other rank (waiting in a collective) and exits non-zero, in bounded time."""
    import shutil

    from fastccreid.data import build_dataset

    root = str(tmp_path / "ltcc")
    shutil.copytree(tiny_root, root)
    train = build_dataset("ltcc", root).train
    victim = train[0].pid
    bad = [r.path for r in train if r.pid == victim]
    for path in bad:  # every image of one identity: the sampler draws it in epoch 1 on one of the ranks
        with open(path, "r+b") as f:
            f.truncate(60)
    t0 = time.monotonic()
    res = _cli(*tiny_argv(root, str(tmp_path / "run"), "--nproc", "2", "--max_epoch", "1",
                          "--max_steps_per_epoch", "0"), timeout=300)
    assert res.returncode != 0
    assert time.monotonic() - t0 < 300
    assert any(os.path.basename(p) in res.stderr for p in bad), res.stderr[-3000:]
    assert re.search(r"rank \d exited with code \d+; stopping the other processes", res.stderr)


def test_ctrl_c_in_the_launcher_stops_every_rank_and_saves_the_last_checkpoint(tiny_root, tmp_path):
    from fastccreid.engine.checkpoint import load_checkpoint

    save = tmp_path / "run"
    proc = start_cli(tiny_argv(tiny_root, str(save), "--nproc", "2", "--max_epoch", "50", "--amp", "off"),
                     start_new_session=True)
    try:
        wait_for_file(save / "metrics.csv", proc)  # an epoch has been trained: both ranks are in their loops
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    ck = load_checkpoint(str(save / "checkpoint_last.pth"))
    assert int(ck["epoch"]) >= 0 or int(ck["resume_step"]) > 0
    assert "continue with --resume" in open(save / "log_train.txt").read()


@pytest.mark.parametrize("n,world", [(10, 3), (2, 4), (0, 2)])
def test_shards_tile_the_range_in_order(n, world):
    from fastccreid.engine.distributed import DistContext, shard_range

    spans = [shard_range(n, DistContext(r, world, r, torch.device("cpu"))) for r in range(world)]
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))


def test_nproc_resolution():
    from fastccreid.engine.config import TrainConfig
    from fastccreid.engine.launch import resolve_nproc

    assert resolve_nproc(TrainConfig(use_cpu=True), cuda_available=True) == 1
    assert resolve_nproc(TrainConfig(use_cpu=True, nproc=3), cuda_available=False) == 3
    assert resolve_nproc(TrainConfig(gpu_devices="0,1,2"), cuda_available=True) == 3  # the seed used every GPU
    assert resolve_nproc(TrainConfig(gpu_devices="0,1", nproc=1), cuda_available=True) == 1
    with pytest.raises(ValueError, match="--nproc 3 needs as many GPUs"):
        resolve_nproc(TrainConfig(gpu_devices="0,1", nproc=3), cuda_available=True)
