"""Saved query / gallery features: the file formats, and the ``fastccreid eval-features`` subcommand.

Formats (one file per set):
- ``.npz`` with keys ``feats`` [N, D] float, ``pids`` [N] int, ``camids`` [N] int, optional ``clothes`` [N] int;
- ``.pt``: a dict with the same keys (tensors or arrays), read with ``torch.load(weights_only=True)``;
- ``.npy``: the features [N, D] alone, labels in a sibling ``<name>.labels.npz`` (keys pids, camids[, clothes]).
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass

import numpy as np

REQUIRED = ("feats", "pids", "camids")


@dataclass
class FeatureSet:
    """One evaluated set: feats [N, D] float32, pids / camids [N] int64, clothes [N] int64 or None."""

    feats: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    clothes: np.ndarray | None
    path: str = ""


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def save_features(path: str, feats, pids, camids, clothes=None) -> str:
    """Write one set as ``.npz`` (default, also when ``path`` has no suffix) or ``.pt``; returns the path written."""
    data = {"feats": _to_numpy(feats).astype(np.float32, copy=False), "pids": _to_numpy(pids).astype(np.int64),
            "camids": _to_numpy(camids).astype(np.int64)}
    if clothes is not None:
        data["clothes"] = _to_numpy(clothes).astype(np.int64)
    _validate(data, path)
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    if path.endswith(".pt"):
        import torch

        torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in data.items()}, path)
        return path
    if not path.endswith(".npz"):
        path = path + ".npz"
    np.savez(path, **data)
    return path


def _validate(data: dict, path: str) -> FeatureSet:
    for key in REQUIRED:
        if key not in data:
            raise ValueError(f"{path}: missing key {key!r} (needs {', '.join(REQUIRED)}[, clothes]; has "
                             f"{', '.join(sorted(data)) or 'nothing'})")
    feats = np.asarray(data["feats"])
    if feats.ndim != 2:
        raise ValueError(f"{path}: 'feats' must be 2-D [N, D], got shape {feats.shape}")
    if feats.shape[0] == 0:
        raise ValueError(f"{path}: the set is empty ('feats' has 0 rows)")
    if feats.dtype.kind != "f":
        raise ValueError(f"{path}: 'feats' must be floating point, got {feats.dtype}")
    if not np.isfinite(feats).all():
        bad = int((~np.isfinite(feats)).any(1).sum())
        raise ValueError(f"{path}: 'feats' has NaN or Inf values in {bad} row(s)")
    out = {}
    for key in ("pids", "camids", "clothes"):
        if key not in data or data[key] is None:
            out[key] = None
            continue
        v = np.asarray(data[key])
        if v.ndim != 1 or v.shape[0] != feats.shape[0]:
            raise ValueError(f"{path}: {key!r} must have shape ({feats.shape[0]},) to match 'feats', got {v.shape}")
        if v.dtype.kind not in "iu":
            raise ValueError(f"{path}: {key!r} must hold integers, got {v.dtype}")
        out[key] = v.astype(np.int64)
    return FeatureSet(feats.astype(np.float32, copy=False), out["pids"], out["camids"], out["clothes"], path)


def _guarded(path: str, read):
    """``read()``, with any failure to parse the file turned into a ValueError that names it and says why."""
    import pickle
    import zipfile

    try:
        return read()
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found:  # torch.load(weights_only=True) refused a global: it is never unpickled
            raise ValueError(f"{path}: refused to load: it references {found.group(1)}, and only tensors, numbers, "
                             f"strings and containers are read") from None
        raise ValueError(f"{path}: corrupt or truncated file (not a readable torch or pickle file)") from None
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path}: corrupt or truncated file ({type(exc).__name__}: {exc})") from None
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise ValueError(f"{path}: holds pickled (object) arrays, which are not read for safety; save plain "
                             f"numeric arrays (feats float [N, D]; pids, camids[, clothes] int [N])") from None
        raise ValueError(f"{path}: cannot be read ({exc})") from None
    except (OSError, RuntimeError) as exc:
        raise ValueError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from None


def _read_npz(path: str) -> dict:
    def read() -> dict:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    data = _guarded(path, read)
    if not isinstance(data, dict):  # np.load of a plain .npy saved under a .npz name returns an array
        raise ValueError(f"{path}: not an .npz archive (keys feats, pids, camids[, clothes])")
    return data


def _read_pt(path: str):
    import torch

    return _guarded(path, lambda: torch.load(path, map_location="cpu", weights_only=True))


def load_features(path: str) -> FeatureSet:
    """Read a set in any of the module's formats, checking keys, shapes and values (errors name file and key)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if path.endswith(".npz"):
        data = _read_npz(path)
    elif path.endswith(".pt"):
        obj = _read_pt(path)
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: expected a dict with keys {', '.join(REQUIRED)}[, clothes], got "
                             f"{type(obj).__name__}")
        data = {k: _to_numpy(v) for k, v in obj.items()}
    elif path.endswith(".npy"):
        labels = path[: -len(".npy")] + ".labels.npz"
        if not os.path.exists(labels):
            raise FileNotFoundError(f"{path}: a .npy holds features only; its labels file {labels} "
                                    "(keys pids, camids[, clothes]) is missing")
        data = {"feats": _guarded(path, lambda: np.load(path, allow_pickle=False)), **_read_npz(labels)}
        path = f"{path} (+ {os.path.basename(labels)})"
    else:
        raise ValueError(f"{path}: unknown format; use .npz, .pt or .npy (+ .labels.npz)")
    return _validate(data, path)


def run_eval_features(args) -> int:
    """``fastccreid eval-features QUERY GALLERY``: print the standard table and optionally write JSON."""
    from fastccreid.metrics import evaluate

    try:
        q = load_features(args.query)
        g = load_features(args.gallery)
        if q.feats.shape[1] != g.feats.shape[1]:
            raise ValueError(f"feature dims differ: {args.query} has D={q.feats.shape[1]}, {args.gallery} has "
                             f"D={g.feats.shape[1]}")
        if args.protocol == "ltcc-cc" and (q.clothes is None or g.clothes is None):
            missing = args.query if q.clothes is None else args.gallery
            raise ValueError(f"{missing}: protocol ltcc-cc needs the 'clothes' key")
        res = evaluate(
            qf=q.feats, gf=g.feats, q_pids=q.pids, g_pids=g.pids, q_camids=q.camids, g_camids=g.camids,
            q_clothes=q.clothes, g_clothes=g.clothes, protocol=args.protocol, max_rank=args.max_rank,
            normalize=getattr(args, "normalize", True), precision=getattr(args, "precision", "fp32"),
            rerank=getattr(args, "reranking", False),
        )
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"fastccreid eval-features: error: {exc}", file=sys.stderr)
        return 2
    print(f"query {q.feats.shape[0]} x gallery {g.feats.shape[0]} (D={q.feats.shape[1]})")
    print(res.table())
    if args.json_out:
        payload = res.as_dict()
        payload.update(query=args.query, gallery=args.gallery, num_gallery=int(g.feats.shape[0]),
                       reranking=bool(getattr(args, "reranking", False)))
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)) or ".", exist_ok=True)
        tmp = args.json_out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2)
        os.replace(tmp, args.json_out)  # atomic: a reader never sees half a file
        print(f"wrote {args.json_out}")
    return 0
