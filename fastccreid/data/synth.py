"""Synthetic cloth-changing ReID data written in a real dataset's on-disk layout.

People are drawn procedurally with numpy: identity cues (height, build, head size, skin and hair colour, hair
style, coloured glasses and a bag of a personal colour on a personal side) persist across outfits; outfits change
top / bottom colours, textures (stripes, checks), sleeves and shoes; cameras change background, lighting and
colour cast; each image adds pose jitter and noise. Everything is a pure function of (seed, pid, outfit, cam,
image index), so a seed always gives the same files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from fastccreid.data.datasets import DATASET_NAMES, MANIFEST, build_dataset

# Every layout synth writes: the public datasets' and a manifest (images/<split>/<pid>/..., manifest.csv/.jsonl).
SYNTH_LAYOUTS = (*DATASET_NAMES, MANIFEST)
MANIFEST_CSV, MANIFEST_JSONL = "manifest.csv", "manifest.jsonl"
# Layouts whose datasets are about clothes changes: they need >= 2 outfits so clothes-changing queries exist.
_CC_LAYOUTS = ("ltcc", "prcc", "celeb", "deepchange", "last", "vcclothes", MANIFEST)
_HAIR = np.array([[20, 18, 18], [70, 45, 25], [120, 80, 40], [210, 180, 110], [160, 60, 30], [150, 150, 150],
                  [235, 235, 225], [40, 70, 200], [200, 60, 150], [60, 160, 80]], dtype=np.float32)


@dataclass(frozen=True, eq=False)
class Identity:
    """What stays with a person across outfits."""

    height: float  # fraction of the image height from head top to feet
    build: float  # shoulder width, fraction of the image width
    head: float  # head radius, fraction of the person's height
    skin: np.ndarray  # [3] RGB
    hair: np.ndarray  # [3] RGB
    long_hair: bool
    glasses: np.ndarray  # [3] RGB of the face mark
    bag: np.ndarray  # [3] RGB
    bag_side: int  # -1 left, +1 right
    bag_size: float  # fraction of the shoulder width


@dataclass(frozen=True, eq=False)
class Outfit:
    """What changes with clothes."""

    top: np.ndarray
    top2: np.ndarray  # texture's second colour
    texture: int  # 0 solid, 1 horizontal stripes, 2 vertical stripes, 3 checks
    period: float  # texture period in pixels at 128 rows
    bottom: np.ndarray
    shoes: np.ndarray
    long_sleeves: bool
    shorts: bool


@dataclass(frozen=True, eq=False)
class Camera:
    """What changes with the camera: a background image and the lighting."""

    background: np.ndarray  # [H, W, 3] float32
    gain: np.ndarray  # [3] per-channel multiplicative light (brightness x colour cast)


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def make_identity(seed: int, pid: int) -> Identity:
    """The person ``pid`` for ``seed`` (independent of how many identities are drawn)."""
    r = _rng(seed, 1, pid)
    t = r.uniform()
    skin = (1 - t) * np.array([250, 220, 190]) + t * np.array([95, 60, 40]) + r.normal(0, 8, 3)
    return Identity(
        height=float(r.uniform(0.72, 0.92)),
        build=float(r.uniform(0.32, 0.52)),
        head=float(r.uniform(0.085, 0.115)),
        skin=np.clip(skin, 0, 255).astype(np.float32),
        hair=np.clip(_HAIR[r.integers(len(_HAIR))] + r.normal(0, 12, 3), 0, 255).astype(np.float32),
        long_hair=bool(r.uniform() < 0.4),
        glasses=r.uniform(0, 255, 3).astype(np.float32),
        bag=r.uniform(0, 255, 3).astype(np.float32),
        bag_side=int(r.choice([-1, 1])),
        bag_size=float(r.uniform(0.35, 0.6)),
    )


def make_outfit(seed: int, pid: int, outfit: int) -> Outfit:
    """Outfit number ``outfit`` of person ``pid``: colours and textures drawn independently of the identity."""
    r = _rng(seed, 2, pid, outfit)
    return Outfit(
        top=r.uniform(0, 255, 3).astype(np.float32),
        top2=r.uniform(0, 255, 3).astype(np.float32),
        texture=int(r.integers(4)),
        period=float(r.uniform(6, 14)),
        bottom=r.uniform(0, 255, 3).astype(np.float32),
        shoes=r.uniform(0, 200, 3).astype(np.float32),
        long_sleeves=bool(r.uniform() < 0.6),
        shorts=bool(r.uniform() < 0.25),
    )


def make_camera(seed: int, cam: int, size: tuple[int, int]) -> Camera:
    """Camera ``cam``: a wall / floor background with a few props at ``size`` (H, W), and its light."""
    r = _rng(seed, 3, cam)
    h, w = size
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    wall, floor = r.uniform(40, 220, 3), r.uniform(30, 180, 3)
    horizon = r.uniform(0.6, 0.8)
    # Wall with a vertical gradient above the horizon, a darker floor below it.
    bg = np.where(yy < horizon, wall * (0.85 + 0.3 * yy), floor * (1.1 - 0.3 * yy)).astype(np.float32)
    bg = np.broadcast_to(bg, (h, w, 3)).copy()
    for _ in range(int(r.integers(1, 4))):  # scene props: a few coloured boxes
        y0, x0 = int(r.uniform(0, 0.7) * h), int(r.uniform(0, 0.9) * w)
        bg[y0:y0 + int(r.uniform(0.1, 0.3) * h), x0:x0 + int(r.uniform(0.1, 0.3) * w)] = r.uniform(0, 255, 3)
    gain = r.uniform(0.85, 1.12) * r.uniform(0.94, 1.06, 3)
    return Camera(bg, gain.astype(np.float32))


# Part indices of the label map ``render`` paints; their colours come from the identity or the outfit.
P_BOTTOM, P_SKIN, P_SHOES, P_TOP, P_TOP2, P_BAG, P_HAIR, P_GLASSES = range(8)


def render(ident: Identity, outfit: Outfit, cam: Camera, rng: np.random.Generator) -> np.ndarray:
    """One [H, W, 3] uint8 image of ``ident`` wearing ``outfit`` seen by ``cam``; ``rng`` gives pose and noise.

    Speed: shapes are painted as part indices into an int8 [H, W] map, mostly through rectangular slices (masks only
    inside small bounding boxes), then coloured with a single palette gather: ~0.6 ms at 128x64 on one core."""
    h, w = cam.background.shape[:2]
    lab = np.full((h, w), -1, dtype=np.int8)  # -1: background
    scale = rng.uniform(0.96, 1.04)
    ph = ident.height * h * scale  # person height in pixels
    feet = h * rng.uniform(0.95, 0.99)
    top = feet - ph
    cx = w / 2 + rng.uniform(-0.07, 0.07) * w
    r_head = ident.head * ph
    shoulder = ident.build * w * scale / 2  # half-width
    waist = top + 0.55 * ph
    shoe_top = feet - 0.05 * ph
    neck_y = top + 2 * r_head

    def rows(y0: float, y1: float) -> slice:
        return slice(min(max(int(np.ceil(y0)), 0), h), min(max(int(np.ceil(y1)), 0), h))

    def cols(x0: float, x1: float) -> slice:
        return slice(min(max(int(np.ceil(x0)), 0), w), min(max(int(np.ceil(x1)), 0), w))

    def box(y0: float, y1: float, x0: float, x1: float, part: int) -> None:
        lab[rows(y0, y1), cols(x0, x1)] = part

    # Legs (two columns with a gap that varies with the stride), shorts show skin below the knee, then shoes.
    gap = shoulder * rng.uniform(0.08, 0.3)
    leg_w = shoulder * 0.78
    for side in (-1, 1):
        x0, x1 = sorted((cx + side * gap / 2, cx + side * (gap / 2 + leg_w)))
        box(waist, shoe_top, x0, x1, P_BOTTOM)
        if outfit.shorts:
            box(waist + 0.18 * ph, shoe_top, x0, x1, P_SKIN)
        box(shoe_top, feet, *sorted((cx + side * gap / 2, cx + side * (gap / 2 + leg_w * 1.1))), P_SHOES)
    # Arms beside the torso, swinging a little; short sleeves show skin on the forearm; hands.
    arm_w = shoulder * 0.32
    for side in (-1, 1):
        x_in = cx + side * shoulder + rng.uniform(-0.03, 0.03) * w
        x0, x1 = (x_in - arm_w, x_in) if side < 0 else (x_in, x_in + arm_w)
        box(neck_y + 0.02 * ph, waist + 0.05 * ph, x0, x1, P_TOP)
        if not outfit.long_sleeves:
            box(neck_y + 0.14 * ph, waist + 0.05 * ph, x0, x1, P_SKIN)
        box(waist + 0.05 * ph, waist + 0.09 * ph, x0, x1, P_SKIN)
    # Torso with the outfit's texture, and the bag's strap across it (masks inside the torso's slice only).
    ty, tx = rows(neck_y + 0.01 * ph, waist), cols(cx - shoulder, cx + shoulder)
    yy = np.arange(ty.start, ty.stop, dtype=np.float32)[:, None]
    xx = np.arange(tx.start, tx.stop, dtype=np.float32)[None, :]
    torso = lab[ty, tx]  # a view: writes land in ``lab``
    torso[...] = P_TOP
    if outfit.texture:
        half = outfit.period * h / 128 / 2
        stripes_h = ((yy - top) // half) % 2 == 1
        stripes_v = ((xx - cx) // half) % 2 == 1
        pattern = (stripes_h, stripes_v, stripes_h ^ stripes_v)[outfit.texture - 1]
        torso[np.broadcast_to(pattern, torso.shape)] = P_TOP2
    strap = np.abs((yy - neck_y) - ident.bag_side * (xx - cx) * 1.2 - 0.05 * ph) < max(1.0, 0.012 * ph)
    torso[strap] = P_BAG
    # Bag on the personal side.
    bag_w = ident.bag_size * 2 * shoulder * 0.6
    bx = cx + ident.bag_side * (shoulder + 0.3 * arm_w)
    box(waist - 0.08 * ph, waist + 0.1 * ph, bx - bag_w / 2, bx + bag_w / 2, P_BAG)
    # Neck, long hair behind the head, head (skin, hair on top, glasses band).
    box(neck_y - 0.3 * r_head, neck_y + 0.02 * ph, cx - 0.4 * r_head, cx + 0.4 * r_head, P_SKIN)
    hy = top + r_head
    if ident.long_hair:
        box(hy, neck_y + 0.06 * ph, cx - 0.95 * r_head, cx + 0.95 * r_head, P_HAIR)
    hy_s, hx_s = rows(hy - r_head, hy + r_head + 1), cols(cx - r_head, cx + r_head + 1)
    yy = np.arange(hy_s.start, hy_s.stop, dtype=np.float32)[:, None]
    xx = np.arange(hx_s.start, hx_s.stop, dtype=np.float32)[None, :]
    head_lab = lab[hy_s, hx_s]
    head = ((xx - cx) / (0.8 * r_head)) ** 2 + ((yy - hy) / r_head) ** 2 <= 1
    head_lab[head] = P_SKIN
    head_lab[head & (yy < hy - 0.35 * r_head)] = P_HAIR
    head_lab[head & (np.abs(yy - hy + 0.05 * r_head) < max(1.0, 0.25 * r_head))] = P_GLASSES
    # Colour (one gather), lighting, then sensor noise.
    palette = np.stack([outfit.bottom, ident.skin, outfit.shoes, outfit.top, outfit.top2, ident.bag, ident.hair,
                        ident.glasses])
    img = np.where(lab[..., None] >= 0, palette[lab], cam.background)
    img = img * cam.gain + rng.standard_normal(img.shape, dtype=np.float32) * 4
    return np.clip(img, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Shot:
    """One image to write: its path under the root and what it shows."""

    rel: str
    pid: int
    outfit: int
    cam: int
    n: int


def _is_query(pid: int, outfit: int, cam: int, n: int, cams: int) -> bool:
    """Each (test pid, outfit) has one query camera and one query image; everything else is gallery. So a query has
    same-clothes matches on other cameras and other-outfit matches on other cameras (valid for every protocol)."""
    return cam == (pid + outfit) % cams and n == 0


def _grid(pids: list[int], clothes: int, cams: int, images_per: int):
    for pid in pids:
        for o in range(clothes):
            for c in range(cams):
                for n in range(images_per):
                    yield pid, o, c, n


def _frame(o: int, c: int, n: int, cams: int, images_per: int) -> int:
    return (o * cams + c) * images_per + n


def _plan(layout: str, ids: int, clothes: int, cams: int, images_per: int) -> list[Shot]:
    """The files of ``layout``: train ids are the first half (1-based raw pids), test ids the second half."""
    all_pids = list(range(1, ids + 1))
    train_pids, test_pids = all_pids[: ids // 2], all_pids[ids // 2:]
    shots: list[Shot] = []
    fr = lambda o, c, n: _frame(o, c, n, cams, images_per)
    if layout == "prcc":
        # Cameras A, B share outfit 0; camera C shows outfit 1.
        cam_outfit = {"A": 0, "B": 0, "C": 1}
        for pid in train_pids:
            for ci, (cn, o) in enumerate(cam_outfit.items()):
                for n in range(images_per):
                    shots.append(Shot(f"rgb/train/{pid:03d}/{cn}_cropped_rgb{ci * 100 + n:03d}.jpg", pid, o, ci, n))
                shots.append(Shot(f"rgb/val/{pid:03d}/{cn}_cropped_rgb{ci * 100 + 50:03d}.jpg", pid, o, ci, 50))
        for pid in test_pids:
            for ci, (cn, o) in enumerate(cam_outfit.items()):
                for n in range(images_per):
                    shots.append(Shot(f"rgb/test/{cn}/{pid:03d}/cropped_rgb{ci * 100 + n:03d}.jpg", pid, o, ci, n))
        return shots

    # Every other layout: (split, rel path) for a train shot and for a test shot (query or gallery).
    names: dict[str, Callable[[str, int, int, int, int], str]] = {
        "ltcc": lambda s, p, o, c, n: f"{s}/{p:03d}_{o + 1}_c{c + 1}_{fr(o, c, n):06d}.png",
        MANIFEST: lambda s, p, o, c, n: f"{s}/{p:04d}/{p:04d}_o{o}_c{c}_{n:03d}.jpg",
        "celeb": lambda s, p, o, c, n: f"{s}/{p}_{fr(o, c, n)}_{c}.jpg",
        "market1501": lambda s, p, o, c, n: f"{s}/{p:04d}_c{c + 1}s1_{fr(o, c, n):06d}_00.jpg",
        "vcclothes": lambda s, p, o, c, n: f"{s}/{p:04d}-{c + 1:02d}-{o + 1:02d}-{fr(o, c, n):02d}.jpg",
        "last": lambda s, p, o, c, n: (f"{s}/{p:06d}_{c:03d}_{fr(o, c, n):06d}_{o}.jpg" if s.endswith("query")
                                       else f"{s}/{p:06d}/{p:06d}_{c:03d}_{fr(o, c, n):06d}_{o}.jpg"),
        "deepchange": lambda s, p, o, c, n: f"{s}/P{p:04d}_C{c + 1:02d}_W{o + 1:02d}_F{fr(o, c, n):05d}.jpg",
        "msmt17": lambda s, p, o, c, n: f"{s}/{p:04d}/{p:04d}_{fr(o, c, n):03d}_{c + 1:02d}_0113morning_0000_0.jpg",
    }
    splits = {
        "ltcc": ("train", "query", "test"),
        MANIFEST: ("images/train", "images/query", "images/gallery"),
        "celeb": ("train", "query", "gallery"),
        "market1501": ("bounding_box_train", "query", "bounding_box_test"),
        "vcclothes": ("train", "query", "gallery"),
        "last": ("train", "test/query", "test/gallery"),
        "deepchange": ("train-set", "test-set-query", "test-set-gallery"),
        "msmt17": ("MSMT17_V1/train", "MSMT17_V1/test", "MSMT17_V1/test"),
    }[layout]
    name = names[layout]
    # MSMT17 numbers train and test identities separately from 0 (folder name = list label).
    label = {p: i for i, p in enumerate(train_pids)} | {p: i for i, p in enumerate(test_pids)} \
        if layout == "msmt17" else {p: p for p in all_pids}
    for pid, o, c, n in _grid(train_pids, clothes, cams, images_per):
        shots.append(Shot(name(splits[0], label[pid], o, c, n), pid, o, c, n))
    for pid, o, c, n in _grid(test_pids, clothes, cams, images_per):
        split = splits[1] if _is_query(pid, o, c, n, cams) else splits[2]
        shots.append(Shot(name(split, label[pid], o, c, n), pid, o, c, n))
    # DeepChange and LaST also ship a validation query/gallery; ours mirrors the test split (same ids and images).
    val_prefix = {"deepchange": ("test-set-", "val-set-"), "last": ("test/", "val/")}.get(layout)
    if val_prefix is not None:
        old, new = val_prefix
        shots += [Shot(new + s.rel[len(old):], s.pid, s.outfit, s.cam, s.n) for s in shots if s.rel.startswith(old)]
    return shots


def _write_lists(layout: str, root: str, shots: list[Shot], cams: int, images_per: int) -> None:
    """The list files some layouts index their images by (MSMT17 lists, DeepChange bbox lists)."""
    lists: dict[str, list[str]] = {}
    if layout == "msmt17":
        for s in shots:
            folder, rel = s.rel.split("/", 2)[1], s.rel.split("/", 2)[2]
            kind = "train" if folder == "train" else ("query" if _is_query(s.pid, s.outfit, s.cam, s.n, cams)
                                                      else "gallery")
            lists.setdefault(f"MSMT17_V1/list_{kind}.txt", []).append(f"{rel} {int(rel.split('/')[0])}")
        lists["MSMT17_V1/list_val.txt"] = lists["MSMT17_V1/list_train.txt"][:images_per]
    elif layout == "deepchange":
        for s in shots:
            split, file_name = s.rel.split("/")
            # One tracklet per (pid, outfit, camera): DeepChange uses it as the camera id.
            tracklet = (s.pid * 1000 + s.outfit) * 100 + s.cam
            lists.setdefault(f"{split}-bbox.txt", []).append(f"{file_name},{tracklet}")
    for rel, lines in lists.items():
        with open(os.path.join(root, rel), "w") as f:
            f.write("\n".join(lines) + "\n")


_MARKER = ".fastccreid-synthetic"


def _prepare_root(root: str) -> None:
    """Make ``root`` an empty folder. A non-empty folder is cleared only if an earlier ``make_synthetic`` wrote it
    (marker file); anything else is refused, so a real dataset is never overwritten or mixed with synthetic files."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise ValueError(f"--root {root!r} exists and is not a folder")
    if os.path.isdir(root) and os.listdir(root):
        if not os.path.isfile(os.path.join(root, _MARKER)):
            raise ValueError(f"--root {root!r} is not empty and was not written by fastccreid synth; "
                             f"choose an empty or new folder")
        for entry in os.listdir(root):
            path = os.path.join(root, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, _MARKER), "w") as f:
        f.write("written by fastccreid synth; the folder is cleared when synth writes here again\n")


def make_synthetic(layout: str, root: str | os.PathLike[str], *, ids: int, seed: int, clothes: int = 3,
                   cams: int = 4, images_per: int = 2, size: tuple[int, int] = (128, 64)) -> str:
    """Write a synthetic dataset in ``layout``'s on-disk form under ``root`` (new, empty, or an earlier synthetic
    dataset, which is replaced); returns ``root``.

    ids: identities (first half train, second half test). clothes: outfits per identity (PRCC: 2, A/B vs C).
    cams: cameras (PRCC: 3, A/B/C). images_per: images per (identity, outfit, camera). size: (H, W).
    """
    if layout not in SYNTH_LAYOUTS:
        raise ValueError(f"--layout must be one of {', '.join(SYNTH_LAYOUTS)}, got {layout!r}")
    if ids < 2:
        raise ValueError(f"--ids must be >= 2 (half train, half test), got {ids}")
    if clothes < 1 or (layout in _CC_LAYOUTS and clothes < 2):
        raise ValueError(f"--clothes must be >= 2 for the clothes-changing layout {layout!r} (>= 1 otherwise), "
                         f"got {clothes}")
    if cams < 2:
        raise ValueError(f"--cams must be >= 2 so queries have matches on other cameras, got {cams}")
    if layout == "market1501" and cams > 9:
        raise ValueError(f"--cams must be <= 9 for market1501 (one-digit camera in the file name), got {cams}")
    if images_per < 1:
        raise ValueError(f"--images-per must be >= 1, got {images_per}")
    h, w = size
    if h < 32 or w < 16:
        raise ValueError(f"--size must be at least 32x16, got {h}x{w}")
    root = os.fspath(root)
    _prepare_root(root)
    if layout == "prcc":
        clothes, cams = 2, 3
    shots = _plan(layout, ids, clothes, cams, images_per)
    cameras = [make_camera(seed, c, (h, w)) for c in range(cams)]
    identities: dict[int, Identity] = {}
    outfits: dict[tuple[int, int], Outfit] = {}
    made: set[str] = set()
    for s in shots:
        if s.pid not in identities:
            identities[s.pid] = make_identity(seed, s.pid)
        ident = identities[s.pid]
        key = (s.pid, s.outfit)
        if key not in outfits:
            outfits[key] = make_outfit(seed, s.pid, s.outfit)
        outfit = outfits[key]
        img = render(ident, outfit, cameras[s.cam], _rng(seed, 4, s.pid, s.outfit, s.cam, s.n))
        path = os.path.join(root, s.rel)
        folder = os.path.dirname(path)
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        if path.endswith(".png"):
            Image.fromarray(img).save(path, compress_level=1)  # fast, still lossless
        else:
            Image.fromarray(img).save(path, quality=92)
    if layout == "market1501":
        # One junk image (pid -1), as in the real gallery; parsers must drop it.
        junk = render(make_identity(seed, 0), make_outfit(seed, 0, 0), cameras[0], _rng(seed, 5))
        Image.fromarray(junk).save(os.path.join(root, "bounding_box_test", "-1_c1s1_000000_00.jpg"), quality=92)
    _write_lists(layout, root, shots, cams, images_per)
    if layout == MANIFEST:
        _write_manifest(root, shots, cams)
    return root


def _write_manifest(root: str, shots: list[Shot], cams: int) -> None:
    """manifest.csv and the same rows as manifest.jsonl: paths relative to ``root``, raw pids, cameras 0-based,
    clothes_id = the outfit's number within its person (README "Your own data")."""
    import csv
    import json

    rows = [{"path": s.rel, "pid": s.pid, "camid": s.cam, "split": s.rel.split("/")[1], "clothes_id": s.outfit}
            for s in shots]
    with open(os.path.join(root, MANIFEST_CSV), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(root, MANIFEST_JSONL), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def synth_source(layout: str, root: str) -> str:
    """What ``build_dataset(layout, ...)`` reads for a synthetic dataset written to ``root``."""
    return os.path.join(root, MANIFEST_CSV) if layout == MANIFEST else root


def run_synth(args: argparse.Namespace) -> int:
    """``fastccreid synth``: write the dataset, then print its statistics as ``build_dataset`` parses them."""
    try:
        root = make_synthetic(args.layout, args.root, ids=args.ids, seed=args.seed, clothes=args.clothes,
                              cams=args.cams, images_per=args.images_per, size=tuple(args.size))
    except ValueError as e:
        print(f"fastccreid synth: error: {e}", file=sys.stderr)
        return 2
    print(build_dataset(args.layout, synth_source(args.layout, root)).summary())
    return 0
