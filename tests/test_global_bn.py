"""BN over the global batch: N gloo processes x B/N images compute what one process computes on the B images —
the forward, the loss, every parameter gradient and every BN running statistic — for a single BN layer (uneven
shares, 1d and 2d, momentum None, eval mode) and for one fp64 train step of the real CSSC with BN in train mode.
The oracle is torch's own ``F.batch_norm`` / ``nn.BatchNorm`` on the whole batch in one process."""

from __future__ import annotations

import os

import pytest
import torch
from helpers.dist import init_env, spawn

from fastccreid.engine.loss import cssc_loss

H, W = 128, 32  # the smallest input CSSC takes (SMR cuts the stride-16 map into 8 stripes)


def _bn_worker(rank: int, world: int, store: str, x: torch.Tensor, cuts: list[int], momentum, out: str) -> None:
    init_env(rank, world, store)
    from fastccreid.engine.distributed import cleanup, setup
    from fastccreid.engine.global_bn import convert_batchnorm

    ctx = setup(use_cpu=True)
    try:
        bn = torch.nn.BatchNorm1d(x.shape[1], momentum=momentum) if x.dim() == 2 else \
            torch.nn.BatchNorm2d(x.shape[1], momentum=momentum)
        bn = bn.double()
        with torch.no_grad():
            bn.weight.copy_(torch.linspace(0.5, 1.5, x.shape[1]))
            bn.bias.copy_(torch.linspace(-1, 1, x.shape[1]))
        net = torch.nn.Sequential(bn)
        convert_batchnorm(net, "global", ctx)
        local = x[cuts[rank]:cuts[rank + 1]].clone().requires_grad_(True)
        grads = []
        for _ in range(2):  # two steps: running statistics and num_batches_tracked move twice
            y = net(local)
            (y.pow(3) * torch.arange(y.numel(), dtype=y.dtype).view_as(y).cos()).sum().backward()
            grads.append((local.grad.clone(), bn.weight.grad.clone(), bn.bias.grad.clone()))
            local.grad, bn.weight.grad, bn.bias.grad = None, None, None
        net.eval()
        y_eval = net(local)
        torch.save({"y": y.detach(), "grads": grads, "state": net[0].state_dict(), "type": type(net[0]).__name__,
                    "y_eval": y_eval.detach()}, os.path.join(out, f"{rank}.pt"))
    finally:
        cleanup()


@pytest.mark.parametrize("shape,cuts,momentum", [((10, 6), [0, 3, 10], 0.1), ((7, 3, 4, 5), [0, 1, 7], None),
                                                  ((6, 4, 2, 2), [0, 2, 4, 6], 0.3)])
def test_one_global_bn_layer_equals_batch_norm_on_the_whole_batch(shape, cuts, momentum, tmp_path):
    """Uneven shares (1 and 6 rows), 1d and 2d, cumulative averaging (momentum None): outputs, input / weight /
    bias gradients (summed over ranks: DDP's sum before its mean) and running statistics as one process's BN."""
    world = len(cuts) - 1
    g = torch.Generator().manual_seed(world)
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * 3 + 2  # a mean far from 0: no cancellation luck
    spawn(_bn_worker, world, (world, str(tmp_path), x, cuts, momentum, str(tmp_path)))
    ref = (torch.nn.BatchNorm1d(shape[1], momentum=momentum) if len(shape) == 2 else
           torch.nn.BatchNorm2d(shape[1], momentum=momentum)).double()
    with torch.no_grad():
        ref.weight.copy_(torch.linspace(0.5, 1.5, shape[1]))
        ref.bias.copy_(torch.linspace(-1, 1, shape[1]))
    xr = x.clone().requires_grad_(True)
    ref_grads = []
    for _ in range(2):
        _loss_of_union(xr, cuts, ref).backward()
        ref_grads.append((xr.grad.clone(), ref.weight.grad.clone(), ref.bias.grad.clone()))
        xr.grad, ref.weight.grad, ref.bias.grad = None, None, None
    ref.eval()
    got = [torch.load(os.path.join(tmp_path, f"{r}.pt")) for r in range(world)]
    assert {g["type"] for g in got} == {"GlobalBatchNorm"}
    y_last = _train_mode_output(x, ref)  # the second step's normalisation (batch statistics, not running)
    for step in range(2):
        for i, name in ((1, "weight"), (2, "bias")):  # DDP sums the ranks' gradients (then divides by W)
            summed = sum(gr["grads"][step][i] for gr in got)
            torch.testing.assert_close(summed, ref_grads[step][i], rtol=1e-10, atol=1e-12, msg=name)
    for r, gr in enumerate(got):
        rows = slice(cuts[r], cuts[r + 1])
        torch.testing.assert_close(gr["y"], y_last[rows], rtol=0, atol=1e-12)
        torch.testing.assert_close(gr["y_eval"], ref(x)[rows].detach(), rtol=0, atol=1e-12)
        for step in range(2):
            torch.testing.assert_close(gr["grads"][step][0], ref_grads[step][0][rows], rtol=1e-10, atol=1e-12)
        for k, v in ref.state_dict().items():
            torch.testing.assert_close(gr["state"][k], v, rtol=1e-12, atol=1e-12, msg=k)


def _train_mode_output(x: torch.Tensor, bn: torch.nn.Module) -> torch.Tensor:
    """``bn``'s training-mode output on ``x`` (batch statistics) without touching its running statistics."""
    return torch.nn.functional.batch_norm(x, None, None, bn.weight, bn.bias, training=True, eps=bn.eps).detach()


def _loss_of_union(x: torch.Tensor, cuts: list[int], bn: torch.nn.Module) -> torch.Tensor:
    """The sum of every rank's loss in one process: rank r weights its rows by cos(local element index)."""
    y = bn(x)
    total = y.new_zeros(())
    for r in range(len(cuts) - 1):
        part = y[cuts[r]:cuts[r + 1]]
        total = total + (part.pow(3) * torch.arange(part.numel(), dtype=y.dtype).view_as(part).cos()).sum()
    return total


# ------------------------------------------------------------------ one fp64 step of the real CSSC, BN in train mode


def _model(num_classes: int, state: dict) -> torch.nn.Module:
    from fastccreid.models import CSSC

    model = CSSC(num_classes, last_stride=1, pretrained=None).double()  # fp64: rounding far below 1e-10
    model.load_state_dict(state)
    return model.train()  # BN in train mode: batch statistics, running statistics move


def _step_worker(rank: int, world: int, store: str, x: torch.Tensor, pids: torch.Tensor, state: dict, bn: str,
                 out: str) -> None:
    init_env(rank, world, store)
    torch.set_num_threads(1)
    from fastccreid.engine.distributed import all_reduce_sum, cleanup, setup
    from fastccreid.engine.global_bn import convert_batchnorm

    ctx = setup(use_cpu=True)
    try:
        model = convert_batchnorm(_model(int(state["classifier.weight"].shape[0]), state), bn, ctx)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        b = x.shape[0] // world
        rows = slice(rank * b, (rank + 1) * b)
        feats, logits = ddp(x[rows])
        parts = cssc_loss(feats, logits, pids[rows], use_triplet=True, margin=0.3, ctx=ctx)
        parts.total.backward()
        total = all_reduce_sum(parts.total.detach(), ctx) / world  # the mean of the per-rank CE + global triplet
        grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
        torch.save({"total": total, "grads": grads, "state": model.state_dict()}, os.path.join(out, f"{rank}.pt"))
    finally:
        cleanup()


def _one_process_step(num_classes: int, x: torch.Tensor, pids: torch.Tensor, state: dict):
    model = _model(num_classes, state)
    feats, logits = model(x)
    ref = cssc_loss(feats, logits, pids, use_triplet=True, margin=0.3)
    ref.total.backward()
    return model, ref


def _step_case(world: int, bn: str, tmp_path):
    from fastccreid.models import CSSC

    torch.manual_seed(0)
    num_classes = 4
    state = CSSC(num_classes, last_stride=1, pretrained=None).double().state_dict()
    x = torch.randn(8, 3, H, W, dtype=torch.float64)
    pids = torch.arange(2).repeat_interleave(4)  # P x K = 2 x 4
    spawn(_step_worker, world, (world, str(tmp_path), x, pids, state, bn, str(tmp_path)))
    model, ref = _one_process_step(num_classes, x, pids, state)
    return model, ref, [torch.load(os.path.join(tmp_path, f"{r}.pt")) for r in range(world)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-300))


def _check_step_equal(model, ref, got) -> None:
    assert float(ref.tri_loss) > 0
    running = {k: v for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}
    assert len(running) > 150  # every BN of the trunk, the branches, the SMRs and the BNNeck
    for gr in got:
        torch.testing.assert_close(gr["total"], ref.total.detach(), rtol=1e-10, atol=0)
        checked = 0
        floor = 1e-12 * max(float(p.grad.abs().max()) for p in model.parameters() if p.grad is not None)
        for name, p in model.named_parameters():
            if p.grad is None:
                assert name not in gr["grads"], name
                continue
            # relative 1e-10 to the tensor's largest entry, with a floor 1e-12 of the model's largest gradient for
            # tensors whose gradient is 0 up to rounding (a bias that a following BN cancels: ~1e-18 here)
            diff = float((gr["grads"][name] - p.grad).abs().max())
            assert diff <= 1e-10 * float(p.grad.abs().max()) + floor, (name, diff, float(p.grad.abs().max()))
            checked += 1
        assert checked == len(gr["grads"]) > 150
        for k, v in running.items():
            assert _rel(gr["state"][k].double(), v.double()) <= 1e-10, (k, _rel(gr["state"][k].double(), v.double()))


def test_two_processes_train_one_cssc_step_as_one_process_bn_included(tmp_path):
    """fp64, BN in train mode: 2 gloo ranks x 4 images vs one process on the 8, loss / every parameter gradient /
    every BN running statistic to 1e-10 relative (to each tensor's largest entry)."""
    _check_step_equal(*_step_case(2, "global", tmp_path))


@pytest.mark.slow
def test_four_processes_train_one_cssc_step_as_one_process_bn_included(tmp_path):
    """As above with 4 ranks x 2 images (half an identity each: the triplet mines over the gathered batch)."""
    _check_step_equal(*_step_case(4, "global", tmp_path))


@pytest.mark.slow
def test_per_rank_bn_is_what_changes_with_the_process_count(tmp_path):
    """The control: ``--bn per_rank`` (DDP's default elsewhere) on the same step moves the running statistics
    away from the one-process ones by far more than the tolerance above."""
    model, _, got = _step_case(2, "per_rank", tmp_path)
    running = {k: v for k, v in model.state_dict().items() if "running_mean" in k}
    worst = max(_rel(got[0]["state"][k], v) for k, v in running.items())
    assert worst > 1e-3, worst


# ------------------------------------------------------------------ torch.compile: no graph break at the BN layers


def _compiled_worker(rank: int, world: int, store: str, out: str) -> None:
    init_env(rank, world, store)
    torch.set_num_threads(1)
    from fastccreid.engine.distributed import cleanup, setup
    from fastccreid.engine.global_bn import convert_batchnorm

    ctx = setup(use_cpu=True)
    try:
        def make() -> torch.nn.Module:
            torch.manual_seed(0)
            net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                      torch.nn.Conv2d(4, 5, 3), torch.nn.BatchNorm2d(5)).double()
            return convert_batchnorm(net, "global", ctx)

        x = torch.randn(2 * world, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        x = x[2 * rank:2 * rank + 2] * (1 + rank)  # the ranks' statistics differ: a local-only BN would show
        eager, comp = make(), make()
        # fullgraph=True: any graph break (one per BN layer if the all-gather or the statistics left the graph)
        # raises; aot_eager also traces the backward, with its all-reduce
        cnet = torch.compile(comp, backend="aot_eager", fullgraph=True, dynamic=False)
        got = {}
        for name, net, params in (("eager", eager, eager), ("compiled", cnet, comp)):
            y = net(x)
            (y.square() * torch.arange(y.numel(), dtype=y.dtype).view_as(y).cos()).sum().backward()
            got[name] = {"y": y.detach(), "grads": [p.grad.clone() for p in params.parameters()],
                         "state": {k: v.clone() for k, v in params.state_dict().items()},
                         "types": sorted({type(m).__name__ for m in params.modules()})}
        torch.save(got, os.path.join(out, f"{rank}.pt"))
    finally:
        cleanup()


def test_global_bn_compiles_into_one_graph_with_the_eager_numbers(tmp_path):
    """torch.compile(fullgraph=True) of a conv/BN/ReLU/conv/BN stack with GlobalBatchNorm on 2 gloo ranks: no graph
    break (the all-gather and the Chan merge stay in the graph), and the compiled forward, parameter gradients and
    running statistics equal the eager ones."""
    spawn(_compiled_worker, 2, (2, str(tmp_path), str(tmp_path)))
    for r in range(2):
        got = torch.load(os.path.join(tmp_path, f"{r}.pt"))
        assert "GlobalBatchNorm" in got["compiled"]["types"]
        torch.testing.assert_close(got["compiled"]["y"], got["eager"]["y"], rtol=1e-12, atol=1e-12)
        for a, b in zip(got["compiled"]["grads"], got["eager"]["grads"], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        for k, v in got["eager"]["state"].items():
            torch.testing.assert_close(got["compiled"]["state"][k], v, rtol=1e-12, atol=1e-12, msg=k)
        assert int(got["compiled"]["state"]["1.num_batches_tracked"]) == 1  # the compiled step moved the stats
