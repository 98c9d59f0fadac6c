"""``fastccreid eval-features``: the three file formats, the table and JSON, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fastccreid.cli import main
from fastccreid.features_io import load_features, save_features
from fastccreid.metrics import evaluate


def _sets(seed=0, nq=12, ng=50, d=16):
    rng = np.random.default_rng(seed)
    q = dict(feats=rng.standard_normal((nq, d)).astype(np.float32), pids=rng.integers(0, 5, nq),
             camids=rng.integers(0, 3, nq), clothes=rng.integers(0, 2, nq))
    g = dict(feats=rng.standard_normal((ng, d)).astype(np.float32), pids=rng.integers(0, 5, ng),
             camids=rng.integers(0, 3, ng), clothes=rng.integers(0, 2, ng))
    return q, g


def _expected(q, g, protocol):
    return evaluate(qf=q["feats"], gf=g["feats"], q_pids=q["pids"], g_pids=g["pids"], q_camids=q["camids"],
                    g_camids=g["camids"], q_clothes=q["clothes"], g_clothes=g["clothes"], protocol=protocol)


@pytest.mark.parametrize("fmt", ["npz", "pt", "npy"])
def test_formats_table_and_json(tmp_path, capsys, fmt):
    q, g = _sets()
    paths = []
    for name, s in (("query", q), ("gallery", g)):
        if fmt == "npy":
            p = tmp_path / f"{name}.npy"
            np.save(p, s["feats"])
            np.savez(tmp_path / f"{name}.labels.npz", pids=s["pids"], camids=s["camids"], clothes=s["clothes"])
        else:
            p = save_features(str(tmp_path / f"{name}.{fmt}"), s["feats"], s["pids"], s["camids"], s["clothes"])
        paths.append(str(p))
    out_json = tmp_path / "res.json"
    rc = main(["eval-features", *paths, "--protocol", "ltcc-cc", "--max-rank", "20", "--json", str(out_json)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "mAP" in text and "R-1" in text and "R-20" in text
    res = json.loads(out_json.read_text())
    exp = _expected(q, g, "ltcc-cc")
    assert res["mAP"] == pytest.approx(exp.mAP, abs=1e-9)
    assert res["rank-1"] == pytest.approx(exp.rank(1), abs=1e-9)
    assert res["protocol"] == "ltcc-cc" and len(res["cmc"]) == 20


def test_save_load_roundtrip_torch_inputs(tmp_path):
    f = torch.randn(4, 3)
    p = save_features(str(tmp_path / "x"), f, torch.tensor([1, 2, 3, 4]), torch.zeros(4, dtype=torch.long))
    assert p.endswith(".npz")
    s = load_features(p)
    np.testing.assert_array_equal(s.feats, f.numpy())
    assert s.clothes is None and s.pids.dtype == np.int64


def _write(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize(
    "mutate,msg",
    [
        (lambda d: d.pop("camids"), "missing key 'camids'"),
        (lambda d: d.update(pids=d["pids"][:-1]), "'pids' must have shape"),
        (lambda d: d["feats"].__setitem__((0, 0), np.nan), "NaN or Inf"),
        (lambda d: d.update(feats=d["feats"][:0], pids=d["pids"][:0], camids=d["camids"][:0],
                            clothes=d["clothes"][:0]), "empty"),
        (lambda d: d.update(pids=d["pids"].astype(np.float32)), "must hold integers"),
    ],
)
def test_clear_errors_name_the_file(tmp_path, capsys, mutate, msg):
    q, g = _sets()
    mutate(q)
    qp = _write(tmp_path / "bad_query.npz", **q)
    gp = _write(tmp_path / "gallery.npz", **g)
    assert main(["eval-features", qp, gp]) == 2
    err = capsys.readouterr().err
    assert msg in err and "bad_query.npz" in err


def test_dimension_mismatch_and_missing_files(tmp_path, capsys):
    q, g = _sets()
    g["feats"] = g["feats"][:, :8]
    qp, gp = _write(tmp_path / "q.npz", **q), _write(tmp_path / "g.npz", **g)
    assert main(["eval-features", qp, gp]) == 2
    assert "feature dims differ" in capsys.readouterr().err
    assert main(["eval-features", str(tmp_path / "nope.npz"), gp]) == 2
    assert "no such file" in capsys.readouterr().err
    np.save(tmp_path / "lonely.npy", q["feats"])
    assert main(["eval-features", str(tmp_path / "lonely.npy"), gp]) == 2
    assert "lonely.labels.npz" in capsys.readouterr().err
    q2, g2 = _sets()
    q2.pop("clothes")
    qp2, gp2 = _write(tmp_path / "q2.npz", **q2), _write(tmp_path / "g2.npz", **g2)
    assert main(["eval-features", qp2, gp2, "--protocol", "ltcc-cc"]) == 2
    assert "'clothes'" in capsys.readouterr().err


def test_roc_reaches_the_table_and_the_json(tmp_path, capsys):
    """--roc: TPR at FPR 1e-4 / 1e-3 / 1e-2 in the printed table and the JSON, the numbers of evaluate(roc=True)
    (itself tested against a dense numpy ROC); refused with --nproc, naming the flag."""
    q, g = _sets(seed=5, nq=30, ng=400)
    paths = [str(save_features(str(tmp_path / f"{n}.npz"), s["feats"], s["pids"], s["camids"], s["clothes"]))
             for n, s in (("query", q), ("gallery", g))]
    out_json = tmp_path / "roc.json"
    assert main(["eval-features", *paths, "--roc", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert all(k in text for k in ("TPR@FPR=1e-04", "TPR@FPR=1e-03", "TPR@FPR=1e-02")), text
    res = json.loads(out_json.read_text())
    exp = evaluate(qf=q["feats"], gf=g["feats"], q_pids=q["pids"], g_pids=g["pids"], q_camids=q["camids"],
                   g_camids=g["camids"], roc=True)
    assert res["roc"] == {k: pytest.approx(v, abs=1e-12) for k, v in exp.as_dict()["roc"].items()}
    assert len(res["roc"]) == 3 and res["roc"]["TPR@FPR=1e-02"] > 0
    plain = tmp_path / "plain.json"
    assert main(["eval-features", *paths, "--json", str(plain)]) == 0
    assert "roc" not in json.loads(plain.read_text()) and "TPR@FPR" not in capsys.readouterr().out
    assert main(["eval-features", *paths, "--roc", "--nproc", "2"]) == 2
    assert "--roc runs in one process" in capsys.readouterr().err
