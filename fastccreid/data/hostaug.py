"""Host-side pieces of the input pipeline that need only NumPy: the bad-image error, the encoded-file check and read,
and the seeded per-sample augmentation parameters. Kept free of torch / PIL / torchvision so that the callback of
DALI's parallel external_source (``fastccreid.data.dali_source``) adds no heavy import to its spawned workers;
``transforms`` re-exports every name here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# First bytes of the formats the loaders accept; a cheap pre-decode check for empty / garbage files.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"GIF8", b"RIFF", b"II*\x00", b"MM\x00*")


class BadImageError(ValueError):
    """An image file that cannot be read or decoded; ``path`` names it."""

    def __init__(self, message: str, path: str | None = None) -> None:
        # One positional message, so torch's DataLoader can re-raise it from a worker with the same type.
        super().__init__(message)
        self.path = path


def bad_image(path: str, reason: str) -> BadImageError:
    """The error for an unreadable ``path``, with the hint how to skip such files."""
    return BadImageError(f"cannot read image {path!r}: {reason} (pass --skip_bad_images to skip such files)", path)


@dataclass
class AugParams:
    """Per-sample train augmentation for a batch of B samples.

    flip: int32 [B] (1 = mirror). crop: int32 [B, 2] (dy, dx) offsets into the zero-padded image, in [0, 2*pad].
    erase: int32 [B, 4] (y0, x0, h, w) of the erased box in the output image; h == 0 means no erasing.
    """

    flip: np.ndarray
    crop: np.ndarray
    erase: np.ndarray


def sample_erase_box(rng: np.random.Generator, height: int, width: int, p: float, sl: float = 0.02,
                     sh: float = 0.4, r1: float = 0.3) -> tuple[int, int, int, int]:
    """The seed's RandomErasing box: with probability p, up to 100 tries of area ~ U(sl, sh)*H*W and aspect
    ~ U(r1, 1/r1), h = round(sqrt(area*aspect)), w = round(sqrt(area/aspect)), first box with h < H and w < W, at a
    uniform position; (0, 0, 0, 0) when nothing is erased."""
    if rng.random() > p:  # the seed: ``if random.uniform(0, 1) > p: return``
        return 0, 0, 0, 0
    area = height * width
    for _ in range(100):
        target = rng.uniform(sl, sh) * area
        aspect = rng.uniform(r1, 1.0 / r1)
        h = int(round(math.sqrt(target * aspect)))
        w = int(round(math.sqrt(target / aspect)))
        if w < width and h < height:
            y0 = int(rng.integers(0, height - h + 1))
            x0 = int(rng.integers(0, width - w + 1))
            return y0, x0, h, w
    return 0, 0, 0, 0


def sample_aug_params(seed: int, epoch: int, positions: np.ndarray | list[int], height: int, width: int, pad: int,
                      flip_p: float, erase_p: float) -> AugParams:
    """Augmentation parameters for the samples at ``positions`` (global positions in the epoch's order)."""
    n = len(positions)
    flip = np.zeros(n, dtype=np.int32)
    crop = np.zeros((n, 2), dtype=np.int32)
    erase = np.zeros((n, 4), dtype=np.int32)
    for i, pos in enumerate(positions):
        rng = np.random.default_rng((seed, epoch, int(pos)))
        flip[i] = rng.random() < flip_p  # torchvision: ``if torch.rand(1) < p``
        crop[i] = rng.integers(0, 2 * pad + 1, size=2)  # RandomCrop on the padded image: offsets 0..2*pad inclusive
        erase[i] = sample_erase_box(rng, height, width, erase_p)
    return AugParams(flip, crop, erase)


def check_magic(path: str, head: bytes) -> None:
    """Raise BadImageError unless ``head`` (the file's first bytes) starts like an image format we decode."""
    if not head:
        raise bad_image(path, "empty file")
    if not head.startswith(_MAGIC):
        raise bad_image(path, "not a JPEG/PNG/BMP/GIF/WebP/TIFF file")


def read_bytes(path: str) -> np.ndarray:
    """The encoded file as uint8 [N], checked to look like an image (no decode)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise bad_image(path, e.strerror or str(e)) from None
    check_magic(path, data[:8].tobytes())
    return data


def pick_replacement(index: int, position: int, pids: list[int], by_pid: dict[int, list[int]], bad,
                     paths: list[str]) -> int:
    """The bad-image replacement rule: a readable-so-far index of ``index``'s identity (not in ``bad``), chosen by
    ``position`` so runs repeat. ``by_pid``: the indices of each pid in index order."""
    pid = pids[index]
    good = [i for i in by_pid[pid] if i not in bad]
    if not good:
        raise BadImageError(f"every training image of identity {pid} is unreadable (e.g. {paths[index]!r}); "
                            f"remove the identity or fix its files")
    return good[position % len(good)]
