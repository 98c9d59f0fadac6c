"""Synthetic ReID features for the evaluation benchmarks (eval, rerank, compat_eval share them; a module of its
own so those suites import it without importing each other)."""

from __future__ import annotations

import torch

D = 2048
NOISE = 4.5  # per-element noise scale of the synthetic features (sets how hard the ranking is)
SCALE_QUERIES = 256
SCALE_GALLERIES = (1000, 4000, 16000)
CASES = {
    "ltcc": (493, 7050, 152),
    "celeb": (2972, 11006, 632),
    "msmt17": (11659, 82161, 3060),
}


def make_features(nq: int, ng: int, nid: int, d: int = D, seed: int = 0, dtype=torch.float32):
    """Synthetic ReID features [N, D] with pids / cameras / clothes (labels int64 numpy), built in row chunks."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(nid, d, generator=gen)
    clothes_off = torch.rand(nid, 3, d, generator=gen)

    def build(n, off):
        pids = torch.randint(0, nid, (n,), generator=gen)
        clothes = torch.randint(0, 3, (n,), generator=gen)
        cams = torch.randint(0, 6, (n,), generator=gen) + off
        out = torch.empty(n, d, dtype=dtype)
        for s in range(0, n, 8192):
            e = min(n, s + 8192)
            x = centres[pids[s:e]] + 0.8 * clothes_off[pids[s:e], clothes[s:e]]
            x += NOISE * torch.rand(e - s, d, generator=gen)
            out[s:e] = x.relu_()
        return out, pids.numpy(), cams.numpy(), clothes.numpy()

    return build(nq, 0), build(ng, 0)
