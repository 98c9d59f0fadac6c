"""Every Triton kernel compiled for real GPUs (sm_80, sm_90) without a GPU, with every config it can be given.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`` runs the whole pipeline down to a cubin with
the ptxas shipped in the triton wheel; the ptxas ``-v`` log gives registers, spill bytes and the stack frame, the
compiled metadata the dynamic shared memory. A config that spills, or needs more shared memory than the target
has, fails here instead of in the first GPU user's hands (the Triton interpreter shows neither).

Arguments are specialised as a typical launch specialises them: 16-byte aligned pointers, a feature dimension
and row strides divisible by 16, unit strides folded to the constant 1.

The default run (44 compiles) covers every shipped config of every kernel on both targets once: pairwise fp32
euclidean (the IEEE configs) and bf16 cosine (the tensor-core configs), batch-hard fp32 and bf16, top-k with the
ltcc-cc junk rule at KP 1, 64 and 128, the rank kernels in fp32. ``-m slow`` adds the rest of the matrix (fp16, the
other metrics and junk rules, every top-k KP, bf16 rank kernels: 122 more compiles, about 5 CPU-minutes).
``python tests/test_triton_compile.py [kernel ...]`` prints the README table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re

import pytest

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    # @triton.jit made interpreter functions at import: nothing here could compile (reported by -ra, not silent)
    pytest.skip("compiling for sm_80 / sm_90 needs a session without TRITON_INTERPRET=1", allow_module_level=True)

triton = pytest.importorskip("triton")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

pytestmark = pytest.mark.triton

# shared memory a block may use (opt-in maximum): A100 (sm_80) 163 KB, H100 (sm_90) 227 KB
TARGETS = {80: 163 * 1024, 90: 227 * 1024}
_TF32_MMA = re.compile(r"\b(?:w?gmma|mma)\.[\w.]*tf32")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way a launcher calls a kernel: argument types / alignment and the launcher's constexprs."""

    name: str
    ptrs: dict  # pointer argument -> Triton dtype ("fp32", "bf16", "i64", ...)
    consts: dict  # constexpr argument -> value (launch constants, not the autotune config)
    ieee: bool = False  # an fp32 "IEEE" path: its PTX must hold no TF32 MMA
    div16: tuple = ()  # integer arguments specialised as multiples of 16
    ones: tuple = ()  # integer arguments equal to 1 (Triton folds them to constants)


@dataclasses.dataclass(frozen=True)
class Compiled:
    regs: int
    spill_stores: int
    spill_loads: int
    stack: int
    smem: int
    ptx: str


def _signature(fn, v: Variant, cfg: dict):
    sig, consts, attrs = {}, {}, {}
    for i, a in enumerate(fn.arg_names):
        if a in v.ptrs:
            sig[a] = "*" + v.ptrs[a]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif a in v.consts or a in cfg:
            sig[a] = "constexpr"
            consts[a] = v.consts[a] if a in v.consts else cfg[a]
        elif a in v.ones:
            sig[a] = "constexpr"
            consts[a] = 1
        else:
            sig[a] = "i32"
            if a in v.div16:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, consts, attrs


_PTXAS = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_CACHE: dict = {}


def compile_for(fn, v: Variant, cfg: dict, num_warps: int, num_stages: int, cc: int) -> Compiled:
    """Compile ``fn`` for ``cc`` (80 / 90) and read the ptxas -v resource report; cached for the session."""
    key = (fn.__name__, repr(v), tuple(sorted(cfg.items())), num_warps, num_stages, cc)
    if key in _CACHE:
        return _CACHE[key]
    sig, consts, attrs = _signature(fn, v, cfg)
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    log = io.StringIO()
    # always_compile: the ptxas log only exists when ptxas runs (a Triton cache hit would skip it)
    with triton.knobs.compilation.scope(), triton.knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        triton.knobs.compilation.always_compile = True
        triton.knobs.nvidia.dump_ptxas_log = True
        k = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                           options={"num_warps": num_warps, "num_stages": num_stages})
    text = log.getvalue()
    regs, spill = _PTXAS.search(text), _SPILL.search(text)
    if regs is None or spill is None:
        raise AssertionError(f"no ptxas -v report for {fn.__name__}:\n{text}")
    out = Compiled(int(regs.group(1)), int(spill.group(2)), int(spill.group(3)), int(spill.group(1)),
                   int(k.metadata.shared), k.asm["ptx"])
    _CACHE[key] = out
    return out


# ---------------------------------------------------------------------------------------------------------------
# The kernels and how their launchers call them

def _pairwise(dtype: str, metric: int) -> Variant:
    return Variant(f"{dtype}/m{metric}", {"x_ptr": dtype, "y_ptr": dtype, "out_ptr": "fp32"},
                   {"METRIC": metric, "IEEE": dtype == "fp32", "DOT_FP32": False, "SQ_FLOOR": 1e-12,
                    "NORM_EPS": 1e-12}, ieee=dtype == "fp32",
                   div16=("K", "stride_xm", "stride_ym"), ones=("stride_xk", "stride_yk", "stride_on"))


def _batch_hard(dtype: str) -> Variant:
    i64 = {p: "i64" for p in ("lab_ptr", "pos_ptr", "neg_ptr", "same_ptr")}
    return Variant(dtype, {"x_ptr": dtype, "d_ap_ptr": "fp32", "d_an_ptr": "fp32", **i64},
                   {"IEEE": dtype == "fp32", "DOT_FP32": False, "SQ_FLOOR": 1e-12}, ieee=dtype == "fp32",
                   div16=("K", "stride_xm"), ones=("stride_xk",))


_LABEL_PTRS = ("qp_ptr", "gp_ptr", "qc_ptr", "gc_ptr", "qcl_ptr", "gcl_ptr")


def _topk(junk: int, cfg: dict) -> Variant:
    ptrs = {"q_ptr": "fp32", "g_ptr": "fp32", "qq_ptr": "fp32", "gg_ptr": "fp32", "out_ptr": "i64",
            **{p: "i64" for p in _LABEL_PTRS}}
    tile = "x".join(f"{k}{v}" for k, v in cfg.items())
    return Variant(f"junk{junk}/{tile}", ptrs, {"JUNK": junk, **cfg}, ieee=True, div16=("D", "stride_q", "stride_g"))


def _rank(dtype: str, kernel: str) -> Variant:
    ptrs = {"q_ptr": dtype, "g_ptr": dtype, "qq_ptr": "fp32", "gg_ptr": "fp32", "qp_ptr": "i64", "gp_ptr": "i64"}
    if kernel == "same":
        ptrs.update(slot_ptr="i64", out_ptr="fp32")
    else:
        ptrs.update(ms_ptr="fp32", msi_ptr="i64", nm_ptr="i64", hist_ptr="i32")
    return Variant(dtype, ptrs, {}, ieee=True, div16=("D", "stride_q", "stride_g"))


@dataclasses.dataclass(frozen=True)
class Case:
    kernel: str
    fn: object  # the JITFunction
    variant: Variant
    cfg: dict
    num_warps: int
    num_stages: int
    cc: int
    slow: bool

    @property
    def id(self) -> str:
        c = "x".join(str(v) for v in self.cfg.values())
        return f"{self.kernel}-{self.variant.name}-{c}-w{self.num_warps}s{self.num_stages}-sm{self.cc}"


def _autotuned(name, fn, gpu_configs, variants, fast):
    out = []
    for v in variants:
        for c in gpu_configs(v.ieee):
            for cc in TARGETS:
                out.append(Case(name, fn, v, dict(c.kwargs), c.num_warps, c.num_stages, cc, v.name not in fast))
    return out


def cases() -> list[Case]:
    from fastccreid.kernels import _pairwise_distance_triton as pw
    from fastccreid.kernels import _rank_stats_triton as rs
    from fastccreid.kernels import _topk_triton as tk
    from fastccreid.kernels import _triplet_triton as tp

    out = []
    out += _autotuned("pairwise", pw._pairwise_kernel.fn, pw.gpu_configs,
                      [_pairwise(dt, m) for dt in ("fp32", "fp16", "bf16") for m in (0, 1, 2)],
                      fast={"fp32/m1", "bf16/m2"})
    out += _autotuned("batch_hard", tp._batch_hard_kernel.fn, tp.gpu_configs,
                      [_batch_hard(dt) for dt in ("fp32", "fp16", "bf16")], fast={"fp32", "bf16"})
    for launch in tk.launch_configs():
        for junk in (0, 1, 2):
            for cc in TARGETS:
                fast = junk == 2 and launch.KP in (1, tk.TILE_G, tk.MAX_TILE_G)
                out.append(Case("tile_topk", tk._tile_topk_kernel, _topk(junk, launch.constexprs()), {},
                                launch.num_warps, launch.num_stages, cc, not fast))
    for kname, fn in (("same_pid", rs._same_pid_kernel), ("place", rs._place_kernel.fn)):
        for dt in ("fp32", "bf16"):
            for cfg in rs.launch_configs(kname):
                for cc in TARGETS:
                    out.append(Case(kname, fn, _rank(dt, "same" if kname == "same_pid" else "place"),
                                    dict(cfg.kwargs), cfg.num_warps, cfg.num_stages, cc, dt != "fp32"))
    return out


def _params():
    try:
        cs = cases()
    except ImportError as e:  # pragma: no cover - reported as a failing collection, not a skip
        raise RuntimeError(f"cannot import the Triton kernel modules: {e}") from e
    return [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in cs]


@pytest.mark.parametrize("case", _params())
def test_kernel_compiles_without_spills(case: Case):
    r = compile_for(case.fn, case.variant, case.cfg, case.num_warps, case.num_stages, case.cc)
    assert r.spill_stores == 0 and r.spill_loads == 0 and r.stack == 0, (
        f"{case.id}: spills {r.spill_stores} B stores / {r.spill_loads} B loads a thread "
        f"(stack frame {r.stack} B, {r.regs} registers)")
    assert r.smem <= TARGETS[case.cc], f"{case.id}: {r.smem} B shared memory > {TARGETS[case.cc]} B on sm_{case.cc}"
    if case.variant.ieee:
        assert not _TF32_MMA.search(r.ptx), f"{case.id}: fp32 IEEE path emits a TF32 MMA"


def _key(c) -> tuple:
    return tuple(sorted(c.kwargs.items())), c.num_warps, c.num_stages


def test_compiled_configs_are_the_shipped_ones():
    """What this file compiles is what a GPU run can pick: the autotuners hold exactly IEEE + MMA configs and prune
    to the launch's path (also given copies, as torch.compile passes them); top-k's tile shape for any k is one of
    the compiled launches, the rank kernels launch with their one config."""
    import copy

    from fastccreid.kernels import _pairwise_distance_triton as pw
    from fastccreid.kernels import _rank_stats_triton as rs
    from fastccreid.kernels import _topk_triton as tk
    from fastccreid.kernels import _triplet_triton as tp

    for mod, kernel in ((pw, pw._pairwise_kernel), (tp, tp._batch_hard_kernel)):
        shipped = mod.gpu_configs(True) + mod.gpu_configs(False)
        assert sorted(map(_key, kernel.configs)) == sorted(map(_key, shipped))
        for ieee in (True, False):
            pruned = kernel.early_config_prune([copy.deepcopy(c) for c in kernel.configs], {}, IEEE=ieee)
            assert list(map(_key, pruned)) == list(map(_key, mod.gpu_configs(ieee)))
    compiled = tk.launch_configs()
    for k in range(1, 1200):
        launch = tk.tile_launch(k)
        assert launch in compiled and launch.BG <= tk.MAX_TILE_G
        assert launch.KP >= min(k, launch.BG)
    assert rs.launch_configs("same_pid") == [rs.SAME_PID_CONFIG]
    assert rs.SAME_PID_CONFIG.kwargs == {"BQ": rs.BLOCK_Q, "BG": rs.BLOCK_G, "BK": rs.BLOCK_K}
    # the placement autotuner holds exactly the compiled configs, and zeroes the histogram (atomic adds) before
    # each trial run: without reset_to_zero the first launch of a key would count every pair once per trial
    assert sorted(map(_key, rs._place_kernel.configs)) == sorted(map(_key, rs.launch_configs("place")))
    assert {c.kwargs["BQ"] for c in rs.PLACE_CONFIGS} >= {64, 128}
    # pass 1's match distances meet pass 2's in exact-tie comparisons: both step through D by the same BLOCK_K
    assert {c.kwargs["BK"] for c in (*rs.PLACE_CONFIGS, rs.PLACE_INTERPRET_CONFIG, rs.SAME_PID_CONFIG)} == {rs.BLOCK_K}
    assert rs._place_kernel.reset_to_zero == ["hist_ptr"]
    assert set(rs._place_kernel.keys) >= {"NQ", "NG", "D", "RP"}


# ---------------------------------------------------------------------------------------------------------------
# Correctly rounded epilogues: tl.sqrt / "/" would compile to sqrt.approx / div.full (ulps off torch)

def _epilogue_ptx(kernel: str, variant: Variant, cc: int = 90) -> str:
    c = next(c for c in cases() if c.kernel == kernel and c.variant.name == variant.name and c.cc == cc)
    return compile_for(c.fn, variant, c.cfg, c.num_warps, c.num_stages, cc).ptx


def test_distance_epilogues_round_correctly():
    euclid = _epilogue_ptx("pairwise", _pairwise("fp32", 1))
    assert "sqrt.rn.f32" in euclid and "sqrt.approx" not in euclid
    cosine = _epilogue_ptx("pairwise", _pairwise("bf16", 2))
    assert "sqrt.rn.f32" in cosine and "div.rn.f32" in cosine
    assert "sqrt.approx" not in cosine and not re.search(r"div\.(?:approx|full)\.f32", cosine)
    triplet = _epilogue_ptx("batch_hard", _batch_hard("fp32"))
    assert "sqrt.rn.f32" in triplet and "sqrt.approx" not in triplet


# ---------------------------------------------------------------------------------------------------------------
# Launch grids: no axis past CUDA's limits at gallery / query sizes far beyond a GPU's memory (nothing launched)

G_HUGE = 10**8


def _within_limits(grid):
    assert len(grid) <= 3
    assert grid[0] <= 2**31 - 1 and all(n <= 65_535 for n in grid[1:]), grid
    assert all(n >= 1 for n in grid), grid


def test_launch_grids_at_1e8():
    from fastccreid.kernels import _pairwise_distance_triton as pw
    from fastccreid.kernels import _rank_stats_triton as rs
    from fastccreid.kernels import _topk_triton as tk
    from fastccreid.kernels import _triplet_triton as tp

    for cfg in pw.gpu_configs(True) + pw.gpu_configs(False):
        _within_limits(pw.pairwise_grid(64, G_HUGE, cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]))
    for cfg in tp.gpu_configs(True) + tp.gpu_configs(False):
        _within_limits(tp.batch_hard_grid(G_HUGE, cfg.kwargs["BLOCK_M"]))
    for launch in tk.launch_configs():
        for n in (1, 256):  # a query chunk of the launcher
            grid = tk.topk_grid(n, G_HUGE, launch)
            _within_limits(grid)
            assert grid[0] * launch.BG >= G_HUGE and grid[1] * launch.BQ >= n
    _within_limits(rs.same_pid_grid(G_HUGE, rs.BLOCK_Q))
    for nq in (1, 5000, rs.PLACE_ROWS + 1, G_HUGE):
        chunks = rs.place_chunks(nq)
        # the launches cover every query once, in order
        assert chunks[0][0] == 0 and chunks[-1][1] == nq
        assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:], strict=False))
        for cfg in (*rs.launch_configs("place"), rs.PLACE_INTERPRET_CONFIG):
            bq, bg = cfg.kwargs["BQ"], cfg.kwargs["BG"]
            for s, e in chunks:
                grid = rs.place_grid(e - s, G_HUGE, bq, bg)
                _within_limits(grid)
                assert grid[0] * bg >= G_HUGE and grid[1] * bq >= e - s


def test_grid_past_the_limit_is_a_clear_error():
    from fastccreid.kernels._triton_gram import check_grid

    assert check_grid((2**31 - 1, 65_535, 65_535), "x") == (2**31 - 1, 65_535, 65_535)
    with pytest.raises(ValueError, match="exceeds CUDA's limits"):
        check_grid((1, 65_536), "some launch")
    with pytest.raises(ValueError, match="some launch"):
        check_grid((2**31,), "some launch")


def test_aligned_rows_pads_with_zeros_and_copies_only_when_needed():
    import torch

    from fastccreid.kernels._triton_gram import aligned_rows

    x = torch.randn(5, 32)
    assert aligned_rows(x) is x
    y = torch.randn(5, 20)
    p = aligned_rows(y)
    # zero columns: that they change no bit of a kernel's distances is tests/triton/test_triton_gram.py's test (a
    # BLAS p @ p.T against y @ y.T may differ in the last bits, since BLAS picks its kernel by K)
    assert p.shape == (5, 32) and torch.equal(p[:, :20], y) and not p[:, 20:].any()
    v = torch.randn(6, 33)[1:, 1:]  # strided, offset view with D % 16 == 0
    pv = aligned_rows(v)
    assert pv.is_contiguous() and pv.storage_offset() == 0 and torch.equal(pv, v)


if __name__ == "__main__":  # the README table: kernel, variant, config, target -> registers, spills, smem
    import sys
    import time

    only = sys.argv[1:]
    print("| kernel | variant | config | target | registers | spill st/ld B | stack B | smem KB |")
    print("|---|---|---|---|---|---|---|---|")
    for c in cases():
        if only and c.kernel not in only:
            continue
        t = time.perf_counter()
        r = compile_for(c.fn, c.variant, c.cfg, c.num_warps, c.num_stages, c.cc)
        cfg = "x".join(str(v) for v in c.cfg.values()) + f" w{c.num_warps} s{c.num_stages}"
        print(f"| {c.kernel} | {c.variant.name} | {cfg} | sm_{c.cc} | {r.regs} | {r.spill_stores}/{r.spill_loads} "
              f"| {r.stack} | {r.smem / 1024:.1f} | {time.perf_counter() - t:.1f}s", flush=True)
