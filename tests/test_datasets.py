"""build_dataset: same ids as the official parsers on synthetic trees, the fixes (README: "Differences from the
official code"), every layout, every error."""

from __future__ import annotations

import glob
import os
import re
import shutil

import pytest

from fastccreid.data import DATASET_NAMES, ImageRecord, build_dataset
from fastccreid.data.synth import make_synthetic

SMALL = dict(ids=8, seed=1, clothes=2, cams=3, images_per=2, size=(48, 24))


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("trees")
    return {name: make_synthetic(name, str(base / name), **SMALL) for name in DATASET_NAMES}


def _copy(src: str, dst: str) -> str:
    shutil.copytree(src, dst)
    return dst


# --- Transcriptions of the official (FIRe-CCReID) parsers' id logic, as the seed runs them. ---------------------
# Tuples are (path, pid, clothes_id, camid) as in the official code. ``listing`` replaces glob's file-system order.


def official_ltcc(root: str, listing=sorted):
    ids, clothes_pat = re.compile(r"(\d+)_(\d+)_c(\d+)"), re.compile(r"(\w+)_c")

    def read(paths, pid_map=None, clothes_map=None):
        out = []
        for p in paths:
            pid, _, cam = map(int, ids.search(p).groups())
            c = clothes_pat.search(p).group(1)
            out.append((p, pid_map[pid] if pid_map else pid, clothes_map[c], cam - 1))
        return out

    train = listing(glob.glob(os.path.join(root, "train", "*.png")))
    pids = sorted({int(ids.search(p).group(1)) for p in train})
    clothes = sorted({clothes_pat.search(p).group(1) for p in train})
    train_recs = read(train, {p: i for i, p in enumerate(pids)}, {c: i for i, c in enumerate(clothes)})
    q = listing(glob.glob(os.path.join(root, "query", "*.png")))
    g = listing(glob.glob(os.path.join(root, "test", "*.png")))
    test_clothes = sorted({clothes_pat.search(p).group(1) for p in q + g})
    cmap = {c: i for i, c in enumerate(test_clothes)}
    return train_recs, read(q, None, cmap), read(g, None, cmap), len(pids), len(clothes)


def official_prcc(root: str, listing=sorted):
    cam2label = {"A": 0, "B": 1, "C": 2}

    def train_split(d):
        pdirs = sorted(glob.glob(os.path.join(d, "*")))
        pid_set, clothes_set = set(), set()
        for pdir in pdirs:
            pid_set.add(int(os.path.basename(pdir)))
            for img in listing(glob.glob(os.path.join(pdir, "*.jpg"))):
                cam = os.path.basename(img)[0]
                clothes_set.add(os.path.basename(pdir) if cam in "AB" else os.path.basename(pdir) + cam)
        pid2label = {p: i for i, p in enumerate(sorted(pid_set))}
        c2label = {c: i for i, c in enumerate(sorted(clothes_set))}
        out = []
        for pdir in pdirs:
            pid = int(os.path.basename(pdir))
            for img in listing(glob.glob(os.path.join(pdir, "*.jpg"))):
                cam = os.path.basename(img)[0]
                key = os.path.basename(pdir) if cam in "AB" else os.path.basename(pdir) + cam
                out.append((img, pid2label[pid], c2label[key], cam2label[cam]))
        return out, len(pid_set), len(clothes_set)

    train, npids, nclothes = train_split(os.path.join(root, "rgb", "train"))
    val, _, _ = train_split(os.path.join(root, "rgb", "val"))
    test = os.path.join(root, "rgb", "test")
    pid2label = {p: i for i, p in enumerate(sorted(int(os.path.basename(d)) for d in glob.glob(os.path.join(test,
                                                                                                           "A", "*"))))}
    sets = {"A": [], "B": [], "C": []}
    for cam in "ABC":
        for pdir in listing(glob.glob(os.path.join(test, cam, "*"))):
            pid = int(os.path.basename(pdir))
            for img in listing(glob.glob(os.path.join(pdir, "*.jpg"))):
                sets[cam].append((img, pid, pid2label[pid] * 2 + (cam == "C"), cam2label[cam]))
    return train, val, sets["B"], sets["C"], sets["A"], npids, nclothes


def official_celeb(root: str, listing=sorted):
    pattern = re.compile(r"([-\d]+)_(\d)")

    def split(d, relabel):
        paths = listing(glob.glob(os.path.join(d, "*.jpg")))
        pids = {int(pattern.search(p).group(1)) for p in paths}
        pid2label = {p: i for i, p in enumerate(pids)}  # the official enumerates the set itself
        out = []
        for camid, p in enumerate(paths):  # a per-split camera counter
            pid = int(pattern.search(p).group(1))
            out.append((p, pid2label[pid] if relabel else pid, camid))
        return out

    return split(os.path.join(root, "train"), True), split(os.path.join(root, "query"), False), \
        split(os.path.join(root, "gallery"), False)


def _as_records(rows) -> list[ImageRecord]:
    return [ImageRecord(p, pid, cam, clothes) for p, pid, clothes, cam in rows]


# --- LTCC, PRCC, Celeb-reID: same ids as the official parsers. ---------------------------------------------------


def test_ltcc_matches_official(trees):
    ds = build_dataset("ltcc", trees["ltcc"])
    train, query, gallery, npids, nclothes = official_ltcc(trees["ltcc"])
    assert ds.train == _as_records(train)
    assert ds.query == _as_records(query)
    assert ds.gallery == _as_records(gallery)
    assert (ds.num_train_pids, ds.num_train_clothes) == (npids, nclothes) == (4, 8)


def test_prcc_matches_official(trees):
    ds = build_dataset("prcc", trees["prcc"])
    train, val, q_same, q_diff, gallery, npids, nclothes = official_prcc(trees["prcc"], listing=lambda x: x)
    by_path = lambda recs: sorted(recs, key=lambda r: r.path)
    assert by_path(ds.train) == by_path(_as_records(train))
    assert by_path(ds.val) == by_path(_as_records(val))
    assert by_path(ds.query_same) == by_path(_as_records(q_same))
    assert by_path(ds.query_diff) == by_path(_as_records(q_diff))
    assert by_path(ds.gallery) == by_path(_as_records(gallery))
    assert ds.query == ds.query_diff
    assert (ds.num_train_pids, ds.num_train_clothes) == (npids, nclothes) == (4, 8)
    # Ours is sorted, hence deterministic: it equals the official parse over sorted listings exactly.
    assert ds.train == _as_records(official_prcc(trees["prcc"])[0])
    # A/B share clothes per pid, C does not.
    same = {r.pid: r.clothes_id for r in ds.gallery}
    assert all(same[r.pid] == r.clothes_id for r in ds.query_same)
    assert all(same[r.pid] != r.clothes_id for r in ds.query_diff)


def test_celeb_matches_official_ids_with_unique_cameras(trees):
    ds = build_dataset("celeb", trees["celeb"])
    train, query, gallery = official_celeb(trees["celeb"])
    assert [(r.path, r.pid, r.camid) for r in ds.train] == train
    assert [(r.path, r.pid, r.camid) for r in ds.query] == query
    nq = len(query)
    assert [(r.path, r.pid, r.camid) for r in ds.gallery] == [(p, pid, nq + c) for p, pid, c in gallery]
    assert ds.num_train_pids == len({r.pid for r in ds.train}) == 4
    assert all(r.clothes_id == r.pid for r in ds.train + ds.query + ds.gallery)


# --- The fixes (README: "Differences from the official code"). ----------------------------------------------------


def test_ltcc_parent_folder_with_c_is_harmless(trees, tmp_path):
    clean = build_dataset("ltcc", trees["ltcc"])
    odd = _copy(trees["ltcc"], str(tmp_path / "my_cache_c1" / "LTCC_ReID"))
    ds = build_dataset("ltcc", odd)
    rel = lambda recs, root: [(os.path.relpath(r.path, root), r.pid, r.camid, r.clothes_id) for r in recs]
    for split in ("train", "query", "gallery"):
        assert rel(getattr(ds, split), ds.root) == rel(getattr(clean, split), clean.root)
    # The official whole-path regexes collapse every clothes id to the parent folder's text here.
    _, _, _, _, official_clothes = official_ltcc(odd)
    assert official_clothes == 1 < ds.num_train_clothes


@pytest.mark.parametrize("listing", [sorted, lambda x: sorted(x, reverse=True)])
def test_celeb_query_gallery_cameras_unique_regardless_of_order(trees, listing):
    ds = build_dataset("celeb", trees["celeb"])
    cams = [r.camid for r in ds.query + ds.gallery]
    assert len(set(cams)) == len(cams)
    # The official per-split counter gives query i and gallery i the same camera id, so a same-pid pair at equal
    # positions would be dropped as same-camera junk; in ours no query shares a camera with any gallery image.
    _, q, g = official_celeb(trees["celeb"], listing=listing)
    assert {c for *_, c in q} & {c for *_, c in g}
    assert not {r.camid for r in ds.query} & {r.camid for r in ds.gallery}


# --- Every other layout parses. ----------------------------------------------------------------------------------


def _check_generic(ds, n_train_ids=4, n_test_ids=4):
    assert ds.train and ds.query and ds.gallery
    assert ds.num_train_pids == n_train_ids
    assert sorted({r.pid for r in ds.train}) == list(range(n_train_ids))
    assert len({r.pid for r in ds.query}) == n_test_ids
    assert {r.pid for r in ds.query} <= {r.pid for r in ds.gallery}
    assert all(os.path.isfile(r.path) for r in ds.train + ds.query + ds.gallery)


def test_market1501(trees, tmp_path):
    ds = build_dataset("market1501", trees["market1501"])
    _check_generic(ds)
    assert all(r.pid != -1 for r in ds.gallery)  # the junk image is dropped
    assert {r.camid for r in ds.train} == {0, 1, 2}
    assert ds.num_train_clothes == ds.num_train_pids
    nested = _copy(trees["market1501"], str(tmp_path / "m" / "Market-1501-v15.09.15"))
    assert len(build_dataset("market1501", os.path.dirname(nested)).gallery) == len(ds.gallery)


def test_msmt17(trees):
    ds = build_dataset("msmt17", trees["msmt17"])
    _check_generic(ds)
    assert {r.camid for r in ds.query + ds.gallery} == {0, 1, 2}
    same = build_dataset("msmt17", os.path.join(trees["msmt17"], "MSMT17_V1"))  # ROOT may be the version folder
    assert same.train == ds.train


def test_deepchange(trees):
    ds = build_dataset("deepchange", trees["deepchange"])
    _check_generic(ds)
    assert ds.num_train_clothes == 8
    # camid is the tracklet: one per (pid, outfit, camera).
    assert len({r.camid for r in ds.train}) == 4 * 2 * 3


def test_last(trees):
    ds = build_dataset("last", trees["last"])
    _check_generic(ds)
    assert ds.num_train_clothes == 8
    cams = [r.camid for r in ds.query + ds.gallery]
    assert cams == list(range(len(cams)))


def test_vcclothes(trees):
    ds = build_dataset("vcclothes", trees["vcclothes"])
    _check_generic(ds)
    assert ds.num_train_clothes == 8
    assert {r.camid for r in ds.train} == {0, 1, 2}
    assert len({r.clothes_id for r in ds.query + ds.gallery}) == 8


# --- Hidden files. -------------------------------------------------------------------------------------------------

_APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "  # what macOS writes into ._<name> files


def _sprinkle_hidden(root: str) -> int:
    """What copying a tree through macOS leaves: ``._<name>`` beside every file and folder and a ``.DS_Store`` in
    every folder, plus hidden folders holding real images or a copy of a sibling folder. Returns the number of
    hidden entries added."""
    added = 0
    for folder, dirs, files in list(os.walk(root)):
        for name in dirs + files:
            with open(os.path.join(folder, "._" + name), "wb") as f:
                f.write(_APPLEDOUBLE)
            added += 1
        with open(os.path.join(folder, ".DS_Store"), "wb") as f:
            f.write(b"\x00\x00\x00\x01Bud1")
        images = [n for n in files if n.endswith((".png", ".jpg"))]
        if images:  # a hidden folder beside the images, with one of them inside
            os.makedirs(os.path.join(folder, ".ipynb_checkpoints"))
            shutil.copy(os.path.join(folder, images[0]), os.path.join(folder, ".ipynb_checkpoints", images[0]))
            added += 1
        if dirs:  # a hidden folder beside identity / split folders, as if it were one more of them
            shutil.copytree(os.path.join(folder, dirs[0]), os.path.join(folder, "." + dirs[0]))
            added += 1
        added += 1
    return added


def _relative(ds, root: str) -> dict:
    """Every field of a parsed dataset, with paths relative to ``root`` (so two copies of a tree compare)."""
    out = {}
    for key, value in vars(ds).items():
        if isinstance(value, list):
            value = [(os.path.relpath(r.path, root), r.pid, r.camid, r.clothes_id) for r in value]
        out[key] = value if key != "root" else None
    return out


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_hidden_files_are_ignored(name, trees, tmp_path):
    """macOS's ``._<name>`` AppleDouble files, ``.DS_Store`` and hidden folders change nothing: the official
    ``glob`` patterns never match names starting with "." (they used to be parsed as images, or failed)."""
    root = _copy(trees[name], str(tmp_path / name))
    assert _sprinkle_hidden(root) > 10
    assert _relative(build_dataset(name, root), root) == _relative(build_dataset(name, trees[name]), trees[name])


# --- Errors. -------------------------------------------------------------------------------------------------------


def test_unknown_name_lists_choices(tmp_path):
    with pytest.raises(ValueError, match="ltcc, prcc, celeb"):
        build_dataset("ltcc2", str(tmp_path))


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_missing_root(name, tmp_path):
    with pytest.raises(FileNotFoundError, match="Expected layout"):
        build_dataset(name, str(tmp_path / "nowhere"))


@pytest.mark.parametrize("name,split", [
    ("ltcc", "query"), ("prcc", "rgb/val"), ("celeb", "gallery"), ("market1501", "bounding_box_train"),
    ("msmt17", "MSMT17_V1/list_query.txt"), ("deepchange", "test-set-gallery"), ("last", "test/query"),
    ("vcclothes", "train"),
])
def test_missing_split(name, split, trees, tmp_path):
    root = _copy(trees[name], str(tmp_path / name))
    target = os.path.join(root, split)
    shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
    with pytest.raises(FileNotFoundError, match=re.escape(split.split("/")[-1])):
        build_dataset(name, root)


@pytest.mark.parametrize("name,split,ext", [
    ("ltcc", "test", ".png"), ("celeb", "train", ".jpg"), ("market1501", "query", ".jpg"),
    ("vcclothes", "gallery", ".jpg"), ("last", "test/query", ".jpg"),
])
def test_empty_split(name, split, ext, trees, tmp_path):
    root = _copy(trees[name], str(tmp_path / name))
    for f in glob.glob(os.path.join(root, split, "*" + ext)):
        os.remove(f)
    with pytest.raises(ValueError, match="no \\*.* images in split"):
        build_dataset(name, root)


@pytest.mark.parametrize("name,split,bad", [
    ("ltcc", "train", "holiday.png"), ("celeb", "query", "abc.jpg"), ("market1501", "bounding_box_test", "x_1.jpg"),
    ("vcclothes", "query", "12-ab.jpg"), ("prcc", "rgb/train/001", "D_cropped.jpg"),
])
def test_bad_file_name(name, split, bad, trees, tmp_path):
    root = _copy(trees[name], str(tmp_path / name))
    os.makedirs(os.path.join(root, split), exist_ok=True)
    open(os.path.join(root, split, bad), "wb").close()
    with pytest.raises(ValueError, match=re.escape(bad)):
        build_dataset(name, root)


def test_prcc_query_id_without_gallery(trees, tmp_path):
    root = _copy(trees["prcc"], str(tmp_path / "prcc"))
    shutil.copytree(os.path.join(root, "rgb", "test", "C", "005"), os.path.join(root, "rgb", "test", "C", "099"))
    with pytest.raises(ValueError, match="no gallery folder"):
        build_dataset("prcc", root)


def test_prcc_non_integer_identity_folder(trees, tmp_path):
    root = _copy(trees["prcc"], str(tmp_path / "prcc"))
    os.rename(os.path.join(root, "rgb", "train", "001"), os.path.join(root, "rgb", "train", "p1"))
    with pytest.raises(ValueError, match="integer id"):
        build_dataset("prcc", root)


@pytest.mark.parametrize("name,list_file,line", [
    ("deepchange", "train-set-bbox.txt", "nonsense"),
    ("msmt17", "MSMT17_V1/list_train.txt", "0000/0000_000_01.jpg"),
])
def test_bad_list_line(name, list_file, line, trees, tmp_path):
    root = _copy(trees[name], str(tmp_path / name))
    with open(os.path.join(root, list_file), "a") as f:
        f.write(line + "\n")
    with pytest.raises(ValueError, match="bad line"):
        build_dataset(name, root)
