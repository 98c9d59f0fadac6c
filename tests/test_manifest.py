"""The manifest layout (issue 28): CSV and JSON Lines give the built-in parser's records on the same images,
``synth --layout manifest`` writes a valid one, bad input is one ``FILE:LINE`` line and nothing is written, and a
manifest trains (1 epoch) and evaluates to the numbers of the same images read as LTCC."""

from __future__ import annotations

import csv
import json
import os
import re

import pytest
from helpers.train_cases import make_tiny_ltcc, tiny_argv, tiny_config

from fastccreid.cli import main
from fastccreid.data import build_dataset
from fastccreid.data.datasets import ManifestError, default_settings
from fastccreid.data.synth import make_synthetic, synth_source

_NAME = re.compile(r"(\d+)_(\d+)_c(\d+)_")  # the test's own reading of LTCC names: pid, outfit, camera (1-based)


def write_manifest(path: str, rows: list[dict], fmt: str) -> str:
    if fmt == "csv":
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def ltcc_rows(root: str) -> list[dict]:
    """A manifest of an LTCC tree's files, labels read from the names by this test (relative paths)."""
    rows = []
    for folder, split in (("train", "train"), ("query", "query"), ("test", "gallery")):
        for name in sorted(os.listdir(os.path.join(root, folder))):
            pid, outfit, cam = (int(g) for g in _NAME.match(name).groups())
            rows.append({"path": f"{folder}/{name}", "pid": pid, "camid": cam - 1, "split": split,
                         "clothes_id": outfit})
    return rows


@pytest.fixture(scope="module")
def ltcc_root(tmp_path_factory) -> str:
    return make_tiny_ltcc(str(tmp_path_factory.mktemp("man") / "ltcc"))


def _same_clothes_relation(recs) -> set:
    return {(a.path, b.path) for a in recs for b in recs if a.pid == b.pid and a.clothes_id == b.clothes_id}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_manifest_equals_the_ltcc_parser_on_the_same_images(ltcc_root, fmt):
    ref = build_dataset("ltcc", ltcc_root)
    ds = build_dataset("manifest", write_manifest(os.path.join(ltcc_root, f"m.{fmt}"), ltcc_rows(ltcc_root), fmt))
    # train: pids and outfits relabelled 0..N-1 in sorted order, exactly as LTCC relabels its pids / clothes keys
    assert ds.train == ref.train
    assert (ds.num_train_pids, ds.num_train_clothes) == (ref.num_train_pids, ref.num_train_clothes)
    for split in ("query", "gallery"):  # test: paths, raw pids and cameras equal; clothes the same partition
        a, b = getattr(ds, split), getattr(ref, split)
        assert [(r.path, r.pid, r.camid) for r in a] == [(r.path, r.pid, r.camid) for r in b]
    both = ds.query + ds.gallery
    assert _same_clothes_relation(both) == _same_clothes_relation(ref.query + ref.gallery)
    assert default_settings(ds) == default_settings(ref)  # clothes-labelled: LTCC's two settings


def test_manifest_accepts_absolute_paths_extra_blanks_and_no_clothes(ltcc_root, tmp_path):
    rows = [{"path": os.path.join(ltcc_root, r["path"]), "pid": f" {r['pid']} ", "camid": r["camid"],
             "split": r["split"]} for r in ltcc_rows(ltcc_root)]
    path = str(tmp_path / "abs.csv")
    write_manifest(path, rows, "csv")
    with open(path, "a") as f:
        f.write("\n\n")  # trailing blank lines are not rows
    ds = build_dataset("manifest", path)
    ref = build_dataset("ltcc", ltcc_root)
    assert [r.path for r in ds.gallery] == [r.path for r in ref.gallery]
    assert not ds.clothes_labelled and all(r.clothes_id == r.pid for r in ds.query)
    assert [s[1] for s in default_settings(ds)] == ["market"]  # no clothes ids: the market protocol only


def test_prcc_style_manifest_uses_both_query_sets(tmp_path):
    root = make_synthetic("prcc", str(tmp_path / "prcc"), ids=4, seed=0, size=(64, 32))
    ref = build_dataset("prcc", root)
    rows = [{"path": r.path, "pid": r.pid, "camid": r.camid, "split": s, "clothes_id": r.clothes_id}
            for s in ("train", "query_same", "query_diff", "gallery") for r in getattr(ref, s)]
    ds = build_dataset("manifest", write_manifest(str(tmp_path / "p.jsonl"), rows, "jsonl"))
    assert ds.query_same == ref.query_same and ds.query_diff == ref.query_diff and ds.query == ref.query_diff
    assert default_settings(ds) == default_settings(ref)


def test_synth_writes_a_manifest_layout_in_csv_and_jsonl(tmp_path, capsys):
    root = str(tmp_path / "m")
    assert main(["synth", "--layout", "manifest", "--root", root, "--ids", "4", "--clothes", "2", "--cams", "2",
                 "--size", "64x32"]) == 0
    assert "=> manifest loaded from" in capsys.readouterr().out
    a = build_dataset("manifest", synth_source("manifest", root))
    b = build_dataset("manifest", os.path.join(root, "manifest.jsonl"))
    assert a.train == b.train and a.query == b.query and a.gallery == b.gallery
    assert len(a.train) == 2 * 2 * 2 * 2 and a.clothes_labelled
    assert all(os.path.isfile(r.path) for r in a.train + a.query + a.gallery)


BAD_CASES = {
    # name: (edit of the rows / header, the row at fault (-1: the header), a phrase of the message)
    "missing column": ("header", -1, "missing column 'camid'"),
    "non-integer pid": ("pid", 1, "pid must be an integer, got 'seven'"),
    "unknown split": ("split", 2, "split must be one of train, query, gallery, query_same, query_diff, got 'test'"),
    "empty split": ("no gallery", None, "empty split 'gallery'"),
    "path outside any folder": ("path", 3, "outside any existing folder"),
}


def _bad_manifest(root: str, case: str, fmt: str) -> str:
    rows = ltcc_rows(root)
    kind = BAD_CASES[case][0]
    if kind == "header":
        rows = [{k: v for k, v in r.items() if k != "camid"} for r in rows]
    elif kind == "pid":
        rows[1]["pid"] = "seven"
    elif kind == "split":
        rows[2]["split"] = "test"
    elif kind == "no gallery":
        rows = [r for r in rows if r["split"] != "gallery"]
    else:
        rows[3]["path"] = "no_such_folder/x.png"
    return write_manifest(os.path.join(root, f"bad_{kind.replace(' ', '_')}.{fmt}"), rows, fmt)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_is_one_line_naming_file_and_line_and_nothing_is_written(ltcc_root, tmp_path, capsys, case, fmt):
    path = _bad_manifest(ltcc_root, case, fmt)
    _, row, phrase = BAD_CASES[case]
    # CSV: the header is line 1 and row i line i + 2; JSON Lines: row i is line i + 1 (the first object's keys
    # play the header's part)
    line = None if row is None else (1 if row < 0 else row + (2 if fmt == "csv" else 1))
    where = f"{path}:{line}:" if line is not None else f"{path}:"
    with pytest.raises(ManifestError) as e:
        build_dataset("manifest", path)
    msg = str(e.value)
    assert msg.startswith(where) and phrase in msg and "\n" not in msg
    save = tmp_path / "run"
    for cmd in ("train", "eval"):
        argv = tiny_argv(path, str(save), "--max_epoch", "1", command=cmd)
        argv[argv.index("ltcc")] = "manifest"
        if cmd == "eval":
            argv += ["--resume", str(tmp_path / "never_read.pth")]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"fastccreid {cmd}: error: {msg}"
        assert not save.exists()  # no log, no checkpoint, no folder


def test_a_jsonl_row_with_a_missing_key_names_its_line(ltcc_root):
    rows = ltcc_rows(ltcc_root)
    del rows[4]["camid"]
    path = write_manifest(os.path.join(ltcc_root, "k.jsonl"), rows, "jsonl")
    with pytest.raises(ManifestError, match=r"k\.jsonl:5: missing key 'camid'"):
        build_dataset("manifest", path)


def test_manifest_evaluates_as_ltcc_with_a_stand_in_model(ltcc_root):
    """The fast variant of the train/eval test below: the evaluation path (loader, settings, metrics) on the
    manifest gives exactly the numbers of the same images read as LTCC, with a cheap deterministic feature."""
    import torch

    from fastccreid.engine.amp import resolve_amp
    from fastccreid.engine.distributed import setup
    from fastccreid.engine.evaluate import EvalConfig, evaluate_model

    pool = torch.nn.AdaptiveAvgPool2d((8, 4))

    def model(x: torch.Tensor) -> torch.Tensor:  # [B, 3, H, W] -> [B, 96]
        return pool(x).flatten(1)

    ds = build_dataset("manifest", write_manifest(os.path.join(ltcc_root, "fast.jsonl"), ltcc_rows(ltcc_root),
                                                  "jsonl"))
    cfg = EvalConfig(height=128, width=32, batch_size=16, amp=resolve_amp("off", torch.device("cpu")),
                     loader="torch", progress=False)
    ctx = setup(True)
    quiet = lambda *_: None  # noqa: E731
    got = evaluate_model(model, ds, cfg, ctx, log=quiet)
    ref = evaluate_model(model, build_dataset("ltcc", ltcc_root), cfg, ctx, log=quiet)
    assert list(got) == list(ref) == ["general", "clothes-changing"]
    for k in ref:
        assert got[k].mAP == ref[k].mAP and (got[k].cmc == ref[k].cmc).all() and got[k].mINP == ref[k].mINP
        assert got[k].num_valid_queries == ref[k].num_valid_queries > 0


def test_manifest_trains_one_epoch_and_evaluates_as_ltcc(ltcc_root, tmp_path):
    """CSV through ``train`` (1 epoch), JSON Lines through ``eval``: the checkpoint evaluates on the manifest to
    exactly the numbers it gets on the same images read as LTCC."""
    from fastccreid.engine.distributed import setup
    from fastccreid.engine.trainer import run_evaluate

    csv_path = write_manifest(os.path.join(ltcc_root, "train.csv"), ltcc_rows(ltcc_root), "csv")
    jsonl_path = write_manifest(os.path.join(ltcc_root, "eval.jsonl"), ltcc_rows(ltcc_root), "jsonl")
    save = str(tmp_path / "run")
    argv = tiny_argv(csv_path, save, "--max_epoch", "1", "--max_steps_per_epoch", "1", "--save_checkpoint")
    argv[argv.index("ltcc")] = "manifest"
    assert main(argv) == 0
    ckpt = os.path.join(save, "checkpoint_last.pth")
    assert os.path.isfile(ckpt)
    argv = tiny_argv(jsonl_path, str(tmp_path / "ev"), "--resume", ckpt, command="eval")
    argv[argv.index("ltcc")] = "manifest"
    assert main(argv) == 0
    ctx = setup(True)
    quiet = lambda *_: None  # noqa: E731
    got = run_evaluate(tiny_config(jsonl_path, save, dataset="manifest", resume=ckpt, evaluate=True), ctx, quiet)
    ref = run_evaluate(tiny_config(ltcc_root, save, resume=ckpt, evaluate=True), ctx, quiet)
    assert list(got) == list(ref) == ["general", "clothes-changing"]
    for k in ref:
        assert got[k].mAP == ref[k].mAP and (got[k].cmc == ref[k].cmc).all() and got[k].mINP == ref[k].mINP
