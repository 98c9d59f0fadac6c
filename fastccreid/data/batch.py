"""What both input-pipeline backends share (the torch DataLoader in ``torch_loader``, DALI in ``dali``): the
``Batch`` they yield, ``to_model_input`` that finishes it on the model's device, the bad-image bookkeeping and the
epoch-loader bases. Both backends import this module; the builders in ``loaders`` sit above them all, so no
module imports one that imports it back.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fastccreid.data.hostaug import BadImageError, pick_replacement
from fastccreid.data.records import ImageRecord
from fastccreid.data.sampler import IdentitySampler
from fastccreid.data.transforms import host_to_device, normalize_on_device


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


def labels_on_device(records: Sequence[ImageRecord], indices: np.ndarray,
                     device: torch.device) -> list[torch.Tensor]:
    """[pids, camids, clothes_ids], each int64 [B] on ``device``, of ``records[indices]``."""
    arr = np.array([(records[i].pid, records[i].camid, records[i].clothes_id) for i in indices], dtype=np.int64)
    arr = arr.reshape(-1, 3)
    t = host_to_device(torch.from_numpy(arr), device)  # pinned + non_blocking on CUDA: the host does not wait
    return [t[:, 0], t[:, 1], t[:, 2]]


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
