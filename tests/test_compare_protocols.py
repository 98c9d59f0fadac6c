"""``fastccreid eval-features Q G --compare-protocols``: one row per convention, each equal to an independent
per-query computation of that convention (layumi's trapezoid AP over all queries; open-reid's tie-grouped AP;
CAL SC; the Market rule), through the CLI, with JSON."""

from __future__ import annotations

import json

import numpy as np

from fastccreid.cli import main
from fastccreid.features_io import save_features


def _write(tmp_path, clothes=True):
    rng = np.random.default_rng(7)
    qf, gf = rng.normal(size=(20, 6)).astype(np.float32), rng.normal(size=(50, 6)).astype(np.float32)
    qp, gp = rng.integers(0, 6, 20), rng.integers(0, 6, 50)
    qp[0] = 40  # absent from the gallery
    qc, gc = rng.integers(0, 3, 20), rng.integers(0, 3, 50)
    qcl, gcl = (rng.integers(0, 2, 20), rng.integers(0, 2, 50)) if clothes else (None, None)
    q = save_features(str(tmp_path / "q.npz"), qf, qp, qc, qcl)
    g = save_features(str(tmp_path / "g.npz"), gf, gp, gc, gcl)
    return q, g, (qf, gf, qp, gp, qc, gc, qcl, gcl)


def _market_oracle(qf, gf, qp, gp, qc, gc, trapezoid=False):
    qn = qf / (np.linalg.norm(qf, axis=1, keepdims=True) + 1e-12)
    gn = gf / (np.linalg.norm(gf, axis=1, keepdims=True) + 1e-12)
    d = ((qn[:, None].astype(np.float64) - gn[None]) ** 2).sum(-1)
    r1, aps = [], []
    for i in range(len(qp)):
        order = np.argsort(d[i], kind="stable")
        keep = ~((gp[order] == qp[i]) & (gc[order] == qc[i]))
        hit = (gp[order] == qp[i])[keep]
        if not hit.any():
            continue
        pos = np.nonzero(hit)[0]
        r1.append(pos[0] == 0)
        n = np.arange(len(pos))
        if trapezoid:
            before = np.where(pos > 0, n / np.maximum(pos, 1), 1.0)
            aps.append(np.mean((before + (n + 1) / (pos + 1)) / 2))
        else:
            aps.append(np.mean((n + 1) / (pos + 1)))
    return np.array(r1), np.array(aps)


def test_compare_protocols_cli(tmp_path, capsys):
    q, g, (qf, gf, qp, gp, qc, gc, qcl, gcl) = _write(tmp_path)
    out = tmp_path / "cmp.json"
    assert main(["eval-features", q, g, "--compare-protocols", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    rows = {r["convention"]: r for r in json.loads(out.read_text())["conventions"]}
    for name in ("seed/FIRe market", "seed/FIRe prcc (all gallery)", "CAL CC", "CAL SC", "torchreid market",
                 "torchreid cuhk03", "fast-reid", "strong-baseline", "open-reid first-match",
                 "open-reid cuhk03-style", "layumi (trapezoid AP)"):
        assert name in rows and name in text
    r1, aps = _market_oracle(qf, gf, qp, gp, qc, gc)
    for name in ("seed/FIRe market", "torchreid market", "fast-reid", "strong-baseline", "open-reid first-match"):
        assert abs(rows[name]["rank1"] - r1.mean()) < 1e-6, name
    for name in ("seed/FIRe market", "torchreid market", "fast-reid", "strong-baseline"):
        assert abs(rows[name]["mAP"] - aps.mean()) < 1e-6, name
    r1t, apt = _market_oracle(qf, gf, qp, gp, qc, gc, trapezoid=True)
    assert abs(rows["layumi (trapezoid AP)"]["mAP"] - apt.sum() / len(qp)) < 1e-6  # divided by every query
    assert abs(rows["layumi (trapezoid AP)"]["rank1"] - r1t.sum() / len(qp)) < 1e-6
    assert rows["fast-reid"]["mINP"] is not None and rows["strong-baseline"]["mINP"] is None


def test_compare_protocols_without_clothes(tmp_path, capsys):
    q, g, _ = _write(tmp_path, clothes=False)
    assert main(["eval-features", q, g, "--compare-protocols"]) == 0
    text = capsys.readouterr().out
    assert "CAL SC" not in text and "layumi" in text
    assert main(["eval-features", q, g, "--compare-protocols", "--nproc", "2"]) == 2
    assert "--compare-protocols runs in one process" in capsys.readouterr().err
