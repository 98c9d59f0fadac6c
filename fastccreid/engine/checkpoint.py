"""Checkpoints: atomic writes, safe reads, and the seed's best-mAP / best-rank-1 copies.

A checkpoint is the seed's dict (``model_state_dict``, ``optimizer_state_dict``, ``rank1``, ``mAP``, ``epoch``)
plus what an exact resume needs: ``scheduler_state_dict``, ``scaler_state_dict``, ``rng`` (python, numpy, torch,
cuda), ``resume_step`` (batches already done in epoch ``epoch + 1`` after an interrupt), ``best`` metrics and a
``fastccreid`` block (format, num_classes, dataset, image size). Files are written to a temporary name in the same
folder and renamed, so a crash never leaves a half-written checkpoint under the real name.

Reading uses ``torch.load(weights_only=True)``: tensors, numbers, strings and containers only, plus the plain numpy
scalars (``numpy.float64`` etc.) that the official checkpoints hold in ``rank1``/``mAP``; anything else is refused.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 1
BEST_MAP_NAME = "best_mAP_model.pth"
BEST_RANK1_NAME = "best_rank1_model.pth"
LAST_NAME = "checkpoint_last.pth"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, unsafe, or made for a different model/run."""


def _numpy_scalar_reconstructor():
    core = getattr(np, "_core", None)
    multiarray = getattr(core, "multiarray", None) if core is not None else None
    if multiarray is None:  # numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    return multiarray.scalar


_NUMERIC_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
                   "float32", "float64")


def _safe_numpy_globals() -> list:
    """numpy's scalar reconstructor under both module names (numpy 1 pickles say numpy.core, numpy 2 numpy._core),
    numpy.dtype and the numeric dtype classes (numpy >= 1.25 rebuilds a dtype as e.g. Float64DType): exactly what
    pickling a numpy bool/int/float scalar references, nothing that can hold arbitrary objects."""
    scalar = _numpy_scalar_reconstructor()
    dtype_classes = {type(np.dtype(name)) for name in _NUMERIC_DTYPES} - {np.dtype}
    return [np.dtype, *sorted(dtype_classes, key=lambda c: c.__name__), (scalar, "numpy.core.multiarray.scalar"),
            (scalar, "numpy._core.multiarray.scalar")]


def _check_numpy_values(obj: Any, path: str, where: str = "") -> None:
    """Only numeric/bool numpy scalars are accepted (an object-dtype scalar could smuggle in anything)."""
    if isinstance(obj, np.generic):
        if obj.dtype.kind not in "biuf":
            raise CheckpointError(f"{path}: refusing a numpy scalar of dtype {obj.dtype} at {where or 'top level'}; "
                                  f"only numeric numpy scalars are allowed")
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _check_numpy_values(v, path, f"{where}.{k}" if where else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_numpy_values(v, path, f"{where}[{i}]")


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a fastccreid or official checkpoint safely; a bare state dict is wrapped as ``{"model_state_dict": ...}``.

    Raises CheckpointError naming the file and the problem (missing, truncated/corrupt, unsafe content, no weights).
    """
    if not path:
        raise CheckpointError("--resume: no checkpoint path given")
    if not os.path.isfile(path):
        raise CheckpointError(f"--resume {path}: no such checkpoint file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"--resume {path}: the file is empty (an interrupted copy?)")
    try:
        with torch.serialization.safe_globals(_safe_numpy_globals()):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - the list is only a hint for the message
            names = []
        allowed = {"numpy.dtype", "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"}
        allowed |= {f"{c.__module__}.{c.__name__}" for c in _safe_numpy_globals() if isinstance(c, type)}
        names = [n for n in names if n not in allowed]
        if names:
            raise CheckpointError(
                f"--resume {path}: refusing to load it: it holds Python objects outside the safe allow-list "
                f"({', '.join(names[:6])}). Official and fastccreid checkpoints hold only tensors, numbers, strings "
                f"and numpy scalars; if you trust this file, re-save its tensors as a plain state dict.") from None
        raise CheckpointError(f"--resume {path}: cannot unpickle it safely ({str(exc).splitlines()[0]})") from None
    except Exception as exc:  # noqa: BLE001 - truncated zips, garbage bytes, bad headers: all "corrupt"
        raise CheckpointError(f"--resume {path}: the file is corrupt or truncated, or not a PyTorch checkpoint "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"--resume {path}: expected a dict, found {type(obj).__name__}")
    _check_numpy_values(obj, path)
    if "model_state_dict" not in obj:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {"model_state_dict": dict(obj)}
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                return {**obj, "model_state_dict": obj[key]}
        raise CheckpointError(f"--resume {path}: no 'model_state_dict' in it (keys: {', '.join(map(str, obj))[:200]})")
    return dict(obj)


def _atomic_torch_save(obj: Any, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX within one file system
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_copy(src: str, dst: str) -> None:
    """Give ``dst`` the content of ``src`` through a temporary name and a rename: a hard link when the file system
    allows (checkpoint files are never modified in place, only replaced, so sharing the inode is safe and saves a
    600 MB write), else a copy."""
    folder = os.path.dirname(os.path.abspath(dst))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dst)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        os.remove(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_checkpoint(state: Mapping[str, Any], path: str, *, is_best_map: bool = False,
                    is_best_rank1: bool = False) -> str:
    """Write ``state`` to ``path`` atomically; copy it to best_mAP_model.pth / best_rank1_model.pth beside it when
    flagged (the seed's names). Returns ``path``."""
    _atomic_torch_save(dict(state), path)
    folder = os.path.dirname(os.path.abspath(path))
    if is_best_map:
        atomic_copy(path, os.path.join(folder, BEST_MAP_NAME))
    if is_best_rank1:
        atomic_copy(path, os.path.join(folder, BEST_RANK1_NAME))
    return path


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) generator states in checkpoint-safe types (no numpy arrays)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what ``rng_state`` captured (missing parts are left alone)."""
    if "python" in state:
        py = state["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


def check_compatible(ckpt: Mapping[str, Any], path: str, *, num_classes: int, dataset: str) -> None:
    """Refuse to resume training from a checkpoint made for another class count or dataset, saying which differs."""
    meta = ckpt.get("fastccreid") or {}
    sd = ckpt.get("model_state_dict") or {}
    weight = sd.get("classifier.weight", sd.get("module.classifier.weight"))
    if weight is not None and weight.shape[0] != num_classes:
        raise CheckpointError(f"--resume {path}: the checkpoint's classifier has {weight.shape[0]} classes but "
                              f"dataset {dataset!r} has {num_classes} training identities (was it trained on "
                              f"{meta.get('dataset', 'another dataset')}?)")
    if meta.get("dataset") not in (None, dataset):
        raise CheckpointError(f"--resume {path}: made for dataset {meta['dataset']!r}, this run uses {dataset!r}")
