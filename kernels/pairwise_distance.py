"""Pairwise distance [M, N] between the rows of x [M, D] and y [N, D]: euclidean, squared euclidean or cosine.

One matmul plus row norms, in fp32 whatever the input precision (fp32 / fp16 / bf16; fp64 stays fp64 on the torch
path, for gradcheck). ``euclidean`` is the seed's ``sqrt(clamp(|x|^2 + |y|^2 - 2 x·y, 1e-12))``; ``cosine`` is
``1 - x̂·ŷ`` with norms clamped at 1e-12. Differentiable: a custom autograd.Function whose backward is two matmuls
(no autograd graph over the [M, N] intermediates). The Triton kernel (``_pairwise_distance_triton``) is imported only
when the Triton path runs.
"""

from __future__ import annotations

import torch

from fastccreid.kernels._backend import resolve_backend
from fastccreid.kernels.checks import FLOAT_DTYPES, check_features, check_norms, check_pairwise_inputs

METRICS = ("euclidean", "sqeuclidean", "cosine")
METRIC_CODES = {"sqeuclidean": 0, "euclidean": 1, "cosine": 2}
SQ_FLOOR = 1e-12  # the seed's clamp of the squared distance before sqrt
NORM_EPS = 1e-12  # cosine: row norms clamped here (as F.normalize)


def _is_compiling() -> bool:
    return torch.compiler.is_compiling()


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


GRAM_BLOCK = 64  # column-block width of ``gram``: narrower blocks save FLOPs but lose BLAS efficiency


def gram(xf: torch.Tensor) -> torch.Tensor:
    """x xᵀ [B, B] from the lower block triangle only (B > 64): each 64-wide column block is one matmul of the rows
    at and below it, written in place, then mirrored to the upper triangle (5/8 of the FLOPs at B = 256). The result
    is exactly symmetric."""
    b = xf.shape[0]
    if b <= GRAM_BLOCK:
        return xf @ xf.t()
    out = torch.empty(b, b, dtype=xf.dtype, device=xf.device)
    # NumPy's transposing copy is ~2x torch's on CPU (the mirror is ~5% of the Gram's time at B = 256)
    host = out.numpy() if out.device.type == "cpu" and not _is_compiling() else None
    for s in range(0, b, GRAM_BLOCK):
        e = min(s + GRAM_BLOCK, b)
        torch.mm(xf[s:], xf[s:e].t(), out=out[s:, s:e])  # a strided view: BLAS writes it with its leading dimension
        if e < b:
            if host is not None:
                host[s:e, e:] = host[e:, s:e].T
            else:
                out[s:e, e:].copy_(out[e:, s:e].t())
    return out


def distance_torch(x: torch.Tensor, y: torch.Tensor, metric: str, check_finite: bool = False,
                   inplace: bool = True) -> torch.Tensor:
    """The vectorised CPU twin (no autograd): the seed's addmm form, one [M, N] buffer updated in place.

    For y is x (a batch against itself) the Gram is computed once per symmetric block and its diagonal gives the
    norms, so self-distances are exactly 0 (euclidean: the 1e-6 floor). ``check_finite`` raises ValueError on a
    NaN / Inf input, detected from the row norms. ``inplace=False``: the same values with no in-place update (one
    plain Gram matmul for y is x), for a result that an autograd.Function saves while torch.compile traces it (see
    ``PairwiseDistanceFunction``)."""
    dt = _compute_dtype(x, y)
    xf = x.to(dt)
    yf = xf if y is x else y.to(dt)
    if metric == "cosine":
        nx = xf.norm(dim=1, keepdim=True)
        ny = nx if y is x else yf.norm(dim=1, keepdim=True)
        if check_finite:
            check_norms(nx, "x")
            check_norms(ny, "y")
        xn = xf / nx.clamp(min=NORM_EPS)
        yn = xn if y is x else yf / ny.clamp(min=NORM_EPS)
        return torch.addmm(torch.ones((), dtype=dt, device=x.device), xn, yn.t(), beta=1, alpha=-1)
    if y is x:
        d = gram(xf) if inplace else xf @ xf.t()
        xx = d.diagonal().clone()
        if check_finite:
            check_norms(xx, "x")
        norms = xx[:, None] + xx[None, :]  # the seed's order: norms first, then -2 x·y
        d = norms.add_(d, alpha=-2.0) if inplace else norms.add(d, alpha=-2.0)
    else:
        xx = (xf * xf).sum(1)
        yy = (yf * yf).sum(1)
        if check_finite:
            check_norms(xx, "x")
            check_norms(yy, "y")
        norms = xx[:, None] + yy[None, :]
        d = (norms.addmm_ if inplace else norms.addmm)(xf, yf.t(), beta=1, alpha=-2)
    if metric == "euclidean":
        d = d.clamp_(min=SQ_FLOOR).sqrt_() if inplace else d.clamp(min=SQ_FLOOR).sqrt()
    return d


def distance_backward(
    grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, d: torch.Tensor, metric: str, need_x: bool, need_y: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of ``distance(x, y)`` w.r.t. x [M, D] and y [N, D] given grad [M, N]: two matmuls, no graph.

    Where the seed's clamp is active (squared distance below 1e-12) the euclidean gradient is zero, as autograd of
    ``clamp(min).sqrt()`` gives."""
    dt = d.dtype
    xf, yf = x.to(dt), y.to(dt)
    g = grad.to(dt)
    gx = gy = None
    if metric == "cosine":
        nx = xf.norm(dim=1, keepdim=True)
        ny = yf.norm(dim=1, keepdim=True)
        xn, yn = xf / nx.clamp(min=NORM_EPS), yf / ny.clamp(min=NORM_EPS)
        if need_x:
            gxn = -(g @ yn)
            # backward of x / max(|x|, eps): project out the radial part where the norm is not clamped
            radial = torch.where(nx > NORM_EPS, (gxn * xn).sum(1, keepdim=True), torch.zeros_like(nx))
            gx = (gxn - radial * xn) / nx.clamp(min=NORM_EPS)
        if need_y:
            gyn = -(g.t() @ xn)
            radial = torch.where(ny > NORM_EPS, (gyn * yn).sum(1, keepdim=True), torch.zeros_like(ny))
            gy = (gyn - radial * yn) / ny.clamp(min=NORM_EPS)
    else:
        if metric == "euclidean":
            floor = torch.tensor(SQ_FLOOR, dtype=dt).sqrt().item()
            # d(sqrt s)/ds = 1 / (2 d); zero where the clamp held s at its floor
            g = torch.where(d > floor, g * 0.5 / d, torch.zeros((), dtype=dt, device=d.device))
        if need_x:
            gx = 2.0 * (g.sum(1, keepdim=True) * xf - g @ yf)
        if need_y:
            gy = 2.0 * (g.sum(0)[:, None] * yf - g.t() @ xf)
    return (gx.to(x.dtype) if gx is not None else None), (gy.to(y.dtype) if gy is not None else None)


class PairwiseDistanceFunction(torch.autograd.Function):
    """Forward by ``distance_torch``, or by the Triton kernel called directly when ``use_triton`` (CPU tensors
    under TRITON_INTERPRET=1); backward by ``distance_backward`` either way (saves x, y and d only). ``y=None``: the
    distances of x to itself (one input, so torch.compile traces it: dynamo refuses, and torch 2.11 mis-traced, the
    same tensor given twice)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor | None, metric: str, use_triton: bool = False) -> torch.Tensor:
        other = x if y is None else y
        if use_triton:
            from fastccreid.kernels._pairwise_distance_triton import pairwise_distance_launch

            d = pairwise_distance_launch(x, other, METRIC_CODES[metric])
        else:
            # Traced by torch.compile, the saved d must not come out of an in-place update: torch 2.11's AOT
            # autograd then saves it at the wrong version and the compiled gradient is wrong (all zeros for the
            # euclidean clamp_().sqrt_(); torch 2.14 is right). Out of place costs nothing there (Inductor fuses).
            d = distance_torch(x, other, metric, check_finite=True, inplace=not torch.compiler.is_compiling())
        ctx.save_for_backward(x, other, d)
        ctx.metric = metric
        ctx.self_distance = y is None
        return d

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, y, d = ctx.saved_tensors
        if ctx.self_distance:  # x is both operands: the two gradients add up
            gx, gy = distance_backward(grad, x, y, d, ctx.metric, True, True)
            return gx + gy, None, None, None
        gx, gy = distance_backward(grad, x, y, d, ctx.metric, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return gx, gy, None, None


def pairwise_distance(x, y=None, metric: str = "euclidean", backend: str = "auto") -> torch.Tensor:
    """Distances [M, N] (fp32; fp64 for fp64 input) between rows of x [M, D] and y [N, D] (y=None: y = x).

    ``metric``: euclidean (the seed's clamp(1e-12).sqrt() form) | sqeuclidean | cosine (1 - cosine similarity).
    ``backend``: auto | triton | torch (see ``fastccreid.kernels._backend``). fp64 input always takes the torch
    path. Differentiable w.r.t. x and y on every path.
    """
    y = check_pairwise_inputs(x, y, metric, METRICS)
    chosen = resolve_backend(backend, x, y)
    if chosen == "triton" and x.dtype != torch.float64 and y.dtype != torch.float64:
        check_features(x, "x")
        if y is not x:
            check_features(y, "y")
        if x.is_cuda:
            from fastccreid.kernels._pairwise_distance_triton import pairwise_distance_op

            return pairwise_distance_op(x, y, METRIC_CODES[metric])
        return PairwiseDistanceFunction.apply(x, None if y is x else y, metric, True)
    if torch.is_grad_enabled() and (x.requires_grad or y.requires_grad):
        return PairwiseDistanceFunction.apply(x, None if y is x else y, metric)
    return distance_torch(x, y, metric, check_finite=True)  # no graph wanted: skip the autograd node


__all__ = ["FLOAT_DTYPES", "METRICS", "check_features", "distance_backward", "distance_torch", "gram",
           "pairwise_distance"]
