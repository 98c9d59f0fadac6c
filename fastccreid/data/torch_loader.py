"""The torch DataLoader backend of the train and eval loaders (PIL decode + resize, NumPy flip/pad/crop).

Workers never raise a bad file at the user: an unreadable image that is not skipped comes back as a
``_Unreadable`` record and the main process raises its one-line ``BadImageError`` (torch would re-raise it
wrapped in the worker's formatted traceback). ``FASTCCREID_DEBUG=1`` lets the worker raise, traceback included.
Workers start by fork only while this process runs a single thread; otherwise by forkserver (see
``worker_context``).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from fastccreid.data.batch import (
    BadImageTracker,
    Batch,
    EpochEvalLoader,
    EpochTrainLoader,
    labels_on_device,
)
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

DEBUG_ENV = "FASTCCREID_DEBUG"  # "1": a worker's bad-image error reaches the user with the worker's traceback


def debug_enabled() -> bool:
    """True when ``FASTCCREID_DEBUG`` is set to something other than "", "0", "false" or "no"."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def live_threads() -> int:
    """Threads this process runs now, native ones included (OpenMP pools, DALI's threads) where the OS says
    (Linux: /proc/self/task); elsewhere Python's own threads only."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


def worker_context(num_workers: int) -> tuple[multiprocessing.context.BaseContext | None, str]:
    """(multiprocessing context for the DataLoader, start method name) for ``num_workers`` workers.

    Fork copies the parent's memory but only the forking thread: a lock held at that moment by another thread
    (an OpenMP pool's, DALI's, an allocator's) stays held forever in the child, which then hangs on a futex. So
    fork only while this process runs a single thread (rare: importing NumPy starts OpenBLAS's pool); otherwise
    forkserver: workers fork from a clean server process that imported the main module, torch and this module
    once (~1-4 s, the first time in a process), so a worker starts without re-importing torch (spawn re-imports it
    per worker per epoch). As with spawn, a user's script that builds loaders needs the
    ``if __name__ == "__main__":`` guard. No workers: (None, "in-process")."""
    if num_workers == 0:
        return None, "in-process"
    if live_threads() <= 1 or "forkserver" not in multiprocessing.get_all_start_methods():
        return None, multiprocessing.get_start_method(allow_none=False)
    ctx = multiprocessing.get_context("forkserver")
    # What the server imports before it forks any worker (no effect once it runs): the main module (so workers do
    # not re-run it, as Python's default preload) and this module with torch (what unpickling the dataset needs).
    ctx.set_forkserver_preload(["__main__", __name__])
    return ctx, "forkserver"


@dataclass(frozen=True)
class _Unreadable:
    """A worker's report of an image it could not read (instead of raising through torch's worker wrapper)."""

    index: int
    message: str
    path: str | None


class _TrainSet(Dataset):
    """key (epoch, position, index) -> (uint8 [H, W, 3], used index, erase box [4], bad [(index, message)]), or an
    ``_Unreadable`` when a file is bad and not skipped."""

    def __init__(self, records: Sequence[ImageRecord], height: int, width: int, pad: int, flip_p: float,
                 erase_p: float, seed: int, skip: bool) -> None:
        self.records = records
        self.height, self.width, self.pad = height, width, pad
        self.flip_p, self.erase_p, self.seed = flip_p, erase_p, seed
        self.tracker = BadImageTracker(records, skip)
        self.debug = False  # set by the loader per epoch from FASTCCREID_DEBUG (workers may not see its env)

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
                if not self.tracker.skip and not self.debug:
                    return _Unreadable(used, str(e), e.path)
                self.tracker.add(used, e)  # raises unless skipping
                bad.append((used, str(e)))
                used = self.tracker.replacement(index, pos)
        arr = flip_pad_crop_uint8(resize_uint8(img, self.height, self.width), int(p.flip[0]), int(p.crop[0, 0]),
                                  int(p.crop[0, 1]), self.pad)
        return torch.from_numpy(arr), used, torch.from_numpy(p.erase[0]), bad


def _first_unreadable(samples) -> _Unreadable | None:
    return next((s for s in samples if isinstance(s, _Unreadable)), None)


def _collate_train(samples, normalize: bool = False):
    """-> (images, indices, erase boxes, bad), or the batch's first ``_Unreadable``. ``normalize`` (CPU device):
    finish the float batch here, in the worker, in parallel with the other workers, instead of in the training
    thread."""
    failed = _first_unreadable(samples)
    if failed is not None:
        return failed
    images = torch.stack([s[0] for s in samples])
    indices = torch.tensor([s[1] for s in samples], dtype=torch.int64)
    boxes = torch.stack([s[2] for s in samples])
    bad = [b for s in samples for b in s[3]]
    if normalize:
        images = normalize_on_device(images, boxes, shared=get_worker_info() is not None)
    return images, indices, boxes, bad


class _EvalSet(Dataset):
    """index -> (uint8 [H, W, 3] or None when unreadable and skipped, index, message), or an ``_Unreadable``
    when unreadable and not skipped."""

    def __init__(self, records: Sequence[ImageRecord], height: int, width: int, skip: bool) -> None:
        self.records, self.height, self.width, self.skip = records, height, width, skip
        self.debug = False

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        try:
            img = load_rgb(self.records[index].path)
        except BadImageError as e:
            if self.skip:
                return None, index, str(e)
            if self.debug:
                raise
            return _Unreadable(index, str(e), e.path)
        return torch.from_numpy(resize_uint8(img, self.height, self.width)), index, ""


def _collate_eval(samples, normalize: bool = False):
    failed = _first_unreadable(samples)
    if failed is not None:
        return failed
    good = [s for s in samples if s[0] is not None]
    images = torch.stack([s[0] for s in good]) if good else None
    if normalize and images is not None:
        images = normalize_on_device(images, shared=get_worker_info() is not None)
    indices = torch.tensor([s[1] for s in good], dtype=torch.int64)
    bad = [(s[1], s[2]) for s in samples if s[0] is None]
    return images, indices, bad


def _raise_unreadable(failed: _Unreadable, records: Sequence[ImageRecord]) -> None:
    raise BadImageError(failed.message, failed.path or records[failed.index].path)


def _data_loader(dataset, **kw) -> DataLoader:
    ctx, _ = worker_context(kw["num_workers"])
    return DataLoader(dataset, multiprocessing_context=ctx, **kw)


class TrainLoader(EpochTrainLoader):
    """Torch DataLoader backend of the train loader (see ``loaders.build_train_loader``)."""

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
        self.dataset.debug = debug_enabled()
        loader = _data_loader(self.dataset, batch_sampler=self.batch_keys()[self.start_batch:],
                              num_workers=self.num_workers, collate_fn=partial(_collate_train, normalize=normalize),
                              pin_memory=self.device.type == "cuda")
        for out in loader:
            if isinstance(out, _Unreadable):
                _raise_unreadable(out, self.records)
            images, indices, boxes, bad = out
            for index, msg in bad:
                self.tracker.add(index, BadImageError(msg, self.records[index].path))
            pids, camids, clothes = labels_on_device(self.records, indices.numpy(), self.device)
            yield Batch(images.to(self.device, non_blocking=True), pids, camids, clothes,
                        indices.to(self.device, non_blocking=True), normalize,
                        boxes.to(self.device, non_blocking=True))
        self.tracker.end_epoch(f"training epoch {self.epoch + 1}")


class EvalLoader(EpochEvalLoader):
    """Torch DataLoader backend of the eval loader (see ``loaders.build_eval_loader``)."""

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
        self.dataset.debug = debug_enabled()
        loader = _data_loader(self.dataset, batch_size=self.batch_size, shuffle=False, drop_last=False,
                              num_workers=self.num_workers, collate_fn=partial(_collate_eval, normalize=normalize),
                              pin_memory=self.device.type == "cuda")
        for out in loader:
            if isinstance(out, _Unreadable):
                _raise_unreadable(out, self.records)
            images, indices, bad = out
            for index, msg in bad:
                self.tracker.add(index, BadImageError(msg, self.records[index].path))
            if images is None:
                continue
            pids, camids, clothes = labels_on_device(self.records, indices.numpy(), self.device)
            yield Batch(images.to(self.device, non_blocking=True), pids, camids, clothes,
                        indices.to(self.device, non_blocking=True), normalize)
        self.tracker.end_epoch("evaluation")
