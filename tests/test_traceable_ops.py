"""The registered ops trace under torch.compile (issue 13, item 2).

On CPU tensors: ``torch.compile(backend="aot_eager", fullgraph=True)`` of an evaluation through
``fastccreid::rank_stats_sqeuclid`` and of training losses (``cssc_loss``, ``batch_hard_triplet_loss`` and the
registered ``fastccreid::batch_hard_mining``) equals eager, gradients included; the ops stay opaque there and run
their CPU kernels. On fake CUDA tensors (no GPU needed): ``make_fx(tracing_mode="fake")`` of every op body traces
its Triton launches as graph nodes with no read-back (``aten._local_scalar_dense``), and under functionalization
(what torch.compile's AOT step does) a CUDA call decomposes into its Triton kernels while a CPU call stays one op.
What cannot be checked here: running the traced CUDA graphs (no GPU) and Inductor's codegen for them.
"""

from __future__ import annotations

import pytest
import torch
from helpers.eval_cases import torch_labels

from fastccreid.kernels import rank_stats
from fastccreid.kernels._backend import RANK_STATS_CUDA_AUTO, rank_stats_backend
from fastccreid.kernels.rank_stats import match_layout

triton = pytest.importorskip("triton")

from fastccreid.kernels import _pairwise_distance_triton as PW  # noqa: E402  (needs triton)
from fastccreid.kernels import _rank_stats_triton as RS  # noqa: E402
from fastccreid.kernels import _topk_triton as TK  # noqa: E402
from fastccreid.kernels import _triplet_triton as TP  # noqa: E402


def _eval_case(nq=23, ng=70, d=24, seed=5):
    gen = torch.Generator().manual_seed(seed)
    q, g = torch.randn(nq, d, generator=gen), torch.randn(ng, d, generator=gen)
    g[9] = g[4]  # an exact tie
    lab = torch_labels(gen, nq, ng, npid=5)
    return q, g, lab


def _summary(first, ap, inp, nmatch):
    """mAP, mINP and rank-1 over valid queries, without boolean indexing (traceable)."""
    valid = (nmatch > 0).to(torch.float64)
    n = valid.sum()
    return (ap * valid).sum() / n, (inp * valid).sum() / n, ((first == 1).to(torch.float64) * valid).sum() / n


@pytest.mark.parametrize("junk", [None, "market", "ltcc-cc"])
def test_compiled_evaluation_through_registered_op_equals_eager(junk):
    torch._dynamo.reset()
    q, g, lab = _eval_case()
    qp, gp, qc, gc, qcl, gcl = lab.values()
    lay = match_layout(qp, gp, qc, gc, qcl, gcl, junk)  # host side, outside the compiled region

    def evaluate(q, g, qp, gp, slot, idx, is_match):
        return _summary(*RS.rank_stats_op(q, g, qp, gp, slot, idx, is_match))

    args = (q, g, qp, gp, lay.slot, lay.idx, lay.is_match)
    compiled = torch.compile(evaluate, backend="aot_eager", fullgraph=True)
    got, want = compiled(*args), evaluate(*args)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    # and the streaming torch path (no op, no layout) gives the same statistics
    st = rank_stats(q, g, junk=junk, backend="torch", **lab)
    ref = _summary(st.first_rank, st.ap, st.inp, st.num_matches)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def _train_case(p=4, k=4, d=32, seed=3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(p * k, d, generator=gen)
    labels = torch.arange(p).repeat_interleave(k)
    return x, labels


@pytest.mark.parametrize("margin", [0.3, None])
def test_compiled_triplet_loss_equals_eager(margin):
    from fastccreid.kernels import batch_hard_triplet_loss

    torch._dynamo.reset()
    x, labels = _train_case()

    def step(x):
        return batch_hard_triplet_loss(x, labels, margin=margin, backend="torch", validate=False)

    xs = [x.clone().requires_grad_() for _ in range(2)]
    got = torch.compile(step, backend="aot_eager", fullgraph=True)(xs[0])
    want = step(xs[1])
    got.backward()
    want.backward()
    assert torch.equal(got, want)
    torch.testing.assert_close(xs[0].grad, xs[1].grad, atol=1e-6, rtol=1e-6)


def test_compiled_mining_op_equals_eager_on_cpu():
    """fastccreid::batch_hard_mining on CPU tensors under aot_eager: the op stays opaque (its CPU kernel runs; a
    decomposition into its Triton kernel would need a GPU) and its registered backward gives eager's gradient."""
    torch._dynamo.reset()
    x, labels = _train_case(seed=8)

    def step(x):
        d_ap, d_an, _, _, _ = TP.batch_hard_mining_op(x, labels)
        return (d_ap - d_an + 0.3).clamp(min=0).mean()

    xs = [x.clone().requires_grad_() for _ in range(2)]
    got = torch.compile(step, backend="aot_eager", fullgraph=True)(xs[0])
    want = step(xs[1])
    got.backward()
    want.backward()
    assert torch.equal(got, want)
    assert torch.equal(xs[0].grad, xs[1].grad)


def test_compiled_cssc_loss_equals_eager():
    from fastccreid.engine.loss import cssc_loss

    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(11)
    p, k, d, ncls = 4, 4, 32, 6
    pids = torch.arange(p).repeat_interleave(k)
    feats = [torch.randn(p * k, d, generator=gen) for _ in range(5)]
    logits = [torch.randn(p * k, ncls, generator=gen) for _ in range(5)]

    def step(*ts):
        f, lg = list(ts[:5]), list(ts[5:])
        return cssc_loss(f, lg, pids, use_triplet=True, backend="torch").total

    a = [t.clone().requires_grad_() for t in feats + logits]
    b = [t.clone().requires_grad_() for t in feats + logits]
    got = torch.compile(step, backend="aot_eager", fullgraph=True)(*a)
    want = step(*b)
    got.backward()
    want.backward()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    for ta, tb in zip(a, b, strict=True):
        torch.testing.assert_close(ta.grad, tb.grad, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Op bodies on fake CUDA tensors (FakeTensorMode makes them without a GPU)

def _fake_cuda(*tensors):
    """Fake CUDA tensors of the same shapes and dtypes (no GPU and no CUDA initialisation needed)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        return [torch.empty(t.shape, dtype=t.dtype, device="cuda") for t in tensors]


def _ops_in(gm) -> list[str]:
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]


def _bodies():
    q, g, lab = _eval_case(nq=9, ng=40, d=20)
    qp, gp, qc, gc, qcl, gcl = lab.values()
    lay = match_layout(qp, gp, qc, gc, qcl, gcl, "market")
    x, labels = _train_case()
    return {
        "rank_stats": (RS._rank_stats_body, (q, g, qp, gp, lay.slot, lay.idx, lay.is_match)),
        "pairwise": (lambda a, b: PW._pairwise_distance_body(a, b, 1), (q, g)),
        "batch_hard": (TP._batch_hard_mining_body, (x, labels)),
        "topk": (lambda a, b, c, d, e, f: TK._topk_body(a, b, 5, c, d, e, f, e, f, 1), (q, g, qp, gp, qc, gc)),
    }


@pytest.mark.parametrize("name", ["rank_stats", "pairwise", "batch_hard", "topk"])
def test_op_body_traces_on_fake_cuda_tensors(name):
    """make_fx(tracing_mode="fake") of the op body on fake CUDA tensors: Triton launches are graph nodes, nothing
    is read back to the host (the old rank_stats body failed here on ``int(cnt.max().item())``)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    fn, args = _bodies()[name]
    fake = _fake_cuda(*args)
    gm = make_fx(fn, tracing_mode="fake")(*fake)
    ops = _ops_in(gm)
    assert any("triton_kernel_wrapper" in o for o in ops), ops
    assert not any("_local_scalar_dense" in o or o.startswith("aten.item") for o in ops), ops


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_functionalized_op_decomposes_on_cuda_only(device):
    """torch.compile's AOT step runs the graph under FunctionalTensorMode: there a CUDA call of the rank op
    becomes its Triton kernels (Inductor sees them), a CPU call stays the opaque op (its CPU kernel runs)."""
    from torch._subclasses.functional_tensor import dispatch_functionalize
    from torch.fx.experimental.proxy_tensor import make_fx

    _, args = _bodies()["rank_stats"]
    if device == "cuda":
        args = _fake_cuda(*args)
    gm = make_fx(dispatch_functionalize(lambda *a: RS.rank_stats_op(*a)), tracing_mode="fake")(*args)
    ops = _ops_in(gm)
    has_op = any("rank_stats_sqeuclid" in o for o in ops)
    has_kernels = any("triton_kernel_wrapper" in o for o in ops)
    assert (has_kernels, has_op) == ((True, False) if device == "cuda" else (False, True)), ops
    assert not any("_local_scalar_dense" in o for o in ops), ops


# ---------------------------------------------------------------------------------------------------------------
# Which path backend="auto" takes for CUDA evaluation (kernels/_backend.py: the documented rule)

def test_auto_keeps_cuda_evaluation_on_documented_path(monkeypatch):
    (x,) = _fake_cuda(torch.zeros(4, 8))
    monkeypatch.delenv("FASTCCREID_BACKEND", raising=False)
    assert rank_stats_backend("auto", x) == RANK_STATS_CUDA_AUTO == "torch"
    assert rank_stats_backend(None, x) == "torch"
    assert rank_stats_backend("triton", x) == "triton"  # asked for: the fused kernels
    assert rank_stats_backend("auto", torch.zeros(4, 8)) == "torch"
    monkeypatch.setenv("FASTCCREID_BACKEND", "triton")
    assert rank_stats_backend("auto", x) == "triton"
    monkeypatch.setenv("FASTCCREID_BACKEND", "cuda")
    with pytest.raises(ValueError, match="FASTCCREID_BACKEND must be one of"):
        rank_stats_backend("auto", x)
