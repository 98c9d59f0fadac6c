"""``run.json``: the record of what a ``train`` / ``eval`` run was and what it measured (issue 29).

Written by rank 0 into ``--save_dir`` at the start, after every epoch and at the end, always atomically (a temporary
file in the same folder, fsync, ``os.replace``): a run killed mid-write leaves the previous record readable. The same
dict travels in every checkpoint under ``ckpt["fastccreid"]["run"]``, so a resumed run continues the record and a
checkpoint found later says where it came from. Everything in it is a plain JSON value (``torch.load(weights_only
=True)`` reads it back from a checkpoint).

The record (``SCHEMA`` = "fastccreid.run/1"): ``kind`` ("train" | "eval"), ``status`` ("running", "finished",
"interrupted", "failed") and ``exit_code``, ``command`` (argv), times, the whole ``config`` (``TrainConfig.to_dict``),
``seed``, ``environment`` (fastccreid version and git commit when run from a checkout, Python / torch / CUDA / cuDNN
/ triton / DALI versions, GPU names, CPU model, process count), ``dataset`` (name, path, split sizes, a SHA-256 of
the sorted relative paths and labels), ``epochs`` (per epoch: losses, lr, steps, images/s, seconds, and each
evaluated setting's mAP / R-k / mINP / CMC), and ``results``: ``best`` (the seed's rule: the evaluated epoch with the
highest mAP of the first setting, chosen on the test set), ``last`` (the last evaluated epoch, no selection) and
``best_per_setting``. Imports nothing heavy (torch only inside the functions that describe the devices).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

SCHEMA = "fastccreid.run/1"
RUN_NAME = "run.json"
EVAL_RUN_NAME = "run_eval.json"  # an eval run whose --save_dir already holds a training record
CMC_RANKS = 50  # ranks of each evaluation's CMC kept in the record
BEST_RULE = ("the evaluated epoch with the highest mAP of the first setting ({setting}), chosen on the test set as "
             "the seed chooses best_mAP_model.pth (earliest epoch on ties)")
LAST_RULE = "the last evaluated epoch: no test-set selection (the number to report)"
SPLITS = ("train", "query", "gallery", "val", "query_same", "query_diff")


def atomic_write_json(obj: Any, path: str) -> str:
    """Write ``obj`` as JSON to ``path`` through a temporary file in the same folder (fsync'd, then renamed): a
    reader, or a process killed mid-write, never sees a partial file under ``path``. Returns ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def read_run(path: str) -> dict[str, Any]:
    """A run record from ``path`` (a ``run.json`` file or the folder holding one). Raises ValueError naming the file
    when it is missing, not JSON or not a fastccreid run record."""
    file = os.path.join(path, RUN_NAME) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise ValueError(f"{path}: no {RUN_NAME} (a run folder is a `fastccreid train` / `eval` --save_dir)")
    try:
        with open(file) as f:
            rec = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{file}: not a readable run record ({type(exc).__name__}: {exc})") from None
    if not isinstance(rec, dict) or not str(rec.get("schema", "")).startswith("fastccreid.run/"):
        raise ValueError(f"{file}: not a fastccreid run record (no 'schema': {SCHEMA!r})")
    return rec


# ------------------------------------------------------------------------------------------------ environment
def git_revision(folder: str | None = None) -> dict[str, Any] | None:
    """{"commit", "dirty"} of the git checkout fastccreid runs from (None when it is installed, not a checkout,
    or git is absent). ``dirty``: tracked files differ from the commit."""
    # fastccreid/engine/runrecord.py -> the folder above the package: the checkout when run from one
    root = folder or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.exists(os.path.join(root, ".git")):
        return None
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _installed(name: str) -> str | None:
    from fastccreid.versions import installed

    return installed(name)


def dali_version() -> str | None:
    """The installed DALI build (``nvidia-dali-cudaXXX``: "2.4.0 (nvidia-dali-cuda130)"), read from the package
    metadata without importing DALI."""
    import importlib.metadata

    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith("nvidia-dali"):
            return f"{dist.version} ({name})"
    return None


def environment(device: Any = None, world_size: int = 1) -> dict[str, Any]:
    """Versions (fastccreid and its git commit, Python, torch, CUDA, cuDNN, torchvision, triton, DALI, numpy,
    onnxruntime) and devices (type, GPU names, CPU model and count, processes, host)."""
    import torch

    import fastccreid

    gpus: list[str] = []
    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "fastccreid": fastccreid.__version__,
        "git": git_revision(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": str(torch.__version__),  # a TorchVersion: weights_only checkpoint loading refuses the class
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "torchvision": _installed("torchvision"),
        "triton": _installed("triton"),
        "dali": dali_version(),
        "numpy": _installed("numpy"),
        "devices": {"type": getattr(device, "type", str(device) if device is not None else "cpu"),
                    "gpus": gpus, "cpu": cpu_model(), "cpu_count": os.cpu_count(), "processes": int(world_size),
                    "host": platform.node()},
    }


# ------------------------------------------------------------------------------------------------ dataset
def dataset_fingerprint(dataset: Any, name: str, path: str) -> dict[str, Any]:
    """Name, path, split sizes (images, identities) and a SHA-256 of the sorted lines ``split<TAB>relative path
    <TAB>pid<TAB>camid<TAB>clothes_id`` (paths relative to the dataset folder, '/' separators): equal hashes mean the
    same files with the same labels wherever the dataset lies."""
    base = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    lines: list[str] = []
    splits: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        recs = getattr(dataset, split, None) or []
        if not recs:
            continue
        splits[split] = {"images": len(recs), "ids": len({r.pid for r in recs})}
        for r in recs:
            rel = os.path.relpath(r.path, base).replace(os.sep, "/")
            lines.append(f"{split}\t{rel}\t{r.pid}\t{r.camid}\t{r.clothes_id}")
    lines.sort()
    digest = hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()
    return {"name": name, "path": os.path.abspath(path), "splits": splits, "sha256": digest,
            "hash_of": "sorted 'split, relative path, pid, camid, clothes_id' lines"}


def eval_entry(result: Any) -> dict[str, Any]:
    """One setting's evaluation as plain numbers: mAP, mINP, rank1/5/10/20 (fractions in [0, 1]), the queries
    counted, and the CMC's first ``CMC_RANKS`` ranks."""
    return {"mAP": float(result.mAP), "mINP": float(result.mINP), "rank1": result.rank(1), "rank5": result.rank(5),
            "rank10": result.rank(10), "rank20": result.rank(20),
            "num_valid_queries": int(result.num_valid_queries),
            "cmc": [float(v) for v in list(result.cmc)[:CMC_RANKS]]}


# ------------------------------------------------------------------------------------------------ the record
class RunRecord:
    """The run record of one ``train`` / ``eval`` run (rank 0 writes; a disabled one only keeps the dict).

    ``previous``: the record a resumed run continues (the checkpoint's): its epochs up to ``resume_epoch`` are kept
    and the resume is listed under ``resumes``."""

    def __init__(self, path: str, *, kind: str, config: Mapping[str, Any], seed: int, env: Mapping[str, Any],
                 dataset: Mapping[str, Any] | None = None, enabled: bool = True,
                 previous: Mapping[str, Any] | None = None, resume_epoch: int = 0, resume_from: str = "",
                 command: Sequence[str] | None = None) -> None:
        if kind not in ("train", "eval"):
            raise ValueError(f"run record kind must be 'train' or 'eval', got {kind!r}")
        self.path, self.enabled = path, enabled
        now = time.time()
        self.t0 = time.perf_counter()
        self.data: dict[str, Any] = {
            "schema": SCHEMA, "kind": kind, "status": "running", "exit_code": None,
            "command": list(sys.argv if command is None else command),
            "started_at": _iso(now), "updated_at": _iso(now), "elapsed_s": 0.0,
            "seed": int(seed), "config": copy.deepcopy(dict(config)), "environment": copy.deepcopy(dict(env)),
            "dataset": copy.deepcopy(dict(dataset)) if dataset is not None else None,
            "resumes": [], "epochs": [], "results": {},
        }
        if previous and previous.get("schema") == SCHEMA:
            self.data["started_at"] = previous.get("started_at", self.data["started_at"])
            self.data["epochs"] = [copy.deepcopy(e) for e in previous.get("epochs", [])
                                   if int(e.get("epoch", 0)) <= resume_epoch]
            self.data["resumes"] = list(previous.get("resumes", []))
            self.prior_elapsed = float(previous.get("elapsed_s", 0.0))
        else:
            self.prior_elapsed = 0.0
        if resume_from:
            self.data["resumes"].append({"from": resume_from, "epoch": int(resume_epoch), "at": _iso(now)})
        self._refresh_results()

    # -------------------------------------------------------------- updates
    def add_epoch(self, row: Mapping[str, Any], results: Mapping[str, Any] | None = None,
                  eval_seconds: float | None = None) -> None:
        """Append one epoch: ``row`` (the metrics.csv row: epoch, lr, losses, steps, seconds, images/s; its
        flattened ``setting/metric`` columns are left out) and its evaluation {setting: EvalResult}, if any."""
        entry = {k: v for k, v in row.items() if "/" not in k}
        if results:
            entry["eval"] = {name: eval_entry(r) for name, r in results.items()}
            if eval_seconds is not None:
                entry["eval_seconds"] = round(float(eval_seconds), 3)
        self.data["epochs"] = [e for e in self.data["epochs"] if e.get("epoch") != entry.get("epoch")] + [entry]
        self._refresh_results()

    def set_evaluation(self, epoch: int | None, results: Mapping[str, Any], **extra: Any) -> None:
        """An ``eval`` run's one evaluation (``epoch``: the checkpoint's, 1-based, or None)."""
        self.data["evaluation"] = {"epoch": epoch, "settings": {n: eval_entry(r) for n, r in results.items()},
                                   **copy.deepcopy(extra)}
        self.data["results"] = {"last": {"epoch": epoch, "label": "the checkpoint's evaluation",
                                         "settings": self.data["evaluation"]["settings"]}}

    def finish(self, status: str, exit_code: int) -> None:
        self.data["status"], self.data["exit_code"] = status, int(exit_code)

    def _refresh_results(self) -> None:
        evaluated = [e for e in self.data["epochs"] if e.get("eval")]
        if not evaluated:
            self.data["results"] = {}
            return
        first = next(iter(evaluated[0]["eval"]))
        best = evaluated[0]
        for e in evaluated[1:]:
            if first in e["eval"] and e["eval"][first]["mAP"] > best["eval"][first]["mAP"]:
                best = e
        last = evaluated[-1]
        per_setting: dict[str, dict[str, Any]] = {}
        for e in evaluated:
            for name, m in e["eval"].items():
                b = per_setting.setdefault(name, {"mAP": m["mAP"], "mAP_epoch": e["epoch"], "rank1": m["rank1"],
                                                  "rank1_epoch": e["epoch"]})
                if m["mAP"] > b["mAP"]:
                    b["mAP"], b["mAP_epoch"] = m["mAP"], e["epoch"]
                if m["rank1"] > b["rank1"]:
                    b["rank1"], b["rank1_epoch"] = m["rank1"], e["epoch"]
        self.data["results"] = {
            "selection_setting": first,
            "best": {"epoch": best["epoch"], "label": "best (seed's rule): " + BEST_RULE.format(setting=first),
                     "settings": copy.deepcopy(best["eval"])},
            "last": {"epoch": last["epoch"], "label": "last: " + LAST_RULE, "settings": copy.deepcopy(last["eval"])},
            "best_per_setting": per_setting,
        }

    # -------------------------------------------------------------- output
    def to_dict(self) -> dict[str, Any]:
        """A copy in plain JSON types (str subclasses, numpy scalars and tuples become str / numbers / lists, so
        ``torch.load(weights_only=True)`` reads a checkpoint holding it) with the times brought up to date."""
        self.data["updated_at"] = _iso(time.time())
        self.data["elapsed_s"] = round(self.prior_elapsed + time.perf_counter() - self.t0, 3)
        return json.loads(json.dumps(self.data, default=_plain))

    def write(self) -> str | None:
        """Write the record atomically (rank 0); returns the path, None when disabled."""
        if not self.enabled:
            return None
        return atomic_write_json(self.to_dict(), self.path)


def record_path(save_dir: str, kind: str) -> str:
    """Where a run's record goes: ``run.json``; an eval run whose --save_dir already holds a training run's
    ``run.json`` writes ``run_eval.json`` beside it instead (the training record is never overwritten)."""
    path = os.path.join(save_dir, RUN_NAME)
    if kind == "eval" and os.path.isfile(path):
        try:
            with open(path) as f:
                if json.load(f).get("kind") == "train":
                    return os.path.join(save_dir, EVAL_RUN_NAME)
        except (OSError, ValueError, AttributeError):
            pass
    return path


def _plain(obj: Any) -> Any:
    """json.dumps' fallback: numpy scalars as numbers, anything else as its string."""
    item = getattr(obj, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError):
            pass
    return str(obj)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))
