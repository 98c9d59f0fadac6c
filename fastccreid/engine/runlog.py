"""Run records: console + log-file lines (``RunLog``), per-epoch metrics files (``MetricsLog``) and the best / last
evaluation numbers (``BestTracker``). Rank 0 writes; other ranks hold disabled instances."""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any


def show_bars(progress: bool = True) -> bool:
    """Whether tqdm bars are drawn: asked for (no ``--no_progress``) and stderr is a terminal (tqdm's own rule with
    ``disable=None``). Under nohup, a batch scheduler or ``2> file`` there are no bars: one line an epoch instead."""
    if not progress:
        return False
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def progress_line(msg: str) -> None:
    """One progress line on stderr (where the bars would be), flushed at once: readable in a log file."""
    print(msg, file=sys.stderr, flush=True)


class RunLog:
    """Console + ``log_train.txt`` (or ``log_test.txt``) lines, rank 0 only; lines go around tqdm bars."""

    def __init__(self, path: str | None, enabled: bool = True, progress: bool = True) -> None:
        self.enabled = enabled
        self.progress = progress
        self.file = None
        if enabled and path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self.file = open(path, "a", buffering=1)  # noqa: SIM115 - closed in close()

    def __call__(self, msg: str = "") -> None:
        if not self.enabled:
            return
        if self.progress:
            from tqdm import tqdm

            tqdm.write(msg)
            sys.stdout.flush()  # block-buffered when redirected: the line shows up now, not at exit
        else:
            print(msg, flush=True)
        if self.file is not None:
            self.file.write(msg + "\n")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


@dataclass
class BestTracker:
    """Best mAP and rank-1 per setting with their epochs, and the last evaluated epoch's numbers (the seed reports
    only the best, chosen on the test set: README, "Differences from the official code")."""

    best: dict[str, dict[str, Any]] = field(default_factory=dict)
    last: dict[str, dict[str, Any]] = field(default_factory=dict)

    def update(self, epoch: int, results: dict[str, Any]) -> dict[str, tuple[bool, bool]]:
        """Record an evaluation; returns {setting: (is_best_mAP, is_best_rank1)}."""
        flags = {}
        for name, r in results.items():
            m, r1 = float(r.mAP), float(r.rank(1))
            b = self.best.setdefault(name, {"mAP": -math.inf, "mAP_epoch": 0, "rank1": -math.inf, "rank1_epoch": 0})
            is_map, is_r1 = m > b["mAP"], r1 > b["rank1"]
            if is_map:
                b["mAP"], b["mAP_epoch"] = m, epoch
            if is_r1:
                b["rank1"], b["rank1_epoch"] = r1, epoch
            self.last[name] = {"epoch": epoch, "mAP": m, "rank1": r1, "rank5": float(r.rank(5)),
                               "rank10": float(r.rank(10)), "mINP": float(r.mINP)}
            flags[name] = (is_map, is_r1)
        return flags

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "last": self.last}

    def load(self, state: dict[str, Any]) -> None:
        self.best = {k: dict(v) for k, v in (state.get("best") or {}).items()}
        self.last = {k: dict(v) for k, v in (state.get("last") or {}).items()}

    def summary(self) -> list[str]:
        lines = []
        if self.best:
            lines.append("==> Best over evaluated epochs (chosen on the test set, as the seed does):")
            for name, b in self.best.items():
                lines.append(f"    {name:<17} best mAP {b['mAP']:.2%} (epoch {b['mAP_epoch']}), "
                             f"best R-1 {b['rank1']:.2%} (epoch {b['rank1_epoch']})")
        if self.last:
            ep = next(iter(self.last.values()))["epoch"]
            lines.append(f"==> Last evaluated epoch ({ep}), the number to report without test-set selection:")
            for name, v in self.last.items():
                lines.append(f"    {name:<17} mAP {v['mAP']:.2%}  R-1 {v['rank1']:.2%}  R-5 {v['rank5']:.2%}  "
                             f"R-10 {v['rank10']:.2%}")
        return lines


class MetricsLog:
    """Per-epoch rows written to ``metrics.csv`` and ``metrics.json`` (rank 0), plus TensorBoard when installed."""

    def __init__(self, save_dir: str, enabled: bool, resume_epoch: int = 0) -> None:
        self.enabled = enabled
        if enabled:
            os.makedirs(save_dir, exist_ok=True)
        self.csv_path = os.path.join(save_dir, "metrics.csv")
        self.json_path = os.path.join(save_dir, "metrics.json")
        self.rows: list[dict[str, Any]] = []
        self.writer = None
        if not enabled:
            return
        if resume_epoch > 0 and os.path.isfile(self.json_path):
            try:
                with open(self.json_path) as f:
                    self.rows = [r for r in json.load(f).get("epochs", []) if r.get("epoch", 0) <= resume_epoch]
            except (OSError, ValueError):
                self.rows = []
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=os.path.join(save_dir, "tensorboard"))
        except Exception:  # noqa: BLE001 - tensorboard is optional
            self.writer = None

    def add(self, row: dict[str, Any], summary: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.rows.append(row)
        if self.writer is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, row["epoch"])
            self.writer.flush()
        keys: list[str] = []
        for r in self.rows:
            keys.extend(k for k in r if k not in keys)
        tmp = self.csv_path + ".tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.csv_path)
        tmp = self.json_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"epochs": self.rows, **summary}, f, indent=2)
        os.replace(tmp, self.json_path)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
