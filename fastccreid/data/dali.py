"""NVIDIA DALI pipelines for the train and eval loaders (the only module that imports ``nvidia.dali``).

Train: an external_source in batch mode hands DALI each batch's encoded files in the identity sampler's order plus
the host-drawn flip and crop parameters (``transforms.sample_aug_params``, seeded by (seed, epoch, position)).
On a GPU, DALI decodes with ``device="mixed"``, then one uint8 resize whose per-sample region of interest also
mirrors and shifts the image (flip + pad + crop folded in). On a CPU, DALI decodes and mirrors in its threads, then
the consumer resizes with torch's uint8 kernel (``_host_resize``: DALI's CPU resize costs more than the decode) and
shifts by row copies. The padding band and the erase boxes ride along and are
painted after normalisation by ``to_model_input`` (black / exactly 0, as the seed).
DALI's own RNG is never used, so a pipeline rebuilt from (seed, epoch, batch) replays exactly: each epoch builds
a fresh pipeline. With ``py_workers`` > 0 the source is DALI's parallel per-sample external_source instead
(``dali_source.SampleSource``, in spawned processes), which derives each epoch's plan from (seed, epoch) itself, so
one pipeline serves successive epochs.
Eval: the same decode + resize in fixed order, with the last partial batch kept (batch-mode external_source may
return a smaller batch).
Bad data: files are magic-checked on the host before DALI sees them; a decode failure inside DALI is traced to its
file by decoding the in-flight batches with PIL, then raised by name or (skip) replaced and the pipeline rebuilt at
that batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fastccreid.data.batch import BadImageTracker, Batch, EpochEvalLoader, EpochTrainLoader, labels_on_device
from fastccreid.data.dali_source import SampleSource, aug_outputs
from fastccreid.data.records import ImageRecord
from fastccreid.data.sampler import IdentitySampler
from fastccreid.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BadImageError,
    borrowed_host_to_device,
    check_magic,
    flip_pad_crop_uint8,
    load_rgb,
    normalize_on_device,
    paint_boxes,
    read_bytes,
)

_PREFETCH = 2  # batches DALI prepares ahead of the consumer


def dali_cuda_major(value: Any) -> int:
    """CUDA major of NVIDIA DALI's ``__cuda_version__``, read as DALI reads it; 0 when unknown.

    DALI writes ``int('12.1.105'.replace('.', ''))`` = 121105 (``nvidia/dali/__init__.py``) and reads the major
    back as ``int(str(__cuda_version__)[:2])`` (``nvidia/dali/backend.py``); CUDA >= 10 has two digits. A dotted
    string ('12.1.105', '12.0') gives the part before the first dot.
    """
    if value is None or isinstance(value, bool):
        return 0
    text = str(value).strip()
    if not text:
        return 0
    if "." in text:
        head = text.split(".", 1)[0]
        return int(head) if head.isdigit() else 0
    if not text.isdigit() or int(text) == 0:
        return 0
    return int(text[:2])


def dali_status(device: torch.device) -> tuple[bool, str]:
    """(usable, reason): DALI imports, and on CUDA its CUDA major version matches torch's."""
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.backend as backend
    except Exception as e:  # noqa: BLE001 - any import failure means "not usable", reported with its message
        return False, f"NVIDIA DALI does not import ({type(e).__name__}: {e})"
    version = nvidia.dali.__version__
    if device.type != "cuda":
        return True, f"DALI {version} in CPU mode"
    dali_cuda = dali_cuda_major(getattr(backend, "__cuda_version__", 0))
    torch_cuda = torch.version.cuda
    if torch_cuda is None:
        return False, "torch has no CUDA build"
    if dali_cuda and dali_cuda != int(torch_cuda.split(".")[0]):
        return False, f"DALI {version} is built for CUDA {dali_cuda}, torch for CUDA {torch_cuda}"
    return True, f"DALI {version} on {device} (GPU decode)"


def _device_id(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


def _to_torch(out, device: torch.device, normalized: bool) -> torch.Tensor:
    """A DALI TensorList of [H, W, 3] images (uniform shapes) as a torch tensor on ``device``: uint8 [B, H, W, 3],
    or when ``normalized`` the float batch as a [B, 3, H, W] channels_last view."""
    if device.type == "cuda":  # a GPU TensorList (mixed decode): copy into a torch CUDA tensor on torch's stream
        from nvidia.dali.plugin.pytorch import feed_ndarray

        t = out.as_tensor()
        dst = torch.empty(t.shape(), dtype=torch.float32 if normalized else torch.uint8, device=device)
        feed_ndarray(t, dst, cuda_stream=torch.cuda.current_stream(device))
    else:
        # Zero-copy view of DALI's output buffer (the dynamic executor reference-counts outputs, so the buffer stays
        # ours while the tensor lives; a test holds a whole epoch and compares it with a fresh run). Saves a 28 MB
        # copy per float batch.
        dst = torch.from_dlpack(out.as_tensor())
    return dst.permute(0, 3, 1, 2) if normalized else dst


class _Source:
    """Batch-mode external_source: yields per batch [encoded, index, boxes, flip, shift] (CPU mode) or [encoded,
    roi_start, roi_end, index, boxes] (GPU mode; eval: [encoded, index]) from ``plan``, a list of (global
    positions, indices) batches; ``log`` records what was handed out (for tracing decode failures)."""

    def __init__(self, records: Sequence[ImageRecord], plan: list[tuple[np.ndarray, np.ndarray]],
                 tracker: BadImageTracker, aug: dict | None, epoch: int, host_resize: bool = False) -> None:
        self.records, self.plan, self.tracker, self.aug, self.epoch = records, plan, tracker, aug, epoch
        self.host_resize = host_resize  # hand out a flip flag and a (sy, sx) shift per sample instead of a resize ROI
        self.log: deque[tuple[int, np.ndarray]] = deque()
        self.i = 0

    def __iter__(self) -> _Source:
        return self

    def _read(self, index: int, position: int) -> tuple[int, np.ndarray]:
        for _ in range(len(self.records)):  # bounded: each failure marks one more file bad
            if index in self.tracker.bad:
                index = self.tracker.replacement(index, position)
                continue
            try:
                return index, read_bytes(self.records[index].path)
            except BadImageError as e:
                self.tracker.add(index, e)  # raises unless skipping
        raise BadImageError(f"no readable image left for {self.records[index].path!r}")

    def __next__(self):
        if self.i >= len(self.plan):
            raise StopIteration
        positions, indices = self.plan[self.i]
        used, enc = [], []
        for pos, idx in zip(positions, indices, strict=True):
            if self.aug is None:  # eval: bad files were filtered out of the plan already
                used.append(int(idx))
                enc.append(read_bytes(self.records[int(idx)].path))
            else:
                u, data = self._read(int(idx), int(pos))
                used.append(u)
                enc.append(data)
        used_arr = np.asarray(used, dtype=np.int64)
        self.log.append((self.i, used_arr))
        self.i += 1
        if self.aug is None:
            return enc, [np.array(i, dtype=np.int64) for i in used_arr]
        index = [np.array(i, dtype=np.int64) for i in used_arr]
        extra = aug_outputs(positions, self.aug, self.epoch, self.host_resize)
        if self.host_resize:
            boxes, flip, shift = extra
            return enc, index, boxes, flip, shift
        roi_start, roi_end, boxes = extra
        return enc, roi_start, roi_end, index, boxes


def _build_pipeline(source: _Source | SampleSource, *, train: bool, batch_size: int, height: int, width: int,
                    device: torch.device, num_threads: int, normalize: bool, py_workers: int = 0):
    """The DALI pipeline. On a GPU: mixed decode, then one resize whose ROI also flips and shifts (train), optionally
    normalised. On a CPU (``source.host_resize``): decode only; ``_host_resize`` finishes the batch in torch.
    ``py_workers`` > 0 (train): ``source`` is a per-sample ``SampleSource`` run by that many spawned processes
    (DALI's parallel external_source); 0: a batch-mode ``_Source`` called in the consumer's thread."""
    from nvidia.dali import fn, pipeline_def, types

    dev_id = _device_id(device)
    parallel = {}
    if py_workers:
        # spawn, not fork: safe after CUDA is initialised. Spawned workers re-import the main script (seconds),
        # which is why one pipeline serves successive epochs in this mode
        parallel = dict(py_num_workers=py_workers, py_start_method="spawn")

    def inputs(dtypes):
        return fn.external_source(source=source, num_outputs=len(dtypes), batch=not py_workers,
                                  parallel=bool(py_workers), dtype=dtypes)

    @pipeline_def(batch_size=batch_size, num_threads=max(1, num_threads), device_id=dev_id,
                  prefetch_queue_depth=_PREFETCH, exec_dynamic=True, **parallel)
    def pipe():
        if source.host_resize:
            if not train:
                enc, index = inputs([types.UINT8, types.INT64])
                return fn.decoders.image(enc, device="cpu", output_type=types.RGB), index
            enc, index, boxes, flip, shift = inputs([types.UINT8, types.INT64, types.INT32, types.INT32,
                                                     types.INT32])
            img = fn.decoders.image(enc, device="cpu", output_type=types.RGB)
            # The mirror goes on the small decoded image, in DALI's threads: it commutes exactly with the
            # (symmetric) resize, and a mirrored copy of the output would cost the consumer ~0.4 ms an image.
            return fn.flip(img, horizontal=flip), index, boxes, shift

        def finish(img):  # float out only when asked for: on a GPU, uint8 goes out and to_model_input normalises
            if not normalize:
                return img
            return fn.crop_mirror_normalize(img, dtype=types.FLOAT, output_layout="HWC",
                                            mean=[m * 255 for m in IMAGENET_MEAN], std=[s * 255 for s in IMAGENET_STD])

        if not train:
            enc, index = inputs([types.UINT8, types.INT64])
            img = fn.decoders.image(enc, device="mixed", output_type=types.RGB)
            return finish(fn.resize(img, size=[height, width], device="gpu")), index
        enc, roi_start, roi_end, index, boxes = inputs([types.UINT8, types.FLOAT, types.FLOAT, types.INT64,
                                                        types.INT32])
        img = fn.decoders.image(enc, device="mixed", output_type=types.RGB)
        # Resize + flip + pad/crop in one uint8 pass (measured on the CPU: a separate fn.flip + out-of-bounds
        # fn.slice cost ~30% of the pipeline's throughput).
        img = fn.resize(img, size=[height, width], roi_start=roi_start, roi_end=roi_end, roi_relative=True,
                        device="gpu")
        return finish(img), index, boxes

    p = pipe()
    p.build()
    return p


def _host_resize(images, height: int, width: int, shift: np.ndarray | None = None) -> torch.Tensor:
    """CPU mode: resize DALI's decoded images (a TensorList of uint8 [h, w, 3], any sizes) to uint8 [B, H, W, 3]
    with torch's bilinear antialiased resize (PIL's filter, as the seed's Resize; within one grey level of it), and
    for training shift each sample by its (sy, sx): output (y, x) = resized (y + sy, x + sx), 0 outside (the pad +
    crop of ``flip_pad_crop_uint8``; the flip was done in DALI).

    Why here and not in DALI: DALI's CPU resize costs ~1.2 ms an image at 128x256 -> 384x192, more than decoding
    a PNG; torch's uint8 kernel does a same-sized group in ~0.1 ms an image (one call per distinct input size)."""
    n = len(images)
    if images.is_dense_tensor():
        groups = {None: list(range(n))}
    else:
        groups = {}
        for i, sh in enumerate(images.shape()):
            groups.setdefault(tuple(sh), []).append(i)
    out = torch.empty((n, height, width, 3), dtype=torch.uint8)
    for members in groups.values():
        if len(members) == n:
            src = torch.from_dlpack(images.as_tensor())
        else:
            src = torch.stack([torch.from_dlpack(images[i]) for i in members])
        resized = F.interpolate(src.permute(0, 3, 1, 2), size=(height, width), mode="bilinear",
                                align_corners=False, antialias=True).permute(0, 2, 3, 1)  # [m, H, W, 3] memory
        if shift is None:
            if len(members) == n:
                return resized  # the whole batch: no copy
            out[members] = resized
            continue
        rs, dst = resized.numpy(), out.numpy()  # numpy row copies: no OpenMP fork/join per small write
        for k, i in enumerate(members):
            flip_pad_crop_uint8(rs[k], 0, int(shift[i, 0]), int(shift[i, 1]), 0, out=dst[i])
    return out


def _find_bad(records: Sequence[ImageRecord], handed_out: Iterable[tuple[int, np.ndarray]],
              consumed: int) -> list[tuple[int, BadImageError]]:
    """Decode with PIL every image of the batches (batch number, indices) handed to DALI but not yet returned; the
    failures."""
    bad = []
    for batch_no, used in handed_out:
        if batch_no < consumed:
            continue
        for idx in used:
            try:
                load_rgb(records[int(idx)].path)
            except BadImageError as e:
                bad.append((int(idx), e))
    return bad


class DaliTrainLoader(EpochTrainLoader):
    """DALI backend of ``build_train_loader``; same interface as ``torch_loader.TrainLoader``."""

    backend = "dali"

    def __init__(self, records: Sequence[ImageRecord], sampler: IdentitySampler, *, height: int, width: int,
                 device: torch.device, num_workers: int, pad: int, flip_p: float, erase_p: float, seed: int,
                 skip_bad_images: bool, normalize_in_loader: bool, py_workers: int = 0) -> None:
        self.records, self.sampler, self.device = records, sampler, device
        self.height, self.width, self.num_threads = height, width, num_workers
        self.aug = dict(seed=seed, height=height, width=width, pad=pad, flip_p=flip_p, erase_p=erase_p)
        self.tracker = BadImageTracker(records, skip_bad_images)
        self.epoch = 0
        self.normalize_in_loader = normalize_in_loader  # see _build_pipeline.finish
        self.py_workers = py_workers  # > 0: DALI's parallel external_source with that many spawned processes
        self._kept = None  # parallel mode: (pipeline, source, the epoch it serves next) after a finished epoch

    def _plan(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return list(zip(*self.sampler.rank_batches(self.epoch), strict=True))

    def _sample_source(self, first_offset: int) -> SampleSource:
        s = self.sampler
        return SampleSource([r.path for r in self.records], [r.pid for r in self.records],
                            dict(batch_size=s.batch_size, num_instances=s.num_instances, seed=s.seed, rank=s.rank,
                                 world_size=s.world_size),
                            self.aug, self.epoch, first_offset, frozenset(self.tracker.bad),
                            host_resize=self.device.type != "cuda")

    def _parallel_pipeline(self, start: int, share: int):
        """(pipeline, source) for parallel mode from batch ``start`` of this epoch: the previous epoch's, reset,
        when it ran to its end right before this epoch and no file has gone bad since; else a new one."""
        kept, self._kept = self._kept, None
        if kept is not None:
            pipe, source, next_epoch = kept
            if start == 0 and next_epoch == self.epoch and source.bad == frozenset(self.tracker.bad):
                return pipe, source
            del pipe, kept  # shuts its workers down
        source = self._sample_source(start * share)
        pipe = _build_pipeline(source, train=True, batch_size=share, height=self.height, width=self.width,
                               device=self.device, num_threads=self.num_threads, normalize=self.normalize_in_loader,
                               py_workers=self.py_workers)
        return pipe, source

    def __iter__(self) -> Iterator[Batch]:
        share = self.sampler.batch_size // self.sampler.world_size
        n_batches = len(self.sampler.epoch_indices(self.epoch)) // self.sampler.batch_size
        start = self.start_batch  # a resumed epoch's first batches are never handed to DALI
        while start < n_batches:
            if self.py_workers:
                pipe, source = self._parallel_pipeline(start, share)
                used = source.plan(self.epoch)[0][start * share:]
                handed_out = [(t, used[t * share:(t + 1) * share]) for t in range(len(used) // share)]
            else:
                # A fresh pipeline per epoch (and after a skipped decode failure): its state is (seed, epoch, batch)
                source = _Source(self.records, self._plan()[start:], self.tracker, self.aug, self.epoch,
                                 host_resize=self.device.type != "cuda")
                handed_out = source.log
                pipe = _build_pipeline(source, train=True, batch_size=share, height=self.height, width=self.width,
                                       device=self.device, num_threads=self.num_threads,
                                       normalize=self.normalize_in_loader)
            consumed = 0
            finished = False
            try:
                while True:
                    try:
                        outputs = pipe.run()  # DALI already decodes the next batches in its threads (prefetch)
                    except StopIteration:
                        start = n_batches
                        finished = True
                        break
                    images, index, boxes = outputs[:3]
                    indices = torch.from_numpy(np.asarray(index.as_array(), dtype=np.int64).reshape(-1))
                    pids, camids, clothes = labels_on_device(self.records, indices.numpy(), self.device)
                    # staged in torch's pinned memory + non_blocking on CUDA: the host queues the step instead of
                    # waiting, and DALI's buffers (valid for this iteration only) are never a pending copy's source
                    box = borrowed_host_to_device(torch.from_numpy(boxes.as_array().reshape(-1, 8)), self.device)
                    if source.host_resize:
                        x = _host_resize(images, self.height, self.width, outputs[3].as_array().reshape(-1, 2))
                        if self.normalize_in_loader:
                            x = normalize_on_device(x, box[:, :4], box[:, 4:])
                    else:
                        x = _to_torch(images, self.device, self.normalize_in_loader)
                        if self.normalize_in_loader:  # paint the padding band and erase boxes (~1 ms a batch)
                            x = paint_boxes(x, box[:, :4], box[:, 4:])
                    yield Batch(x, pids, camids, clothes, borrowed_host_to_device(indices, self.device),
                                self.normalize_in_loader, box[:, :4], box[:, 4:])
                    consumed += 1
            except Exception:  # noqa: BLE001 - a failed decode (RuntimeError) or a worker's error (bare Exception)
                # parallel mode: the workers run at most a few batches ahead; look at those only
                window = handed_out if not self.py_workers else handed_out[consumed:consumed + 2 * _PREFETCH + 2]
                bad = _find_bad(self.records, window, consumed)
                if not bad:
                    raise
                for idx, e in bad:
                    self.tracker.add(idx, e)  # raises the first one by name unless skipping
                start += consumed
            finally:
                if finished and self.py_workers:
                    pipe.reset()  # the next epoch (epoch_idx + 1) runs on the same workers
                    self._kept = (pipe, source, self.epoch + 1)
                del pipe
        self.tracker.end_epoch(f"training epoch {self.epoch + 1}")


class DaliEvalLoader(EpochEvalLoader):
    """DALI backend of ``build_eval_loader``; same interface as ``torch_loader.EvalLoader``."""

    backend = "dali"

    def __init__(self, records: Sequence[ImageRecord], *, height: int, width: int, batch_size: int,
                 device: torch.device, num_workers: int, skip_bad_images: bool,
                 normalize_in_loader: bool) -> None:
        self.records, self.height, self.width = records, height, width
        self.batch_size, self.device, self.num_threads = batch_size, device, num_workers
        self.tracker = BadImageTracker(records, skip_bad_images)
        self.normalize_in_loader = normalize_in_loader

    def __iter__(self) -> Iterator[Batch]:
        todo = np.arange(len(self.records), dtype=np.int64)  # records not yet returned
        while len(todo):
            good = []
            for i in todo:  # magic check on the host: empty / garbage files never reach DALI
                try:
                    with open(self.records[int(i)].path, "rb") as f:
                        check_magic(self.records[int(i)].path, f.read(8))
                    good.append(int(i))
                except OSError as e:
                    self.tracker.add(int(i), BadImageError(f"cannot read image {self.records[int(i)].path!r}: "
                                                           f"{e.strerror or e}", self.records[int(i)].path))
                except BadImageError as e:
                    self.tracker.add(int(i), e)
            todo = np.asarray(good, dtype=np.int64)
            plan = [(todo[s:s + self.batch_size], todo[s:s + self.batch_size])
                    for s in range(0, len(todo), self.batch_size)]
            if not plan:
                break
            source = _Source(self.records, plan, self.tracker, None, 0, host_resize=self.device.type != "cuda")
            pipe = _build_pipeline(source, train=False, batch_size=self.batch_size, height=self.height,
                                   width=self.width, device=self.device, num_threads=self.num_threads,
                                   normalize=self.normalize_in_loader)
            done = batches = 0
            try:
                while True:
                    try:
                        images, index = pipe.run()
                    except StopIteration:
                        todo = todo[:0]
                        break
                    indices = torch.from_numpy(np.asarray(index.as_array(), dtype=np.int64).reshape(-1))
                    pids, camids, clothes = labels_on_device(self.records, indices.numpy(), self.device)
                    if source.host_resize:
                        x = _host_resize(images, self.height, self.width)
                        if self.normalize_in_loader:
                            x = normalize_on_device(x)
                    else:
                        x = _to_torch(images, self.device, self.normalize_in_loader)
                    yield Batch(x, pids, camids, clothes, borrowed_host_to_device(indices, self.device),
                                self.normalize_in_loader)
                    done += len(indices)
                    batches += 1
            except RuntimeError:
                bad = _find_bad(self.records, source.log, batches)
                if not bad:
                    raise
                for idx, e in bad:
                    self.tracker.add(idx, e)
                bad_set = {i for i, _ in bad}
                todo = np.asarray([i for i in todo[done:] if int(i) not in bad_set], dtype=np.int64)
            finally:
                del pipe
        self.tracker.end_epoch("evaluation")
