"""The training and evaluation input pipelines behind one interface: DALI (``fastccreid.data.dali``) or the
torchvision/PIL DataLoader (``fastccreid.data.torch_loader``), chosen by ``--loader {auto,dali,torch}``.

Both paths yield ``Batch`` objects whose images are uint8 on the model's device; ``to_model_input`` turns them into
the seed's normalised float input in one fused pass there (ToTensor + Normalize + the erase fill). Train batches
follow ``IdentitySampler.epoch_indices(epoch)`` exactly (P ids x K images each), and every augmentation parameter is
a function of (seed, epoch, position), so seeded runs and resumes repeat and both backends draw the same values.

Layering: ``batch`` (shared types) <- ``torch_loader`` / ``dali`` (backends) <- this module (the builders). The
shared names stay importable from here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from fastccreid.data.batch import (  # noqa: F401  (re-exported: the public import path of these names)
    BadImageTracker,
    Batch,
    EpochEvalLoader,
    EpochTrainLoader,
    to_model_input,
)
from fastccreid.data.records import ImageRecord
from fastccreid.data.sampler import IdentitySampler
from fastccreid.data.torch_loader import EvalLoader, TrainLoader  # noqa: F401  (also re-exported)

LOADER_CHOICES = ("auto", "dali", "torch")
# What a loader hands out: "float" = normalised float batches finished by the loader (its DataLoader workers, or in
# DALI's CPU mode the iterating thread, while DALI decodes the next batches);
# "uint8" = uint8 HWC batches on the model's device that ``to_model_input`` normalises there (into the model's first
# step); "auto" = float on a CPU-only run, uint8 on an accelerator.
OUTPUT_CHOICES = ("auto", "float", "uint8")
_NOTICES: set[tuple[str, str]] = set()  # (backend, reason) lines already printed by this process
_CAPPED: set[tuple[int, int]] = set()  # (asked, allowed) worker caps already reported by this process


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


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask: what a container or ``taskset`` allows), >= 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity on this OS
        return max(1, os.cpu_count() or 1)


def cap_workers(num_workers: int) -> int:
    """``num_workers`` capped at ``usable_cpus()``; says so in one line (once per process and value). More
    loader workers (or DALI threads) than CPUs only adds switching, and torch warns twice about it."""
    cpus = usable_cpus()
    if num_workers <= cpus:
        return num_workers
    if (num_workers, cpus) not in _CAPPED:
        _CAPPED.add((num_workers, cpus))
        print(f"=> -j/--num_workers {num_workers} capped at {cpus}: this process may use {cpus} CPU(s)", flush=True)
    return cpus


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
    Same batches either way. ``num_workers`` (DataLoader workers, or DALI's threads) is capped at the CPUs this
    process may use (``usable_cpus``)."""
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
    kw = dict(height=height, width=width, device=device, num_workers=cap_workers(num_workers), pad=pad,
              flip_p=flip_p, erase_p=erase_p, seed=seed, skip_bad_images=skip_bad_images,
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
    kw = dict(height=height, width=width, batch_size=batch_size, device=device,
              num_workers=cap_workers(num_workers), skip_bad_images=skip_bad_images, normalize_in_loader=normalize)
    if backend == "dali":
        from fastccreid.data.dali import DaliEvalLoader

        return DaliEvalLoader(records, **kw)
    return EvalLoader(records, **kw)
