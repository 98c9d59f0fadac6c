"""Saved query / gallery features: the file formats, and the ``fastccreid eval-features`` subcommand.

Formats (one file per set):
- ``.npz`` with keys ``feats`` [N, D] float, ``pids`` [N] int, ``camids`` [N] int, optional ``clothes`` [N] int;
- ``.pt``: a dict with the same keys (tensors or arrays), read with ``torch.load(weights_only=True)``;
- ``.npy``: the features [N, D] alone, labels in a sibling ``<name>.labels.npz`` (keys pids, camids[, clothes]).

``--nproc N`` (or torchrun) evaluates with the gallery sharded over N processes (README, Evaluator over N
processes): each reads its contiguous rows only, memory-mapped from a ``.npy`` (an ``.npz`` / ``.pt`` is read whole
and sliced).
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
    total_rows: int = -1  # rows of the whole file when this set is one process's shard of it (else -1)


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


def _shard_rows(data: dict, path: str, shard: tuple[int, int]) -> tuple[dict, int]:
    """Rank ``shard[0]`` of ``shard[1]``'s contiguous rows of every per-row array (features memory-mapped from a
    .npy are read here, for these rows only); returns the sliced data and the file's row count."""
    from fastccreid.evaluation.sharded import shard_bounds

    feats = data.get("feats")
    if not hasattr(feats, "shape") or len(feats.shape) != 2:
        return data, -1  # _validate names what is wrong with it
    n = feats.shape[0]
    lo, hi = shard_bounds(n, *shard)
    if hi <= lo:
        raise ValueError(f"{path}: {n} rows cannot be shared by {shard[1]} processes (one would get none); use "
                         f"--nproc {max(1, n)} or fewer")
    out = {}
    for k, v in data.items():
        v = v if k == "feats" else np.asarray(v)
        out[k] = np.array(v[lo:hi]) if getattr(v, "ndim", 0) >= 1 and v.shape[0] == n else v
    return out, n


def load_features(path: str, shard: tuple[int, int] | None = None) -> FeatureSet:
    """Read a set in any of the module's formats, checking keys, shapes and values (errors name file and key).

    ``shard`` (rank, world): only that process's contiguous rows (``evaluation.sharded.shard_bounds``)."""
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
        mmap = "r" if shard is not None else None  # a shard reads its own rows of the file only
        data = {"feats": _guarded(path, lambda: np.load(path, mmap_mode=mmap, allow_pickle=False)),
                **_read_npz(labels)}
        path = f"{path} (+ {os.path.basename(labels)})"
    else:
        raise ValueError(f"{path}: unknown format; use .npz, .pt or .npy (+ .labels.npz)")
    if shard is None:
        return _validate(data, path)
    data, total = _shard_rows(data, path, shard)
    fs = _validate(data, path)
    fs.total_rows = total
    return fs


def _error(message: str) -> None:
    """``fastccreid eval-features: error: <message>`` on stderr in one write (the ranks of --nproc share it)."""
    sys.stderr.write(f"fastccreid eval-features: error: {message}\n")
    sys.stderr.flush()


def run_eval_features(args) -> int:
    """``fastccreid eval-features QUERY GALLERY``: print the standard table and optionally write JSON.

    ``--nproc N`` > 1 starts N gloo processes on this machine (``_launch``); a process that torchrun or that
    launcher started (WORLD_SIZE > 1) evaluates its shard of the gallery, and rank 0 prints and writes."""
    nproc = getattr(args, "nproc", 1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if nproc < 1:
        _error(f"--nproc must be >= 1, got {nproc}")
        return 2
    if getattr(args, "compare_protocols", False):
        return _run_compare(args)
    if getattr(args, "roc", False) and (nproc > 1 or world > 1):
        _error("--roc runs in one process (the sharded evaluator has no ROC): drop --nproc / torchrun")
        return 2
    if nproc > 1 and world <= 1:
        return _launch(args, nproc)
    if world > 1:
        return _run_rank(args)
    from fastccreid.metrics import evaluate

    try:
        q = load_features(args.query)
        g = load_features(args.gallery)
        _check_pair(args, q, g)
        res = evaluate(
            qf=q.feats, gf=g.feats, q_pids=q.pids, g_pids=g.pids, q_camids=q.camids, g_camids=g.camids,
            q_clothes=q.clothes, g_clothes=g.clothes, protocol=args.protocol, max_rank=args.max_rank,
            normalize=getattr(args, "normalize", True), precision=getattr(args, "precision", "fp32"),
            rerank=getattr(args, "reranking", False), roc=getattr(args, "roc", False),
        )
    except (ValueError, TypeError, FileNotFoundError) as exc:
        _error(str(exc))
        return 2
    _report(args, res, q.feats.shape, g.feats.shape[0], 1)
    return 0


def _check_pair(args, q: FeatureSet, g: FeatureSet) -> None:
    if q.feats.shape[1] != g.feats.shape[1]:
        raise ValueError(f"feature dims differ: {args.query} has D={q.feats.shape[1]}, {args.gallery} has "
                         f"D={g.feats.shape[1]}")
    if args.protocol in ("ltcc-cc", "ltcc-sc") and (q.clothes is None or g.clothes is None):
        missing = args.query if q.clothes is None else args.gallery
        raise ValueError(f"{missing}: protocol {args.protocol} needs the 'clothes' key")


def _run_compare(args) -> int:
    """``--compare-protocols``: one table (and JSON) of every convention the labels allow (fastccreid.compare)."""
    from fastccreid.compare import compare_conventions, conventions_json, conventions_table

    if getattr(args, "nproc", 1) > 1 or getattr(args, "reranking", False):
        _error("--compare-protocols runs in one process without --reranking")
        return 2
    try:
        q = load_features(args.query)
        g = load_features(args.gallery)
        _check_pair(args, q, g)
        rows = compare_conventions(q.feats, g.feats, q.pids, g.pids, q.camids, g.camids, q.clothes, g.clothes,
                                   normalize=getattr(args, "normalize", True))
    except (ValueError, TypeError, FileNotFoundError) as exc:
        _error(str(exc))
        return 2
    print(f"query {q.feats.shape[0]} x gallery {g.feats.shape[0]} (D={q.feats.shape[1]})")
    print(conventions_table(rows))
    if args.json_out:
        payload = {"query": args.query, "gallery": args.gallery, "conventions": conventions_json(rows)}
        tmp = args.json_out + ".tmp"
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)) or ".", exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2)
        os.replace(tmp, args.json_out)  # atomic
        print(f"wrote {args.json_out}")
    return 0


def _report(args, res, qshape, num_gallery: int, nproc: int) -> None:
    """The table on stdout and, with --json, the result written atomically."""
    print(f"query {qshape[0]} x gallery {num_gallery} (D={qshape[1]})")
    print(res.table())
    if args.json_out:
        payload = res.as_dict()
        payload.update(query=args.query, gallery=args.gallery, num_gallery=int(num_gallery),
                       reranking=bool(getattr(args, "reranking", False)), nproc=int(nproc))
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)) or ".", exist_ok=True)
        tmp = args.json_out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2)
        os.replace(tmp, args.json_out)  # atomic: a reader never sees half a file
        print(f"wrote {args.json_out}")


def _run_rank(args) -> int:
    """One process of a sharded evaluation: all queries, this rank's gallery rows; every rank stops together on an
    error (its own message, or on rank 0 which rank failed)."""
    import torch
    import torch.distributed as dist

    from fastccreid.engine.distributed import cleanup, setup
    from fastccreid.evaluation.sharded import Comm
    from fastccreid.metrics import evaluate

    ctx = setup(use_cpu=True)  # gloo: the features are read into CPU memory
    try:
        try:
            err, q, g = None, None, None
            try:
                q = load_features(args.query)
                g = load_features(args.gallery, shard=(ctx.rank, ctx.world_size))
                _check_pair(args, q, g)
            except (ValueError, TypeError, FileNotFoundError) as exc:
                err = exc
            try:
                Comm(dist.group.WORLD, torch.device("cpu")).agree(err)
            finally:
                # err's traceback holds this frame: drop the local so no reference cycle keeps the process group
                # alive past cleanup() (gloo torn down at interpreter exit can abort; see sharded_stats)
                err = None
            res = evaluate(
                qf=q.feats, gf=g.feats, q_pids=q.pids, g_pids=g.pids, q_camids=q.camids, g_camids=g.camids,
                q_clothes=q.clothes, g_clothes=g.clothes, protocol=args.protocol, max_rank=args.max_rank,
                normalize=getattr(args, "normalize", True), precision=getattr(args, "precision", "fp32"),
                rerank=getattr(args, "reranking", False), process_group=True,
            )
        except RuntimeError as exc:  # another rank failed: it printed why
            if ctx.rank == 0:
                _error(str(exc))
            return 2
        except (ValueError, TypeError, FileNotFoundError) as exc:
            # rank 0 prints its error; another rank prints its own only when rank 0 did not fail (then rank 0 says
            # which ranks failed), so an error every rank raises (the same arguments) is printed once
            failed = getattr(exc, "failed_ranks", None)
            if ctx.rank == 0 or (failed is not None and 0 not in failed):
                _error(f"rank {ctx.rank}: {exc}" if ctx.rank else str(exc))
            return 2
        if ctx.rank == 0:
            _report(args, res, q.feats.shape, g.total_rows, ctx.world_size)
        return 0
    finally:
        cleanup()


def _launch(args, nproc: int) -> int:
    """Start ``nproc`` ranks of this command on this machine through torch's elastic agent (as ``fastccreid train
    --nproc``: a c10d rendezvous on loopback); returns 0 or the first failing rank's exit code."""
    from fastccreid.engine.launch import run_elastic

    argv = ["-m", "fastccreid", "eval-features", args.query, args.gallery, "--protocol", args.protocol,
            "--max-rank", str(args.max_rank), "--precision", getattr(args, "precision", "fp32")]
    if args.json_out:
        argv += ["--json", args.json_out]
    if not getattr(args, "normalize", True):
        argv.append("--no-normalize")
    if getattr(args, "reranking", False):
        argv.append("--reranking")
    # the machine's cores shared among the ranks (each would start one thread per core), unless the user chose
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // nproc))}
    return run_elastic(argv, nproc, prog="fastccreid eval-features", env=env)
