"""Image and record builders shared by the input-pipeline tests (torch loader, DALI loader, CLI runs).

Images are deterministic for their integer seed (never ``hash()``), written under the caller's folder (a tmp_path).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from fastccreid.data.records import ImageRecord

PAD = 4  # the pad the loader tests use (small images: 48 x 24 or 96 x 48)


def smooth_image(seed: int, h: int = 40, w: int = 20) -> np.ndarray:
    """uint8 [h, w, 3]: random but smooth-ish (a bilinear upscale of a 4x smaller random image), so resize
    differences between decoders stay small."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def make_records(root: str, ids: int = 6, per_id: int = 5, fmt: str = "jpg") -> list[ImageRecord]:
    """``ids`` x ``per_id`` images ``<pid>_<n>.<fmt>`` in ``root``; record n of an id has camid n % 2 and clothes
    n % 3."""
    os.makedirs(root, exist_ok=True)
    recs = []
    for pid in range(ids):
        for n in range(per_id):
            path = os.path.join(root, f"{pid:03d}_{n}.{fmt}")
            img = Image.fromarray(smooth_image(pid * 100 + n))
            if fmt == "jpg":
                img.save(path, quality=95)
            else:
                img.save(path)
            recs.append(ImageRecord(path, pid, n % 2, n % 3))
    return recs


def write_formats(root: str) -> list[ImageRecord]:
    """The same picture as RGB JPEG, grayscale JPEG, RGB PNG, RGBA PNG, palette PNG and grayscale PNG."""
    os.makedirs(root, exist_ok=True)
    a = smooth_image(11)
    imgs = {
        "rgb.jpg": Image.fromarray(a), "gray.jpg": Image.fromarray(a[..., 0]), "rgb.png": Image.fromarray(a),
        "rgba.png": Image.fromarray(np.dstack([a, a[..., :1]])), "pal.png": Image.fromarray(a).convert("P"),
        "gray.png": Image.fromarray(a[..., 1]),
    }
    recs = []
    for i, (name, im) in enumerate(imgs.items()):
        path = os.path.join(root, name)
        im.save(path)
        recs.append(ImageRecord(path, i, 0, 0))
    return recs


def truncate_file(path: str, dst: str | None = None) -> str:
    """Write the first half of ``path``'s bytes to ``dst`` (default: ``path`` itself); returns the written path."""
    with open(path, "rb") as f:
        data = f.read()
    dst = dst or path
    with open(dst, "wb") as f:
        f.write(data[: len(data) // 2])
    return dst


def corrupt_copy(records: list[ImageRecord], root: str, which: int) -> tuple[list[ImageRecord], str]:
    """records with image ``which`` replaced by a truncated copy of itself, ``truncated_<name>`` in ``root``."""
    path = truncate_file(records[which].path, os.path.join(root, "truncated_" + os.path.basename(records[which].path)))
    out = list(records)
    out[which] = ImageRecord(path, records[which].pid, records[which].camid, records[which].clothes_id)
    return out, path
