"""Dataset parsers: one small function per on-disk layout, each returning a :class:`ReIDDataset`.

Ids follow the public parsers (FIRe-CCReID for LTCC / PRCC / Celeb-reID / LaST / DeepChange, Simple-CCReID for
VC-Clothes, torchreid for Market-1501 / MSMT17), with three deliberate fixes (README "Differences from the official
code"): file lists are always sorted (the official Celeb-reID and PRCC parsers use unsorted globs), regexes run on
the file name only (LTCC's official regexes run on the whole path), and Celeb-reID cameras are unique across query
and gallery. Hidden entries (names starting with ".", as macOS's ``._*`` and ``.DS_Store``) are ignored, as the
official ``glob`` patterns ignore them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable

from fastccreid.data.records import ImageRecord, ReIDDataset

DATASET_NAMES = ("ltcc", "prcc", "celeb", "market1501", "msmt17", "deepchange", "last", "vcclothes")

# The expected on-disk form of each dataset, quoted in every parse error so a user can fix the tree.
LAYOUTS: dict[str, str] = {
    "ltcc": "ROOT/{train,query,test}/<pid>_<n>_c<cam>_<frame>.png (e.g. 001_1_c11_015.png; test = gallery)",
    "prcc": "ROOT/rgb/{train,val}/<pid>/<A|B|C>_*.jpg and ROOT/rgb/test/{A,B,C}/<pid>/*.jpg",
    "celeb": "ROOT/{train,query,gallery}/<pid>_<n>_<x>.jpg (e.g. 12_3_0.jpg)",
    "market1501": "ROOT[/Market-1501-v15.09.15]/{bounding_box_train,query,bounding_box_test}/<pid>_c<cam>s*_*.jpg",
    "msmt17": "ROOT[/MSMT17_V1|/MSMT17_V2]/{train,test|mask_train_v2,mask_test_v2}/<pid>/*.jpg "
    "with list_{train,query,gallery}.txt lines '<pid>/<pid>_<n>_<cam>_....jpg <label>'",
    "deepchange": "ROOT/{train-set,test-set-query,test-set-gallery}/P<pid>_C<cam>_<clothes>_*.jpg with "
    "ROOT/{train-set,test-set-query,test-set-gallery}-bbox.txt lines '<file name>,<tracklet id>'",
    "last": "ROOT/train/<pid>/<pid>_..._<clothes>.jpg, ROOT/test/query/<pid>_..._<clothes>.jpg, "
    "ROOT/test/gallery/<pid>/<pid>_..._<clothes>.jpg",
    "vcclothes": "ROOT/{train,query,gallery}/<pid>-<cam>-<clothes>-<n>.jpg (e.g. 0001-01-02-03.jpg)",
}


def _layout_error(name: str, path: str, problem: str) -> ValueError:
    return ValueError(f"{name}: {problem}: {path!r}. Expected layout: {LAYOUTS[name]}")


def _require_dir(name: str, path: str) -> str:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{name}: missing folder {path!r}. Expected layout: {LAYOUTS[name]}")
    return path


def _hidden(entry: str) -> bool:
    """A hidden directory entry (``.DS_Store``, macOS's ``._<name>`` resource forks, ``.ipynb_checkpoints``)."""
    return entry.startswith(".")


def _files(name: str, folder: str, ext: str) -> list[str]:
    """Sorted paths of ``*ext`` files directly in ``folder``, hidden ones (``._x.png``) left out as glob's ``*``
    leaves them; an empty split is an error."""
    _require_dir(name, folder)
    paths = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(ext) and not _hidden(f))
    if not paths:
        raise _layout_error(name, folder, f"no *{ext} images in split")
    return paths


def _subdirs(name: str, folder: str) -> list[str]:
    """Sorted sub-folder names of ``folder`` (hidden ones left out); an empty split is an error."""
    _require_dir(name, folder)
    dirs = sorted(d for d in os.listdir(folder) if not _hidden(d) and os.path.isdir(os.path.join(folder, d)))
    if not dirs:
        raise _layout_error(name, folder, "no identity folders in split")
    return dirs


def _match(name: str, pattern: re.Pattern[str], path: str) -> re.Match[str]:
    """``pattern.search`` on the file name only (never on parent folders; README "Differences from the official
    code")."""
    m = pattern.search(os.path.basename(path))
    if m is None:
        raise _layout_error(name, path, f"file name does not match {pattern.pattern!r}")
    return m


def _int(name: str, text: str, path: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _layout_error(name, path, f"expected an integer id, got {text!r}") from None


def _labels(keys: Iterable) -> dict:
    """Relabel to 0..N-1 in sorted key order. The public parsers sort explicitly, except Celeb-reID's and torchreid's
    Market-1501, which enumerate a Python set of ints: for those datasets' dense pid ranges (1..632, 0..1501) CPython
    iterates such a set in sorted order, so the labels agree."""
    return {k: i for i, k in enumerate(sorted(set(keys)))}


_LTCC_IDS = re.compile(r"(\d+)_(\d+)_c(\d+)")
_LTCC_CLOTHES = re.compile(r"(\w+)_c")


def parse_ltcc(root: str) -> ReIDDataset:
    """LTCC: ``ROOT/{train,query,test}/*.png`` named ``<pid>_<n>_c<cam>_<frame>.png``; ``test`` is the gallery.

    pid, camera from ``(\\d+)_(\\d+)_c(\\d+)``; clothes = the text before ``_c`` (``001_1``); cameras - 1. Train
    pids and clothes relabelled 0..N-1 (sorted); test pids raw, clothes relabelled over query + gallery.
    """
    name = "ltcc"
    _require_dir(name, root)
    split_files = {s: _files(name, os.path.join(root, s), ".png") for s in ("train", "query", "test")}

    def parse(path: str) -> tuple[int, int, str]:
        pid, _, cam = (int(g) for g in _match(name, _LTCC_IDS, path).groups())
        return pid, cam - 1, _match(name, _LTCC_CLOTHES, path).group(1)

    parsed = {s: [(p, *parse(p)) for p in files] for s, files in split_files.items()}
    train_pids = _labels(r[1] for r in parsed["train"])
    train_clothes = _labels(r[3] for r in parsed["train"])
    train = [ImageRecord(p, train_pids[pid], cam, train_clothes[c]) for p, pid, cam, c in parsed["train"]]
    test_clothes = _labels(r[3] for s in ("query", "test") for r in parsed[s])
    query = [ImageRecord(p, pid, cam, test_clothes[c]) for p, pid, cam, c in parsed["query"]]
    gallery = [ImageRecord(p, pid, cam, test_clothes[c]) for p, pid, cam, c in parsed["test"]]
    return ReIDDataset(name, root, train, query, gallery, len(train_pids), len(train_clothes))


_PRCC_CAMS = {"A": 0, "B": 1, "C": 2}


def _prcc_train_split(folder: str) -> tuple[list[ImageRecord], int, int]:
    """PRCC train/val: pids relabelled (sorted); clothes key ``<pid folder>`` for cameras A/B, ``<pid folder>C``
    for C, relabelled (sorted strings); camera from the file name's first letter."""
    name = "prcc"
    rows = []
    for pdir in _subdirs(name, folder):
        pid = _int(name, pdir, os.path.join(folder, pdir))
        for path in _files(name, os.path.join(folder, pdir), ".jpg"):
            cam = os.path.basename(path)[0]
            if cam not in _PRCC_CAMS:
                raise _layout_error(name, path, "file name must start with the camera letter A, B or C")
            rows.append((path, pid, _PRCC_CAMS[cam], pdir if cam in "AB" else pdir + cam))
    pids = _labels(r[1] for r in rows)
    clothes = _labels(r[3] for r in rows)
    return [ImageRecord(p, pids[pid], cam, clothes[c]) for p, pid, cam, c in rows], len(pids), len(clothes)


def parse_prcc(root: str) -> ReIDDataset:
    """PRCC: ``ROOT/rgb/{train,val}/<pid>/<cam letter>*.jpg`` and ``ROOT/rgb/test/{A,B,C}/<pid>/*.jpg``.

    Test pids stay raw; camera A=0, B=1, C=2; clothes = 2 * (pid's rank among A's pids) for A and B, + 1 for C.
    gallery = A, query_same = B (same clothes), query_diff = C (clothes changed); ``query`` is ``query_diff``.
    """
    name = "prcc"
    _require_dir(name, root)
    rgb = _require_dir(name, os.path.join(root, "rgb"))
    train, num_pids, num_clothes = _prcc_train_split(os.path.join(rgb, "train"))
    val, _, _ = _prcc_train_split(os.path.join(rgb, "val"))
    test = _require_dir(name, os.path.join(rgb, "test"))
    by_cam: dict[str, list[tuple[str, int]]] = {}
    for cam in ("A", "B", "C"):
        cam_dir = os.path.join(test, cam)
        by_cam[cam] = [
            (path, _int(name, pdir, os.path.join(cam_dir, pdir)))
            for pdir in _subdirs(name, cam_dir)
            for path in _files(name, os.path.join(cam_dir, pdir), ".jpg")
        ]
    rank = _labels(pid for _, pid in by_cam["A"])
    splits: dict[str, list[ImageRecord]] = {}
    for cam, rows in by_cam.items():
        recs = []
        for path, pid in rows:
            if pid not in rank:
                raise _layout_error(name, path, "identity has no gallery folder under rgb/test/A")
            recs.append(ImageRecord(path, pid, _PRCC_CAMS[cam], 2 * rank[pid] + (cam == "C")))
        splits[cam] = recs
    return ReIDDataset(name, root, train, splits["C"], splits["A"], num_pids, num_clothes, val=val,
                       query_same=splits["B"], query_diff=splits["C"])


_CELEB_IDS = re.compile(r"([-\d]+)_(\d)")


def parse_celeb(root: str) -> ReIDDataset:
    """Celeb-reID: ``ROOT/{train,query,gallery}/*.jpg`` named ``<pid>_<n>_<x>.jpg``; pid from ``([-\\d]+)_(\\d)``.

    Train pids relabelled (sorted). Every image is its own camera: train 0..N-1; query 0..Q-1 and gallery Q..Q+G-1
    over sorted files (a fix, README "Differences from the official code": the official counter restarts per split,
    so query i and gallery i could share a camera). No clothes labels exist: clothes_id = pid (as FIRe's LaST parser
    does for unlabelled splits).
    """
    name = "celeb"
    _require_dir(name, root)
    rows = {}
    for split in ("train", "query", "gallery"):
        paths = _files(name, os.path.join(root, split), ".jpg")
        rows[split] = [(p, _int(name, _match(name, _CELEB_IDS, p).group(1), p)) for p in paths]
    pids = _labels(pid for _, pid in rows["train"])
    train = [ImageRecord(p, pids[pid], i, pids[pid]) for i, (p, pid) in enumerate(rows["train"])]
    nq = len(rows["query"])
    query = [ImageRecord(p, pid, i, pid) for i, (p, pid) in enumerate(rows["query"])]
    gallery = [ImageRecord(p, pid, nq + i, pid) for i, (p, pid) in enumerate(rows["gallery"])]
    return ReIDDataset(name, root, train, query, gallery, len(pids), len(pids))


_MARKET_IDS = re.compile(r"([-\d]+)_c(\d)")


def parse_market1501(root: str) -> ReIDDataset:
    """Market-1501 (torchreid): ``ROOT[/Market-1501-v15.09.15]/{bounding_box_train,query,bounding_box_test}/*.jpg``
    named ``<pid>_c<cam>s<seq>_<frame>_<n>.jpg``. pid -1 (junk) dropped, 0 (distractor) kept; cameras - 1; train pids
    relabelled (sorted); no clothes labels: clothes_id = pid."""
    name = "market1501"
    _require_dir(name, root)
    inner = os.path.join(root, "Market-1501-v15.09.15")
    base = inner if os.path.isdir(inner) else root

    def parse(folder: str) -> list[tuple[str, int, int]]:
        rows = []
        for p in _files(name, os.path.join(base, folder), ".jpg"):
            pid, cam = (int(g) for g in _match(name, _MARKET_IDS, p).groups())
            if pid != -1:
                rows.append((p, pid, cam - 1))
        if not rows:
            raise _layout_error(name, os.path.join(base, folder), "only junk (pid -1) images in split")
        return rows

    rows = {s: parse(s) for s in ("bounding_box_train", "query", "bounding_box_test")}
    pids = _labels(r[1] for r in rows["bounding_box_train"])
    train = [ImageRecord(p, pids[pid], cam, pids[pid]) for p, pid, cam in rows["bounding_box_train"]]
    query = [ImageRecord(p, pid, cam, pid) for p, pid, cam in rows["query"]]
    gallery = [ImageRecord(p, pid, cam, pid) for p, pid, cam in rows["bounding_box_test"]]
    return ReIDDataset(name, root, train, query, gallery, len(pids), len(pids))


def _read_list(name: str, list_path: str) -> list[str]:
    if not os.path.isfile(list_path):
        raise FileNotFoundError(f"{name}: missing list file {list_path!r}. Expected layout: {LAYOUTS[name]}")
    with open(list_path) as f:
        lines = [ln.strip() for ln in f if ln.strip()]
    if not lines:
        raise _layout_error(name, list_path, "empty list file")
    return lines


def parse_msmt17(root: str) -> ReIDDataset:
    """MSMT17 (torchreid): ``ROOT/MSMT17_V1/{train,test}`` or ``ROOT/MSMT17_V2/{mask_train_v2,mask_test_v2}`` (or
    ROOT itself being that version folder) with ``list_{train,query,gallery}.txt`` lines ``<rel path> <pid>``. pids
    as listed (train lists are already 0..N-1); camera = 3rd ``_`` field of the path - 1; clothes_id = pid."""
    name = "msmt17"
    _require_dir(name, root)
    versions = (("MSMT17_V1", ("train", "test")), ("MSMT17_V2", ("mask_train_v2", "mask_test_v2")))
    # ROOT may hold the version folder (torchreid's form) or be the version folder itself.
    found = [(cand, dirs) for version, dirs in versions for cand in (os.path.join(root, version), root)
             if all(os.path.isdir(os.path.join(cand, d)) for d in dirs)]
    if not found:
        raise FileNotFoundError(f"{name}: no MSMT17_V1/MSMT17_V2 train/test folders under {root!r}. "
                                f"Expected layout: {LAYOUTS[name]}")
    base, dirs = found[0]

    def parse(folder: str, list_name: str) -> list[ImageRecord]:
        recs = []
        list_path = os.path.join(base, list_name)
        for line in _read_list(name, list_path):
            parts = line.split(" ")
            fields = parts[0].split("_")
            if len(parts) != 2 or len(fields) < 3:
                raise _layout_error(name, list_path, f"bad line {line!r}")
            pid = _int(name, parts[1], list_path)
            cam = _int(name, fields[2], list_path) - 1
            recs.append(ImageRecord(os.path.join(base, folder, parts[0]), pid, cam, pid))
        return recs

    train = parse(dirs[0], "list_train.txt")
    query = parse(dirs[1], "list_query.txt")
    gallery = parse(dirs[1], "list_gallery.txt")
    num_pids = len({r.pid for r in train})
    return ReIDDataset(name, root, train, query, gallery, num_pids, num_pids)


def parse_deepchange(root: str) -> ReIDDataset:
    """DeepChange (FIRe): ``ROOT/{train-set,test-set-query,test-set-gallery}/`` images listed in
    ``ROOT/<split>-bbox.txt`` as ``<file name>,<tracklet id>``; name fields ``P<pid>_C<cam>_<clothes>_...``.
    Train pids relabelled; clothes key = ``P<pid><clothes>`` relabelled per part (train; test query + gallery);
    camid = tracklet id (the paper lets same-camera, other-tracklet images count as matches). The val split
    (``val-set-*``) is not loaded."""
    name = "deepchange"
    _require_dir(name, root)

    def read(split: str) -> list[tuple[str, int, str, int]]:
        folder = _require_dir(name, os.path.join(root, split))
        list_path = os.path.join(root, f"{split}-bbox.txt")
        rows = []
        for line in _read_list(name, list_path):
            file_name, _, tracklet = line.partition(",")
            fields = file_name.split(".")[0].split("_")
            if len(fields) < 3 or not fields[0][:1] == "P" or not tracklet:
                raise _layout_error(name, list_path, f"bad line {line!r}")
            pid = _int(name, fields[0][1:], list_path)
            rows.append((os.path.join(folder, file_name), pid, fields[0] + fields[2],
                         _int(name, tracklet, list_path)))
        return rows

    train_rows = read("train-set")
    query_rows, gallery_rows = read("test-set-query"), read("test-set-gallery")
    pids = _labels(r[1] for r in train_rows)
    clothes = _labels(r[2] for r in train_rows)
    train = [ImageRecord(p, pids[pid], t, clothes[c]) for p, pid, c, t in train_rows]
    test_clothes = _labels(r[2] for r in query_rows + gallery_rows)
    query = [ImageRecord(p, pid, t, test_clothes[c]) for p, pid, c, t in query_rows]
    gallery = [ImageRecord(p, pid, t, test_clothes[c]) for p, pid, c, t in gallery_rows]
    return ReIDDataset(name, root, train, query, gallery, len(pids), len(clothes))


def parse_last(root: str) -> ReIDDataset:
    """LaST (FIRe): ``ROOT/train/<pid>/*.jpg``, ``ROOT/test/query/*.jpg``, ``ROOT/test/gallery/<pid>/*.jpg``; name
    fields split by ``_``: pid = first, clothes key = ``<first>_<last>``. Train pids and clothes relabelled (sorted);
    test pids raw, clothes_id = pid (no test clothes labels); camid = index, query 0..Q-1 then gallery Q..Q+G-1.
    The val split (``val/{query,gallery}``) is not loaded."""
    name = "last"
    _require_dir(name, root)

    def parse(path: str) -> tuple[int, str]:
        fields = os.path.basename(path).split(".")[0].split("_")
        return _int(name, fields[0], path), fields[0] + "_" + fields[-1]

    def nested(folder: str) -> list[str]:
        return [p for d in _subdirs(name, folder) for p in _files(name, os.path.join(folder, d), ".jpg")]

    train_rows = [(p, *parse(p)) for p in nested(os.path.join(root, "train"))]
    query_paths = _files(name, os.path.join(root, "test", "query"), ".jpg")
    gallery_paths = nested(os.path.join(root, "test", "gallery"))
    pids = _labels(r[1] for r in train_rows)
    clothes = _labels(r[2] for r in train_rows)
    train = [ImageRecord(p, pids[pid], i, clothes[c]) for i, (p, pid, c) in enumerate(train_rows)]
    nq = len(query_paths)
    query = [ImageRecord(p, parse(p)[0], i, parse(p)[0]) for i, p in enumerate(query_paths)]
    gallery = [ImageRecord(p, parse(p)[0], nq + i, parse(p)[0]) for i, p in enumerate(gallery_paths)]
    return ReIDDataset(name, root, train, query, gallery, len(pids), len(clothes))


_VC_IDS = re.compile(r"(\d+)-(\d+)-(\d+)-(\d+)")


def parse_vcclothes(root: str) -> ReIDDataset:
    """VC-Clothes (Simple-CCReID, all cameras): ``ROOT/{train,query,gallery}/<pid>-<cam>-<clothes>-<n>.jpg``.
    Clothes key = pid text + clothes text; cameras - 1; train pids and clothes relabelled (sorted); test pids raw,
    clothes relabelled over query + gallery."""
    name = "vcclothes"
    _require_dir(name, root)

    def parse(split: str) -> list[tuple[str, int, int, str]]:
        rows = []
        for p in _files(name, os.path.join(root, split), ".jpg"):
            pid, cam, cl, _ = _match(name, _VC_IDS, p).groups()
            rows.append((p, int(pid), int(cam) - 1, pid + cl))
        return rows

    rows = {s: parse(s) for s in ("train", "query", "gallery")}
    pids = _labels(r[1] for r in rows["train"])
    clothes = _labels(r[3] for r in rows["train"])
    train = [ImageRecord(p, pids[pid], cam, clothes[c]) for p, pid, cam, c in rows["train"]]
    test_clothes = _labels(r[3] for s in ("query", "gallery") for r in rows[s])
    query = [ImageRecord(p, pid, cam, test_clothes[c]) for p, pid, cam, c in rows["query"]]
    gallery = [ImageRecord(p, pid, cam, test_clothes[c]) for p, pid, cam, c in rows["gallery"]]
    return ReIDDataset(name, root, train, query, gallery, len(pids), len(clothes))


_PARSERS: dict[str, Callable[[str], ReIDDataset]] = {
    "ltcc": parse_ltcc,
    "prcc": parse_prcc,
    "celeb": parse_celeb,
    "market1501": parse_market1501,
    "msmt17": parse_msmt17,
    "deepchange": parse_deepchange,
    "last": parse_last,
    "vcclothes": parse_vcclothes,
}


def build_dataset(name: str, root: str | os.PathLike[str]) -> ReIDDataset:
    """Parse the dataset ``name`` stored in ``root`` (its own folder, i.e. dataset_root/dataset_filename)."""
    if name not in _PARSERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    return _PARSERS[name](os.fspath(root))


def _stable_id(text: str) -> int:
    """A 62-bit id of ``text`` that every process and run agrees on (blake2b, not Python's salted ``hash``)."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 2


def _deepchange_tracklets(folder: str) -> dict[str, int]:
    list_path = folder.rstrip(os.sep) + "-bbox.txt"
    if not os.path.isfile(list_path):
        raise FileNotFoundError(f"deepchange: missing list file {list_path!r} (camids are its tracklet ids). "
                                f"Expected layout: {LAYOUTS['deepchange']}")
    rows = (line.partition(",") for line in _read_list("deepchange", list_path))
    return {f: _int("deepchange", t, list_path) for f, _, t in rows}


def parse_image_labels(name: str, paths: Iterable[str]) -> list[ImageRecord]:
    """Test-split labels of single image files of dataset ``name``, read from their names as its parser reads them
    (``fastccreid extract --layout``): pids raw, camids as the parser's (DeepChange: the tracklet id from the
    ``<folder>-bbox.txt`` beside the image's folder). Clothes ids are equal exactly when the parser's clothes keys
    are, and never depend on which other files are parsed with them, so a query folder and a gallery folder
    parsed separately agree: a stable 62-bit id of the key where the parser relabels a string key (LTCC,
    VC-Clothes, DeepChange), ``2 * pid + (camera C)`` for PRCC, the pid where the parser uses it. Where the
    parser gives every image its own camera (Celeb-reID, LaST), the camid is a stable id of the absolute path."""
    if name not in _PARSERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    tracklets: dict[str, dict[str, int]] = {}
    out = []
    for path in paths:
        base = os.path.basename(path)
        if name == "ltcc":
            pid, _, cam = (int(g) for g in _match(name, _LTCC_IDS, path).groups())
            rec = (pid, cam - 1, _stable_id(_match(name, _LTCC_CLOTHES, path).group(1)))
        elif name == "vcclothes":
            pid_s, cam_s, cl_s, _ = _match(name, _VC_IDS, path).groups()
            rec = (int(pid_s), int(cam_s) - 1, _stable_id(pid_s + cl_s))
        elif name == "market1501":
            pid, cam = (int(g) for g in _match(name, _MARKET_IDS, path).groups())
            rec = (pid, cam - 1, pid)
        elif name == "msmt17":
            fields = base.split("_")
            if len(fields) < 3:
                raise _layout_error(name, path, "file name is not <pid>_<n>_<cam>_...")
            pid = _int(name, fields[0], path)
            rec = (pid, _int(name, fields[2], path) - 1, pid)
        elif name in ("celeb", "last"):
            pid = _int(name, (_match(name, _CELEB_IDS, path).group(1) if name == "celeb"
                              else base.split(".")[0].split("_")[0]), path)
            rec = (pid, _stable_id(os.path.abspath(path)), pid)
        elif name == "prcc":
            parent = os.path.dirname(os.path.abspath(path))
            letter = os.path.basename(os.path.dirname(parent))
            letter = letter if letter in _PRCC_CAMS else base[:1]
            if letter not in _PRCC_CAMS:
                raise _layout_error(name, path, "camera letter A, B or C not found (folder rgb/test/<cam>/<pid>/ or "
                                                "a file name starting with it)")
            pid = _int(name, os.path.basename(parent), path)
            rec = (pid, _PRCC_CAMS[letter], 2 * pid + (letter == "C"))
        else:  # deepchange
            fields = base.split(".")[0].split("_")
            if len(fields) < 3 or fields[0][:1] != "P":
                raise _layout_error(name, path, "file name is not P<pid>_C<cam>_<clothes>_...")
            folder = os.path.dirname(os.path.abspath(path))
            if folder not in tracklets:
                tracklets[folder] = _deepchange_tracklets(folder)
            if base not in tracklets[folder]:
                raise _layout_error(name, path, f"not listed in {folder}-bbox.txt")
            rec = (_int(name, fields[0][1:], path), tracklets[folder][base], _stable_id(fields[0] + fields[2]))
        out.append(ImageRecord(path, *rec))
    return out
