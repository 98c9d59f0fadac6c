"""``fastccreid data check``: the labelling mistakes that waste a day of training, found before it starts.

Errors (exit 1): manifest rows with a bad column; missing, empty or non-image files (``decode=True``: every image
decoded with the training loader's decoder, each corrupt one named); a query set in which no query can count a
true match under a protocol; query and gallery sharing one camera id under a protocol that discards same-camera
matches; a clothes-changing protocol on a dataset without clothes ids. Warnings (exit 0; ``strict`` makes them
errors): identities shared by train and test, duplicate files (same bytes), query identities absent from the
gallery, images smaller than the model input, train identities with fewer than ``num_instances`` images (the
identity sampler then draws with replacement).

Fast: files are checked from their first 4 KiB (existence, size, format magic, PNG / JPEG header dimensions) and
hashed in full only when their size and first 4 KiB collide; no torch import unless ``decode`` is asked for.
``fastccreid train`` runs the errors (``errors_only``: one ``stat`` a file) before it builds the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from fastccreid.data.datasets import (
    DATASET_CHOICES,
    MANIFEST,
    ManifestError,
    build_dataset,
    default_settings,
    manifest_dataset,
    parse_image_labels,
    read_manifest,
)
from fastccreid.data.records import ImageRecord, ReIDDataset

# Protocol -> which gallery images of the query's identity are junk (dropped before ranking): market-style
# protocols drop the same camera; LTCC's clothes-changing one also the same clothes; CAL's same-clothes one the
# same camera or other clothes; PRCC's drops none.
JUNK_RULES = {"market": "camera", "ltcc-general": "camera", "celeb": "camera", "cuhk03": "camera",
              "ltcc-cc": "camera-or-clothes", "ltcc-sc": "camera-or-other-clothes", "prcc": "none"}
CLOTHES_PROTOCOLS = ("ltcc-cc", "ltcc-sc")
HEAD_BYTES = 4096
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"GIF8", b"RIFF", b"II*\x00", b"MM\x00*")
_SHOWN = 5  # items printed per finding (the JSON report lists them all)


@dataclass(frozen=True)
class Finding:
    """One problem: ``level`` "error" or "warning", a stable ``code``, a one-line ``message`` and the rows or
    files concerned (``items``: manifest ``FILE:LINE path`` or the image path, with details)."""

    level: str
    code: str
    message: str
    items: tuple[str, ...] = ()


@dataclass(frozen=True)
class SettingCount:
    """How many of a query set's queries can count a true match under a protocol (the rest are skipped)."""

    setting: str
    protocol: str
    query: str
    queries: int
    countable: int


@dataclass
class CheckReport:
    """The statistics table, the per-setting countable queries, the findings and the checks not run (``notes``)."""

    dataset: str
    source: str
    summary: str
    settings: list[SettingCount]
    findings: list[Finding]
    decoded: bool
    notes: list[str] = field(default_factory=list)
    splits: list[dict] = field(default_factory=list)  # per split: ids, images, clothes, cams (the table's numbers)

    def errors(self, strict: bool = False) -> list[Finding]:
        return [f for f in self.findings if f.level == "error" or (strict and f.level == "warning")]

    def exit_code(self, strict: bool = False) -> int:
        """1 when there is an error (or, with ``strict``, a warning), else 0."""
        return 1 if self.errors(strict) else 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["errors"] = sum(f.level == "error" for f in self.findings)
        d["warnings"] = sum(f.level == "warning" for f in self.findings)
        return d

    def format(self, shown: int = _SHOWN) -> str:
        """The text report: statistics, countable queries, then each finding with its first ``shown`` items."""
        lines = [self.summary] if self.summary else []
        for s in self.settings:
            lines.append(f"  {s.setting} ({s.protocol}, {s.query}): {s.countable} of {s.queries} queries can count "
                         f"a true match")
        for n in self.notes:
            lines.append(f"note: {n}")
        for f in self.findings:
            lines.append(f"{f.level}: [{f.code}] {f.message}")
            lines += [f"    {it}" for it in f.items[:shown]]
            if len(f.items) > shown:
                lines.append(f"    ... and {len(f.items) - shown} more")
        ne = sum(f.level == "error" for f in self.findings)
        nw = len(self.findings) - ne
        lines.append(f"{ne} error(s), {nw} warning(s)" + (" (decoded every image)" if self.decoded else ""))
        return "\n".join(lines)


@dataclass(frozen=True)
class _Entry:
    """A record of one split with where it came from (manifest ``FILE:LINE`` or the image path)."""

    split: str
    record: ImageRecord
    where: str


# ---------------------------------------------------------------------------------------------------- file scan
@dataclass
class FileInfo:
    """What the scan learnt of one file: size in bytes (-1: none), a problem (None: fine), (width, height) when
    known, and a hash of its first bytes (duplicate screening)."""

    size: int = -1
    problem: str | None = None
    dims: tuple[int, int] | None = None
    head: bytes = b""


def _png_size(head: bytes) -> tuple[int, int] | None:
    if len(head) >= 24 and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        return int(w), int(h)
    return None


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(fd: int, head: bytes) -> tuple[int, int] | None:
    """Walk the JPEG marker segments from byte 2 to the first SOF (frame header) and read its height and width;
    segments past ``head`` are read with ``os.pread`` on the file descriptor ``fd``."""
    buf, base, pos = head, 0, 2
    for _ in range(100000):
        off = pos - base
        if off < 0 or off + 9 > len(buf):  # the next marker and a frame header's fields are not in the buffer
            buf, base, off = os.pread(fd, HEAD_BYTES, pos), pos, 0
        if len(buf) < off + 2 or buf[off] != 0xFF:
            return None
        marker = buf[off + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if marker in _SOF:
            if len(buf) < off + 9:
                return None
            h, w = struct.unpack_from(">HH", buf, off + 5)
            return int(w), int(h)
        if marker in (0xD9, 0xDA) or len(buf) < off + 4:  # end of image / start of scan before any frame header
            return None
        length = struct.unpack_from(">H", buf, off + 2)[0]
        if length < 2:
            return None
        pos += 2 + length
    return None


def header_dims(fd: int, head: bytes) -> tuple[int, int] | None:
    """(width, height) of an open PNG or JPEG file (``fd``: its descriptor, ``head``: its first bytes; JPEG segments
    past them are read with ``os.pread``), without decoding; None for other formats or a header not understood."""
    if head.startswith(b"\x89PNG"):
        return _png_size(head)
    if head.startswith(b"\xff\xd8"):
        return _jpeg_size(fd, head)
    return None


def scan_file(path: str, header: bool = True) -> FileInfo:
    """Existence, size and (``header``) the format magic, the dimensions of PNG / JPEG files from their headers
    (other formats: PIL's lazy open) and the first bytes for duplicate screening. Never raises for a bad file."""
    if not header:
        try:
            st = os.stat(path)
        except OSError as e:
            return FileInfo(problem=e.strerror or "cannot stat")
        if not stat.S_ISREG(st.st_mode):
            return FileInfo(problem="not a regular file")
        return FileInfo(size=st.st_size, problem=None if st.st_size else "empty file")
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        return FileInfo(problem=e.strerror or str(e))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return FileInfo(problem="not a regular file")
        size = st.st_size
        head = os.read(fd, HEAD_BYTES)
        if not head:
            return FileInfo(size=size, problem="empty file")
        if not head.startswith(_MAGIC):
            return FileInfo(size=size, problem="not a JPEG/PNG/BMP/GIF/WebP/TIFF file", head=head)
        dims = header_dims(fd, head)
    except OSError as e:
        return FileInfo(problem=e.strerror or str(e))
    finally:
        os.close(fd)
    if dims is None:  # another format, or a header the walk did not understand: PIL reads just the header
        try:
            from PIL import Image

            with Image.open(path) as im:
                dims = im.size
        except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad header
            return FileInfo(size=size, problem=f"unreadable image header ({e})", head=head)
    return FileInfo(size=size, dims=dims, head=head)


def _decode_one(path: str) -> tuple[str | None, tuple[int, int] | None]:
    """Decode with the torch loader's decoder (``transforms.load_rgb``): (problem or None, (width, height))."""
    from fastccreid.data.transforms import BadImageError, load_rgb

    try:
        img = load_rgb(path)
        return None, img.size
    except BadImageError as e:
        return str(e).split(": ", 1)[-1].replace(" (pass --skip_bad_images to skip such files)", ""), None


def decode_files(paths: Sequence[str], num_workers: int = 0, progress: bool = False
                 ) -> list[tuple[str | None, tuple[int, int] | None]]:
    """Decode every file (``num_workers`` processes; 0: this one), in order, with a progress bar when asked."""
    from fastccreid.data.loaders import cap_workers

    workers = cap_workers(num_workers) if num_workers > 0 else 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), desc="decode", unit="img", dynamic_ncols=True, file=sys.stderr,
                   disable=None)  # a bar on a terminal only
    out: list[tuple[str | None, tuple[int, int] | None]] = []
    try:
        if workers <= 1:
            for p in paths:
                out.append(_decode_one(p))
                if bar is not None:
                    bar.update(1)
        else:
            import multiprocessing as mp

            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            with ctx.Pool(workers) as pool:
                for r in pool.imap(_decode_one, paths, chunksize=32):
                    out.append(r)
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return out


def _full_hash(path: str) -> bytes | None:
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.digest()


# ---------------------------------------------------------------------------------------------------- the checks
def countable_queries(q_pids, q_camids, q_clothes, g_pids, g_camids, g_clothes, protocol: str) -> np.ndarray:
    """bool [Q]: query i has at least one gallery image of its identity left after the protocol's junk removal,
    i.e. one that evaluation can count (queries without one are skipped). Counts per identity, per (identity,
    camera), per (identity, clothes) and per (identity, camera, clothes), so it is O(Q + G)."""
    if protocol not in JUNK_RULES:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(JUNK_RULES)}")
    rule = JUNK_RULES[protocol]
    g = Counter(int(p) for p in g_pids)
    gc = Counter(zip((int(p) for p in g_pids), (int(c) for c in g_camids), strict=True))
    gk = Counter(zip((int(p) for p in g_pids), (int(k) for k in g_clothes), strict=True))
    gck = Counter(zip((int(p) for p in g_pids), (int(c) for c in g_camids), (int(k) for k in g_clothes),
                      strict=True))
    out = np.zeros(len(q_pids), dtype=bool)
    for i, (p, c, k) in enumerate(zip(q_pids, q_camids, q_clothes, strict=True)):
        p, c, k = int(p), int(c), int(k)
        if rule == "none":
            left = g[p]
        elif rule == "camera":
            left = g[p] - gc[(p, c)]
        elif rule == "camera-or-clothes":  # same identity, another camera and other clothes: inclusion-exclusion
            left = g[p] - gc[(p, c)] - gk[(p, k)] + gck[(p, c, k)]
        else:  # same identity and clothes, another camera
            left = gk[(p, k)] - gck[(p, c, k)]
        out[i] = left > 0
    return out


def _entries(dataset: ReIDDataset, lines: dict[str, list[int]] | None) -> dict[str, list[_Entry]]:
    """Each split's entries once (PRCC's ``query`` is ``query_diff``: it is listed as the latter only)."""
    names = ["train", "val"]
    names += ["query_same", "query_diff"] if (dataset.query_same or dataset.query_diff) else ["query"]
    names.append("gallery")
    out: dict[str, list[_Entry]] = {}
    for s in names:
        recs = getattr(dataset, s)
        if not recs:
            continue
        if lines is not None and s in lines:
            where = [f"{dataset.root}:{ln} {r.path}" for ln, r in zip(lines[s], recs, strict=True)]
        else:
            where = [r.path for r in recs]
        out[s] = [_Entry(s, r, w) for r, w in zip(recs, where, strict=True)]
    return out


def protocol_settings(dataset: ReIDDataset, protocol: str | None = None) -> list[tuple[str, str, str]]:
    """The (setting, protocol, query set) to check: the dataset's own evaluation settings, or ``protocol`` on each
    of its query sets."""
    settings = default_settings(dataset)
    if protocol is None:
        return settings
    if protocol not in JUNK_RULES:
        raise ValueError(f"--protocol must be one of {', '.join(JUNK_RULES)}; got {protocol!r}")
    queries = list(dict.fromkeys(q for _, _, q in settings))
    return [(protocol if len(queries) == 1 else f"{protocol} on {q}", protocol, q) for q in queries]


def _raw_train_pids(dataset: ReIDDataset, raw: list[int] | None, notes: list[str]) -> list[int] | None:
    """The train identities as written (the dataset holds them relabelled 0..N-1), for comparing with test ids."""
    if raw is not None:
        return raw
    if dataset.name == "msmt17":
        notes.append("identities shared by train and test not checked: MSMT17 numbers train and test pids separately")
        return None
    try:
        return [r.pid for r in parse_image_labels(dataset.name, [r.path for r in dataset.train])]
    except (ValueError, FileNotFoundError) as e:
        notes.append(f"identities shared by train and test not checked: {e}")
        return None


def _file_findings(entries: list[_Entry], infos: dict[str, FileInfo], decoded: dict[str, str | None] | None,
                   skip_bad_images: bool) -> list[Finding]:
    bad = [f"{e.where}: {infos[e.record.path].problem}" for e in entries if infos[e.record.path].problem]
    out = []
    if bad:
        level = "warning" if skip_bad_images else "error"
        tail = " (--skip_bad_images: training skips them)" if skip_bad_images else ""
        out.append(Finding(level, "missing_files", f"{len(bad)} row(s) name a missing, empty or non-image "
                                                   f"file{tail}", tuple(bad)))
    if decoded is not None:
        corrupt = [f"{e.where}: {decoded[e.record.path]}" for e in entries
                   if not infos[e.record.path].problem and decoded.get(e.record.path)]
        if corrupt:
            level = "warning" if skip_bad_images else "error"
            out.append(Finding(level, "corrupt_images", f"{len(corrupt)} image(s) fail to decode", tuple(corrupt)))
    return out


def _duplicates(entries: list[_Entry], infos: dict[str, FileInfo]) -> Finding | None:
    """Rows naming one file twice, and different files with the same bytes (size + first 4 KiB, then a full
    hash only within such collisions)."""
    by_path: dict[str, list[_Entry]] = defaultdict(list)
    for e in entries:
        by_path[e.record.path].append(e)
    screen: dict[tuple[int, bytes], list[str]] = defaultdict(list)
    for p in by_path:
        info = infos[p]
        if info.problem is None and info.size > 0:
            screen[(info.size, info.head)].append(p)  # the bytes themselves: faster to key on than a digest
    groups: list[list[str]] = []
    for paths in screen.values():
        if len(paths) < 2:
            continue
        full: dict[bytes, list[str]] = defaultdict(list)
        for p in paths:
            h = _full_hash(p) if infos[p].size > len(infos[p].head) else b"head"
            if h is not None:
                full[h].append(p)
        groups += [g for g in full.values() if len(g) > 1]
    groups += [[p] for p, es in by_path.items() if len(es) > 1 and not any(p in g for g in groups)]
    if not groups:
        return None
    items = tuple(" == ".join(e.where + f" [{e.split}]" for p in g for e in by_path[p]) for g in groups)
    return Finding("warning", "duplicate_files", f"{len(groups)} group(s) of rows name files with the same bytes",
                   items)


def check_dataset(dataset: ReIDDataset, *, lines: dict[str, list[int]] | None = None,
                  raw_train_pids: list[int] | None = None, protocol: str | None = None, num_instances: int = 8,
                  height: int = 384, width: int = 192, decode: bool = False, num_workers: int = 0,
                  progress: bool = False, errors_only: bool = False, skip_bad_images: bool = False,
                  notes: list[str] | None = None) -> tuple[list[SettingCount], list[Finding]]:
    """Every check on a parsed dataset; returns (countable queries per setting, findings). ``lines``: each
    split's manifest line numbers (findings then name ``FILE:LINE``); ``raw_train_pids``: the train pids as
    written (default: read back from the file names). ``errors_only`` skips the warnings and checks files with one
    ``stat`` each (the training pre-flight); ``skip_bad_images`` turns bad files into a warning."""
    if num_instances < 1:
        raise ValueError(f"--num_instances must be >= 1, got {num_instances}")
    notes = notes if notes is not None else []
    splits = _entries(dataset, lines)
    entries = [e for es in splits.values() for e in es]
    paths = list(dict.fromkeys(e.record.path for e in entries))
    infos = {p: scan_file(p, header=not errors_only) for p in paths}
    decoded = None
    if decode and not errors_only:
        todo = [p for p in paths if infos[p].problem is None]
        results = decode_files(todo, num_workers=num_workers, progress=progress)
        decoded = {p: prob for p, (prob, _) in zip(todo, results, strict=True)}
        for p, (prob, dims) in zip(todo, results, strict=True):
            if prob is None:
                infos[p].dims = dims
    findings = _file_findings(entries, infos, decoded, skip_bad_images)

    gallery = dataset.gallery
    g_p = [r.pid for r in gallery]
    g_c = [r.camid for r in gallery]
    g_k = [r.clothes_id for r in gallery]
    counts: list[SettingCount] = []
    same_cam: dict[str, list[str]] = defaultdict(list)
    for name, proto, qset in protocol_settings(dataset, protocol):
        q = getattr(dataset, qset)
        if proto in CLOTHES_PROTOCOLS and not dataset.clothes_labelled:
            findings.append(Finding("error", "clothes_missing", f"setting {name!r}: protocol {proto} compares "
                                    f"clothes ids, but {dataset.name} has none for its test sets (clothes_id is "
                                    f"the pid); add a clothes_id column or choose another --protocol"))
            continue
        ok = countable_queries([r.pid for r in q], [r.camid for r in q], [r.clothes_id for r in q], g_p, g_c, g_k,
                               proto)
        counts.append(SettingCount(name, proto, qset, len(q), int(ok.sum())))
        if JUNK_RULES[proto] != "none" and len({r.camid for r in q} | set(g_c)) == 1:
            same_cam[qset].append(proto)
        if q and not ok.any():
            items = tuple(f"{e.where} (pid {e.record.pid}, camid {e.record.camid}, clothes_id "
                          f"{e.record.clothes_id})" for e in splits.get(qset, [])[:_SHOWN])
            findings.append(Finding("error", "no_true_match", f"setting {name!r} ({proto}, {qset}): none of "
                                    f"{len(q)} queries has a gallery image that can count as a true match (same "
                                    f"pid, not discarded by the protocol): evaluation would find nothing", items))
    for qset, protos in same_cam.items():
        cam = dataset.gallery[0].camid
        findings.append(Finding("error", "same_camera", f"{qset} and gallery all have camid {cam}, and "
                                f"{', '.join(dict.fromkeys(protos))} discard(s) same-camera matches: every true "
                                f"match is dropped; give each camera its own camid"))
    if errors_only:
        return counts, findings

    raw = _raw_train_pids(dataset, raw_train_pids, notes)
    test_pids = {r.pid for s in ("query", "query_same", "query_diff", "gallery") for r in getattr(dataset, s)}
    if raw is not None:
        shared = sorted(set(raw) & test_pids)
        if shared:
            findings.append(Finding("warning", "shared_ids", f"{len(shared)} identities are in train and in the "
                                    f"test sets (query/gallery): the test is no longer on unseen people",
                                    tuple(f"pid {p}" for p in shared)))
    dup = _duplicates(entries, infos)
    if dup is not None:
        findings.append(dup)
    gallery_pids = set(g_p)
    for qset in ("query_same", "query_diff") if (dataset.query_same or dataset.query_diff) else ("query",):
        absent = Counter(r.pid for r in getattr(dataset, qset) if r.pid not in gallery_pids)
        if absent:
            findings.append(Finding("warning", "query_absent_from_gallery", f"{len(absent)} {qset} identities "
                                    f"({sum(absent.values())} queries) have no gallery image: those queries are "
                                    f"skipped", tuple(f"pid {p}: {n} queries" for p, n in sorted(absent.items()))))
    small = [f"{e.where}: {infos[e.record.path].dims[0]}x{infos[e.record.path].dims[1]} (WxH)" for e in entries
             if infos[e.record.path].dims is not None
             and (infos[e.record.path].dims[1] < height or infos[e.record.path].dims[0] < width)]
    if small:
        findings.append(Finding("warning", "small_images", f"{len(small)} image(s) are smaller than the model input "
                                f"{width}x{height} (WxH): they are upscaled", tuple(small)))
    train_raw = raw if raw is not None else [r.pid for r in dataset.train]
    per_pid = Counter(train_raw)
    few = sorted((p, n) for p, n in per_pid.items() if n < num_instances)
    if few:
        findings.append(Finding("warning", "few_instances", f"{len(few)} train identities have fewer than "
                                f"--num_instances {num_instances} images: the sampler repeats their images",
                                tuple(f"pid {p}: {n} images" for p, n in few)))
    return counts, findings


def run_check(name: str, source: str, *, protocol: str | None = None, num_instances: int = 8, height: int = 384,
              width: int = 192, decode: bool = False, num_workers: int = 0, progress: bool = False,
              errors_only: bool = False, skip_bad_images: bool = False, raise_bad_input: bool = False
              ) -> CheckReport:
    """Parse dataset ``name`` at ``source`` (a manifest file for ``manifest``) and check it. A manifest's bad rows
    become errors (each with its line) and the rest is checked on its good rows; a dataset that cannot be parsed
    at all is one error. ``raise_bad_input``: raise the first bad row or the parse error instead."""
    if name not in DATASET_CHOICES:
        raise ValueError(f"--dataset must be one of {', '.join(DATASET_CHOICES)}; got {name!r}")
    findings: list[Finding] = []
    notes: list[str] = []
    lines = raw = None
    try:
        if name == MANIFEST:
            mr = read_manifest(source)
            if mr.problems and raise_bad_input:
                raise mr.problems[0]
            if mr.problems:
                findings.append(Finding("error", "bad_rows", f"{len(mr.problems)} manifest row(s) with a bad column "
                                        f"(left out of the checks below)", tuple(str(p) for p in mr.problems)))
            dataset, lines = manifest_dataset(mr)
            raw = [r.pid for r in mr.rows if r.split == "train"]
        else:
            dataset = build_dataset(name, source)
    except (ManifestError, ValueError, FileNotFoundError) as e:
        if raise_bad_input:
            raise
        findings.append(Finding("error", "unreadable_dataset", str(e)))
        return CheckReport(name, source, "", [], findings, decode, notes)
    counts, more = check_dataset(dataset, lines=lines, raw_train_pids=raw, protocol=protocol,
                                 num_instances=num_instances, height=height, width=width, decode=decode,
                                 num_workers=num_workers, progress=progress, errors_only=errors_only,
                                 skip_bad_images=skip_bad_images, notes=notes)
    return CheckReport(name, source, dataset.summary(), counts, findings + more, decode, notes,
                       [split_stats(s, es) for s, es in _entries(dataset, None).items()])


def split_stats(split: str, entries: Sequence[_Entry]) -> dict:
    """The statistics table's row of one split: identities, images, outfits ((pid, clothes) pairs), cameras."""
    recs = [e.record for e in entries]
    return {"split": split, "ids": len({r.pid for r in recs}), "images": len(recs),
            "clothes": len({(r.pid, r.clothes_id) for r in recs}), "cams": len({r.camid for r in recs})}


class DatasetCheckError(ValueError):
    """The training pre-flight found errors: one line with the first of them and how to see them all."""


def preflight(name: str, source: str, *, skip_bad_images: bool = False,
              warn: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> None:
    """``fastccreid train``'s check before anything is built or written: a bad manifest raises its one-line
    ManifestError; otherwise the data check's errors (missing files by ``stat``, no countable match, one camera,
    no clothes ids) raise DatasetCheckError. With ``skip_bad_images`` missing files are a warning (``warn``)."""
    report = run_check(name, source, errors_only=True, skip_bad_images=skip_bad_images, raise_bad_input=True)
    errors = report.errors()
    if errors:
        first = errors[0]
        detail = f" (e.g. {first.items[0]})" if first.items else ""
        more = f"; {len(errors) - 1} more error(s)" if len(errors) > 1 else ""
        raise DatasetCheckError(f"dataset check failed: {first.message}{detail}{more}. Nothing was trained; see "
                                f"`fastccreid data check --dataset {name} --dataset_root {source}`")
    for f in report.findings:
        if f.level == "warning":
            warn(f"warning: {f.message}" + (f" (e.g. {f.items[0]})" if f.items else ""))


def write_json(report: CheckReport, path: str) -> None:
    """The report as JSON, written atomically (a temporary file renamed over ``path``)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            json.dump(report.to_dict(), f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def run_cli(args) -> int:
    """``fastccreid data check``: print the report, write ``--json``; exit 1 on errors (``--strict``: warnings)."""
    from fastccreid.data.datasets import manifest_location

    source = (manifest_location(args.dataset_root, args.dataset_filename) if args.dataset == MANIFEST
              else (os.path.join(args.dataset_root, args.dataset_filename) if args.dataset_filename
                    else args.dataset_root))
    try:
        report = run_check(args.dataset, source, protocol=args.protocol, num_instances=args.num_instances,
                           height=args.height, width=args.width, decode=args.decode, num_workers=args.num_workers,
                           progress=args.decode and not args.no_progress)
    except ValueError as e:
        print(f"fastccreid data check: error: {e}", file=sys.stderr)
        return 2
    print(report.format())
    if args.json_out:
        write_json(report, args.json_out)
    return report.exit_code(args.strict)
