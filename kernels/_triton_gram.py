"""Shared Triton pieces of the distance kernels: the Gram-tile K loop with fused squared norms.

Imported only when a Triton path runs (it imports triton).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastccreid.kernels._backend import triton_interpret

# CUDA's grid limits: axis 0 up to 2^31 - 1 blocks, axes 1 and 2 up to 65,535.
GRID_X_MAX, GRID_YZ_MAX = 2**31 - 1, 65_535

# How the rank kernels' Gram tile is summed under the Triton interpreter. On a GPU an IEEE fp32 ``tl.dot`` lowers to
# one FMA chain per output element in k order (no tensor cores), so a (query, gallery item) distance has the same
# bits wherever it sits in whatever tile. The interpreter runs ``tl.dot`` as ``np.matmul``, i.e. the CPU's BLAS,
# whose bits for one element depend on its row / column position in the tile (OpenBLAS's edge kernels on an AVX2
# EPYC): the same-pid pass and the placement pass then disagree on a match's own distance and exact ties break
# the wrong way. Under the interpreter the rank kernels therefore sum the tile as a broadcast product reduced over
# k (elementwise, the same order for every element): position independent, as the GPU's FMA chain is. Read once at
# import, as ``@triton.jit`` itself picks the interpreter at import; compiled kernels never see the branch.
INTERPRETED_EXACT_GRAM = tl.constexpr(triton_interpret())


def check_grid(grid: tuple[int, ...], what: str) -> tuple[int, ...]:
    """Return ``grid`` if every axis is within CUDA's limits, else raise ValueError naming the launch."""
    limits = (GRID_X_MAX, GRID_YZ_MAX, GRID_YZ_MAX)
    if len(grid) > 3 or any(n < 0 or n > lim for n, lim in zip(grid, limits, strict=False)):
        raise ValueError(f"{what}: launch grid {grid} exceeds CUDA's limits (x <= {GRID_X_MAX}, y, z <= {GRID_YZ_MAX})")
    return grid


def decompose_on_cuda_only(op, body) -> None:
    """Under functionalization (torch.compile's AOT tracing) decompose the ``triton_op`` ``op`` into ``body`` (its
    Triton launches become graph nodes Inductor can see) only for CUDA tensors; on CPU tensors keep it one opaque
    op, so a compiled graph runs its registered CPU kernel (the torch twin) instead of Triton kernels that need a GPU
    (or TRITON_INTERPRET=1, which cannot run on fake tensors). Replaces ``triton_op``'s own rule, which decomposes
    on every device (torch/_library/triton.py: ``functional_decomp``); both keep the op whole under torch.export."""
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor, FunctionalTensorMode

    def rule(mode, func, types, args, kwargs):
        if any(t not in (torch.Tensor, FakeTensor, FunctionalTensor) and not issubclass(t, FakeTensor) for t in types):
            return NotImplemented
        on_cuda = any(isinstance(a, torch.Tensor) and a.is_cuda for a in (*args, *kwargs.values()))
        if not on_cuda or not torch._functorch.config.decompose_custom_triton_ops:
            return mode.__torch_dispatch__(func, types, args, kwargs)
        with mode:
            return body(*args, **kwargs)

    op.register_torch_dispatch(FunctionalTensorMode, rule)


def traceable(kernel):
    """``torch.library.wrap_triton(kernel)`` (so make_fx / torch.compile see the launch as a graph node), except
    under the Triton interpreter, where the kernel is launched as it is: an interpreted kernel runs on CPU tensors,
    which the registered ops keep opaque under tracing (``decompose_on_cuda_only``), and torch < 2.14's
    ``wrap_triton`` refuses an interpreted ``@triton.jit`` kernel ("only works on functions annotated with
    triton.jit") and wraps an interpreted autotuner into a launcher that fails ('function' object has no attribute
    'fn'); torch 2.14 returns interpreted kernels unwrapped itself."""
    if triton_interpret():
        return kernel
    from torch.library import wrap_triton

    return wrap_triton(kernel)


def path_pruner(gpu_configs):
    """An ``early_config_prune`` that autotunes only the configs of a launch's path: ``gpu_configs(ieee)`` gives
    the fp32 IEEE (``ieee``) or tensor-core fp16 / bf16 configs. Configs are matched by value, because torch.compile
    hands the pruner copies of them; the interpreter's single config is in neither list and is kept.

    Under ``torch.use_deterministic_algorithms(True)`` (``--deterministic`` on CUDA) only the path's first config is
    kept: configs differ in tile shape and K step, hence in how a tile's squared norms are reduced (the last bits),
    and which one autotuning picks depends on timing noise, so a fresh process (a resumed run) could pick another.
    The pruner runs once per autotune key (the choice is cached), so the mode must be set before the first launch,
    as the trainer does."""

    def prune(configs, named_args, **kwargs):
        ieee = kwargs.get("IEEE", named_args.get("IEEE"))
        wanted = [_config_key(c) for c in gpu_configs(bool(ieee))]
        if torch.are_deterministic_algorithms_enabled():
            wanted = wanted[:1]
        return [c for c in configs if _config_key(c) in wanted] or configs

    return prune


def autotune_bucket(n: int) -> int:
    """The size an autotune key holds for ``n``: the next power of two (1 for n <= 1). Keys on exact sizes would
    benchmark every config again for every new shape (each evaluation's gallery, a last partial chunk); within a
    bucket the same tile wins closely enough, and results never depend on it (every config computes the same
    masked tiles)."""
    return 1 << max(0, int(n) - 1).bit_length()


def _config_key(c: triton.Config) -> tuple:
    return tuple(sorted(c.kwargs.items())), c.num_warps, c.num_stages


def aligned_rows(x: torch.Tensor) -> torch.Tensor:
    """x [N, D] in the layout the kernels are compiled and checked for: contiguous, 16-byte aligned, D a multiple
    of 16 (zero columns appended: they add exactly 0 to dot products and norms). A D % 16 != 0 or a strided view
    would compile to scalar loads that spill registers (tests/test_triton_compile.py). No copy when already so."""
    n, d = x.shape
    d16 = max(16, -(-d // 16) * 16)
    if d == d16 and x.is_contiguous() and (x.storage_offset() * x.element_size()) % 16 == 0:
        return x
    out = x.new_zeros((n, d16))
    out[:, :d] = x
    return out


def dot_fp32(dtype: torch.dtype) -> bool:
    """bf16 ``tl.dot`` gives wrong results in the Triton interpreter (triton 3.x): there, upcast tiles to fp32."""
    return dtype == torch.bfloat16 and triton_interpret()


@triton.jit
def gram_tile(
    x_ptr, y_ptr, rm, rn, m_ok, n_ok, K, stride_xm, stride_xk, stride_ym, stride_yk,
    IEEE: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NORMS: tl.constexpr = True,
    POSITION_EXACT: tl.constexpr = False,
):
    """x[rm] · y[rn]ᵀ as a [BLOCK_M, BLOCK_N] fp32 tile, plus both rows' squared norms from the same loads (so the
    norms cost no extra pass over memory; ``NORMS=False`` leaves them 0 for callers that read stored norms).
    ``rm``/``rn`` are int64 row offsets; masked rows and columns read 0. ``POSITION_EXACT`` (interpreter only, see
    ``INTERPRETED_EXACT_GRAM``): the tile as an elementwise product summed over k instead of ``tl.dot``."""
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    xsq = tl.zeros((BLOCK_M,), dtype=tl.float32)
    ysq = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        k_ok = kk < K
        a = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :] * stride_xk,
                    mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(y_ptr + rn[None, :] * stride_ym + kk[:, None] * stride_yk,
                    mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        af = a.to(tl.float32)
        bf = b.to(tl.float32)
        if NORMS:
            xsq += tl.sum(af * af, axis=1)
            ysq += tl.sum(bf * bf, axis=0)
        if POSITION_EXACT:  # interpreter: every element summed the same way, wherever it sits in the tile
            acc += tl.sum(af[:, :, None] * bf[None, :, :], axis=1)
        elif IEEE:  # fp32 inputs: IEEE fp32 products (not TF32), so rankings match the fp32 reference
            acc = tl.dot(a, b, acc, input_precision="ieee")
        elif DOT_FP32:
            acc = tl.dot(af, bf, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
    return acc, xsq, ysq


@triton.jit
def sqeuclid_tile(q_ptr, g_ptr, qq_ptr, gg_ptr, offs_q, offs_g, mask_q, mask_g, D, stride_q, stride_g,
                  BQ: tl.constexpr, BG: tl.constexpr, BK: tl.constexpr):
    """|q|^2 + |g|^2 - 2 q.g for a [BQ, BG] tile of unit-stride rows: the Gram tile of fp32-upcast loads with IEEE
    fp32 products (no TF32), and the squared norms qq [Q] / gg [G] read from memory (torch's, so the distances
    carry the same norms as the torch path's). The bits of one element depend only on its two rows and the K steps,
    not on the tile around it (compiled: the FMA chain; interpreted: ``INTERPRETED_EXACT_GRAM``), which both rank
    passes rely on to compare a match's distance with a non-match's."""
    acc, _, _ = gram_tile(q_ptr, g_ptr, offs_q.to(tl.int64), offs_g.to(tl.int64), mask_q, mask_g, D, stride_q, 1,
                          stride_g, 1, False, True, BQ, BG, BK, False, INTERPRETED_EXACT_GRAM)
    qq = tl.load(qq_ptr + offs_q, mask=mask_q, other=0.0)
    gg = tl.load(gg_ptr + offs_g, mask=mask_g, other=0.0)
    return qq[:, None] + gg[None, :] - 2.0 * acc
