"""Fast-path transforms shared by the DALI and torch loaders: host-side augmentation parameters, uint8 image ops,
and the on-device normalisation that finishes them.

Both loaders carry uint8 images (4x less to move than float32) and leave ToTensor + Normalize + the erase fill to
``normalize_on_device``, one fused pass on the model's device. Augmentation parameters follow the seed's
distributions (README "Input pipeline") but are drawn per sample from a generator seeded by (seed, epoch, position
in the epoch), so the DALI and torch paths draw identical parameters and any run, rank split or resume replays them
exactly.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
from PIL import Image

from fastccreid.data.hostaug import (  # noqa: F401  (re-exported: the loaders' historical import path)
    AugParams,
    BadImageError,
    bad_image,
    check_magic,
    read_bytes,
    sample_aug_params,
    sample_erase_box,
)

# ImageNet channel statistics (RGB, [0, 1] scale) of torchvision's pretrained ResNet-50, which the seed's Normalize
# uses. Defined here for production; the reference (``fastccreid.reference.transforms``) keeps its own copy, and
# tests pin both to these literals.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def norm_constants(device: torch.device, dtype: torch.dtype, period: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) [3 * period] of ``x * scale + shift == (x/255 - mean)/std`` (the RGB triple repeated ``period``
    times: one HWC row) on ``device``, built once per (device, dtype, period). ``torch.tensor(..., device=cuda)`` is
    a blocking host-to-device copy; a step that built its constants anew would stall the host on the GPU every
    batch. Shared: read only. (Under torch.compile tracing they are built in the graph, never cached.)"""
    if torch.compiler.is_compiling():
        return _build_norm_constants(device, dtype, period)
    return _cached_norm_constants(torch.device(device), dtype, period)


def _build_norm_constants(device, dtype, period: int) -> tuple[torch.Tensor, torch.Tensor]:
    scale = [1.0 / (255.0 * s) for s in IMAGENET_STD]
    shift = [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    return (torch.tensor(scale * period, device=device, dtype=dtype),
            torch.tensor(shift * period, device=device, dtype=dtype))


@functools.lru_cache(maxsize=64)
def _cached_norm_constants(device: torch.device, dtype: torch.dtype, period: int) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode(False):  # plain tensors even when first asked for during evaluation
        return _build_norm_constants(device, dtype, period)


def host_to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``t`` on ``device`` without blocking the host: a CPU tensor headed for CUDA is copied from pinned memory with
    ``non_blocking=True`` (a pageable source makes the copy synchronous), so the host can queue the next step while
    it runs. Pinning needs CUDA (``torch.cuda.is_available()``); on CPU the tensor is returned as is."""
    device = torch.device(device)
    if t.device.type == "cpu" and device.type == "cuda" and torch.cuda.is_available() and not t.is_pinned():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def borrowed_host_to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``host_to_device`` for ``t`` that views memory its owner may reuse or free (a DALI output: "TensorList wraps
    the outputs of current iteration and is valid only for the duration of the iteration ... If you wish to retain
    the data you need to copy it", DALI's data_types documentation). The result owns its data, whatever ``t``
    does: for CUDA the rows are first copied into a pinned block of torch's caching host allocator (synchronously,
    on the host), and that block is the non-blocking copy's source; torch records an event on the copy's stream
    when the block is freed and hands it out again only after that event (CachingHostAllocator's record_event in
    ATen's cuda/Copy.cu), so the source outlives the copy. ``host_to_device`` would instead copy straight from
    ``t`` when ``t`` is already pinned (DALI's own pinned buffers), reading memory DALI may refill before the copy
    runs. Elsewhere ``t`` is copied (``.to(device, copy=True, non_blocking=True)``: synchronous from pageable
    memory)."""
    device = torch.device(device)
    if t.device.type == "cpu" and device.type != "cpu" and torch.cuda.is_available():
        return pinned_copy(t).to(device, non_blocking=True)
    return t.to(device, copy=True, non_blocking=True)


def pinned_copy(t: torch.Tensor) -> torch.Tensor:
    """A copy of CPU tensor ``t`` in a pinned block of torch's caching host allocator (needs CUDA)."""
    staged = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    return staged.copy_(t)


def load_rgb(path: str) -> Image.Image:
    """Decode ``path`` to an RGB PIL image (grayscale, palette and RGBA converted as the seed's ``convert('RGB')``);
    a missing, truncated or corrupt file raises BadImageError naming it, once (never the seed's endless retry)."""
    if not os.path.isfile(path):
        raise bad_image(path, "no such file")
    try:
        with Image.open(path) as im:
            if im.mode in _WIDE_GRAY_MODES:
                return _wide_gray_to_rgb(im)
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:  # PIL raises these for truncated / unidentified data
        raise bad_image(path, str(e)) from None


# 16-bit grayscale (PNG / TIFF). PIL's convert("RGB") clips these to 255 (a white image); they are scaled to 8 bits
# instead, as DALI's decoder does (round(v * 255 / 65535)), so both input paths see the same picture.
_WIDE_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _wide_gray_to_rgb(im: Image.Image) -> Image.Image:
    v = np.asarray(im, dtype=np.float64)
    g = np.clip(np.rint(v * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(g[:, :, None], 3, axis=2), "RGB")


def resize_uint8(img: Image.Image, height: int, width: int) -> np.ndarray:
    """PIL bilinear resize as torchvision's Resize((H, W)) on a PIL image -> uint8 [H, W, 3]."""
    if img.size != (width, height):
        img = img.resize((width, height), Image.BILINEAR)
    return np.array(img, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on PIL's read-only view)


def flip_pad_crop_uint8(img: np.ndarray, flip: int, dy: int, dx: int, pad: int,
                        out: np.ndarray | None = None) -> np.ndarray:
    """Mirror (optional), zero-pad by ``pad``, then crop the input's size at (dy, dx) of the padded image: uint8
    [H, W, 3] -> uint8 [H, W, 3], as the seed's flip -> Pad -> RandomCrop, without building the padded image.
    ``out``: an [H, W, 3] array to write into (its padding band is zeroed)."""
    h, w = img.shape[:2]
    if flip:
        img = img[:, ::-1]
    # Output (y, x) reads input (y + dy - pad, x + dx - pad); copy the overlapping window only.
    sy, sx = dy - pad, dx - pad
    y0, y1 = max(0, -sy), min(h, h - sy)
    x0, x1 = max(0, -sx), min(w, w - sx)
    if out is None:
        out = np.zeros_like(img, shape=(h, w, img.shape[2]))
    else:
        out[:y0] = 0
        out[y1:] = 0
        out[:, :x0] = 0
        out[:, x1:] = 0
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = img[y0 + sy:y1 + sy, x0 + sx:x1 + sx]
    return out


def normalize_on_device(images: torch.Tensor, erase_boxes: torch.Tensor | None = None,
                        valid_boxes: torch.Tensor | None = None, *, channels_last: bool = True,
                        dtype: torch.dtype = torch.float32, shared: bool = False) -> torch.Tensor:
    """uint8 [B, H, W, 3] (or [B, 3, H, W]) -> float [B, 3, H, W] = (x/255 - mean)/std.

    valid_boxes (int [B, 4] y0, x0, h, w): the part of each image that is picture; outside it is the zero padding,
    i.e. black (the DALI path leaves border pixels there and lets this pass paint them). erase_boxes (int [B, 4];
    h == 0: none) are set to 0 afterwards, as the seed erases after normalising. Works on the tensor's own device;
    never modifies ``images``. An HWC input is channels_last already after the permute, so no layout copy.
    ``shared`` (CPU, DataLoader workers): write the result straight into shared memory, as torch's default collate
    does, so sending it to the main process costs no extra copy."""
    if images.dim() != 4:
        raise ValueError(f"images must be 4-D [B, H, W, 3] or [B, 3, H, W], got shape {tuple(images.shape)}")
    if images.shape[-1] == 3 and images.shape[1] != 3:
        x = images.permute(0, 3, 1, 2)  # HWC -> a [B, 3, H, W] view with channels_last strides
    elif images.shape[1] == 3:
        x = images
    else:
        raise ValueError(f"images must have 3 channels, got shape {tuple(images.shape)}")
    dev = x.device
    scale = [1.0 / (255.0 * s) for s in IMAGENET_STD]
    shift = [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    out = None
    if shared and dev.type == "cpu":
        out = torch.empty(x.shape, dtype=dtype, memory_format=torch.channels_last).share_memory_()
    hwc = images.shape[-1] == 3 and images.is_contiguous()
    if hwc and dev.type == "cpu" and dtype == torch.float32 and images.dtype == torch.uint8:
        # CPU: NumPy, one thread, over [W*3]-long rows (the per-channel constants repeat with period 3 along an HWC
        # row). Torch's 2-thread kernel is faster alone (2.6 vs 4.9 ms a [32, 384, 192, 3] batch) but its OpenMP
        # fork/join and spin-wait compete with DALI's decoding threads on a small CPU: end to end the NumPy form
        # gave 1,110-1,121 vs 847-959 img/s (PNG, 2 cores). Every CPU path normalises here, so the float and uint8
        # outputs stay the same bit for bit.
        b, h, w, _ = images.shape
        if out is None:
            out = torch.empty(x.shape, dtype=dtype, memory_format=torch.channels_last)
        rows = out.permute(0, 2, 3, 1).numpy().reshape(b, h, w * 3)  # a view: out is channels_last
        np.multiply(images.numpy().reshape(b, h, w * 3), np.tile(np.asarray(scale, np.float32), w), out=rows)
        rows += np.tile(np.asarray(shift, np.float32), w)
        y = out
    elif hwc:
        # One fused multiply-add reading uint8 directly (type promotion; x*scale + shift == (x/255 - mean)/std): no
        # separate float copy. Broadcasting [W*3] rows keeps the kernel's inner loop W*3 long and vectorised; a
        # [1, 3, 1, 1] broadcast over channels_last memory has an inner loop of 3 (2.6 vs 5.2 ms on 2 CPU threads).
        b, h, w, _ = images.shape
        rows = images.view(b, h, w * 3)
        sc, sh = norm_constants(dev, dtype, w)  # cached per device: no host-to-device copy per batch
        flat = None if out is None else out.permute(0, 2, 3, 1).view(b, h, w * 3)
        y = torch.addcmul(sh, rows, sc, out=flat).view(b, h, w, 3).permute(0, 3, 1, 2)
    else:
        sc, sh = (c.view(1, 3, 1, 1) for c in norm_constants(dev, dtype))
        y = torch.addcmul(sh, x, sc, out=out)
    y = paint_boxes(y, erase_boxes, valid_boxes)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return y.contiguous(memory_format=fmt)


def paint_boxes(out: torch.Tensor, erase_boxes: torch.Tensor | None, valid_boxes: torch.Tensor | None
                ) -> torch.Tensor:
    """Paint a normalised float [B, 3, H, W] batch (ours to modify): black outside each valid box, 0 inside each
    erase box (see ``normalize_on_device``). CPU: in place, a few slice writes per sample; accelerators: masks."""
    if erase_boxes is None and valid_boxes is None:
        return out
    shift = norm_constants(out.device, out.dtype)[1].view(1, 3, 1, 1)  # cached per device (read only)
    if out.device.type == "cpu":
        _paint_boxes_loop(out, erase_boxes, valid_boxes, shift[0])
        return out
    return _paint_boxes_masked(out, erase_boxes, valid_boxes, shift)


def _paint_boxes_loop(out: torch.Tensor, erase: torch.Tensor | None, valid: torch.Tensor | None,
                      black: torch.Tensor) -> None:
    """CPU: a few slice assignments per sample through a numpy view (touches only the boxes). numpy, not torch:
    each small torch write pays an OpenMP fork/join that costs ~0.5 ms on a busy 2-core machine (measured 100 ms a
    batch vs ~1 ms), and an [H, W, C] view, since a [C, h, w] slice of a channels_last tensor is written very slowly."""
    # [B, H, W, 3] view sharing ``out``'s memory (C innermost when ``out`` is channels_last, strided otherwise).
    v, fill = out.permute(0, 2, 3, 1).numpy(), black.reshape(-1).numpy()
    if valid is not None:
        for i, (y0, x0, vh, vw) in enumerate(valid.tolist()):
            v[i, :y0] = fill
            v[i, y0 + vh:] = fill
            v[i, :, :x0] = fill
            v[i, :, x0 + vw:] = fill
    if erase is not None:
        for i, (y0, x0, eh, ew) in enumerate(erase.tolist()):
            if eh > 0 and ew > 0:
                v[i, y0:y0 + eh, x0:x0 + ew] = 0.0


def _box_mask(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """bool [B, 1, H, W]: inside each (y0, x0, h, w) box."""
    b = boxes.to(device=boxes.device, dtype=torch.int64)
    ys = torch.arange(h, device=b.device).view(1, h)
    xs = torch.arange(w, device=b.device).view(1, w)
    rows = (ys >= b[:, 0:1]) & (ys < b[:, 0:1] + b[:, 2:3])
    cols = (xs >= b[:, 1:2]) & (xs < b[:, 1:2] + b[:, 3:4])
    return (rows[:, :, None] & cols[:, None, :]).unsqueeze(1)


def _paint_boxes_masked(out: torch.Tensor, erase: torch.Tensor | None, valid: torch.Tensor | None,
                        shift: torch.Tensor) -> torch.Tensor:
    """Accelerators: broadcast masks, no per-sample launches."""
    h, w = out.shape[2], out.shape[3]
    if valid is not None:
        out = torch.where(_box_mask(host_to_device(valid, out.device), h, w), out, shift)
    if erase is not None:
        out.masked_fill_(_box_mask(host_to_device(erase, out.device), h, w), 0.0)  # ``out`` is ours: in place
    return out
