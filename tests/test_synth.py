"""Synthetic data: exact layouts, determinism, valid clothes-changing protocol, learnable identity cues, CLI."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from PIL import Image

from fastccreid.cli import main
from fastccreid.data import DATASET_NAMES, build_dataset
from fastccreid.data.synth import make_synthetic

TINY = dict(ids=6, seed=3, clothes=2, cams=3, images_per=1, size=(48, 24))


def _digest(root: str) -> dict[str, str]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.md5(fh.read()).hexdigest()
    return out


@pytest.mark.parametrize("layout", DATASET_NAMES)
def test_layout_formats_and_determinism(layout, tmp_path):
    a = make_synthetic(layout, str(tmp_path / "a"), **TINY)
    b = make_synthetic(layout, str(tmp_path / "b"), **TINY)
    c = make_synthetic(layout, str(tmp_path / "c"), **{**TINY, "seed": 4})
    da, db, dc = _digest(a), _digest(b), _digest(c)
    assert da == db
    assert da.keys() == dc.keys() and da != dc
    images = [k for k in da if not k.endswith(".txt") and not k.startswith(".")]
    want = "PNG" if layout == "ltcc" else "JPEG"
    assert all(k.endswith(".png" if layout == "ltcc" else ".jpg") for k in images)
    with Image.open(os.path.join(a, images[0])) as im:
        assert im.format == want and im.size == (24, 48)
    ds = build_dataset(layout, a)
    assert ds.num_train_pids == 3


@pytest.mark.parametrize("layout", ["ltcc", "vcclothes", "deepchange"])
def test_queries_have_same_and_changed_clothes_matches_on_other_cameras(layout, tmp_path):
    ds = build_dataset(layout, make_synthetic(layout, str(tmp_path / layout), ids=8, seed=0, clothes=3, cams=4,
                                              images_per=2))
    assert ds.query
    for q in ds.query:
        other_cam = [g for g in ds.gallery if g.pid == q.pid and g.camid != q.camid]
        assert any(g.clothes_id == q.clothes_id for g in other_cam)
        assert any(g.clothes_id != q.clothes_id for g in other_cam)


def test_prcc_cameras_and_clothes(tmp_path):
    ds = build_dataset("prcc", make_synthetic("prcc", str(tmp_path / "p"), ids=6, seed=0))
    assert {r.camid for r in ds.gallery} == {0} and {r.camid for r in ds.query_same} == {1}
    assert {r.camid for r in ds.query_diff} == {2}
    gal = {r.pid: r.clothes_id for r in ds.gallery}
    assert all(gal[r.pid] == r.clothes_id for r in ds.query_same)
    assert all(gal[r.pid] != r.clothes_id for r in ds.query_diff)


def _cc_map(qf, gf, query, gallery) -> tuple[float, float]:
    """Plain numpy LTCC clothes-changing mAP and rank-1 (junk = same pid and (same camera or same clothes))."""
    dist = ((qf[:, None, :] - gf[None, :, :]) ** 2).sum(-1)
    g_pid = np.array([g.pid for g in gallery])
    g_cam = np.array([g.camid for g in gallery])
    g_clo = np.array([g.clothes_id for g in gallery])
    aps, r1 = [], []
    for i, q in enumerate(query):
        order = np.argsort(dist[i], kind="stable")
        same = g_pid[order] == q.pid
        junk = same & ((g_cam[order] == q.camid) | (g_clo[order] == q.clothes_id))
        match = same[~junk]
        if not match.any():
            continue
        hits = np.flatnonzero(match)
        aps.append(np.mean(np.arange(1, len(hits) + 1) / (hits + 1)))
        r1.append(float(match[0]))
    return float(np.mean(aps)), float(np.mean(r1))


def _histograms(recs, top_rows: float | None, bins: int = 6) -> np.ndarray:
    """Colour histogram [N, bins^3] of foreground pixels (far from each row's border colour), optionally only in the
    image's top ``top_rows`` fraction: a non-learned feature that sees head, hair and glasses but not trousers."""
    imgs = np.stack([np.asarray(Image.open(r.path).convert("RGB"), dtype=np.float32) for r in recs])
    n, h = imgs.shape[:2]
    border = np.concatenate([imgs[:, :, :3], imgs[:, :, -3:]], axis=2)
    fg = np.abs(imgs - np.median(border, axis=2, keepdims=True)).sum(-1) > 60
    if top_rows is not None:
        fg[:, int(top_rows * h):] = False
    q = np.clip((imgs * bins / 256).astype(np.int64), 0, bins - 1)
    code = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    feats = np.stack([np.bincount(code[i][fg[i]], minlength=bins**3) for i in range(n)]).astype(np.float32)
    return np.sqrt(feats / np.maximum(feats.sum(1, keepdims=True), 1))


def test_identity_cues_beat_chance_on_clothes_changing(tmp_path):
    ds = build_dataset("ltcc", make_synthetic("ltcc", str(tmp_path / "l"), ids=24, seed=0, clothes=3, cams=4,
                                              images_per=2))
    head_map, head_r1 = _cc_map(_histograms(ds.query, 0.3), _histograms(ds.gallery, 0.3), ds.query, ds.gallery)
    rng = np.random.default_rng(0)
    chance = np.mean([_cc_map(rng.normal(size=(len(ds.query), 4)), rng.normal(size=(len(ds.gallery), 4)),
                              ds.query, ds.gallery) for _ in range(20)], axis=0)
    assert head_map > 3 * chance[0], (head_map, chance)
    assert head_r1 > 3 * chance[1], (head_r1, chance)
    # Clothes really change: a whole-body histogram (dominated by clothes) does much worse on this protocol.
    body_map, _ = _cc_map(_histograms(ds.query, None), _histograms(ds.gallery, None), ds.query, ds.gallery)
    assert body_map < head_map


def test_cli_prints_summary(tmp_path, capsys):
    assert main(["synth", "--layout", "ltcc", "--root", str(tmp_path / "x"), "--ids", "10", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "ltcc loaded" in out and "train" in out and "gallery" in out
    assert main(["synth", "--layout", "prcc", "--root", str(tmp_path / "y"), "--ids", "4", "--seed", "0",
                 "--size", "64x32", "--images-per", "1"]) == 0
    assert "query_diff" in capsys.readouterr().out


def test_rewrite_replaces_earlier_synthetic_and_refuses_foreign_folder(tmp_path):
    root = str(tmp_path / "d")
    make_synthetic("ltcc", root, **{**TINY, "ids": 8})
    make_synthetic("ltcc", root, **TINY)  # fewer ids: no stale files may survive
    assert build_dataset("ltcc", root).num_train_pids == 3
    assert _digest(root) == _digest(make_synthetic("ltcc", str(tmp_path / "fresh"), **TINY))
    foreign = tmp_path / "real"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(ValueError, match="not empty"):
        make_synthetic("ltcc", str(foreign), **TINY)
    assert (foreign / "keep.txt").read_text() == "user data"


@pytest.mark.parametrize("kwargs,flag", [
    (dict(ids=1), "--ids"), (dict(clothes=1), "--clothes"), (dict(cams=1), "--cams"),
    (dict(images_per=0), "--images-per"), (dict(size=(16, 8)), "--size"),
])
def test_invalid_arguments(kwargs, flag, tmp_path):
    with pytest.raises(ValueError, match=flag):
        make_synthetic("ltcc", str(tmp_path), **{**dict(ids=4, seed=0), **kwargs})
    with pytest.raises(ValueError, match="--layout"):
        make_synthetic("cuhk03", str(tmp_path), ids=4, seed=0)
