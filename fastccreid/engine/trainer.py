"""``fastccreid train`` / ``fastccreid eval``: the seed's recipe (SPEC §2) with AMP, optional torch.compile,
channels_last, fused losses, exact resume, clean Ctrl-C, DDP under torchrun, and safe checkpoints.

One epoch = the identity sampler's batches (``--max_steps_per_epoch`` caps them); the scheduler steps once per
epoch after training, as the seed's ``train_cssc.train``; evaluation runs every ``--eval_epoch`` epochs after
``--start_eval_epoch`` and at the last epoch, exactly the seed's condition.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fastccreid.engine import checkpoint as ckpt_io
from fastccreid.engine.amp import AmpConfig, resolve_amp
from fastccreid.engine.distributed import DistContext, all_reduce_sum, barrier, cleanup, setup
from fastccreid.engine.evaluate import EvalConfig, eval_settings, evaluate_model
from fastccreid.engine.loss import cssc_loss

EXIT_OK, EXIT_USAGE, EXIT_NONFINITE, EXIT_INTERRUPTED = 0, 2, 3, 130
MIN_HEIGHT = 128  # SMR cuts the stride-16 map into 8 stripes: the map needs >= 8 rows
MIN_WIDTH = 32  # >= 2 columns at stride 16: on CPU, bf16 3x3 stride-2 convs with a 1-wide output give NaN/garbage


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf: training stops without touching the last good checkpoint."""

    def __init__(self, epoch: int, step: int, values: dict[str, float]) -> None:
        self.epoch, self.step, self.values = epoch, step, values
        parts = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
        super().__init__(f"non-finite loss at epoch {epoch}, step {step} ({parts})")


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
        else:
            print(msg, flush=True)
        if self.file is not None:
            self.file.write(msg + "\n")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


@dataclass
class EpochStats:
    """One epoch's training summary (losses averaged over its steps, over all ranks)."""

    epoch: int
    steps: int
    images: int
    id_loss: float
    tri_loss: float
    lr: float
    seconds: float
    interrupted: bool = False

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass
class BestTracker:
    """Best mAP and rank-1 per setting with their epochs, and the last evaluated epoch's numbers (SPEC §7)."""

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


def set_random_seed(seed: int) -> None:
    """The seed's set_random_seed: python, numpy, torch (and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def resolve_compile(flag: bool | None, device: torch.device) -> bool:
    """``--compile`` default: on for CUDA; off on CPU, where it did not win here (2-core Xeon, bf16, 384x192 batch
    8: 105 s to compile, then 6.4 img/s vs 6.6 img/s eager)."""
    return device.type == "cuda" if flag is None else bool(flag)


def check_args(args: argparse.Namespace) -> None:
    """Reject flag values the run cannot use, naming the flag."""
    if args.height < MIN_HEIGHT or args.width < MIN_WIDTH:
        raise ValueError(f"--height/--width must be at least {MIN_HEIGHT}x{MIN_WIDTH} (SMR splits the 1/16-scale map "
                         f"into 8 stripes; a 1-wide map breaks oneDNN's bf16 strided convolutions, which return "
                         f"NaN), got {args.height}x{args.width}")
    if args.train_batch <= 0 or args.test_batch <= 0:
        raise ValueError(f"--train_batch and --test_batch must be positive, got {args.train_batch}, {args.test_batch}")
    if args.max_epoch <= 0:
        raise ValueError(f"--max_epoch must be positive, got {args.max_epoch}")
    if args.max_steps_per_epoch < 0:
        raise ValueError(f"--max_steps_per_epoch must be >= 0, got {args.max_steps_per_epoch}")
    if args.evaluate and not args.resume:
        raise ValueError("evaluation needs a checkpoint: pass --resume PATH")


def _dataset_root(args: argparse.Namespace) -> str:
    return os.path.join(args.dataset_root, args.dataset_filename) if args.dataset_filename else args.dataset_root


class Trainer:
    """Builds data, model, optimizer, scheduler and scaler from the CLI args, resumes if asked, and trains."""

    def __init__(self, args: argparse.Namespace, ctx: DistContext | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        from fastccreid.data import build_dataset
        from fastccreid.models import CSSC

        check_args(args)
        self.args = args
        self.ctx = ctx if ctx is not None else setup(args.use_cpu, args.gpu_devices)
        self.device = self.ctx.device
        self.log = log if log is not None else RunLog(None, self.ctx.is_main, not args.no_progress)
        self.amp: AmpConfig = resolve_amp(args.amp, self.device)
        self.compile = resolve_compile(args.compile, self.device)
        self.memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
        set_random_seed(args.seed)

        self.dataset = build_dataset(args.dataset, _dataset_root(args))
        if self.ctx.is_main:
            self.log(self.dataset.summary())
        self.num_classes = self.dataset.num_train_pids
        self.model = CSSC(self.num_classes, last_stride=1, pretrained=args.pretrained)
        self.model.to(self.device).to(memory_format=self.memory_format)
        # Adam over every parameter in one group with 'initial_lr', as the seed (frozen BN biases get no grad).
        fused = self.device.type in ("cuda", "cpu")
        self.optimizer = torch.optim.Adam([{"params": self.model.parameters(), "initial_lr": args.lr}], lr=args.lr,
                                          weight_decay=args.weight_decay, fused=fused)
        self.scaler = self.amp.grad_scaler()
        self.best = BestTracker()
        self.start_epoch = args.start_epoch
        self.resume_step = 0
        resumed = self._resume() if args.resume else None
        from fastccreid.reference.scheduler import WarmupMultiStepLR

        self.scheduler = WarmupMultiStepLR(self.optimizer, milestones=args.step_milestones, gamma=args.gamma,
                                           warmup_factor=args.warm_up_factor, warmup_iters=args.warm_up_epochs,
                                           warmup_method=args.warm_up_method, last_epoch=self.start_epoch - 1)
        if resumed is not None and "scheduler_state_dict" in resumed:
            self.scheduler.load_state_dict(resumed["scheduler_state_dict"])
        if resumed is not None and "rng" in resumed:
            ckpt_io.set_rng_state(resumed["rng"])

        self.train_net: torch.nn.Module = self.model
        if self.ctx.distributed:
            if args.sync_bn:
                if self.device.type != "cuda":
                    raise ValueError("--sync_bn needs CUDA devices (SyncBatchNorm has no CPU kernels)")
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.train_net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.eval_net: torch.nn.Module = self.model
        if self.compile:
            # dynamic=False: one static graph per mode (train batch, eval batch); no recompiles across epochs.
            self.train_net = torch.compile(self.train_net, dynamic=False)
            self.eval_net = torch.compile(self.model, dynamic=False)

        self.train_loader = self._build_train_loader()
        self.eval_cfg = EvalConfig(height=args.height, width=args.width, batch_size=args.test_batch, amp=self.amp,
                                   channels_last=args.channels_last, loader=args.loader, num_workers=args.num_workers,
                                   skip_bad_images=args.skip_bad_images, static_batch=self.compile,
                                   loader_output=args.loader_output,
                                   progress=not args.no_progress)
        self.metrics = MetricsLog(args.save_dir, self.ctx.is_main, resume_epoch=self.start_epoch)
        self._stop_requested = False
        self.last_results: dict[str, Any] = {}
        self.last_features: dict[str, Any] = {}

    # ------------------------------------------------------------------ set-up helpers
    def _resume(self) -> dict[str, Any]:
        from fastccreid.models import load_model_state

        path = self.args.resume
        ck = ckpt_io.load_checkpoint(path)
        ckpt_io.check_compatible(ck, path, num_classes=self.num_classes, dataset=self.args.dataset)
        load_model_state(self.model, ck["model_state_dict"], source=f"--resume {path}")
        if "optimizer_state_dict" in ck:
            try:
                self.optimizer.load_state_dict(ck["optimizer_state_dict"])
            except (ValueError, KeyError, RuntimeError) as exc:
                raise ckpt_io.CheckpointError(f"--resume {path}: optimizer state does not fit this model "
                                              f"({exc})") from None
        if "scaler_state_dict" in ck and self.scaler.is_enabled() and ck["scaler_state_dict"]:
            self.scaler.load_state_dict(ck["scaler_state_dict"])
        if "epoch" in ck:
            self.start_epoch = int(ck["epoch"]) + 1
        self.resume_step = int(ck.get("resume_step", 0))
        if "best" in ck:
            self.best.load(ck["best"])
        if self.ctx.is_main:
            self.log(f"=> Resumed from {path}: continuing at epoch {self.start_epoch + 1}"
                     + (f", after step {self.resume_step}" if self.resume_step else ""))
        return ck

    def _build_train_loader(self):
        from fastccreid.data.loaders import build_train_loader

        a = self.args
        return build_train_loader(self.dataset.train, height=a.height, width=a.width, batch_size=a.train_batch,
                                  num_instances=a.num_instances, seed=a.seed, device=self.device, loader=a.loader,
                                  num_workers=a.num_workers, pad=a.pad_size, flip_p=a.horizontal_flip_pro,
                                  erase_p=a.random_erasing_pro, skip_bad_images=a.skip_bad_images,
                                  rank=self.ctx.rank, world_size=self.ctx.world_size,
                                  output=a.loader_output, dali_py_workers=a.dali_py_workers)

    def steps_per_epoch(self) -> int:
        n = len(self.train_loader)
        return min(n, self.args.max_steps_per_epoch) if self.args.max_steps_per_epoch else n

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self, epoch: int, resume_step: int = 0, metrics: dict[str, Any] | None = None
                         ) -> dict[str, Any]:
        """The seed's keys plus what an exact resume needs. ``epoch``: last completed epoch (0-based), as the seed."""
        state: dict[str, Any] = {
            "model_state_dict": self.model.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "scheduler_state_dict": self.scheduler.state_dict(),
            "scaler_state_dict": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "epoch": epoch,
            "resume_step": resume_step,
            "rng": ckpt_io.rng_state(),
            "best": self.best.state(),
            "fastccreid": {"format": ckpt_io.FORMAT_VERSION, "num_classes": self.num_classes,
                           "dataset": self.args.dataset, "height": self.args.height, "width": self.args.width,
                           "amp": self.amp.name},
        }
        if metrics:
            state.update(metrics)
        return state

    def last_checkpoint_path(self) -> str:
        return os.path.join(self.args.save_dir, ckpt_io.LAST_NAME)

    def save_last(self, epoch: int, resume_step: int = 0) -> str | None:
        if not self.ctx.is_main:
            return None
        return ckpt_io.save_checkpoint(self.checkpoint_state(epoch, resume_step), self.last_checkpoint_path())

    # ------------------------------------------------------------------ training
    def _request_stop(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        if self._stop_requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop_requested = True
        if self.ctx.is_main:
            print("\n==> Interrupt received: finishing this step, saving a checkpoint, then exiting "
                  "(Ctrl-C again to abort at once)", file=sys.stderr, flush=True)

    def train_epoch(self, epoch: int, skip: int = 0) -> EpochStats:
        """Train epoch ``epoch`` (0-based) from step ``skip``; stops early (interrupted=True) after a Ctrl-C."""
        from fastccreid.data.loaders import to_model_input

        a = self.args
        epoch1 = epoch + 1  # the seed's train() receives epoch + 1
        use_triplet = epoch1 > a.tri_start_epoch
        self.train_net.train()
        self.train_loader.set_epoch(epoch, start_batch=skip)  # a resume neither reads nor decodes the done steps
        total_steps = self.steps_per_epoch()
        sums = torch.zeros(3, dtype=torch.float64)
        steps = images = 0
        bar = None
        if self.ctx.is_main and not a.no_progress:
            from tqdm import tqdm

            bar = tqdm(total=total_steps, initial=skip, desc=f"epoch {epoch1}/{a.max_epoch}", leave=False,
                       dynamic_ncols=True)
        lr = self.optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        interrupted = False
        skip_done = 0
        for step, batch in enumerate(self.train_loader, start=skip):
            if step >= total_steps:
                break
            x = to_model_input(batch, channels_last=a.channels_last, dtype=torch.float32)
            pids = torch.as_tensor(batch.pids).to(self.device, non_blocking=True)
            with self.amp.autocast():
                feats, logits = self.train_net(x)
            parts = cssc_loss(feats, logits, pids, use_triplet=use_triplet, margin=a.margin, backend=a.backend)
            # One small all-reduce per step: the mean losses and the stop flag, so every rank decides alike.
            vals = torch.stack([parts.id_loss.float(), parts.tri_loss.float(),
                                torch.tensor(float(self._stop_requested), device=parts.id_loss.device)])
            vals = all_reduce_sum(vals, self.ctx).cpu().double()
            vals[:2] /= self.ctx.world_size
            if not torch.isfinite(vals[:2]).all():
                raise NonFiniteLossError(epoch1, step + 1, {"id loss": float(vals[0]), "triplet loss": float(vals[1])})
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(parts.total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            sums[:2] += vals[:2]
            steps += 1
            images += x.shape[0] * self.ctx.world_size
            if bar is not None:
                bar.update(1)
                bar.set_postfix(id=f"{vals[0]:.3f}", tri=f"{vals[1]:.3f}", refresh=False)
            if vals[2] > 0:
                interrupted = True
                skip_done = step + 1
                break
        seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        stats = EpochStats(epoch=epoch1, steps=steps, images=images, id_loss=float(sums[0] / max(steps, 1)),
                           tri_loss=float(sums[1] / max(steps, 1)), lr=lr, seconds=seconds, interrupted=interrupted)
        if interrupted:
            stats.steps = skip_done  # the position to resume from
        return stats

    def evaluate(self, epoch: int | None = None) -> dict[str, Any]:
        """Flip-TTA evaluation of the current weights (sharded over ranks); returns {setting: EvalResult}."""
        self.model.eval()
        features: dict[str, Any] = {}
        try:
            results = evaluate_model(self.eval_net, self.dataset, self.eval_cfg, self.ctx, rerank=self.args.reranking,
                                     log=lambda m: self.log(f"Epoch {epoch}: {m}" if epoch else m),
                                     features_out=features)
        finally:
            self.model.train()
        self.last_results, self.last_features = results, features
        return results

    def fit(self) -> int:
        """The training loop; returns the process exit code (0, 3 on a non-finite loss, 130 when interrupted)."""
        a = self.args
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self._request_stop)
        epochs_bar = None
        try:
            if self.start_epoch >= a.max_epoch:
                self.log(f"==> Nothing to train: start epoch {self.start_epoch} >= --max_epoch {a.max_epoch}")
                return EXIT_OK
            self.log(f"==> Start training: {self.num_classes} identities, {self.steps_per_epoch()} steps/epoch, "
                     f"batch {a.train_batch} ({self.ctx.world_size} process(es)), device {self.device}, "
                     f"amp {self.amp.name}, compile {'on' if self.compile else 'off'}, "
                     f"channels_last {'on' if a.channels_last else 'off'}")
            if self.ctx.is_main and not a.no_progress:
                from tqdm import tqdm

                epochs_bar = tqdm(total=a.max_epoch, initial=self.start_epoch, desc="epochs", dynamic_ncols=True)
            start_time = time.perf_counter()
            for epoch in range(self.start_epoch, a.max_epoch):
                skip = self.resume_step if epoch == self.start_epoch else 0
                try:
                    stats = self.train_epoch(epoch, skip=skip)
                except NonFiniteLossError as exc:
                    last = self.last_checkpoint_path()
                    keep = (f"the last good checkpoint is {last}" if os.path.isfile(last)
                            else "no checkpoint was written before it (use --save_checkpoint)")
                    self.log(f"==> Stopping: {exc}. Nothing was saved for this epoch; {keep}. Try a lower --lr, "
                             f"or --amp off to rule out precision.")
                    return EXIT_NONFINITE
                if stats.interrupted:
                    path = self.save_last(epoch - 1, resume_step=stats.steps)
                    self.log(f"==> Interrupted at epoch {epoch + 1}, step {stats.steps}: saved {path}; continue "
                             f"with --resume {path}")
                    return EXIT_INTERRUPTED
                self.scheduler.step()  # per epoch, after training (the seed's train_cssc.train)
                row: dict[str, Any] = {"epoch": stats.epoch, "lr": stats.lr, "id_loss": stats.id_loss,
                                       "tri_loss": stats.tri_loss, "steps": stats.steps,
                                       "train_seconds": round(stats.seconds, 3),
                                       "images_per_s": round(stats.images_per_s, 2)}
                self.log(f"Ep{stats.epoch} Id:{stats.id_loss:.4f} Tri:{stats.tri_loss:.4f} lr:{stats.lr:.2e} "
                         f"{stats.images_per_s:.1f} img/s {stats.seconds:.1f}s")
                epoch1 = epoch + 1
                due = (epoch1 > a.start_eval_epoch and a.eval_epoch > 0 and epoch1 % a.eval_epoch == 0) \
                    or epoch1 == a.max_epoch
                results = self.evaluate(epoch1) if due else None
                flags: dict[str, tuple[bool, bool]] = {}
                if results:
                    flags = self.best.update(epoch1, results)
                    for name, r in results.items():
                        row.update({f"{name}/mAP": r.mAP, f"{name}/rank1": r.rank(1), f"{name}/rank5": r.rank(5),
                                    f"{name}/rank10": r.rank(10), f"{name}/mINP": r.mINP})
                if a.save_checkpoint and self.ctx.is_main:
                    if results:
                        first = eval_settings(self.dataset)[0].name  # the seed picks 'best' by its first setting
                        r = results[first]
                        is_map, is_r1 = flags[first]
                        name = (f"checkpoint_ep{epoch1}_mAP_{round(r.mAP * 100, 2)}_"
                                f"rank1_{round(r.rank(1) * 100, 2)}.pth")
                        state = self.checkpoint_state(epoch, metrics={"rank1": float(r.rank(1)), "mAP": float(r.mAP)})
                        path = ckpt_io.save_checkpoint(state, os.path.join(a.save_dir, name), is_best_map=is_map,
                                                       is_best_rank1=is_r1)
                        ckpt_io.atomic_copy(path, self.last_checkpoint_path())  # same content: link, not rewrite
                    else:
                        self.save_last(epoch)
                self.metrics.add(row, self.best.state())
                if epochs_bar is not None:
                    epochs_bar.update(1)
                stop = all_reduce_sum(torch.tensor([float(self._stop_requested)], device=self.device), self.ctx)
                if stop.item() > 0 and epoch1 < a.max_epoch:
                    path = self.save_last(epoch)
                    self.log(f"==> Interrupted after epoch {epoch1}: saved {path}; continue with --resume {path}")
                    return EXIT_INTERRUPTED
            elapsed = time.perf_counter() - start_time
            for line in self.best.summary():
                self.log(line)
            self.log(f"Finished. Total elapsed time {elapsed:.0f}s.")
            return EXIT_OK
        except KeyboardInterrupt:
            self.log("==> Aborted by a second interrupt; the last saved checkpoint is unchanged")
            return EXIT_INTERRUPTED
        finally:
            if epochs_bar is not None:
                epochs_bar.close()
            for sig, h in handlers.items():
                signal.signal(sig, h)
            self.metrics.close()


def run_evaluate(args: argparse.Namespace, ctx: DistContext, log: Callable[[str], None]) -> dict[str, Any]:
    """``fastccreid eval`` / ``--evaluate``: load a fastccreid or official checkpoint and evaluate it (with
    ``--reranking``, ``--save_features``). The class count comes from the checkpoint, so any CSSC checkpoint loads."""
    from fastccreid.data import build_dataset
    from fastccreid.models import CSSC, load_model_state, strip_module_prefix

    check_args(args)
    ck = ckpt_io.load_checkpoint(args.resume)
    sd = strip_module_prefix(ck["model_state_dict"])
    weight = sd.get("classifier.weight")
    if weight is None or weight.dim() != 2:
        raise ckpt_io.CheckpointError(f"--resume {args.resume}: no 'classifier.weight' [classes, 2048]: not a CSSC "
                                      f"checkpoint")
    dataset = build_dataset(args.dataset, _dataset_root(args))
    if ctx.is_main:
        log(dataset.summary())
    model = CSSC(int(weight.shape[0]), last_stride=1, pretrained=None)
    load_model_state(model, sd, source=f"--resume {args.resume}")
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(ctx.device).to(memory_format=memory_format).eval()
    amp = resolve_amp(args.amp, ctx.device)
    use_compile = resolve_compile(args.compile, ctx.device)
    net = torch.compile(model, dynamic=False) if use_compile else model
    cfg = EvalConfig(height=args.height, width=args.width, batch_size=args.test_batch, amp=amp,
                     channels_last=args.channels_last, loader=args.loader, num_workers=args.num_workers,
                     skip_bad_images=args.skip_bad_images, static_batch=use_compile, progress=not args.no_progress,
                     loader_output=args.loader_output)
    if ctx.is_main:
        epoch = ck.get("epoch")
        log(f"Evaluate only: {args.resume}" + (f" (epoch {int(epoch) + 1})" if epoch is not None else "")
            + f", amp {amp.name}, device {ctx.device}")
    return evaluate_model(net, dataset, cfg, ctx, rerank=args.reranking, save_features_path=args.save_features,
                          log=log)


def run_train(args: argparse.Namespace) -> int:
    """Entry point of ``fastccreid train`` and ``fastccreid eval``; returns the exit code."""
    from fastccreid.models import PretrainedWeightsError

    prog = "fastccreid eval" if getattr(args, "command", "") == "eval" else "fastccreid train"
    log: RunLog | None = None
    try:
        ctx = setup(args.use_cpu, args.gpu_devices)
        name = "log_test.txt" if args.evaluate else "log_train.txt"
        log = RunLog(os.path.join(args.save_dir, name), ctx.is_main, not args.no_progress)
        if ctx.is_main:
            log("------------------------ Args -------------------------")
            for k, v in vars(args).items():
                log(f"{k}: {v}")
            log("--------------------- Args End ------------------------")
        if args.evaluate:
            run_evaluate(args, ctx, log)
            return EXIT_OK
        trainer = Trainer(args, ctx, log)
        code = trainer.fit()
        if code == EXIT_OK:
            barrier(ctx)
        return code
    except (ValueError, PretrainedWeightsError, FileNotFoundError) as exc:
        msg = f"{prog}: error: {exc}"
        if log is not None and log.file is not None:
            log.file.write(msg + "\n")
        print(msg, file=sys.stderr)
        return EXIT_USAGE
    finally:
        if log is not None:
            log.close()
        cleanup()
