"""``fastccreid data check`` (issue 28): each finding triggered by a crafted manifest and absent on a clean one,
the countable-query rule against a brute-force oracle, header dimensions against PIL, the exit codes, the JSON
report, and the training pre-flight (errors stop ``train`` before anything is written)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from fastccreid.cli import main
from fastccreid.data.check import HEAD_BYTES, JUNK_RULES, countable_queries, header_dims, run_check, scan_file
from fastccreid.data.synth import make_synthetic, synth_source

CLEAN = dict(num_instances=4, height=64, width=32)  # the synthetic set's images are 64x32, 8 per train id


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> str:
    return make_synthetic("manifest", str(tmp_path_factory.mktemp("chk") / "m"), ids=8, seed=0, clothes=2, cams=2,
                          images_per=2, size=(64, 32))


def _rows(root: str) -> list[dict]:
    with open(synth_source("manifest", root), newline="") as f:
        return list(csv.DictReader(f))


def _write(root: str, name: str, rows: list[dict]) -> str:
    path = os.path.join(root, name)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return path


def _codes(report) -> dict[str, str]:
    return {f.code: f.level for f in report.findings}


def test_a_clean_manifest_has_no_findings(synth_root):
    report = run_check("manifest", synth_source("manifest", synth_root), **CLEAN)
    assert report.findings == [] and report.exit_code(strict=True) == 0
    assert [(s.protocol, s.countable, s.queries) for s in report.settings] == [("ltcc-general", 8, 8),
                                                                               ("ltcc-cc", 8, 8)]
    assert report.splits[0] == {"split": "train", "ids": 4, "images": 32, "clothes": 8, "cams": 2}


def _craft(root: str, code: str, tmp: str) -> tuple[str, dict]:
    """A manifest (and check options) that triggers exactly the finding ``code``."""
    rows = _rows(root)
    opts = dict(CLEAN)
    train = [r for r in rows if r["split"] == "train"]
    query = [r for r in rows if r["split"] == "query"]
    if code == "bad_rows":
        rows[3]["pid"] = "x7"
        rows[3]["split"] = "train"
    elif code == "missing_files":
        rows.append(dict(query[0], path="images/query/0005/gone.jpg"))
    elif code == "corrupt_images":
        src = os.path.join(root, query[0]["path"])
        data = open(src, "rb").read()
        dst = os.path.join(tmp, "cut.jpg")
        with open(dst, "wb") as f:
            f.write(data[: len(data) // 3])  # the header (and its size) survives, the picture does not
        rows.append(dict(query[0], path=dst))
        opts["decode"] = True
    elif code == "no_true_match":  # every gallery image of a query's person is on that query's camera
        qcam = {r["pid"]: r["camid"] for r in query}
        rows = [r for r in rows if r["split"] != "gallery" or r["camid"] == qcam[r["pid"]]]
        rows = [r for r in rows if r["split"] != "query" or r["path"] in {q["path"] for q in query
                                                                         if q["camid"] == qcam[q["pid"]]}]
        seen: set = set()
        rows = [r for r in rows if r["split"] != "query" or not (r["pid"] in seen or seen.add(r["pid"]))]
        opts["protocol"] = "market"
    elif code == "same_camera":
        for r in rows:
            if r["split"] != "train":
                r["camid"] = "0"
    elif code == "clothes_missing":
        rows = [{k: v for k, v in r.items() if k != "clothes_id"} for r in rows]
        opts["protocol"] = "ltcc-cc"
    elif code == "shared_ids":  # one gallery image labelled as a train person
        next(r for r in rows if r["split"] == "gallery")["pid"] = train[0]["pid"]
    elif code == "duplicate_files":
        src = os.path.join(root, query[0]["path"])
        dst = os.path.join(tmp, "copy_of_query.jpg")
        shutil.copyfile(src, dst)
        rows.append(dict(query[0], path=dst, split="gallery"))
    elif code == "query_absent_from_gallery":
        query[0]["pid"] = "777"  # (rows holds the same dicts)
    elif code == "small_images":
        opts["height"] = 65
    elif code == "few_instances":
        opts["num_instances"] = 9
    return _write(root, f"crafted_{code}.csv", rows), opts


FINDINGS = {"bad_rows": "error", "missing_files": "error", "corrupt_images": "error", "no_true_match": "error",
            "same_camera": "error", "clothes_missing": "error", "shared_ids": "warning", "duplicate_files": "warning",
            "query_absent_from_gallery": "warning", "small_images": "warning", "few_instances": "warning"}
# A crafted mistake may bring its consequences along: one camera leaves no true match either.
ALSO = {"same_camera": {"no_true_match"}}


@pytest.mark.parametrize("code", list(FINDINGS))
def test_each_finding_is_triggered_by_its_crafted_manifest(synth_root, tmp_path, code):
    path, opts = _craft(synth_root, code, str(tmp_path))
    report = run_check("manifest", path, **opts)
    codes = _codes(report)
    assert codes.get(code) == FINDINGS[code], report.format()
    assert set(codes) == {code} | ALSO.get(code, set()), report.format()
    assert report.exit_code() == (1 if FINDINGS[code] == "error" else 0)
    assert report.exit_code(strict=True) == 1
    finding = next(f for f in report.findings if f.code == code)
    if code in ("bad_rows", "missing_files", "corrupt_images", "duplicate_files", "small_images"):
        assert all(f"{path}:" in it for it in finding.items)  # rows named by manifest line
    if code == "bad_rows":
        assert finding.items == (f"{path}:5: pid must be an integer, got 'x7'",)


def test_without_decode_a_truncated_image_passes_and_skip_bad_images_makes_bad_files_warnings(synth_root, tmp_path):
    path, opts = _craft(synth_root, "corrupt_images", str(tmp_path))
    opts.pop("decode")
    assert _codes(run_check("manifest", path, **opts)) == {}
    path, opts = _craft(synth_root, "missing_files", str(tmp_path))
    assert _codes(run_check("manifest", path, skip_bad_images=True, **opts)) == {"missing_files": "warning"}


@pytest.mark.parametrize("protocol", list(JUNK_RULES))
def test_countable_queries_against_a_brute_force_oracle(protocol):
    rng = np.random.default_rng(len(protocol))
    # small label ranges and galleries: a person's few gallery images often share the query's camera or clothes
    sizes = [(0, 5), (1, 1), (40, 60), (40, 0)] + [(6, int(rng.integers(1, 6))) for _ in range(60)]
    for q, g in sizes:
        hi = 4 if q == 40 else 2
        qp, qc, qk = (rng.integers(0, hi, q) for _ in range(3))
        gp, gc, gk = (rng.integers(0, hi, g) for _ in range(3))
        want = []
        for i in range(q):
            ok = False
            for j in range(g):
                if gp[j] != qp[i]:
                    continue
                same_cam, same_clothes = gc[j] == qc[i], gk[j] == qk[i]
                junk = {"none": False, "camera": same_cam, "camera-or-clothes": same_cam or same_clothes,
                        "camera-or-other-clothes": same_cam or not same_clothes}
                ok = ok or not junk[JUNK_RULES[protocol]]
            want.append(ok)
        got = countable_queries(qp, qc, qk, gp, gc, gk, protocol)
        assert got.tolist() == want


def test_countable_queries_agree_with_the_evaluator():
    from fastccreid.metrics import evaluate

    rng = np.random.default_rng(3)
    qp, qc, qk = (rng.integers(0, 5, 50) for _ in range(3))
    gp, gc, gk = (rng.integers(0, 5, 80) for _ in range(3))
    qf, gf = rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=(80, 8)).astype(np.float32)
    for protocol in ("market", "ltcc-cc", "ltcc-sc", "prcc"):
        r = evaluate(qf=qf, gf=gf, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, q_clothes=qk, g_clothes=gk,
                     protocol=protocol)
        assert r.num_valid_queries == int(countable_queries(qp, qc, qk, gp, gc, gk, protocol).sum())


def _jpeg(path, size, **kw):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        path, **kw)


@pytest.mark.parametrize("kind", ["baseline", "progressive", "big-exif", "png", "gray-png", "bmp"])
def test_header_dimensions_equal_pil(tmp_path, kind):
    size = (37, 71)
    path = str(tmp_path / "x")
    if kind == "baseline":
        _jpeg(path, size, format="JPEG")
    elif kind == "progressive":
        _jpeg(path, size, format="JPEG", progressive=True)
    elif kind == "big-exif":  # a 20 KB APP1 segment: the frame header lies past the first 4 KiB
        buf = io.BytesIO()
        _jpeg(buf, size, format="JPEG")
        data = buf.getvalue()
        app1 = b"Exif\x00\x00" + b"\x00" * 20000
        data = data[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + data[2:]
        open(path, "wb").write(data)
    elif kind == "png":
        Image.new("RGB", size).save(path, format="PNG")
    elif kind == "gray-png":
        Image.new("L", size).save(path, format="PNG")
    else:
        Image.new("RGB", size).save(path, format="BMP")
    with Image.open(path) as im:
        assert scan_file(path).dims == im.size == size
    assert scan_file(path).problem is None
    fd = os.open(path, os.O_RDONLY)  # PNG / JPEG from the header walk itself, not from scan_file's PIL fallback
    try:
        assert header_dims(fd, os.read(fd, HEAD_BYTES)) == (None if kind == "bmp" else size)
    finally:
        os.close(fd)


def test_scan_file_names_the_problem(tmp_path):
    empty, text = tmp_path / "e.jpg", tmp_path / "t.jpg"
    empty.write_bytes(b"")
    text.write_text("hello")
    assert scan_file(str(empty)).problem == "empty file"
    assert "not a JPEG" in scan_file(str(text)).problem
    assert scan_file(str(tmp_path / "none.jpg")).problem
    assert scan_file(str(tmp_path)).problem == "not a regular file"
    assert scan_file(str(tmp_path / "none.jpg"), header=False).problem
    assert scan_file(str(empty), header=False).problem == "empty file"


def test_cli_exit_codes_strict_and_json(synth_root, tmp_path, capsys):
    clean = synth_source("manifest", synth_root)
    base = ["data", "check", "--dataset", "manifest", "--dataset_root"]
    assert main([*base, clean, "--num_instances", "4", "--height", "64", "--width", "32"]) == 0
    assert "0 error(s), 0 warning(s)" in capsys.readouterr().out
    out = str(tmp_path / "r.json")
    assert main([*base, clean, "--num_instances", "4", "--json", out]) == 0  # small images: a warning
    report = json.load(open(out))
    assert report["errors"] == 0 and [f["code"] for f in report["findings"]] == ["small_images"]
    assert len(report["findings"][0]["items"]) == 64  # every file, not only the printed five
    assert main([*base, clean, "--num_instances", "4", "--strict"]) == 1
    bad, _ = _craft(synth_root, "same_camera", str(tmp_path))
    assert main([*base, bad, "--json", out, "--height", "64", "--width", "32", "--num_instances", "4"]) == 1
    assert {f["code"] for f in json.load(open(out))["findings"]} == {"same_camera", "no_true_match"}
    assert main(["data", "check", "-d", "ltcc", "--dataset_root", str(tmp_path / "nowhere")]) == 1
    assert "unreadable_dataset" in capsys.readouterr().out


def test_cli_decode_names_the_corrupt_image(synth_root, tmp_path, capsys):
    path, _ = _craft(synth_root, "corrupt_images", str(tmp_path))
    argv = ["data", "check", "--dataset", "manifest", "--dataset_root", path, "--decode", "-j", "0",
            "--num_instances", "4", "--height", "64", "--width", "32"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "[corrupt_images]" in out and "cut.jpg" in out


@pytest.mark.parametrize("code", ["same_camera", "no_true_match", "missing_files"])
def test_train_stops_before_anything_is_written(synth_root, tmp_path, capsys, code):
    from helpers.train_cases import tiny_argv

    path, opts = _craft(synth_root, code, str(tmp_path))
    save = tmp_path / "run"
    argv = tiny_argv(path, str(save), "--max_epoch", "1")
    argv[argv.index("ltcc")] = "manifest"
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastccreid train: error: dataset check failed:") and "\n" not in err
    assert not save.exists()


def test_train_preflight_lets_skip_bad_images_through(synth_root, tmp_path, capsys):
    from fastccreid.data.check import preflight

    path, _ = _craft(synth_root, "missing_files", str(tmp_path))
    warned: list[str] = []
    preflight("manifest", path, skip_bad_images=True, warn=warned.append)
    assert len(warned) == 1 and "gone.jpg" in warned[0]
    with pytest.raises(ValueError, match="dataset check failed: 1 row"):
        preflight("manifest", path)


def test_every_protocol_has_a_junk_rule():
    from fastccreid.protocols import PROTOCOLS

    assert set(JUNK_RULES) == set(PROTOCOLS)  # a new protocol needs its rule here (and in the oracle above)
