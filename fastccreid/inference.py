"""Features from a trained CSSC checkpoint for any images: ``FeatureExtractor`` and ``fastccreid extract``.

The features are the seed's test features, as ``fastccreid eval --save_features`` writes them: each image is
resized to H x W (PIL bilinear), scaled to [0, 1] and ImageNet-normalised, and its feature is
``normalize(model(x) + model(flip(x)))`` [N, 2048] float32 (flip: mirrored left-right; ``flip=False`` drops that
term). Files go through the evaluation loader (``fastccreid.data.loaders.build_eval_loader``: PIL with
``loader="torch"``, DALI with ``"dali"``), in-memory images through the same PIL resize and normalisation.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

if TYPE_CHECKING:
    from fastccreid.data.batch import Batch

DEFAULT_HEIGHT, DEFAULT_WIDTH = 384, 192
# Files a folder given to ``list_images`` contributes (the formats the loaders decode); other files are ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def load_cssc(checkpoint: str | os.PathLike[str], device: torch.device | str = "cpu"
              ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(CSSC in eval mode on ``device``, the checkpoint dict) from a fastccreid or official checkpoint.

    Read with ``weights_only=True``; a DataParallel ``module.`` prefix is dropped; the class count comes from
    ``classifier.weight`` [classes, 2048]. Raises ``CheckpointError`` (a ValueError) naming the file."""
    from fastccreid.engine.checkpoint import CheckpointError, load_checkpoint
    from fastccreid.models import CSSC, load_model_state, strip_module_prefix

    path = os.fspath(checkpoint)
    ck = load_checkpoint(path)
    sd = strip_module_prefix(ck["model_state_dict"])
    weight = sd.get("classifier.weight")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise CheckpointError(f"--resume {path}: no 'classifier.weight' [classes, 2048]: not a CSSC checkpoint")
    model = CSSC(int(weight.shape[0]), last_stride=1, pretrained=None)
    load_model_state(model, sd, source=f"--resume {path}")
    return model.to(device).eval(), ck


def checkpoint_image_size(ck: dict[str, Any]) -> tuple[int, int] | None:
    """(height, width) the checkpoint was trained at, from its fastccreid config (or its older height/width
    keys); None for official checkpoints, which do not say."""
    from fastccreid.engine.config import TrainConfig

    meta = ck.get("fastccreid")
    if not isinstance(meta, dict):
        return None
    if isinstance(meta.get("config"), dict):
        cfg = TrainConfig.from_dict(meta["config"])
        return int(cfg.height), int(cfg.width)
    if "height" in meta and "width" in meta:
        return int(meta["height"]), int(meta["width"])
    return None


def resolve_size(ck: dict[str, Any], height: int | None, width: int | None) -> tuple[int, int]:
    """The input size: explicit values win, then the checkpoint's config, then the seed's 384 x 192."""
    from fastccreid.engine.config import MIN_HEIGHT, MIN_WIDTH

    saved = checkpoint_image_size(ck) or (DEFAULT_HEIGHT, DEFAULT_WIDTH)
    h = saved[0] if height is None else height
    w = saved[1] if width is None else width
    if isinstance(h, bool) or isinstance(w, bool) or not isinstance(h, int) or not isinstance(w, int):
        raise TypeError(f"height/width must be integers, got {h!r}, {w!r}")
    if h < MIN_HEIGHT or w < MIN_WIDTH:
        raise ValueError(f"--height/--width must be at least {MIN_HEIGHT}x{MIN_WIDTH} (CSSC splits the 1/16-scale "
                         f"map into 8 stripes), got {h}x{w}")
    return h, w


def list_images(source: str | os.PathLike[str]) -> list[str]:
    """Image paths named by ``source``: a folder (its image files, sub-folders included, hidden entries left out,
    sorted by relative path) or a text file with one path per line (relative paths are relative to the list's
    folder; blank lines and ``#`` comments ignored; order kept)."""
    src = os.fspath(source)
    if os.path.isdir(src):
        found = []
        for folder, dirs, files in os.walk(src):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found += [os.path.join(folder, f) for f in files
                      if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
        paths = sorted(found, key=lambda p: os.path.relpath(p, src).split(os.sep))
        if not paths:
            raise ValueError(f"--images {src}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
        return paths
    if not os.path.isfile(src):
        raise FileNotFoundError(f"--images {src}: no such folder or list file")
    if src.lower().endswith(IMAGE_EXTENSIONS):
        raise ValueError(f"--images {src}: is an image; pass its folder, or a text file listing images")
    base = os.path.dirname(os.path.abspath(src))
    try:
        with open(src, encoding="utf-8") as f:
            lines = [ln.strip() for ln in f]
    except UnicodeDecodeError:
        raise ValueError(f"--images {src}: not a text list of image paths (one per line)") from None
    paths = [ln if os.path.isabs(ln) else os.path.join(base, ln) for ln in lines if ln and not ln.startswith("#")]
    if not paths:
        raise ValueError(f"--images {src}: the list names no images")
    return paths


@dataclass
class PathFeatures:
    """Features of files: feats [M, D] float32 (CPU), index [M] int64 = each row's position in the paths given
    (M < N only when unreadable files were skipped), and the skipped paths."""

    feats: torch.Tensor
    index: np.ndarray
    skipped: list[str]


def _is_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


class FeatureExtractor:
    """Callable on a list of PIL images, uint8 [H, W, 3] RGB arrays or file paths -> [N, D] float32 CPU features,
    the seed's test features (see the module docstring): ``fastccreid eval --save_features`` on the same files,
    same size and loader gives the same numbers.

    ``height``/``width`` None: the checkpoint's training size when it records one, else 384 x 192. ``amp``: False
    (fp32, as ``eval``), True (bf16/fp16 where the device computes it natively, else fp32) or an ``--amp`` mode.
    ``loader`` for lists of paths: "torch" (PIL, the seed's pixels), "dali" or "auto" (DALI when usable, as
    ``eval``'s default; its CPU resize is within one grey level of PIL's). ``channels_last``: the model's and the
    inputs' memory format (as ``eval``'s default).
    """

    def __init__(self, checkpoint: str | os.PathLike[str], device: torch.device | str | None = None,
                 batch_size: int = 128, height: int | None = None, width: int | None = None, flip: bool = True,
                 amp: bool | str = False, *, channels_last: bool = True, loader: str = "torch",
                 num_workers: int = 0, progress: bool = False) -> None:
        from fastccreid.data.loaders import LOADER_CHOICES
        from fastccreid.engine.amp import resolve_amp

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if loader not in LOADER_CHOICES:
            raise ValueError(f"loader must be one of {', '.join(LOADER_CHOICES)}, got {loader!r}")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if isinstance(amp, bool):
            amp = "auto" if amp else "off"
        self.amp = resolve_amp(amp, self.device)
        self.model, ck = load_cssc(checkpoint, self.device)
        self.checkpoint = os.fspath(checkpoint)
        self.height, self.width = resolve_size(ck, height, width)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.channels_last = channels_last
        self.batch_size, self.flip, self.loader = batch_size, bool(flip), loader
        self.num_workers, self.progress = num_workers, progress
        self.feature_dim = int(self.model.feature_dim)

    def __repr__(self) -> str:
        return (f"FeatureExtractor({self.checkpoint!r}, device={str(self.device)!r}, size={self.height}x{self.width}"
                f", flip={self.flip}, amp={self.amp.name})")

    @torch.no_grad()
    def features(self, images: Batch | torch.Tensor) -> torch.Tensor:
        """A batch at the model's input size (an evaluation loader's ``Batch``, or uint8 [B, H, W, 3] /
        [B, 3, H, W], or normalised float [B, 3, H, W]) -> L2-normalised features [B, D] float32 on the device."""
        from fastccreid.data.loaders import to_model_input

        if isinstance(images, torch.Tensor):
            images = images.to(self.device)
        x = to_model_input(images, channels_last=self.channels_last, dtype=torch.float32)
        with self.amp.autocast():
            f = self.model(x).float()
            if self.flip:
                flipped = torch.flip(x, dims=[3]).contiguous(memory_format=self.memory_format)
                f = f + self.model(flipped).float()  # summed in fp32, as the evaluator
        return F.normalize(f, p=2, dim=1)

    def __call__(self, images: Any) -> torch.Tensor:
        """[N, D] float32 CPU features of ``images``: a list / tuple of PIL images, uint8 [H, W, 3] RGB arrays and
        paths (mixed freely), one such image, or a uint8 [N, H, W, 3] array. An unreadable file raises
        ``BadImageError`` (a ValueError) naming it."""
        items = self._as_list(images)
        if not items:
            return torch.zeros((0, self.feature_dim), dtype=torch.float32)
        if all(_is_path(x) for x in items):
            return self.extract_paths([os.fspath(x) for x in items]).feats
        chunks = [self.features(batch).cpu() for batch in self._memory_batches(items)]
        return torch.cat(chunks)

    def extract_paths(self, paths: Sequence[str], *, skip_bad_images: bool = False,
                      desc: str = "features") -> PathFeatures:
        """Features of image files through the evaluation loader (``loader``, ``num_workers``, progress bar).
        ``skip_bad_images``: leave unreadable files out (warned, and listed in ``skipped``) instead of raising."""
        from fastccreid.data.loaders import build_eval_loader
        from fastccreid.data.records import ImageRecord

        if not paths:
            return PathFeatures(torch.zeros((0, self.feature_dim)), np.zeros(0, np.int64), [])
        # pid = position: the loader's labels then say which files each batch holds (skipped files are absent).
        records = [ImageRecord(os.fspath(p), i, -1, -1) for i, p in enumerate(paths)]
        loader = build_eval_loader(records, height=self.height, width=self.width, batch_size=self.batch_size,
                                   device=self.device, loader=self.loader, num_workers=self.num_workers,
                                   skip_bad_images=skip_bad_images)
        batches: Any = loader
        if self.progress:
            from tqdm import tqdm

            batches = tqdm(loader, desc=desc, unit="batch", dynamic_ncols=True, file=sys.stderr,
                           disable=None)  # a bar on a terminal only
        feats, index = [], []
        for batch in batches:
            feats.append(self.features(batch).cpu())
            index.append(batch.pids.cpu())
        out = torch.cat(feats) if feats else torch.zeros((0, self.feature_dim))
        kept = torch.cat(index).numpy() if index else np.zeros(0, np.int64)
        skipped = sorted(set(range(len(paths))) - set(kept.tolist()))
        return PathFeatures(out, kept.astype(np.int64), [records[i].path for i in skipped])

    @staticmethod
    def _as_list(images: Any) -> list:
        if _is_path(images) or isinstance(images, Image.Image):
            return [images]
        if isinstance(images, np.ndarray):
            if images.ndim == 4:
                return list(images)
            return [images]
        if isinstance(images, (list, tuple)):
            return list(images)
        raise TypeError(f"images must be a list of PIL images, uint8 [H, W, 3] arrays or paths, got "
                        f"{type(images).__name__}")

    def _memory_batches(self, items: list) -> Iterator[torch.Tensor]:
        """uint8 [B, H, W, 3] batches: each item decoded (paths), converted to RGB and resized with PIL bilinear,
        as the evaluation loader's torch backend does."""
        from fastccreid.data.transforms import load_rgb, resize_uint8

        for start in range(0, len(items), self.batch_size):
            arrays = []
            for i, item in enumerate(items[start:start + self.batch_size], start):
                if _is_path(item):
                    img = load_rgb(os.fspath(item))
                elif isinstance(item, Image.Image):
                    img = item if item.mode == "RGB" else item.convert("RGB")
                elif isinstance(item, np.ndarray):
                    if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
                        raise ValueError(f"images[{i}]: arrays must be uint8 [H, W, 3] RGB, got {item.dtype} "
                                         f"{tuple(item.shape)}")
                    img = Image.fromarray(np.ascontiguousarray(item), "RGB")
                else:
                    raise TypeError(f"images[{i}]: expected a PIL image, a uint8 [H, W, 3] array or a path, got "
                                    f"{type(item).__name__}")
                arrays.append(resize_uint8(img, self.height, self.width))
            yield torch.from_numpy(np.stack(arrays))


# ---------------------------------------------------------------------------------------------- CLI
def write_features_npz(path: str, feats: torch.Tensor, pids: np.ndarray, camids: np.ndarray,
                       clothes: np.ndarray, paths: Sequence[str]) -> str:
    """The ``eval-features`` ``.npz`` (feats, pids, camids, clothes) plus ``paths`` [N] (unicode): written to a
    temporary file beside ``path``, read back by ``load_features`` (the format check), then renamed."""
    from fastccreid.features_io import load_features

    if not path.endswith(".npz"):
        raise ValueError(f"--out {path}: the features file must end in .npz")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, feats=feats.detach().cpu().numpy().astype(np.float32, copy=False),
                     pids=np.asarray(pids, np.int64), camids=np.asarray(camids, np.int64),
                     clothes=np.asarray(clothes, np.int64), paths=np.asarray(list(paths), dtype=str))
        load_features(tmp)
        os.replace(tmp, path)  # atomic: a reader never sees half a file
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def extract_jobs(args) -> list[tuple[str, str, list[str], list | None]]:
    """(output file, set name, image paths, labels or None) for each file ``fastccreid extract`` writes: one for a
    folder or list; with ``--layout manifest`` one per split asked for (``--split``; all: ``<out>_<split>.npz`` for
    every split with rows, as ``eval --save_features`` names its files). Every input problem raises here, before
    a model is loaded or anything written."""
    from fastccreid.data.datasets import MANIFEST, manifest_splits, parse_image_labels

    split = getattr(args, "split", None)
    if args.layout != MANIFEST:
        if split is not None:
            raise ValueError(f"--split {split}: only with --layout manifest (a folder or list is one set)")
        paths = list_images(args.images)
        labels = parse_image_labels(args.layout, paths) if args.layout else None
        if labels is not None and args.layout == "market1501":
            junk = [i for i, r in enumerate(labels) if r.pid == -1]
            if junk:  # the market1501 parser drops them too
                print(f"=> leaving out {len(junk)} junk image(s) (pid -1), as the market1501 parser does",
                      file=sys.stderr)
                keep = [i for i, r in enumerate(labels) if r.pid != -1]
                paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
        return [(args.out, "extract", paths, labels)]
    if os.path.isdir(args.images):
        raise ValueError(f"--images {args.images}: is a folder; with --layout manifest pass the manifest file "
                         f"(CSV or JSON Lines)")
    if not args.out.endswith(".npz"):
        raise ValueError(f"--out {args.out}: the features file must end in .npz")
    splits = manifest_splits(args.images, None if split in (None, "all") else split)
    base = args.out[: -len(".npz")]
    one = split not in (None, "all")
    return [(args.out if one else f"{base}_{s}.npz", s, [r.path for r in recs], recs) for s, recs in splits.items()]


def run_extract(args) -> int:
    """``fastccreid extract``: features of a folder, a list of images or a manifest's splits -> ``eval-features``
    ``.npz`` files. All sets are extracted before any file is written (each atomically)."""
    from fastccreid.models import PretrainedWeightsError

    results = []
    try:
        jobs = extract_jobs(args)
        extractor = FeatureExtractor(args.resume, device="cpu" if args.use_cpu else None,
                                     batch_size=args.batch_size, height=args.height, width=args.width,
                                     amp=args.amp, loader=args.loader, num_workers=args.num_workers,
                                     progress=not args.no_progress)
        for out, name, paths, labels in jobs:
            where = args.images if name == "extract" else f"{args.images} split {name!r}"
            print(f"=> {len(paths)} image(s) from {where}; {extractor!r}", file=sys.stderr)
            res = extractor.extract_paths(paths, skip_bad_images=args.skip_bad_images, desc=name)
            if len(res.index) == 0:
                raise ValueError(f"--images {where}: no image could be read")
            n = len(res.index)
            if labels is None:
                pids = camids = clothes = np.full(n, -1, np.int64)
            else:
                rows = [labels[i] for i in res.index]
                pids = np.array([r.pid for r in rows], np.int64)
                camids = np.array([r.camid for r in rows], np.int64)
                clothes = np.array([r.clothes_id for r in rows], np.int64)
            results.append((out, res, pids, camids, clothes, [paths[i] for i in res.index], labels is not None))
        written = [(write_features_npz(out, res.feats, pids, camids, clothes, kept), res, labelled)
                   for out, res, pids, camids, clothes, kept, labelled in results]
    except (ValueError, TypeError, FileNotFoundError, PretrainedWeightsError) as exc:
        print(f"fastccreid extract: error: {exc}", file=sys.stderr)
        return 2
    for out, res, labelled in written:
        skipped = f", {len(res.skipped)} unreadable skipped" if res.skipped else ""
        print(f"wrote {out}: {len(res.index)} x {res.feats.shape[1]} features{skipped}"
              + ("" if labelled else " (no --layout: pids / camids / clothes are -1)"))
    return 0
