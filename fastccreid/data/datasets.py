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
from dataclasses import dataclass

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
    return ReIDDataset(name, root, train, query, gallery, len(pids), len(pids), clothes_labelled=False)


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
    return ReIDDataset(name, root, train, query, gallery, len(pids), len(pids), clothes_labelled=False)


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
    return ReIDDataset(name, root, train, query, gallery, num_pids, num_pids, clothes_labelled=False)


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
    return ReIDDataset(name, root, train, query, gallery, len(pids), len(clothes), clothes_labelled=False)


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


MANIFEST = "manifest"
# Every name ``build_dataset`` takes: the public layouts and the bring-your-own-data manifest.
DATASET_CHOICES = (*DATASET_NAMES, MANIFEST)
MANIFEST_REQUIRED = ("path", "pid", "camid", "split")
MANIFEST_COLUMNS = (*MANIFEST_REQUIRED, "clothes_id")
MANIFEST_SPLITS = ("train", "query", "gallery", "query_same", "query_diff")
LAYOUTS[MANIFEST] = ("a CSV file whose header names path,pid,camid,split[,clothes_id] (or JSON Lines, one object "
                     "with those keys a line); split in " + ", ".join(MANIFEST_SPLITS) + "; integer ids; relative "
                     "paths resolve against the manifest's folder")


class ManifestError(ValueError):
    """A manifest that cannot be read: the message is one line ``FILE:LINE: problem`` (``FILE: problem`` where no
    single line is at fault, e.g. a split with no rows)."""

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        self.path, self.line, self.problem = path, line, problem
        super().__init__(f"{path}:{line}: {problem}" if line is not None else f"{path}: {problem}")


@dataclass(frozen=True)
class ManifestRow:
    """One manifest row as written: its line number (1-based, the CSV header is line 1), the path as resolved
    against the manifest's folder, the raw ids and the split. ``clothes_id`` is None when the manifest has no
    clothes column."""

    line: int
    path: str
    pid: int
    camid: int
    split: str
    clothes_id: int | None


@dataclass
class ManifestRows:
    """A manifest read row by row: the good rows, one ``ManifestError`` per bad row (``problems``), and whether a
    clothes column exists."""

    path: str
    rows: list[ManifestRow]
    problems: list[ManifestError]
    has_clothes: bool


def _manifest_int(text: object) -> int | None:
    """An integer cell: a JSON int or decimal text (sign allowed, surrounding blanks ignored); None otherwise."""
    if type(text) is int:
        return text
    if isinstance(text, str) and "_" not in text:  # int() alone would take '1_000'
        try:
            return int(text)
        except ValueError:
            return None
    return None


def _check_columns(path: str, line: int, names: list[str]) -> None:
    """The header (CSV) or one object's keys (JSONL): every required column, nothing unknown, nothing twice."""
    for col in names:
        if col not in MANIFEST_COLUMNS:
            raise ManifestError(path, line, f"unknown column {col!r}; columns are {', '.join(MANIFEST_REQUIRED)} and "
                                            f"optionally clothes_id")
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise ManifestError(path, line, f"column {dup[0]!r} given twice")
    missing = [c for c in MANIFEST_REQUIRED if c not in names]
    if missing:
        raise ManifestError(path, line, f"missing column {missing[0]!r}; the header must name "
                                        f"{', '.join(MANIFEST_REQUIRED)} (and optionally clothes_id)")


def _manifest_records(path: str) -> Iterable[tuple[int, dict[str, object] | None, str | None]]:
    """(line, {column: value} or None, problem or None) for each non-blank row of a CSV or JSON Lines manifest
    (JSON Lines when the first non-blank character is ``{``). File-level problems raise ManifestError."""
    import csv
    import json

    if not os.path.isfile(path):
        raise FileNotFoundError(f"manifest: no such file {path!r}. Expected: {LAYOUTS[MANIFEST]}")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ManifestError(path, _decode_error_line(e), "not UTF-8 text") from None
    first = text.lstrip()[:1]
    if not first:
        raise ManifestError(path, None, f"empty manifest. Expected: {LAYOUTS[MANIFEST]}")
    if first == "{":
        columns: list[str] | None = None
        for i, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                yield i, None, f"not a JSON object ({e.msg})"
                continue
            if not isinstance(obj, dict):
                yield i, None, f"not a JSON object (a {type(obj).__name__})"
                continue
            if columns is None:  # the first object fixes the columns, as a CSV header does
                columns = list(obj)
                _check_columns(path, i, columns)
            missing = [c for c in columns if c not in obj]
            extra = [c for c in obj if c not in columns]
            if missing or extra:
                yield i, None, (f"missing key {missing[0]!r}" if missing else f"key {extra[0]!r} not in the first "
                                f"row's keys ({', '.join(columns)})")
                continue
            yield i, obj, None
        return
    reader = csv.reader(text.splitlines(keepends=True))
    header: list[str] = []
    while not any(h.strip() for h in header):  # blank lines before the header
        header = [h.strip() for h in next(reader)]
    _check_columns(path, reader.line_num, header)
    for fields in reader:
        line = reader.line_num
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            yield line, None, f"{len(fields)} fields, the header has {len(header)} ({','.join(header)})"
            continue
        yield line, dict(zip(header, fields, strict=True)), None


def _decode_error_line(e: UnicodeDecodeError) -> int:
    """The 1-based line of a UTF-8 decode error."""
    return e.object[: e.start].count(b"\n") + 1


def read_manifest(path: str | os.PathLike[str]) -> ManifestRows:
    """Read a manifest row by row, collecting one error per bad row (bad or missing value, unknown split, a path
    whose folder does not exist) instead of stopping at the first, so ``fastccreid data check`` can list them all.
    Problems with the file as a whole (no such file, empty, a missing or unknown column) raise ManifestError."""
    path = os.fspath(path)
    base = os.path.dirname(path)
    rows: list[ManifestRow] = []
    problems: list[ManifestError] = []
    folders: dict[str, bool] = {}
    has_clothes = False
    splits = frozenset(MANIFEST_SPLITS)
    for line, rec, problem in _manifest_records(path):
        if rec is None:
            problems.append(ManifestError(path, line, problem or "bad row"))
            continue
        has_clothes = "clothes_id" in rec
        pid, camid = _manifest_int(rec["pid"]), _manifest_int(rec["camid"])
        clothes = _manifest_int(rec["clothes_id"]) if has_clothes else 0
        split, rel = rec["split"], rec["path"]
        split = split.strip() if isinstance(split, str) else split
        rel = rel.strip() if isinstance(rel, str) else rel
        col = next((c for c, v in (("pid", pid), ("camid", camid), ("clothes_id", clothes)) if v is None), None)
        if col is not None:
            problems.append(ManifestError(path, line, f"{col} must be an integer, got {rec[col]!r}"))
            continue
        if split not in splits:
            problems.append(ManifestError(path, line, f"split must be one of {', '.join(MANIFEST_SPLITS)}, got "
                                                      f"{rec['split']!r}"))
            continue
        if not isinstance(rel, str) or not rel:
            problems.append(ManifestError(path, line, f"path must be a non-empty file path, got {rec['path']!r}"))
            continue
        full = os.path.join(base, rel)
        parent = os.path.dirname(full)
        ok = folders.get(parent)
        if ok is None:  # one isdir per folder, not per row
            ok = folders[parent] = os.path.isdir(parent or ".")
        if not ok:
            problems.append(ManifestError(path, line, f"path {rel!r} is outside any existing folder "
                                                      f"({os.path.abspath(parent)!r} does not exist; relative paths "
                                                      f"resolve against the manifest's folder)"))
            continue
        rows.append(ManifestRow(line, full, pid, camid, split, clothes if has_clothes else None))
    return ManifestRows(path, rows, problems, has_clothes)


def manifest_dataset(mr: ManifestRows) -> tuple[ReIDDataset, dict[str, list[int]]]:
    """The dataset of a manifest's good rows, and each split's manifest line numbers (in the records' order; PRCC-
    style sets: ``query`` is ``query_diff``). Train pids and outfits ((pid, clothes_id) pairs) are relabelled 0..N-1
    in sorted order (the classifier's labels); query and gallery ids stay as written. Without a clothes column,
    clothes_id = pid (as the public parsers do for unlabelled sets) and ``clothes_labelled`` is False. A split
    without rows raises ManifestError: train and gallery are needed, and query, or both query_same and query_diff."""
    by_split: dict[str, list[ManifestRow]] = {s: [] for s in MANIFEST_SPLITS}
    for r in mr.rows:
        by_split[r.split].append(r)
    prcc_style = bool(by_split["query_same"] or by_split["query_diff"])
    if prcc_style and by_split["query"]:
        first = by_split["query"][0].line
        raise ManifestError(mr.path, first, "split 'query' mixed with query_same/query_diff: use either query, or "
                                            "query_same and query_diff (PRCC-style)")
    needed = ("train", "gallery", "query_same", "query_diff") if prcc_style else ("train", "query", "gallery")
    for s in needed:
        if not by_split[s]:
            raise ManifestError(mr.path, None, f"empty split {s!r}: no good rows with split {s!r} (a manifest needs "
                                               f"train, query and gallery rows, or train, gallery, query_same and "
                                               f"query_diff rows)")

    def clothes(r: ManifestRow) -> int:
        return r.pid if r.clothes_id is None else r.clothes_id

    pids = _labels(r.pid for r in by_split["train"])
    # An outfit is (pid, clothes_id): clothes ids need only differ within a person (0, 1, 2 per person is fine).
    train_clothes = _labels((r.pid, clothes(r)) for r in by_split["train"])
    train = [ImageRecord(r.path, pids[r.pid], r.camid, train_clothes[(r.pid, clothes(r))]) for r in by_split["train"]]
    test = {s: [ImageRecord(r.path, r.pid, r.camid, clothes(r)) for r in by_split[s]]
            for s in ("query", "gallery", "query_same", "query_diff")}
    query_key = "query_diff" if prcc_style else "query"
    ds = ReIDDataset(MANIFEST, mr.path, train, test[query_key], test["gallery"], len(pids), len(train_clothes),
                     query_same=test["query_same"], query_diff=test["query_diff"], clothes_labelled=mr.has_clothes)
    lines = {s: [r.line for r in by_split[s]] for s in MANIFEST_SPLITS}
    lines["query"] = lines[query_key]
    return ds, lines


def parse_manifest(path: str) -> ReIDDataset:
    """A manifest (README "Your own data"): CSV with header ``path,pid,camid,split[,clothes_id]`` or the same as
    JSON Lines. Raises ManifestError (one line: file, line, problem) at the first bad row or empty split."""
    mr = read_manifest(path)
    if mr.problems:
        raise mr.problems[0]
    return manifest_dataset(mr)[0]


def manifest_splits(path: str | os.PathLike[str], split: str | None = None) -> dict[str, list[ImageRecord]]:
    """A manifest's rows by split as records with the ids as written (nothing relabelled, train included;
    clothes_id = pid without a clothes column, as ``manifest_dataset`` does for its test sets), in manifest order:
    ``fastccreid extract --layout manifest``. ``split``: only that split (None: every split with rows). Raises the
    first bad row's ManifestError, or one naming the file when the split asked for (or the whole file) has no
    rows; unlike ``parse_manifest``, train rows are not required (a test-only manifest extracts)."""
    mr = read_manifest(path)
    if mr.problems:
        raise mr.problems[0]
    if split is not None and split not in MANIFEST_SPLITS:
        raise ValueError(f"--split must be one of {', '.join(MANIFEST_SPLITS)} or all; got {split!r}")
    out: dict[str, list[ImageRecord]] = {}
    for r in mr.rows:
        if split is None or r.split == split:
            out.setdefault(r.split, []).append(ImageRecord(r.path, r.pid, r.camid,
                                                           r.pid if r.clothes_id is None else r.clothes_id))
    if not out:
        what = f"split {split!r}: no rows with split {split!r}" if split is not None else "no rows"
        raise ManifestError(mr.path, None, f"empty {what} (splits with rows: "
                                           f"{', '.join(sorted({r.split for r in mr.rows})) or 'none'})")
    return {s: out[s] for s in MANIFEST_SPLITS if s in out}


def manifest_location(root: str, filename: str) -> str:
    """The manifest named by ``--dataset_root`` (a file) or by ``--dataset_root DIR --dataset_filename NAME``."""
    if filename and os.path.isdir(root):
        return os.path.join(root, filename)
    return root


def default_settings(dataset: ReIDDataset) -> list[tuple[str, str, str]]:
    """(setting name, protocol, query set) of each evaluation the seed reports for ``dataset``, the first being the
    one 'best' checkpoints are picked by: PRCC-style sets same-clothes and clothes-changing (whole gallery), LTCC /
    VC-Clothes and clothes-labelled manifests general and clothes-changing, Celeb-reID its own, the rest market."""
    name = dataset.name.lower()
    if dataset.query_same or dataset.query_diff or name == "prcc":
        return [("same-clothes", "prcc", "query_same"), ("clothes-changing", "prcc", "query_diff")]
    if name in ("ltcc", "vcclothes") or (name == MANIFEST and dataset.clothes_labelled):
        return [("general", "ltcc-general", "query"), ("clothes-changing", "ltcc-cc", "query")]
    if name == "celeb":
        return [("market", "celeb", "query")]
    return [("market", "market", "query")]


_PARSERS: dict[str, Callable[[str], ReIDDataset]] = {
    "ltcc": parse_ltcc,
    "prcc": parse_prcc,
    "celeb": parse_celeb,
    "market1501": parse_market1501,
    "msmt17": parse_msmt17,
    "deepchange": parse_deepchange,
    "last": parse_last,
    "vcclothes": parse_vcclothes,
    MANIFEST: parse_manifest,
}


def build_dataset(name: str, root: str | os.PathLike[str]) -> ReIDDataset:
    """Parse the dataset ``name`` stored in ``root`` (its own folder, i.e. dataset_root/dataset_filename; for
    ``manifest`` the manifest file)."""
    if name not in _PARSERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_CHOICES)}")
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
