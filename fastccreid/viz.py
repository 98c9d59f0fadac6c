"""Pictures of an evaluation: CMC curves and ranked lists (queries with their top-k gallery images).

CMC curves use matplotlib when it is installed (the ``plot`` extra) and plain PIL drawing otherwise; ranked lists are
composed with PIL (true matches framed green, others red).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

GREEN = (0, 170, 0)
RED = (220, 0, 0)
_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def plot_cmc(curves: dict[str, Sequence[float]], path: str, title: str = "CMC", max_rank: int = 20) -> str:
    """One CMC curve [R] (values in [0, 1]) per label, ranks 1..max_rank, written as a PNG at ``path``."""
    if not curves:
        raise ValueError("plot_cmc: no curves given")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _plot_cmc_pil(curves, path, title, max_rank)
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    for label, cmc in curves.items():
        y = np.asarray(cmc, dtype=np.float64)[:max_rank] * 100
        ax.plot(np.arange(1, len(y) + 1), y, marker="o", markersize=3, label=f"{label} (R-1 {y[0]:.1f}%)")
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(0.5, max_rank + 0.5)
    ax.set_xticks(rank_ticks(max_rank))
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    # The legend beside the axes, never over the curves.
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def rank_ticks(max_rank: int) -> list[int]:
    """The ranks people read a CMC at: 1, 5, 10, 20, 50, 100, 200, 500, ... up to ``max_rank``."""
    ticks, scale = [1, 5], 10
    while scale <= max_rank:
        ticks += [scale * m for m in (1, 2, 5)]
        scale *= 10
    return [t for t in ticks if t <= max_rank]


def _plot_cmc_pil(curves: dict[str, Sequence[float]], path: str, title: str, max_rank: int) -> str:
    w, h, left, right, top, bottom = 900, 400, 50, 320, 30, 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.text((left, 8), title, fill="black")
    d.rectangle([left, top, w - right, h - bottom], outline="black")
    pw, ph = w - left - right, h - top - bottom
    for pct in range(0, 101, 20):
        y = top + ph * (1 - pct / 100)
        d.line([left, y, w - right, y], fill=(220, 220, 220))
        d.text((5, y - 6), f"{pct}%", fill="black")
    for i, (label, cmc) in enumerate(curves.items()):
        y = np.asarray(cmc, dtype=np.float64)[:max_rank]
        color = _COLORS[i % len(_COLORS)]
        xs = [left + pw * (k / max(max_rank - 1, 1)) for k in range(len(y))]
        ys = [top + ph * (1 - v) for v in y]
        d.line(list(zip(xs, ys, strict=True)), fill=color, width=2)
        d.text((w - right + 10, top + 14 * i), f"{label} (R-1 {100 * y[0]:.1f}%)", fill=color)  # beside the plot
    for t in rank_ticks(max_rank):
        x = left + pw * ((t - 1) / max(max_rank - 1, 1))
        d.line([x, h - bottom, x, h - bottom + 4], fill="black")
        d.text((x - 4, h - bottom + 6), str(t), fill="black")
    d.text((left + pw // 2 - 10, h - bottom + 22), "rank", fill="black")
    img.save(path)
    return path


def _thumb(path: str, size: tuple[int, int]) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB").resize((size[1], size[0]), Image.BILINEAR)


def plot_ranked_list(query_paths: Sequence[str], ranked_paths: Sequence[Sequence[str]],
                     ranked_match: Sequence[Sequence[bool]], path: str, thumb: tuple[int, int] = (128, 64),
                     border: int = 4, title: str = "") -> str:
    """A grid: each row a query (grey frame) followed by its ranked gallery images, framed green when a true match
    and red otherwise, under ``title`` (say which setting and query set). ``ranked_paths`` [Q][k],
    ``ranked_match`` [Q][k]; thumb is (H, W)."""
    if len(query_paths) == 0:
        raise ValueError("plot_ranked_list: no queries given")
    if len(ranked_paths) != len(query_paths) or len(ranked_match) != len(query_paths):
        raise ValueError("plot_ranked_list: query_paths, ranked_paths and ranked_match must have the same length")
    k = max(len(r) for r in ranked_paths)
    th, tw = thumb
    cell_w, cell_h, gap, label_h = tw + 2 * border, th + 2 * border, 12, 14
    title_h = 20 if title else 0
    width = max(cell_w * (k + 1) + gap + 8, 6 * len(title) + 8)
    height = title_h + (cell_h + label_h) * len(query_paths) + 8
    canvas = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(canvas)
    if title:
        d.text((4, 4), title, fill="black")
    for row, (qp, gps, matches) in enumerate(zip(query_paths, ranked_paths, ranked_match, strict=True)):
        y = title_h + 4 + row * (cell_h + label_h)
        d.text((4, y), "query", fill="black")
        d.rectangle([4, y + label_h, 4 + cell_w - 1, y + label_h + cell_h - 1], fill=(128, 128, 128))
        canvas.paste(_thumb(qp, thumb), (4 + border, y + label_h + border))
        for j, (gp, ok) in enumerate(zip(gps, matches, strict=True)):
            x = 4 + cell_w * (j + 1) + gap
            d.text((x, y), f"{j + 1}", fill="black")
            d.rectangle([x, y + label_h, x + cell_w - 1, y + label_h + cell_h - 1], fill=GREEN if ok else RED)
            canvas.paste(_thumb(gp, thumb), (x + border, y + label_h + border))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path)
    return path
