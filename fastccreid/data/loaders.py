"""The training and evaluation input pipelines behind one interface: DALI (``fastccreid.data.dali``) or the
torchvision/PIL DataLoader, chosen by ``--loader {auto,dali,torch}``.

Both paths yield ``Batch`` objects whose images are uint8 on the model's device; ``to_model_input`` turns them into
the seed's normalised float input in one fused pass there (ToTensor + Normalize + the erase fill). Train batches
follow ``IdentitySampler.epoch_indices(epoch)`` exactly (P ids x K images each), and every augmentation parameter is
a function of (seed, epoch, position), so seeded runs and resumes repeat and both backends draw the same values.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from fastccreid.data.hostaug import pick_replacement
from fastccreid.data.records import ImageRecord
from fastccreid.data.sampler import IdentitySampler
from fastccreid.data.transforms import (
    BadImageError,
    flip_pad_crop_uint8,
    load_rgb,
    normalize_on_device,
    resize_uint8,
    sample_aug_params,
)

LOADER_CHOICES = ("auto", "dali", "torch")
# What a loader hands out: "float" = normalised float batches finished by the loader (its DataLoader workers, or in
# DALI's CPU mode the iterating thread, while DALI decodes the next batches);
# "uint8" = uint8 HWC batches on the model's device that ``to_model_input`` normalises there (into the model's first
# step); "auto" = float on a CPU-only run, uint8 on an accelerator.
OUTPUT_CHOICES = ("auto", "float", "uint8")
_NOTICES: set[tuple[str, str]] = set()  # (backend, reason) lines already printed by this process


@dataclass
class Batch:
    """One batch on the model's device.

    images: uint8 [B, H, W, 3] still to normalise (``normalized`` False: an accelerator does it), or float normalised
    [B, 3, H, W] with the boxes below already painted (``normalized`` True: on a CPU-only run, where normalising in
    DALI's threads / the DataLoader workers beats doing it in the training thread).
    pids / camids / clothes_ids / indices: int64 [B] (indices: positions in the records list given to the builder).
    erase_boxes: int32 [B, 4] (y0, x0, h, w; h == 0: none) that ``to_model_input`` sets to 0 after normalising.
    valid_boxes: int32 [B, 4] (y0, x0, h, w) picture area; ``to_model_input`` paints the rest black (the padding).
    """

    images: torch.Tensor
    pids: torch.Tensor
    camids: torch.Tensor
    clothes_ids: torch.Tensor
    indices: torch.Tensor
    normalized: bool
    erase_boxes: torch.Tensor | None = None
    valid_boxes: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.indices.shape[0])


def to_model_input(batch_or_images: Batch | torch.Tensor, *, channels_last: bool = True,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised float [B, 3, H, W] on the images' device (channels_last when asked), from a Batch or an image
    tensor (uint8 HWC/CHW is normalised, a float tensor is taken as normalised already)."""
    if isinstance(batch_or_images, Batch):
        b = batch_or_images
        images, boxes, valid, done = b.images, b.erase_boxes, b.valid_boxes, b.normalized
    elif isinstance(batch_or_images, torch.Tensor):
        images, boxes, valid, done = batch_or_images, None, None, batch_or_images.is_floating_point()
    else:
        raise TypeError(f"to_model_input takes a Batch or a torch.Tensor, got {type(batch_or_images).__name__}")
    if done:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return images.to(dtype).contiguous(memory_format=fmt)
    return normalize_on_device(images, boxes, valid, channels_last=channels_last, dtype=dtype)


def normalizes_in_loader(output: str, device: torch.device) -> bool:
    """Resolve ``output`` (see OUTPUT_CHOICES) for ``device``: True when the loader hands out normalised floats."""
    if output not in OUTPUT_CHOICES:
        raise ValueError(f"--loader_output must be one of {', '.join(OUTPUT_CHOICES)}, got {output!r}")
    if output == "auto":
        return device.type == "cpu"
    return output == "float"


def choose_loader(loader: str, device: torch.device | str) -> tuple[str, str]:
    """("dali" | "torch", one-line reason) for ``--loader`` on ``device``; prints nothing. ``dali`` asked for but
    unusable raises ValueError with the reason."""
    if loader not in LOADER_CHOICES:
        raise ValueError(f"--loader must be one of {', '.join(LOADER_CHOICES)}, got {loader!r}")
    if loader == "torch":
        return "torch", "--loader torch"
    from fastccreid.data.dali import dali_status  # lazy: importing DALI costs time and is optional

    ok, why = dali_status(torch.device(device))
    if ok:
        return "dali", f"--loader {loader}: {why}"
    if loader == "dali":
        raise ValueError(f"--loader dali: {why}; use --loader torch or auto")
    return "torch", f"--loader auto: {why}"


def _notice(kind: str, backend: str, reason: str) -> None:
    if (backend, reason) not in _NOTICES:
        _NOTICES.add((backend, reason))
        name = "DALI" if backend == "dali" else "torch DataLoader (PIL + torchvision)"
        print(f"=> input pipeline: {name} ({reason})", flush=True)


class BadImageTracker:
    """Bad-image bookkeeping shared by both backends: the files found unreadable, and for training a replacement
    of a bad image by another readable image of the same identity (so a batch stays P x K)."""

    def __init__(self, records: Sequence[ImageRecord], skip: bool) -> None:
        self.records = records
        self.skip = skip
        self.bad: dict[int, str] = {}  # index -> reason
        self._epoch_bad: set[int] = set()
        self._by_pid: dict[int, list[int]] | None = None

    def add(self, index: int, err: BadImageError) -> None:
        if not self.skip:
            raise err
        self.bad[index] = str(err)
        self._epoch_bad.add(index)

    def replacement(self, index: int, position: int) -> int:
        """A readable-so-far index of the same pid as ``index`` (chosen by ``position``, so runs repeat)."""
        if self._by_pid is None:
            self._pids, self._paths = [r.pid for r in self.records], [r.path for r in self.records]
            self._by_pid = {}
            for i, pid in enumerate(self._pids):
                self._by_pid.setdefault(pid, []).append(i)
        return pick_replacement(index, position, self._pids, self._by_pid, self.bad, self._paths)

    def end_epoch(self, what: str) -> None:
        if self._epoch_bad:
            names = ", ".join(repr(self.records[i].path) for i in sorted(self._epoch_bad)[:3])
            more = "" if len(self._epoch_bad) <= 3 else f" and {len(self._epoch_bad) - 3} more"
            warnings.warn(f"{what}: skipped {len(self._epoch_bad)} unreadable image(s): {names}{more}", stacklevel=3)
        self._epoch_bad = set()

    @property
    def count(self) -> int:
        return len(self.bad)


def _labels(records: Sequence[ImageRecord], indices: np.ndarray, device: torch.device) -> list[torch.Tensor]:
    arr = np.array([(records[i].pid, records[i].camid, records[i].clothes_id) for i in indices], dtype=np.int64)
    arr = arr.reshape(-1, 3)
    t = torch.from_numpy(arr).to(device, non_blocking=True)
    return [t[:, 0], t[:, 1], t[:, 2]]


# ---------------------------------------------------------------------------------------------- torch path
class _TrainSet(Dataset):
    """key (epoch, position, index) -> (uint8 [H, W, 3], used index, erase box [4], bad [(index, message)])."""

    def __init__(self, records: Sequence[ImageRecord], height: int, width: int, pad: int, flip_p: float,
                 erase_p: float, seed: int, skip: bool) -> None:
        self.records = records
        self.height, self.width, self.pad = height, width, pad
        self.flip_p, self.erase_p, self.seed = flip_p, erase_p, seed
        self.tracker = BadImageTracker(records, skip)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: tuple[int, int, int]):
        epoch, pos, index = key
        p = sample_aug_params(self.seed, epoch, [pos], self.height, self.width, self.pad, self.flip_p, self.erase_p)
        bad: list[tuple[int, str]] = []
        used = index
        for _ in range(len(self.records)):  # bounded: each failure marks one more file bad
            try:
                img = load_rgb(self.records[used].path)
                break
            except BadImageError as e:
                self.tracker.add(used, e)  # raises unless skipping
                bad.append((used, str(e)))
                used = self.tracker.replacement(index, pos)
        arr = flip_pad_crop_uint8(resize_uint8(img, self.height, self.width), int(p.flip[0]), int(p.crop[0, 0]),
                                  int(p.crop[0, 1]), self.pad)
        return torch.from_numpy(arr), used, torch.from_numpy(p.erase[0]), bad


def _collate_train(samples, normalize: bool = False):
    """-> (images, indices, erase boxes, bad). ``normalize`` (CPU device): finish the float batch here, in the
    worker, in parallel with the other workers, instead of in the training thread."""
    images = torch.stack([s[0] for s in samples])
    indices = torch.tensor([s[1] for s in samples], dtype=torch.int64)
    boxes = torch.stack([s[2] for s in samples])
    bad = [b for s in samples for b in s[3]]
    if normalize:
        images = normalize_on_device(images, boxes, shared=get_worker_info() is not None)
    return images, indices, boxes, bad


class _EvalSet(Dataset):
    """index -> (uint8 [H, W, 3] or None when unreadable and skipped, index, message)."""

    def __init__(self, records: Sequence[ImageRecord], height: int, width: int, skip: bool) -> None:
        self.records, self.height, self.width, self.skip = records, height, width, skip

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        try:
            img = load_rgb(self.records[index].path)
        except BadImageError as e:
            if not self.skip:
                raise
            return None, index, str(e)
        return torch.from_numpy(resize_uint8(img, self.height, self.width)), index, ""


def _collate_eval(samples, normalize: bool = False):
    good = [s for s in samples if s[0] is not None]
    images = torch.stack([s[0] for s in good]) if good else None
    if normalize and images is not None:
        images = normalize_on_device(images, shared=get_worker_info() is not None)
    indices = torch.tensor([s[1] for s in good], dtype=torch.int64)
    bad = [(s[1], s[2]) for s in samples if s[0] is None]
    return images, indices, bad


class EpochTrainLoader:
    """What both train-loader backends share: the epoch (which fixes the sampler's order), the batch count and
    the bad-image count. Subclasses set ``sampler``, ``tracker`` and ``epoch`` and implement ``__iter__``."""

    sampler: IdentitySampler
    tracker: BadImageTracker
    epoch: int
    start_batch: int = 0

    @property
    def bad_images(self) -> int:
        return self.tracker.count

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select epoch ``epoch`` (it fixes the sampler's order); iterating then starts at batch ``start_batch``
        (a mid-epoch resume: the batches before it are neither read nor decoded). ``len`` stays the whole epoch."""
        if isinstance(start_batch, bool) or not isinstance(start_batch, int) or start_batch < 0:
            raise ValueError(f"start_batch must be a non-negative integer, got {start_batch!r}")
        self.epoch = epoch
        self.start_batch = start_batch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler.epoch_indices(self.epoch)) // self.sampler.batch_size


class TrainLoader(EpochTrainLoader):
    """Torch DataLoader backend of the train loader (see ``build_train_loader``)."""

    backend = "torch"

    def __init__(self, records: Sequence[ImageRecord], sampler: IdentitySampler, *, height: int, width: int,
                 device: torch.device, num_workers: int, pad: int, flip_p: float, erase_p: float, seed: int,
                 skip_bad_images: bool, normalize_in_loader: bool) -> None:
        self.records = records
        self.sampler = sampler
        self.device = device
        self.num_workers = num_workers
        self.epoch = 0
        self.dataset = _TrainSet(records, height, width, pad, flip_p, erase_p, seed, skip_bad_images)
        self.tracker = BadImageTracker(records, skip_bad_images)
        # True: finish float batches in the workers; False: ship uint8, to_model_input normalises on the device
        self.normalize_in_loader = normalize_in_loader

    def batch_keys(self) -> list[list[tuple[int, int, int]]]:
        """This rank's batches of the epoch as (epoch, global position, index) keys."""
        positions, indices = self.sampler.rank_batches(self.epoch)
        return [[(self.epoch, p, i) for p, i in zip(pr, ir, strict=True)]
                for pr, ir in zip(positions.tolist(), indices.tolist(), strict=True)]

    def __iter__(self) -> Iterator[Batch]:
        normalize = self.normalize_in_loader
        loader = DataLoader(self.dataset, batch_sampler=self.batch_keys()[self.start_batch:],
                            num_workers=self.num_workers,
                            collate_fn=partial(_collate_train, normalize=normalize),
                            pin_memory=self.device.type == "cuda")
        for images, indices, boxes, bad in loader:
            for index, msg in bad:
                self.tracker.add(index, BadImageError(msg, self.records[index].path))
            pids, camids, clothes = _labels(self.records, indices.numpy(), self.device)
            yield Batch(images.to(self.device, non_blocking=True), pids, camids, clothes,
                        indices.to(self.device, non_blocking=True), normalize,
                        boxes.to(self.device, non_blocking=True))
        self.tracker.end_epoch(f"training epoch {self.epoch + 1}")


class EpochEvalLoader:
    """What both eval-loader backends share: every record once, in order, the last partial batch kept; the batch
    count and the bad-image count. Subclasses set ``records``, ``batch_size`` and ``tracker``."""

    records: Sequence[ImageRecord]
    batch_size: int
    tracker: BadImageTracker

    @property
    def bad_images(self) -> int:
        return self.tracker.count

    def __len__(self) -> int:
        return -(-len(self.records) // self.batch_size)


class EvalLoader(EpochEvalLoader):
    """Torch DataLoader backend of the eval loader (see ``build_eval_loader``)."""

    backend = "torch"

    def __init__(self, records: Sequence[ImageRecord], *, height: int, width: int, batch_size: int,
                 device: torch.device, num_workers: int, skip_bad_images: bool,
                 normalize_in_loader: bool) -> None:
        self.records = records
        self.batch_size = batch_size
        self.device = device
        self.num_workers = num_workers
        self.dataset = _EvalSet(records, height, width, skip_bad_images)
        self.tracker = BadImageTracker(records, skip_bad_images)
        self.normalize_in_loader = normalize_in_loader

    def __iter__(self) -> Iterator[Batch]:
        normalize = self.normalize_in_loader
        loader = DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, drop_last=False,
                            num_workers=self.num_workers, collate_fn=partial(_collate_eval, normalize=normalize),
                            pin_memory=self.device.type == "cuda")
        for images, indices, bad in loader:
            for index, msg in bad:
                self.tracker.add(index, BadImageError(msg, self.records[index].path))
            if images is None:
                continue
            pids, camids, clothes = _labels(self.records, indices.numpy(), self.device)
            yield Batch(images.to(self.device, non_blocking=True), pids, camids, clothes,
                        indices.to(self.device, non_blocking=True), normalize)
        self.tracker.end_epoch("evaluation")


# ---------------------------------------------------------------------------------------------- builders
def _check_common(records: Sequence[ImageRecord], height: int, width: int, batch_size: int, num_workers: int) -> None:
    if len(records) == 0:
        raise ValueError("records is empty: nothing to load")
    if not records or not isinstance(records[0], ImageRecord):
        raise TypeError(f"records must be a list of ImageRecord, got {type(records[0]).__name__} items")
    if height < 1 or width < 1:
        raise ValueError(f"--height/--width must be positive, got {height}x{width}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"--num_workers must be >= 0, got {num_workers}")


def build_train_loader(records: Sequence[ImageRecord], *, height: int = 384, width: int = 192, batch_size: int = 32,
                       num_instances: int = 8, seed: int = 0, device: torch.device | str = "cpu",
                       loader: str = "auto", num_workers: int = 2, pad: int = 10, flip_p: float = 0.5,
                       erase_p: float = 0.5, skip_bad_images: bool = False, rank: int = 0, world_size: int = 1,
                       output: str = "auto", dali_py_workers: int = 0):
    """The P x K training loader: ``.set_epoch(e)``, iterating yields this rank's ``Batch``es of the sampler's epoch
    order, ``len`` = batches per epoch, ``.backend`` ("dali" | "torch"), ``.bad_images`` (files skipped so far).
    ``output``: "float" (normalised in the loader), "uint8" (normalised by ``to_model_input``) or "auto".
    ``dali_py_workers`` (DALI only): > 0 reads files and draws augmentation in that many spawned processes (DALI's
    parallel external_source) instead of the training thread; worth it when file reads are slow (network storage).
    Same batches either way."""
    _check_common(records, height, width, batch_size, num_workers)
    if isinstance(dali_py_workers, bool) or not isinstance(dali_py_workers, int) or dali_py_workers < 0:
        raise ValueError(f"--dali_py_workers must be an integer >= 0, got {dali_py_workers!r}")
    if pad < 0:
        raise ValueError(f"--pad_size must be >= 0, got {pad}")
    for name, p in (("--horizontal_flip_pro", flip_p), ("--random_erasing_pro", erase_p)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p}")
    device = torch.device(device)
    sampler = IdentitySampler([r.pid for r in records], batch_size, num_instances, seed=seed, rank=rank,
                              world_size=world_size)
    backend, reason = choose_loader(loader, device)
    _notice("train", backend, reason)
    kw = dict(height=height, width=width, device=device, num_workers=num_workers, pad=pad, flip_p=flip_p,
              erase_p=erase_p, seed=seed, skip_bad_images=skip_bad_images,
              normalize_in_loader=normalizes_in_loader(output, device))
    if backend == "dali":
        from fastccreid.data.dali import DaliTrainLoader

        return DaliTrainLoader(records, sampler, py_workers=dali_py_workers, **kw)
    return TrainLoader(records, sampler, **kw)


def build_eval_loader(records: Sequence[ImageRecord], *, height: int = 384, width: int = 192, batch_size: int = 128,
                      device: torch.device | str = "cpu", loader: str = "auto", num_workers: int = 2,
                      skip_bad_images: bool = False, output: str = "auto"):
    """The evaluation loader: records in order, batches of ``batch_size``, the last partial batch kept; skipped
    unreadable images are absent from the batches (their ``indices`` say which images each batch holds).
    ``output`` as in ``build_train_loader``."""
    _check_common(records, height, width, batch_size, num_workers)
    device = torch.device(device)
    normalize = normalizes_in_loader(output, device)
    backend, reason = choose_loader(loader, device)
    _notice("eval", backend, reason)
    kw = dict(height=height, width=width, batch_size=batch_size, device=device, num_workers=num_workers,
              skip_bad_images=skip_bad_images, normalize_in_loader=normalize)
    if backend == "dali":
        from fastccreid.data.dali import DaliEvalLoader

        return DaliEvalLoader(records, **kw)
    return EvalLoader(records, **kw)
