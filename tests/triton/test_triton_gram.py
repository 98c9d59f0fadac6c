"""The property both rank passes (and top-k's exact ties) rely on: the rank kernels' distance tile
(``_triton_gram.sqeuclid_tile``) gives one (query, gallery item) pair the same bits wherever the pair sits in a tile,
whatever the tile shape, and zero feature columns (``aligned_rows``' padding, or whole zero K steps) change no bit.

On a GPU this holds by construction (an IEEE fp32 ``tl.dot`` is one FMA chain per element in k order). Under the
interpreter ``tl.dot`` is ``np.matmul`` and its bits move with an element's position on some CPUs (an AVX2 EPYC's
OpenBLAS), so the rank kernels sum the tile elementwise there (``INTERPRETED_EXACT_GRAM``); this test fails without
that on such a CPU. Natively on a GPU it checks the FMA-chain claim itself.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.triton
triton = pytest.importorskip("triton")

import triton.language as tl  # noqa: E402

from fastccreid.kernels._triton_gram import aligned_rows, sqeuclid_tile  # noqa: E402
from fastccreid.kernels.seed_distance import sq_norms  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@triton.jit
def _tile_kernel(q_ptr, g_ptr, qq_ptr, gg_ptr, out_ptr, NQ, NG, D, stride_q, stride_g,
                 BQ: tl.constexpr, BG: tl.constexpr, BK: tl.constexpr):
    offs_q = tl.program_id(1) * BQ + tl.arange(0, BQ)
    offs_g = tl.program_id(0) * BG + tl.arange(0, BG)
    mask_q = offs_q < NQ
    mask_g = offs_g < NG
    d = sqeuclid_tile(q_ptr, g_ptr, qq_ptr, gg_ptr, offs_q, offs_g, mask_q, mask_g, D, stride_q, stride_g, BQ, BG, BK)
    tl.store(out_ptr + offs_q.to(tl.int64)[:, None] * NG + offs_g[None, :], d, mask=mask_q[:, None] & mask_g[None, :])


def _tiles(q: torch.Tensor, g: torch.Tensor, bq: int, bg: int, bk: int = 16) -> torch.Tensor:
    """[Q, G] fp32 distances from the rank kernels' tile code, in bq x bg tiles."""
    q, g = aligned_rows(q.to(DEVICE)), aligned_rows(g.to(DEVICE))
    qq, gg = sq_norms(q.float()).contiguous(), sq_norms(g.float()).contiguous()
    out = torch.empty(q.shape[0], g.shape[0], dtype=torch.float32, device=DEVICE)
    grid = (triton.cdiv(g.shape[0], bg), triton.cdiv(q.shape[0], bq))
    _tile_kernel[grid](q, g, qq, gg, out, q.shape[0], g.shape[0], q.shape[1], q.stride(0), g.stride(0),
                       BQ=bq, BG=bg, BK=bk)
    return out.cpu()


def test_a_pairs_bits_do_not_depend_on_its_place_in_the_tile():
    gen = torch.Generator().manual_seed(3)
    q, g = torch.randn(37, 48, generator=gen), torch.randn(90, 48, generator=gen)
    ref = _tiles(q, g, 16, 32)
    # the same pairs at other rows (query launches starting at rows 1, 5 and 9, as the placement's query chunks do),
    # at other columns, and in other tile shapes (the placement's autotuned tiles against pass 1's 16 x 32)
    for s in (1, 5, 9):
        assert torch.equal(_tiles(q[s:], g, 16, 32), ref[s:]), f"query rows shifted by {s}"
    assert torch.equal(_tiles(q, g[3:], 16, 32), ref[:, 3:]), "gallery columns shifted by 3"
    for bq, bg in ((32, 64), (64, 64), (16, 16)):
        assert torch.equal(_tiles(q, g, bq, bg), ref), f"tile {bq}x{bg}"
    # duplicate gallery rows give exactly tied distances in every query row (the tests' exact-tie cases)
    g2 = g.clone()
    g2[50] = g2[3]
    d2 = _tiles(q, g2, 16, 32)
    assert torch.equal(d2[:, 50], d2[:, 3])


def test_zero_columns_change_no_bit():
    """Features of width 20 (padded to 32 by ``aligned_rows``) against the same features padded by hand to 48 (a
    whole K step of zeros more): the same bits, as the zero products add exactly 0 to every FMA chain."""
    gen = torch.Generator().manual_seed(4)
    q, g = torch.randn(21, 20, generator=gen), torch.randn(40, 20, generator=gen)
    wide = lambda x: torch.cat([x, torch.zeros(x.shape[0], 28)], dim=1)  # noqa: E731
    assert torch.equal(_tiles(q, g, 16, 32), _tiles(wide(q), wide(g), 16, 32))
