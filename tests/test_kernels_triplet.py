"""Batch-hard mining and triplet loss: parity with the seed's TripletLoss / hard_example_mining on P x K batches,
a brute-force oracle on any label vector, ties, dtypes, gradients, validation, torch.compile (the Triton kernel:
tests/triton/test_triton_triplet.py).

Tolerances: distances and losses 1e-5 relative (fp32, a different but equally exact summation order); gradients
1e-5 absolute on unit-scale features. Indices must match exactly (random data has no near-ties; tie tests use
integer-valued features, whose distances are exact in fp32).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.kernel_oracles import triplet_loss_oracle

from fastccreid.kernels import batch_hard_mining, batch_hard_triplet_loss
from fastccreid.reference.losses import TripletLoss, euclidean_dist, hard_example_mining

MARGINS = (0.3, None)


def _pk_labels(p: int, k: int, shuffle: bool, gen: torch.Generator) -> torch.Tensor:
    labels = torch.arange(p).repeat_interleave(k) * 7 + 3  # arbitrary label values, not 0..P-1
    return labels[torch.randperm(p * k, generator=gen)] if shuffle else labels


@pytest.mark.parametrize("p,k,d", [(4, 4, 7), (8, 4, 130), (3, 5, 33), (16, 2, 64), (2, 8, 17)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_mining_matches_reference_pk(p, k, d, shuffle):
    gen = torch.Generator().manual_seed(p * 100 + k * 10 + d)
    x = torch.randn(p * k, d, generator=gen)
    labels = _pk_labels(p, k, shuffle, gen)
    d_ap, d_an, pi, ni = batch_hard_mining(x, labels, backend="torch")
    r_ap, r_an, rpi, rni = hard_example_mining(euclidean_dist(x, x), labels, return_inds=True)
    torch.testing.assert_close(d_ap, r_ap, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d_an, r_an, rtol=1e-5, atol=1e-5)
    assert torch.equal(pi, rpi) and torch.equal(ni, rni)


@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("p,k,d", [(4, 4, 7), (8, 4, 130), (3, 5, 33), (64, 4, 48)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_loss_and_gradient_match_reference_pk(margin, p, k, d, shuffle):
    gen = torch.Generator().manual_seed(p + k + d)
    base = torch.randn(p * k, d, generator=gen) * 0.2  # small scale: many anchors inside the margin
    labels = _pk_labels(p, k, shuffle, gen)
    a, b = base.clone().requires_grad_(), base.clone().requires_grad_()
    loss = batch_hard_triplet_loss(a, labels, margin=margin, backend="torch")
    ref = TripletLoss(margin)(b, labels)
    loss.backward()
    ref.backward()
    assert loss.dtype == torch.float32 and loss.dim() == 0
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)


def test_ties_resolve_to_lowest_index_as_reference():
    # integer features: every distance is exact, duplicated rows produce exact ties in both directions
    gen = torch.Generator().manual_seed(9)
    x = torch.randint(-2, 3, (24, 6), generator=gen).float()
    x[5] = x[1]
    x[17] = x[1]
    x[9] = x[2]
    labels = _pk_labels(6, 4, True, gen)
    d_ap, d_an, pi, ni = batch_hard_mining(x, labels, backend="torch")
    r_ap, r_an, rpi, rni = hard_example_mining(euclidean_dist(x, x), labels, return_inds=True)
    assert torch.equal(pi, rpi) and torch.equal(ni, rni)
    torch.testing.assert_close(d_ap, r_ap, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(d_an, r_an, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_any_label_vector_matches_oracle(margin, seed):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.tensor([5, 5, 5, 9, 1, 1, 7, 7, 7, 7, 2, 5, 3])  # unequal counts, singletons 9, 2, 3
    labels = labels[torch.randperm(labels.numel(), generator=gen)]
    base = torch.randn(labels.numel(), 11, generator=gen, dtype=torch.float64) * 0.3
    a, b = base.clone().requires_grad_(), base.clone().requires_grad_()
    loss = batch_hard_triplet_loss(a, labels, margin=margin, backend="torch")
    ref = triplet_loss_oracle(b, labels, margin)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)


HOST_LABELS = {
    "pk": lambda g: _pk_labels(16, 4, False, g),
    "pk_shuffled": lambda g: _pk_labels(16, 4, True, g),
    "pk_k2": lambda g: _pk_labels(5, 2, False, g),
    "split_runs": lambda g: torch.tensor([3, 3, 1, 1, 3, 3, 2, 2]),  # equal runs, but label 3 has two of them
    "ragged_runs": lambda g: torch.tensor([0, 0, 0, 1, 1, 1, 2, 2]),
    "unequal": lambda g: torch.randint(0, 9, (70,), generator=g),
    "singletons": lambda g: torch.tensor([0, 1, 1, 2, 3, 3, 3, 4]),
    "one_label": lambda g: torch.zeros(9, dtype=torch.long),
    "all_distinct": lambda g: torch.arange(7),
}


@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", sorted(HOST_LABELS))
def test_host_twin_matches_torch_twin(case, dtype, margin):
    """On CPU the public path runs the host twin (NumPy reductions); it must agree with the pure-torch twin that
    CUDA tensors and the Triton backward use: same pairs and distances, same loss and gradient to rounding."""
    from fastccreid.kernels.triplet import BatchHardMiningFunction, BatchHardTripletLossFunction

    gen = torch.Generator().manual_seed(7)
    labels = HOST_LABELS[case](gen)
    base = torch.randn(labels.numel(), 96, generator=gen, dtype=dtype).round(decimals=1)  # rounding makes ties
    base[-1] = base[0]  # an exact duplicate: a zero distance at the clamp's floor
    xs = [base.clone().requires_grad_() for _ in range(2)]
    mined = [BatchHardMiningFunction.apply(x, labels, kernel, True)
             for x, kernel in zip(xs, ("host", "torch"), strict=True)]
    for a, b in zip(mined[0], mined[1], strict=True):
        assert a.dtype == b.dtype
        assert torch.equal(a, b)
    (mined[0][0].sum() + 0.5 * mined[0][1].clamp(max=1e3).sum()).backward()
    (mined[1][0].sum() + 0.5 * mined[1][1].clamp(max=1e3).sum()).backward()
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-6, atol=1e-7)
    xs = [base.clone().requires_grad_() for _ in range(2)]
    losses = [BatchHardTripletLossFunction.apply(x, labels, margin, kernel, True)
              for x, kernel in zip(xs, ("host", "torch"), strict=True)]
    assert losses[0].dtype == losses[1].dtype == dtype and losses[0].dim() == 0
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=1e-7)
    (3.0 * losses[0]).backward()
    (3.0 * losses[1]).backward()
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-6, atol=1e-7)


def test_cpu_tensors_take_the_host_twin():
    from fastccreid.kernels.triplet import _prepare

    x, labels = torch.randn(8, 4), torch.arange(4).repeat(2)
    assert _prepare(x, labels, "auto", True)[1] == "host"
    assert _prepare(x, labels, "torch", True)[1] == "host"
    assert _prepare(x.double(), labels, "auto", True)[1] == "host"


def test_singletons_and_missing_negatives_semantics():
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 1, 2, 2])
    d_ap, d_an, pi, ni = batch_hard_mining(x, labels, backend="torch")
    assert pi[0] == 0 and d_ap[0] == torch.tensor(1e-12).sqrt()  # singleton: its own (floored) distance
    assert torch.isfinite(d_an).all() and (ni >= 0).all()
    d_ap, d_an, pi, ni = batch_hard_mining(x, torch.zeros(5, dtype=torch.long), backend="torch")
    assert torch.isinf(d_an).all() and (ni == -1).all()


@pytest.mark.parametrize(
    "labels", [torch.zeros(6, dtype=torch.long), torch.arange(6), torch.tensor([4, 4, 4, 4, 4, 4])]
)
@pytest.mark.parametrize("margin", MARGINS)
def test_no_valid_anchor_gives_zero_loss_and_zero_grad(labels, margin):
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    loss = batch_hard_triplet_loss(x, labels, margin=margin, backend="torch")
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_single_row_batch():
    x = torch.randn(1, 8, requires_grad=True)
    loss = batch_hard_triplet_loss(x, torch.tensor([3]), backend="torch")
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


def test_mining_gradient_only_through_chosen_pairs():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(12, 5, generator=gen, requires_grad=True)
    labels = _pk_labels(3, 4, True, gen)
    d_ap, d_an, pi, ni = batch_hard_mining(x, labels, backend="torch")
    (g_x,) = torch.autograd.grad(d_ap[0], x)
    touched = {0, int(pi[0])}
    for r in range(12):
        assert (g_x[r].abs().sum() > 0) == (r in touched)
    xd = x.detach()
    torch.testing.assert_close(g_x[0], (xd[0] - xd[pi[0]]) / d_ap[0].detach())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("margin", MARGINS)
def test_half_features_computed_in_fp32(dtype, margin):
    gen = torch.Generator().manual_seed(6)
    x = (torch.randn(32, 48, generator=gen) * 0.3).to(dtype)
    labels = _pk_labels(8, 4, True, gen)
    a = x.clone().requires_grad_()
    b = x.float().requires_grad_()
    la = batch_hard_triplet_loss(a, labels, margin=margin, backend="torch")
    lb = batch_hard_triplet_loss(b, labels, margin=margin, backend="torch")
    la.backward()
    lb.backward()
    assert la.dtype == torch.float32 and a.grad.dtype == dtype
    torch.testing.assert_close(la, lb, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a.grad.float(), b.grad.to(dtype).float(), rtol=0, atol=0)


def test_fp16_large_features_do_not_overflow():
    # squared norms ~ 64 * 300^2 = 5.8e6 overflow fp16; the fp32 path stays finite and matches fp32
    gen = torch.Generator().manual_seed(8)
    x = (torch.randn(16, 64, generator=gen) * 300).half().requires_grad_()
    labels = _pk_labels(4, 4, False, gen)
    loss = batch_hard_triplet_loss(x, labels, backend="torch")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    torch.testing.assert_close(loss, TripletLoss(0.3)(x.detach().float(), labels), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("margin", MARGINS)
def test_gradcheck_float64(margin):
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(9, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3])
    assert torch.autograd.gradcheck(lambda a: batch_hard_triplet_loss(a * 0.3, labels, margin, backend="torch"), (x,))
    assert torch.autograd.gradcheck(lambda a: batch_hard_mining(a, labels, backend="torch")[:2], (x,))


def test_labels_as_list_or_numpy():
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))
    ref = batch_hard_triplet_loss(x, torch.tensor([0, 0, 1, 1, 2, 2]), backend="torch")
    assert batch_hard_triplet_loss(x, [0, 0, 1, 1, 2, 2], backend="torch") == ref
    assert batch_hard_triplet_loss(x, np.array([0, 0, 1, 1, 2, 2], dtype=np.int32), backend="torch") == ref


def test_inputs_not_mutated():
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(8, 6, generator=gen, requires_grad=True)
    labels = torch.tensor([1, 1, 2, 2, 3, 3, 4, 4], dtype=torch.int32)
    x0, l0 = x.detach().clone(), labels.clone()
    batch_hard_triplet_loss(x, labels, backend="torch").backward()
    batch_hard_mining(x, labels, backend="torch")
    assert torch.equal(x.detach(), x0) and torch.equal(labels, l0) and labels.dtype == torch.int32


@pytest.mark.parametrize(
    "features,labels,exc,match",
    [
        (torch.randn(4, 3), torch.tensor([0.0, 0.0, 1.0, 1.0]), ValueError, "labels must hold integers"),
        (torch.randn(4, 3), torch.tensor([True, False, True, False]), ValueError, "labels must hold integers"),
        (torch.randn(4, 3), torch.tensor([0, 0, 1]), ValueError, "labels must be 1-D with one entry"),
        (torch.randn(4, 3), torch.zeros(2, 2, dtype=torch.long), ValueError, "labels must be 1-D"),
        (torch.randn(4, 3), ["a", "b", "c", "d"], TypeError, "labels must be a 1-D tensor or array of integers"),
        (torch.randn(4, 3), [0.5, 0.5, 1.0, 1.0], ValueError, "labels must hold integers"),
        (torch.randn(0, 3), torch.zeros(0, dtype=torch.long), ValueError, "at least one row"),
        (torch.randn(4), torch.zeros(4, dtype=torch.long), ValueError, "features must be 2-D"),
        (torch.ones(4, 3, dtype=torch.long), torch.zeros(4, dtype=torch.long), ValueError, "features must be float"),
    ],
)
def test_bad_input_raises(features, labels, exc, match):
    with pytest.raises(exc, match=match):
        batch_hard_triplet_loss(features, labels)
    with pytest.raises(exc, match=match):
        batch_hard_mining(features, labels)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_inf_features_rejected(bad):
    x = torch.randn(6, 5)
    x[3, 1] = bad
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="features contains NaN or Inf"):
        batch_hard_triplet_loss(x, labels)
    with pytest.raises(ValueError, match="features contains NaN or Inf"):
        batch_hard_mining(x, labels)


@pytest.mark.parametrize("margin", [float("nan"), "0.3", True])
def test_bad_margin(margin):
    with pytest.raises(ValueError, match="margin"):
        batch_hard_triplet_loss(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), margin=margin)


def test_torch_compile_fullgraph_torch_path():
    torch._dynamo.reset()

    def f(a, lab):
        return batch_hard_triplet_loss(a, lab, margin=0.3, backend="torch")

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(16, 8, generator=gen) * 0.3).requires_grad_()
    labels = _pk_labels(4, 4, True, gen)
    out = compiled(x, labels)
    out.backward()
    x2 = x.detach().clone().requires_grad_()
    ref = f(x2, labels)
    ref.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(x.grad, x2.grad)


# ops that add floats with atomics on CUDA, in whatever order the threads land (torch.use_deterministic_algorithms'
# documentation lists them as nondeterministic there)
_ATOMIC_FLOAT_SCATTERS = ("index_add", "index_add_", "scatter_add", "scatter_add_", "scatter_reduce",
                          "scatter_reduce_", "index_put", "index_put_", "_index_put_impl_", "put_", "put")


def test_torch_twin_backward_adds_no_floats_with_atomics():
    """The backward CUDA tensors run (the torch twin's and the Triton path's ``mining_backward``) sums by
    ``embedding_bag`` bags only, so it has the same bits run to run on a GPU (--deterministic): no float scatter
    op in it; and on CPU it equals the host twin bit for bit (the same summation order)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from fastccreid.kernels.triplet import BatchHardTripletLossFunction

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen: list[tuple[str, torch.dtype | None]] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            first = args[0] if args and isinstance(args[0], torch.Tensor) else None
            self.seen.append((func.overloadpacket.__name__, first.dtype if first is not None else None))
            return out

    gen = torch.Generator().manual_seed(3)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 3, 4])  # partners chosen by several anchors
    base = torch.randn(12, 40, generator=gen).round(decimals=1)
    xs = [base.clone().requires_grad_() for _ in range(2)]
    losses = [BatchHardTripletLossFunction.apply(x, labels, 0.3, kernel, True)
              for x, kernel in zip(xs, ("host", "torch"), strict=True)]
    losses[0].backward()
    ops = Ops()
    with ops:
        losses[1].backward()
    float_scatters = [(n, dt) for n, dt in ops.seen if n in _ATOMIC_FLOAT_SCATTERS and dt is not None
                      and dt.is_floating_point]
    assert not float_scatters, float_scatters
    assert sum(n.startswith("_embedding_bag") for n, _ in ops.seen) == 2, ops.seen  # the diagonal, the product
    assert torch.equal(xs[0].grad, xs[1].grad)
