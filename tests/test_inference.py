"""FeatureExtractor and ``fastccreid extract``: the features ``fastccreid eval --save_features`` writes, for the same
files, from paths, PIL images and arrays, official and fastccreid checkpoints; labels from file names that evaluate
as the dataset parser's do; bad input named."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from fastccreid.cli import build_parser, main
from fastccreid.data import build_dataset
from fastccreid.data.datasets import DATASET_NAMES, parse_image_labels
from fastccreid.data.synth import make_synthetic
from fastccreid.engine.checkpoint import CheckpointError, save_checkpoint
from fastccreid.engine.config import TrainConfig
from fastccreid.inference import FeatureExtractor, extract_jobs, list_images
from fastccreid.models import CSSC

H, W = 128, 64  # the checkpoint's config size: the extractor must take it from there


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny synthetic LTCC, a random-init CSSC saved as a fastccreid checkpoint (config 128x64) and as an official
    one (``module.`` prefix, no config), and ``fastccreid eval --save_features`` on it (PIL loader)."""
    tmp = tmp_path_factory.mktemp("inference")
    root = make_synthetic("ltcc", tmp / "ltcc", ids=6, seed=0, clothes=2, cams=3, images_per=1, size=(96, 48))
    torch.manual_seed(0)
    model = CSSC(5, pretrained=None)
    sd = model.state_dict()
    ck = save_checkpoint({"model_state_dict": sd, "epoch": 0,
                          "fastccreid": {"format": 1, "config": TrainConfig(height=H, width=W).to_dict()}},
                         str(tmp / "ck.pth"))
    official = save_checkpoint({"model_state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3,
                                "rank1": np.float64(0.5), "mAP": np.float64(0.25)}, str(tmp / "official.pth"))
    feats = str(tmp / "ev.npz")
    rc = main(["eval", "--resume", ck, "-d", "ltcc", "--dataset_root", str(tmp), "--dataset_filename", "ltcc",
               "--height", str(H), "--width", str(W), "--use_cpu", "--loader", "torch", "-j", "0",
               "--save_features", feats, "--save_dir", str(tmp / "log"), "--no_progress"])
    assert rc == 0
    return {"tmp": tmp, "root": root, "ck": ck, "official": official, "model": model,
            "dataset": build_dataset("ltcc", root), "gallery": np.load(str(tmp / "ev_gallery.npz")),
            "query": np.load(str(tmp / "ev_query.npz"))}


@pytest.fixture(scope="module")
def extractor(setup):
    return FeatureExtractor(setup["ck"], device="cpu")


def test_same_features_as_eval_save_features(setup, extractor):
    paths = [r.path for r in setup["dataset"].gallery]
    expected = setup["gallery"]["feats"]
    assert (extractor.height, extractor.width) == (H, W)  # from the checkpoint's config
    got = extractor(paths)
    assert got.dtype == torch.float32 and tuple(got.shape) == expected.shape
    np.testing.assert_array_equal(got.numpy(), expected)
    # In memory: PIL images (any mode) and uint8 RGB arrays give the same numbers, mixed with paths too.
    pil = [Image.open(p) for p in paths]
    np.testing.assert_array_equal(extractor(pil).numpy(), expected)
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    mixed = [arrays[i] if i % 3 == 0 else pil[i] if i % 3 == 1 else paths[i] for i in range(len(paths))]
    np.testing.assert_array_equal(extractor(mixed).numpy(), expected)
    # Other batch boundaries: the same up to the convolutions' batch-size-dependent rounding.
    small = copy.copy(extractor)  # shares the model: one checkpoint load less
    small.batch_size = 3
    np.testing.assert_allclose(small(arrays).numpy(), expected, atol=1e-6, rtol=0)


def test_official_checkpoint_and_explicit_size(setup):
    fx = FeatureExtractor(setup["official"], device="cpu", height=H, width=W)
    assert fx.model.num_classes == 5  # from classifier.weight
    paths = [r.path for r in setup["dataset"].query]
    np.testing.assert_array_equal(fx(paths).numpy(), setup["query"]["feats"])


def test_matches_the_seeds_test_path(setup, extractor):
    """Oracle: the seed's torchvision test transform, the model in plain fp32 NCHW, model(x) + model(flip(x)) and
    the seed's normalisation, written out here."""
    from fastccreid.reference.transforms import build_test_transform

    model = setup["model"].eval()
    tf = build_test_transform(H, W)
    paths = [r.path for r in setup["dataset"].query]
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        f = model(x) + model(torch.flip(x, dims=[3]))
    oracle = f / (f.norm(p=2, dim=1, keepdim=True) + 1e-12)
    torch.testing.assert_close(extractor(paths), oracle, atol=2e-5, rtol=0)
    no_flip = copy.copy(extractor)
    no_flip.flip = False
    with torch.no_grad():
        g = model(x)
    torch.testing.assert_close(no_flip(paths), g / g.norm(dim=1, keepdim=True), atol=2e-5, rtol=0)


def _eval_features_json(tmp, name, query, gallery, protocol):
    out = str(tmp / f"{name}.json")
    assert main(["eval-features", query, gallery, "--protocol", protocol, "--json", out]) == 0
    with open(out) as f:
        res = json.load(f)
    return {k: res[k] for k in ("mAP", "mINP", "cmc", "num_valid_queries")}


def test_extract_then_eval_features_equals_eval(setup, capsys):
    """extract (labels from the file names, default loader as eval's) + eval-features = eval's own features."""
    tmp, root = setup["tmp"], setup["root"]
    for split, name in (("test", "gallery"), ("query", "query")):
        rc = main(["extract", "--resume", setup["ck"], "--images", os.path.join(root, split), "--out",
                   str(tmp / f"x_{name}.npz"), "--layout", "ltcc", "--use_cpu", "--loader", "torch", "-j", "0",
                   "--no_progress"])
        assert rc == 0, capsys.readouterr().err
    g = np.load(str(tmp / "x_gallery.npz"))
    ev = setup["gallery"]
    np.testing.assert_array_equal(g["feats"], ev["feats"])
    np.testing.assert_array_equal(g["pids"], ev["pids"])
    np.testing.assert_array_equal(g["camids"], ev["camids"])
    assert list(g["paths"]) == [r.path for r in setup["dataset"].gallery]
    for protocol in ("ltcc-general", "ltcc-cc"):
        ours = _eval_features_json(tmp, f"x-{protocol}", str(tmp / "x_query.npz"), str(tmp / "x_gallery.npz"),
                                   protocol)
        theirs = _eval_features_json(tmp, f"ev-{protocol}", str(tmp / "ev_query.npz"), str(tmp / "ev_gallery.npz"),
                                     protocol)
        assert ours == theirs


def _manifest_of(setup, name: str, edit=None) -> str:
    """A CSV manifest of the fixture's LTCC images (relative paths, its parser's labels, gallery rows first; two
    train rows: extraction needs no train set)."""
    import csv

    ds, tmp = setup["dataset"], setup["tmp"]
    rows = [{"path": os.path.relpath(r.path, tmp), "pid": r.pid, "camid": r.camid, "split": s,
             "clothes_id": r.clothes_id} for s in ("gallery", "train", "query")
            for r in (ds.train[:2] if s == "train" else getattr(ds, s))]
    if edit is not None:
        edit(rows)
    path = str(tmp / name)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def test_extract_a_manifest_then_eval_features_equals_eval(setup, capsys):
    """--layout manifest: every split of one manifest (default --split all: <out>_<split>.npz) or one split into
    --out; paths and labels as its rows say; eval-features on the query and gallery files = eval's own files."""
    tmp, ds = setup["tmp"], setup["dataset"]
    manifest = _manifest_of(setup, "m.csv")
    base = ["extract", "--resume", setup["ck"], "--images", manifest, "--layout", "manifest", "--use_cpu",
            "--loader", "torch", "-j", "0", "--no_progress"]
    assert main([*base, "--out", str(tmp / "mx.npz")]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    for split in ("gallery", "train", "query"):
        assert f"wrote {tmp / f'mx_{split}.npz'}" in out
    g, q = np.load(str(tmp / "mx_gallery.npz")), np.load(str(tmp / "mx_query.npz"))
    assert list(g["paths"]) == [r.path for r in ds.gallery] and list(q["paths"]) == [r.path for r in ds.query]
    for got, ev in ((g, setup["gallery"]), (q, setup["query"])):
        for key in ("feats", "pids", "camids", "clothes"):
            np.testing.assert_array_equal(got[key], ev[key])
    t = np.load(str(tmp / "mx_train.npz"))
    np.testing.assert_array_equal(t["pids"], [r.pid for r in ds.train[:2]])  # the train rows' ids as written
    # the same arrays as eval's files, so eval-features gives eval's numbers; it reads them, end to end:
    res = _eval_features_json(tmp, "mx", str(tmp / "mx_query.npz"), str(tmp / "mx_gallery.npz"), "ltcc-cc")
    assert res["num_valid_queries"] > 0
    # --split: that split alone, into --out as given (the jobs, before any model is loaded)
    args = build_parser().parse_args([*base, "--split", "query", "--out", str(tmp / "q.npz")])
    [(out, name, paths, labels)] = extract_jobs(args)
    assert (out, name, paths) == (str(tmp / "q.npz"), "query", [r.path for r in ds.query])
    assert [(r.pid, r.camid, r.clothes_id) for r in labels] == [(r.pid, r.camid, r.clothes_id) for r in ds.query]


def _bad_split(rows):
    rows[2]["split"] = "test"


@pytest.mark.parametrize("case", ["bad row", "empty split", "split without manifest", "folder as manifest",
                                  "unreadable image"])
def test_extract_a_bad_manifest_is_one_line_and_writes_nothing(setup, capsys, tmp_path, case):
    argv = ["extract", "--resume", setup["ck"], "--layout", "manifest", "--out", str(tmp_path / "f.npz"),
            "--use_cpu", "--loader", "torch", "-j", "0", "--no_progress"]
    if case == "bad row":  # CSV: the header is line 1, row i line i + 2
        manifest = _manifest_of(setup, "bad.csv", _bad_split)
        argv += ["--images", manifest]
        expected = f"{manifest}:4: split must be one of train, query, gallery, query_same, query_diff, got 'test'"
    elif case == "empty split":
        manifest = _manifest_of(setup, "m.csv")
        argv += ["--images", manifest, "--split", "query_same"]
        expected = f"{manifest}: empty split 'query_same': no rows with split 'query_same' (splits with rows: "
    elif case == "split without manifest":
        argv[argv.index("manifest")] = "ltcc"
        argv += ["--images", os.path.join(setup["root"], "query"), "--split", "query"]
        expected = "--split query: only with --layout manifest"
    elif case == "unreadable image":  # the query set extracts, the gallery's file is gone: neither is written
        def edit(rows):
            rows[:] = [dict(rows[-1], split="query"), dict(rows[-1], split="gallery", path="ltcc/test/gone.png")]

        argv += ["--images", _manifest_of(setup, "gone.csv", edit)]
        expected = os.path.join(setup["tmp"], "ltcc", "test", "gone.png")
    else:
        argv += ["--images", str(setup["tmp"])]
        expected = f"--images {setup['tmp']}: is a folder; with --layout manifest pass the manifest file"
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    errors = [ln for ln in err.splitlines() if not ln.startswith("=> ")]  # (the sets' "=> N image(s)" lines)
    assert len(errors) == 1 and errors[0].startswith("fastccreid extract: error: ") and expected in errors[0], err
    assert case == "unreadable image" or errors[0].startswith(f"fastccreid extract: error: {expected}"), err
    assert os.listdir(tmp_path) == []  # nothing written, not even a temporary file


def test_extract_list_file_without_layout_and_bad_images(setup, capsys):
    tmp = setup["tmp"]
    paths = [r.path for r in setup["dataset"].query][:3]
    bad = tmp / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)  # a PNG signature, then garbage
    listing = tmp / "list.txt"
    listing.write_text("# crops\n" + "\n".join([paths[0], os.path.relpath(str(bad), tmp), "", *paths[1:]]) + "\n")
    assert list_images(str(listing)) == [paths[0], str(bad), *paths[1:]]
    out = str(tmp / "list.npz")
    args = ["extract", "--resume", setup["ck"], "--images", str(listing), "--out", out, "--use_cpu", "--loader",
            "torch", "-j", "0", "--no_progress"]
    capsys.readouterr()
    assert main(args) == 2
    assert str(bad) in capsys.readouterr().err and not os.path.exists(out)
    with pytest.warns(UserWarning, match="broken.png"):
        assert main([*args, "--skip_bad_images"]) == 0
    z = np.load(out)
    assert list(z["paths"]) == paths
    assert (z["pids"] == -1).all() and (z["camids"] == -1).all() and (z["clothes"] == -1).all()
    np.testing.assert_allclose(z["feats"], setup["query"]["feats"][:3], atol=1e-6, rtol=0)  # batch of 3, not 6
    assert not [f for f in os.listdir(tmp) if f.startswith(".list.npz")]  # no temporary file left behind


def test_bad_input_is_named(setup, extractor, tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        FeatureExtractor(str(tmp_path / "missing.pth"), device="cpu")
    with pytest.raises(ValueError, match=r"images\[1\].*uint8 \[H, W, 3\]"):
        extractor([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)])
    with pytest.raises(TypeError, match=r"images\[0\]"):
        extractor([3])
    with pytest.raises(ValueError, match="nothing.jpg"):
        extractor([str(tmp_path / "nothing.jpg")])
    with pytest.raises(ValueError, match="at least 128x32"):
        FeatureExtractor(setup["ck"], device="cpu", height=64)
    with pytest.raises(ValueError, match="loader must be one of auto, dali, torch"):
        FeatureExtractor(setup["ck"], device="cpu", loader="pil")
    assert tuple(extractor([]).shape) == (0, 2048)
    assert main(["extract", "--resume", setup["ck"], "--images", str(tmp_path), "--out",
                 str(tmp_path / "f.npz")]) == 2  # an empty folder: no images named


@pytest.mark.dali
def test_dali_loader_matches_eval_with_dali(setup, extractor):
    """loader="dali" reads files as eval's DALI loader does: same features as the evaluator's extraction."""
    pytest.importorskip("nvidia.dali")
    from fastccreid.engine.amp import resolve_amp
    from fastccreid.engine.distributed import DistContext
    from fastccreid.engine.evaluate import EvalConfig, extract_features

    fx = copy.copy(extractor)
    fx.loader = "dali"
    recs = setup["dataset"].gallery
    cfg = EvalConfig(height=H, width=W, batch_size=128, amp=resolve_amp("off", "cpu"), loader="dali",
                     progress=False)
    ref = extract_features(fx.model, recs, cfg, DistContext(0, 1, 0, torch.device("cpu")))
    np.testing.assert_array_equal(fx([r.path for r in recs]).numpy(), ref.feats.numpy())


@pytest.mark.parametrize("layout", DATASET_NAMES)
def test_file_name_labels_partition_as_the_parser(layout, tmp_path):
    """Per-file labels of the query and gallery folders, parsed separately, give the same same-pid, same-camera
    and same-clothes relations as the dataset parser (what every protocol looks at), and the parser's pids."""
    root = make_synthetic(layout, tmp_path / layout, ids=6, seed=0, clothes=2, cams=3, images_per=1, size=(32, 16))
    ds = build_dataset(layout, root)
    queries = ds.query_same + ds.query_diff if layout == "prcc" else ds.query
    q = parse_image_labels(layout, [r.path for r in queries])
    g = parse_image_labels(layout, [r.path for r in ds.gallery])
    assert [r.pid for r in q] == [r.pid for r in queries] and [r.pid for r in g] == [r.pid for r in ds.gallery]

    def relation(a, b, key):
        return np.array([[key(x) == key(y) for y in b] for x in a])

    for key in (lambda r: r.camid, lambda r: r.clothes_id):
        np.testing.assert_array_equal(relation(q, g, key), relation(queries, ds.gallery, key))
        np.testing.assert_array_equal(relation(q, q, key), relation(queries, queries, key))
