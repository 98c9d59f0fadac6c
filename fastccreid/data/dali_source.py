"""What DALI's external_source hands the training pipeline per sample: the encoded file and the host-drawn
augmentation, as the decode + resize stage wants it. NumPy only at import (the sampler, which needs torch, is
imported when a worker first plans an epoch), because ``SampleSource`` runs in DALI's spawned Python workers
(``--dali_py_workers``), which import this module when they start.
"""

from __future__ import annotations

import numpy as np

from fastccreid.data.hostaug import pick_replacement, read_bytes, sample_aug_params


def aug_outputs(positions: np.ndarray, aug: dict, epoch: int, host_resize: bool) -> tuple[list, ...]:
    """Per-sample augmentation outputs for the samples at ``positions`` (global positions in the epoch's order).

    host_resize (CPU mode): (boxes, flip, shift), the mirror done by DALI and the shift by ``_host_resize``.
    Otherwise (GPU mode): (roi_start, roi_end, boxes), flip + pad + crop folded into one resize ROI relative to the
    input: output pixel (y, x) reads the resized, mirrored image at (y + sy, x + sx); roi_start > roi_end along x
    mirrors. Outside the picture the resize clamps to the border, and the valid box tells ``to_model_input`` where
    to paint the padding black. boxes: int32 [8] per sample, the erase box then the picture's box.
    """
    h, w = aug["height"], aug["width"]
    p = sample_aug_params(aug["seed"], epoch, positions, h, w, aug["pad"], aug["flip_p"], aug["erase_p"])
    sy = p.crop[:, 0] - aug["pad"]
    sx = p.crop[:, 1] - aug["pad"]
    vy0, vx0 = np.maximum(0, -sy), np.maximum(0, -sx)
    valid = np.stack([vy0, vx0, np.minimum(h, h - sy) - vy0, np.minimum(w, w - sx) - vx0], axis=1)
    boxes = list(np.concatenate([p.erase, valid], axis=1).astype(np.int32))
    if host_resize:
        shift = list(np.stack([sy, sx], axis=1).astype(np.int32))
        return boxes, [np.array(f, dtype=np.int32) for f in p.flip], shift
    y_start, y_end = sy / h, (sy + h) / h
    x_start = np.where(p.flip == 1, (w - sx) / w, sx / w)
    x_end = np.where(p.flip == 1, -sx / w, (sx + w) / w)
    roi_start = list(np.stack([y_start, x_start], axis=1).astype(np.float32))
    roi_end = list(np.stack([y_end, x_end], axis=1).astype(np.float32))
    return roi_start, roi_end, boxes


class SampleSource:
    """Per-sample callback for DALI's parallel external_source (picklable: plain lists, arrays and dicts).

    It derives each epoch's plan itself from the sampler's (seed, epoch), so one pipeline and its worker processes
    serve epoch after epoch (spawned workers re-import the training script, which takes seconds): DALI's
    ``epoch_idx`` counts the epochs since ``first_epoch``, whose first ``first_offset`` samples are skipped (a
    mid-epoch resume). Sample k of an epoch is this rank's k-th planned sample; a file in ``bad`` (known bad when
    the pipeline was built) is replaced by the same rule as the batch-mode source, so the batches are the same bit
    for bit. A file found unreadable here raises ``BadImageError`` in the worker; the loader then finds it by name
    and rebuilds the pipeline."""

    def __init__(self, paths: list[str], pids: list[int], sampler_args: dict, aug: dict, first_epoch: int,
                 first_offset: int, bad: frozenset, host_resize: bool) -> None:
        self.paths, self.pids, self.sampler_args, self.aug = paths, pids, sampler_args, aug
        self.first_epoch, self.first_offset, self.bad, self.host_resize = first_epoch, first_offset, bad, host_resize
        self._plan_cache: tuple[int, np.ndarray, np.ndarray] | None = None

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(used indices, global positions) of this rank's samples in ``epoch``, in batch order."""
        if self._plan_cache is None or self._plan_cache[0] != epoch:
            from fastccreid.data.sampler import IdentitySampler  # torch: only once a worker needs a plan

            positions, used = (a.reshape(-1) for a in
                               IdentitySampler(self.pids, **self.sampler_args).rank_batches(epoch))
            if self.bad:
                by_pid: dict[int, list[int]] = {}
                for i, pid in enumerate(self.pids):
                    by_pid.setdefault(pid, []).append(i)
                used = np.asarray([pick_replacement(int(i), int(pos), self.pids, by_pid, self.bad, self.paths)
                                   if int(i) in self.bad else int(i) for i, pos in zip(used, positions, strict=True)],
                                  dtype=np.int64)
            self._plan_cache = (epoch, used, positions)
        return self._plan_cache[1], self._plan_cache[2]

    def __call__(self, info):
        epoch = self.first_epoch + info.epoch_idx
        k = info.idx_in_epoch + (self.first_offset if info.epoch_idx == 0 else 0)
        used, positions = self.plan(epoch)
        if k >= len(used):
            raise StopIteration
        index = int(used[k])
        data = read_bytes(self.paths[index])
        extra = aug_outputs(positions[k:k + 1], self.aug, epoch, self.host_resize)
        label = np.array(index, dtype=np.int64)
        if self.host_resize:
            boxes, flip, shift = extra
            return data, label, boxes[0], flip[0], shift[0]
        roi_start, roi_end, boxes = extra
        return data, roi_start[0], roi_end[0], label, boxes[0]
