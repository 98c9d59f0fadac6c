"""``fastccreid eval-features`` end to end: every unreadable or malformed file exits 2 with one line naming the file
and what is wrong (never a traceback), and the evaluation options reach the evaluator."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastccreid.cli import main
from fastccreid.features_io import save_features
from fastccreid.metrics import evaluate


def _write_good(tmp_path, name="gallery", n=30, d=8, seed=0) -> str:
    rng = np.random.default_rng(seed)
    return save_features(str(tmp_path / f"{name}.npz"), rng.standard_normal((n, d)).astype(np.float32),
                         rng.integers(0, 4, n), rng.integers(0, 3, n), rng.integers(0, 2, n))


class _Payload:
    def __reduce__(self):
        return (print, ("never printed",))


def _bad_files(tmp_path) -> dict[str, tuple[str, str]]:
    """name -> (path, expected message fragment)."""
    good = _write_good(tmp_path, "good")
    cases: dict[str, tuple[str, str]] = {}
    p = tmp_path / "truncated.npz"
    p.write_bytes(open(good, "rb").read()[:100])
    cases["truncated npz"] = (str(p), "corrupt or truncated")
    p = tmp_path / "garbage.pt"
    p.write_bytes(b"\x80\x04garbage" * 20)
    cases["garbage pt"] = (str(p), "corrupt or truncated")
    p = tmp_path / "global.pt"
    torch.save({"feats": torch.zeros(2, 2), "x": _Payload()}, p)
    cases["disallowed global"] = (str(p), "refused to load: it references print")
    p = tmp_path / "objects.npz"
    np.savez(p, feats=np.array([object(), object()], dtype=object), pids=np.zeros(2, np.int64),
             camids=np.zeros(2, np.int64))
    cases["object array"] = (str(p), "pickled \\(object\\) arrays")
    p = tmp_path / "flat.npz"
    np.savez(p, feats=np.zeros(5, np.float32), pids=np.zeros(5, np.int64), camids=np.zeros(5, np.int64))
    cases["1-D features"] = (str(p), "'feats' must be 2-D")
    p = tmp_path / "ints.npz"
    np.savez(p, feats=np.zeros((5, 3), np.int64), pids=np.zeros(5, np.int64), camids=np.zeros(5, np.int64))
    cases["integer features"] = (str(p), "'feats' must be floating point")
    p = tmp_path / "feats.csv"
    p.write_text("1,2,3\n")
    cases["unknown extension"] = (str(p), "unknown format; use .npz, .pt or .npy")
    p = tmp_path / "list.pt"
    torch.save([torch.zeros(2, 2)], p)
    cases["pt not a dict"] = (str(p), "expected a dict with keys feats, pids, camids")
    return cases


def test_every_bad_file_is_a_one_line_usage_error(tmp_path, capsys):
    gallery = _write_good(tmp_path)
    cases = _bad_files(tmp_path)
    for name, (path, fragment) in cases.items():
        assert main(["eval-features", path, gallery]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith(f"fastccreid eval-features: error: {path}"), (name, err)
        assert re.search(fragment, err), (name, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (name, err)


def test_the_process_exit_code_and_stderr(tmp_path):
    """Through the installed entry point: exit status 2, the file named, no traceback."""
    gallery = _write_good(tmp_path)
    path, _ = _bad_files(tmp_path)["truncated npz"]
    res = subprocess.run([sys.executable, "-m", "fastccreid", "eval-features", path, gallery], capture_output=True,
                         text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert res.returncode == 2
    assert path in res.stderr and "corrupt or truncated" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("flags,kwargs", [
    (["--reranking"], {"rerank": True}),
    (["--no-normalize"], {"normalize": False}),
    (["--precision", "bf16"], {"precision": "bf16"}),
])
def test_evaluation_options_reach_the_evaluator(tmp_path, flags, kwargs):
    rng = np.random.default_rng(7)
    sets = {}
    for name, n in (("query", 20), ("gallery", 120)):
        # unnormalised features with a spread of norms, so --no-normalize changes the ranking
        f = rng.standard_normal((n, 16)).astype(np.float32) * rng.uniform(0.2, 5.0, (n, 1)).astype(np.float32)
        sets[name] = dict(feats=f, pids=rng.integers(0, 6, n), camids=rng.integers(0, 3, n),
                          clothes=rng.integers(0, 2, n))
        save_features(str(tmp_path / f"{name}.npz"), **sets[name])
    out = tmp_path / "r.json"
    assert main(["eval-features", str(tmp_path / "query.npz"), str(tmp_path / "gallery.npz"), "--protocol",
                 "ltcc-general", "--json", str(out), *flags]) == 0
    got = json.loads(out.read_text())
    q, g = sets["query"], sets["gallery"]
    common = dict(qf=q["feats"], gf=g["feats"], q_pids=q["pids"], g_pids=g["pids"], q_camids=q["camids"],
                  g_camids=g["camids"], q_clothes=q["clothes"], g_clothes=g["clothes"], protocol="ltcc-general")
    want = evaluate(**common, **kwargs)
    plain = evaluate(**common)
    assert got["mAP"] == pytest.approx(want.mAP, abs=1e-12)
    if "precision" not in kwargs:  # these options change the numbers on this data (bf16 may or may not)
        assert abs(want.mAP - plain.mAP) > 1e-6
    assert got.get("reranking", False) == kwargs.get("rerank", False)
