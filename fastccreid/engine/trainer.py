"""``fastccreid train`` / ``fastccreid eval``: the seed's recipe with AMP, optional torch.compile, channels_last,
fused losses, exact resume, clean Ctrl-C / SIGTERM, DDP under torchrun, and safe checkpoints.

Read top to bottom as torchvision's reference ``train.py``: ``Trainer`` builds data, model, optimizer, scheduler and
scaler from a ``TrainConfig``; ``fit`` loops over epochs calling ``train_one_epoch(...)`` and ``evaluate(...)``.
One epoch = the identity sampler's batches (``--max_steps_per_epoch`` caps them); the scheduler steps once per epoch
after training, as the seed's ``train_cssc.train``; evaluation runs every ``--eval_epoch`` epochs after
``--start_eval_epoch`` and at the last epoch, exactly the seed's condition.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fastccreid.engine import checkpoint as ckpt_io
from fastccreid.engine import runrecord
from fastccreid.engine.amp import AmpConfig, resolve_amp
from fastccreid.engine.config import MIN_HEIGHT, MIN_WIDTH, TrainConfig
from fastccreid.engine.distributed import (
    DistContext,
    all_reduce_sum,
    apply_visible_devices,
    barrier,
    broadcast_buffers,
    cleanup,
    setup,
)
from fastccreid.engine.evaluate import EvalConfig, eval_settings, evaluate_model
from fastccreid.engine.global_bn import convert_batchnorm
from fastccreid.engine.launch import launch, resolve_nproc, restart_count, under_launcher
from fastccreid.engine.loss import cssc_loss
from fastccreid.engine.runlog import BestTracker, MetricsLog, RunLog, progress_line, show_bars

__all__ = ["EXIT_INTERRUPTED", "EXIT_NONFINITE", "EXIT_OK", "EXIT_USAGE", "MIN_HEIGHT", "MIN_WIDTH", "EpochStats",
           "NonFiniteLossError", "Trainer", "TrainConfig", "as_config", "run_evaluate", "run_train",
           "train_one_epoch"]

EXIT_OK, EXIT_USAGE, EXIT_NONFINITE, EXIT_INTERRUPTED = 0, 2, 3, 130


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf: training stops without touching the last good checkpoint."""

    def __init__(self, epoch: int, step: int, values: dict[str, float]) -> None:
        self.epoch, self.step, self.values = epoch, step, values
        parts = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
        super().__init__(f"non-finite loss at epoch {epoch}, step {step} ({parts})")


@dataclass
class EpochStats:
    """One epoch's training summary (losses averaged over its steps, over all ranks). After an interrupt,
    ``steps`` is the position to resume from (steps done in this epoch, including any skipped by a resume)."""

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


def as_config(cfg: TrainConfig | argparse.Namespace) -> TrainConfig:
    """A ``TrainConfig`` from itself or from parsed CLI arguments."""
    if isinstance(cfg, TrainConfig):
        return cfg
    if isinstance(cfg, argparse.Namespace):
        return TrainConfig.from_namespace(cfg)
    raise TypeError(f"expected a TrainConfig (or parsed CLI arguments), got {type(cfg).__name__}")


def set_random_seed(seed: int) -> None:
    """The seed's set_random_seed: python, numpy, torch (and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def apply_deterministic(flag: bool, algorithms_on: torch.device | None = None) -> None:
    """The seed's cuDNN settings when on (``deterministic=True, benchmark=False``: the same features run to run);
    off, cuDNN may benchmark its algorithms for the static shapes (faster, not bit-reproducible). With
    ``algorithms_on`` a CUDA device (an explicit ``--deterministic`` on a GPU) also
    ``torch.use_deterministic_algorithms(True, warn_only=True)`` and CUBLAS_WORKSPACE_CONFIG=:4096:8 (unless set):
    cuBLAS keeps fixed reductions, the Triton distance / batch-hard kernels run one fixed config instead of
    autotuning (kernels/_triton_gram.py path_pruner; set before their first launch); an op with no deterministic
    CUDA kernel stays as it is and torch warns, naming it. The triplet backward has no atomics either way.
    CPU kernels here are deterministic already, so CPU runs are left alone."""
    torch.backends.cudnn.deterministic = bool(flag)
    torch.backends.cudnn.benchmark = not flag
    if flag and algorithms_on is not None and algorithms_on.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def eval_amp_config(cfg: TrainConfig, device: torch.device) -> AmpConfig:
    """Evaluation features in fp32 (the official numbers) unless ``--eval_amp`` asks for the training precision."""
    return resolve_amp(cfg.amp if cfg.eval_amp else "off", device)


def resolve_compile(flag: bool | None, device: torch.device) -> bool:
    """``--compile`` default: on for CUDA; off on CPU, where compiling the train step costs minutes and did not
    run faster than eager (README: "Training")."""
    return device.type == "cuda" if flag is None else bool(flag)


def train_one_epoch(net: torch.nn.Module, loader, optimizer: torch.optim.Optimizer, scaler, amp: AmpConfig,
                    ctx: DistContext, *, epoch: int, num_steps: int, use_triplet: bool, margin: float | None,
                    backend: str = "auto", channels_last: bool = True, skip: int = 0,
                    stop_requested: Callable[[], bool] = lambda: False, progress: bool = False,
                    max_epoch: int | None = None, on_step: Callable[[int], None] | None = None,
                    log_every: int = 0) -> EpochStats:
    """Train epoch ``epoch`` (1-based, as the seed's ``train()``) over ``num_steps`` batches from batch ``skip``.

    Stops when ``stop_requested()`` turns true (``interrupted=True``; ``steps`` is then the position to resume
    from): after the current step in one process, after the step whose reduced flag shows it under DDP (every rank
    stops at the same step). Raises ``NonFiniteLossError`` on a NaN/Inf loss. Each step's losses and
    stop flag are summed over ranks in one small all-reduce and read back one step late, so the host never waits
    for the step it has just queued (on a GPU it stays a step ahead).

    ``progress``: a tqdm bar when stderr is a terminal (tqdm's ``disable=None``); otherwise, and with
    ``progress=False``, ``log_every`` > 0 prints one flushed line every ``log_every`` steps to stderr (rank 0).
    """
    from fastccreid.data.loaders import to_model_input

    net.train()
    loader.set_epoch(epoch - 1, start_batch=skip)  # a resume neither reads nor decodes the done steps
    sums = torch.zeros(2, dtype=torch.float64)
    steps = images = 0
    bar = None
    if progress and ctx.is_main:
        from tqdm import tqdm

        bar = tqdm(total=num_steps, initial=skip, desc=f"epoch {epoch}/{max_epoch or '?'}", leave=False,
                   dynamic_ncols=True, disable=None)  # None: no bar unless stderr is a terminal
    step_lines = log_every > 0 and ctx.is_main and (bar is None or bar.disable)
    lr = optimizer.param_groups[0]["lr"]
    pending: tuple[int, torch.Tensor] | None = None
    stop_at = 0

    def consume(step: int, vals: torch.Tensor) -> bool:
        """Account one step's reduced [id, triplet, stop] values (a device-to-host sync); True = stop now."""
        nonlocal steps
        v = vals.cpu().double()
        v[:2] /= ctx.world_size
        if not torch.isfinite(v[:2]).all():
            raise NonFiniteLossError(epoch, step + 1, {"id loss": float(v[0]), "triplet loss": float(v[1])})
        sums.add_(v[:2])
        steps += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(id=f"{v[0]:.3f}", tri=f"{v[1]:.3f}", refresh=False)
        if step_lines and (step + 1) % log_every == 0:
            progress_line(f"epoch {epoch}/{max_epoch or '?'} step {step + 1}/{num_steps}: id {v[0]:.4f} "
                          f"tri {v[1]:.4f}")
        return bool(v[2] > 0)

    t0 = time.perf_counter()
    stop = False
    for step, batch in enumerate(loader, start=skip):
        if step >= num_steps:
            break
        x = to_model_input(batch, channels_last=channels_last, dtype=torch.float32)
        pids = torch.as_tensor(batch.pids).to(x.device, non_blocking=True)
        with amp.autocast():
            feats, logits = net(x)
        parts = cssc_loss(feats, logits, pids, use_triplet=use_triplet, margin=margin, backend=backend, ctx=ctx)
        # One small all-reduce per step: the losses and the stop flag, so every rank decides alike. The flag is
        # filled on the device (no host-to-device copy).
        flag = torch.full((), float(stop_requested()), device=parts.id_loss.device)
        vals = all_reduce_sum(torch.stack([parts.id_loss.float(), parts.tri_loss.float(), flag]), ctx)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(parts.total).backward()
        scaler.step(optimizer)
        scaler.update()
        images += x.shape[0] * ctx.world_size
        if on_step is not None:
            on_step(step + 1)
        if pending is not None and consume(*pending):  # the previous step's values: this step is queued already
            stop, stop_at = True, step + 1
            break
        pending = (step, vals)
        if not ctx.distributed and stop_requested():  # one process needs no agreement: stop after this step
            consume(*pending)
            pending, stop, stop_at = None, True, step + 1
            break
    if pending is not None and not stop and consume(*pending):
        stop, stop_at = True, pending[0] + 1
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    done = max(steps, 1)
    if stop:
        steps = stop_at  # every step up to here is in the weights: resume from the next one
    return EpochStats(epoch=epoch, steps=steps, images=images, id_loss=float(sums[0] / done),
                      tri_loss=float(sums[1] / done), lr=lr, seconds=seconds, interrupted=stop)


def evaluate(model: torch.nn.Module, net: torch.nn.Module, dataset, eval_cfg: EvalConfig, ctx: DistContext, *,
             rerank: bool = False, log: Callable[[str], None] = print, save_features_path: str = "",
             features_out: dict[str, Any] | None = None) -> dict[str, Any]:
    """Flip-TTA evaluation of ``net`` (``model`` itself or its compiled form) in eval mode, back to train mode
    after; returns {setting: EvalResult}."""
    was_training = model.training
    model.eval()
    try:
        return evaluate_model(net, dataset, eval_cfg, ctx, rerank=rerank, log=log,
                              save_features_path=save_features_path, features_out=features_out)
    finally:
        model.train(was_training)


class Trainer:
    """Builds data, model, optimizer, scheduler and scaler from a ``TrainConfig``, resumes if asked, and trains."""

    def __init__(self, cfg: TrainConfig | argparse.Namespace, ctx: DistContext | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        from fastccreid.data import build_dataset
        from fastccreid.engine.scheduler import WarmupMultiStepLR
        from fastccreid.models import CSSC

        cfg = as_config(cfg)
        cfg.validate()
        self.cfg = cfg
        self.ctx = ctx if ctx is not None else setup(cfg.use_cpu, cfg.gpu_devices, cfg.dist_backend)
        self.device = self.ctx.device
        self.log = log if log is not None else RunLog(None, self.ctx.is_main, not cfg.no_progress)
        self.amp: AmpConfig = resolve_amp(cfg.amp, self.device)
        self.compile = resolve_compile(cfg.compile, self.device)
        apply_deterministic(bool(cfg.deterministic), self.device if cfg.deterministic else None)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        set_random_seed(cfg.seed)

        self.dataset = build_dataset(cfg.dataset, cfg.dataset_path)
        if self.ctx.is_main:
            self.log(self.dataset.summary())
        self.num_classes = self.dataset.num_train_pids
        self.model = CSSC(self.num_classes, last_stride=1, pretrained=cfg.pretrained)
        self.model.to(self.device).to(memory_format=self.memory_format)
        # Adam over every parameter in one group with 'initial_lr', as the seed (frozen BN biases get no grad).
        fused = self.device.type in ("cuda", "cpu")
        self.optimizer = torch.optim.Adam([{"params": self.model.parameters(), "initial_lr": cfg.lr}], lr=cfg.lr,
                                          weight_decay=cfg.weight_decay, fused=fused)
        self.scaler = self.amp.grad_scaler()
        self.best = BestTracker()
        self.start_epoch = cfg.start_epoch
        self.resume_step = 0
        resumed = self._resume() if cfg.resume else None
        self.scheduler = WarmupMultiStepLR(self.optimizer, milestones=cfg.step_milestones, gamma=cfg.gamma,
                                           warmup_factor=cfg.warm_up_factor, warmup_iters=cfg.warm_up_epochs,
                                           warmup_method=cfg.warm_up_method, last_epoch=self.start_epoch - 1)
        if resumed is not None and "scheduler_state_dict" in resumed:
            self.scheduler.load_state_dict(resumed["scheduler_state_dict"])
        if resumed is not None and "rng" in resumed:
            ckpt_io.set_rng_state(resumed["rng"])
        self.record = self._build_record(resumed)

        self.train_net: torch.nn.Module = self.model
        if self.ctx.distributed:
            # BN over the global batch unless --bn per_rank: SyncBatchNorm on NCCL, GlobalBatchNorm on gloo (same
            # parameter and buffer names: checkpoints load either way)
            self.model = convert_batchnorm(self.model, "global" if cfg.sync_bn else cfg.bn, self.ctx)
            self.train_net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.eval_net: torch.nn.Module = self.model
        if self.compile:
            # dynamic=False: one static graph per mode (train batch, eval batch); no recompiles across epochs.
            self.train_net = torch.compile(self.train_net, dynamic=False)
            self.eval_net = torch.compile(self.model, dynamic=False)

        self.train_loader = self._build_train_loader()
        self.eval_cfg = EvalConfig(height=cfg.height, width=cfg.width, batch_size=cfg.test_batch,
                                   amp=eval_amp_config(cfg, self.device),
                                   channels_last=cfg.channels_last, loader=cfg.loader, num_workers=cfg.num_workers,
                                   skip_bad_images=cfg.skip_bad_images, static_batch=self.compile,
                                   loader_output=cfg.loader_output, progress=not cfg.no_progress)
        self.metrics = MetricsLog(cfg.save_dir, self.ctx.is_main, resume_epoch=self.start_epoch)
        self._stop_requested = False
        self.last_results: dict[str, Any] = {}
        self.last_features: dict[str, Any] = {}

    @property
    def args(self) -> TrainConfig:
        """The run's configuration (the name the CLI-era code used)."""
        return self.cfg

    # ------------------------------------------------------------------ set-up helpers
    def _resume(self) -> dict[str, Any]:
        from fastccreid.models import load_model_state

        path = self.cfg.resume
        ck = ckpt_io.load_checkpoint(path)
        ckpt_io.check_compatible(ck, path, num_classes=self.num_classes, dataset=self.cfg.dataset)
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

    def _build_record(self, resumed: dict[str, Any] | None) -> runrecord.RunRecord:
        """The run record (``run.json``; rank 0 writes it). A resumed run continues the checkpoint's record: its
        epochs up to the resumed one are kept and the resume is listed."""
        c, main = self.cfg, self.ctx.is_main
        meta = (resumed or {}).get("fastccreid")
        previous = meta.get("run") if isinstance(meta, dict) and isinstance(meta.get("run"), dict) else None
        return runrecord.RunRecord(
            os.path.join(c.save_dir, runrecord.RUN_NAME), kind="train", config=c.to_dict(), seed=c.seed,
            env=runrecord.environment(self.device, self.ctx.world_size) if main else {},
            dataset=runrecord.dataset_fingerprint(self.dataset, c.dataset, c.dataset_path) if main else None,
            enabled=main, previous=previous, resume_epoch=self.start_epoch,
            resume_from=c.resume if resumed is not None else "")

    def _build_train_loader(self):
        from fastccreid.data.loaders import build_train_loader

        c = self.cfg
        return build_train_loader(self.dataset.train, height=c.height, width=c.width, batch_size=c.train_batch,
                                  num_instances=c.num_instances, seed=c.seed, device=self.device, loader=c.loader,
                                  num_workers=c.num_workers, pad=c.pad_size, flip_p=c.horizontal_flip_pro,
                                  erase_p=c.random_erasing_pro, skip_bad_images=c.skip_bad_images,
                                  rank=self.ctx.rank, world_size=self.ctx.world_size,
                                  output=c.loader_output, dali_py_workers=c.dali_py_workers)

    def steps_per_epoch(self) -> int:
        n = len(self.train_loader)
        return min(n, self.cfg.max_steps_per_epoch) if self.cfg.max_steps_per_epoch else n

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self, epoch: int, resume_step: int = 0, metrics: dict[str, Any] | None = None
                         ) -> dict[str, Any]:
        """The seed's keys plus what an exact resume needs and the whole run configuration. ``epoch``: last
        completed epoch (0-based), as the seed."""
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
                           "dataset": self.cfg.dataset, "height": self.cfg.height, "width": self.cfg.width,
                           "amp": self.amp.name, "config": self.cfg.to_dict(), "run": self.record.to_dict()},
        }
        if metrics:
            state.update(metrics)
        return state

    def last_checkpoint_path(self) -> str:
        return os.path.join(self.cfg.save_dir, ckpt_io.LAST_NAME)

    def save_last(self, epoch: int, resume_step: int = 0) -> str | None:
        if not self.ctx.is_main:
            return None
        return ckpt_io.save_checkpoint(self.checkpoint_state(epoch, resume_step), self.last_checkpoint_path())

    def save_evaluated(self, epoch: int, results: dict[str, Any], flags: dict[str, tuple[bool, bool]]) -> None:
        """The seed's ``checkpoint_epN_mAP_…_rank1_….pth`` (+ best copies), picked by the first setting; the last
        checkpoint is a link to it."""
        first = eval_settings(self.dataset)[0].name
        r = results[first]
        is_map, is_r1 = flags[first]
        name = f"checkpoint_ep{epoch + 1}_mAP_{round(r.mAP * 100, 2)}_rank1_{round(r.rank(1) * 100, 2)}.pth"
        state = self.checkpoint_state(epoch, metrics={"rank1": float(r.rank(1)), "mAP": float(r.mAP)})
        path = ckpt_io.save_checkpoint(state, os.path.join(self.cfg.save_dir, name), is_best_map=is_map,
                                       is_best_rank1=is_r1)
        ckpt_io.atomic_copy(path, self.last_checkpoint_path())  # same content: link, not rewrite

    def _step_saver(self, epoch: int) -> Callable[[int], None] | None:
        """``--checkpoint_every_steps S``: after every S-th step of epoch ``epoch`` (0-based) rank 0 writes
        ``checkpoint_last.pth`` atomically with ``resume_step`` = the steps done, so a restart redoes < S steps."""
        every = self.cfg.checkpoint_every_steps
        if every <= 0:
            return None

        def save(done: int) -> None:
            if done % every == 0:
                self.save_last(epoch - 1, resume_step=done)

        return save

    # ------------------------------------------------------------------ training
    def _request_stop(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        if self._stop_requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop_requested = True
        if self.ctx.is_main:
            name = signal.Signals(signum).name
            print(f"\n==> {name} received: finishing this step, saving a checkpoint, then exiting "
                  "(Ctrl-C again to abort at once)", file=sys.stderr, flush=True)

    def _install_signal_handlers(self) -> dict[int, Any]:
        """Ctrl-C (SIGINT) and SIGTERM (what schedulers send) stop after the current step. A process started with
        SIGINT ignored (``nohup``, ``cmd &`` from a script, job schedulers) keeps ignoring it, as Python does."""
        handlers: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return handlers
        for sig in (signal.SIGINT, signal.SIGTERM):
            if sig == signal.SIGINT and signal.getsignal(sig) is signal.SIG_IGN:
                continue
            handlers[sig] = signal.signal(sig, self._request_stop)
        return handlers

    def evaluate(self, epoch: int | None = None) -> dict[str, Any]:
        """Flip-TTA evaluation of the current weights (extraction sharded over ranks, evaluated once); returns
        {setting: EvalResult} on every rank."""
        broadcast_buffers(self.model, self.ctx)  # every rank embeds with rank 0's BN statistics (the checkpoint's)
        features: dict[str, Any] = {}
        results = evaluate(self.model, self.eval_net, self.dataset, self.eval_cfg, self.ctx,
                           rerank=self.cfg.reranking, features_out=features,
                           log=lambda m: self.log(f"Epoch {epoch}: {m}" if epoch else m))
        self.last_results, self.last_features = results, features
        return results

    def fit(self) -> int:
        """The training loop; returns the process exit code (0, 3 on a non-finite loss, 130 when interrupted).
        The run record (``run.json``) is written at the start, after every epoch and at the end with its status."""
        self.record.write()
        try:
            code = self._fit()
        except BaseException:
            self.record.finish("failed", 1)
            self.record.write()
            raise
        status = {EXIT_OK: "finished", EXIT_INTERRUPTED: "interrupted"}.get(code, "failed")
        self.record.finish(status, code)
        self.record.write()
        return code

    def _fit(self) -> int:
        c = self.cfg
        handlers = self._install_signal_handlers()
        epochs_bar = None
        try:
            if self.start_epoch >= c.max_epoch:
                self.log(f"==> Nothing to train: start epoch {self.start_epoch} >= --max_epoch {c.max_epoch}")
                return EXIT_OK
            self.log(f"==> Start training: {self.num_classes} identities, {self.steps_per_epoch()} steps/epoch, "
                     f"batch {c.train_batch} ({self.ctx.world_size} process(es)), device {self.device}, "
                     f"amp {self.amp.name}, compile {'on' if self.compile else 'off'}, "
                     f"channels_last {'on' if c.channels_last else 'off'}")
            if self.ctx.is_main and not c.no_progress:
                from tqdm import tqdm

                epochs_bar = tqdm(total=c.max_epoch, initial=self.start_epoch, desc="epochs", dynamic_ncols=True,
                                  disable=None)  # None: no bar unless stderr is a terminal
            epoch_lines = self.ctx.is_main and not show_bars(not c.no_progress)
            start_time = time.perf_counter()
            for epoch in range(self.start_epoch, c.max_epoch):
                epoch1 = epoch + 1  # the seed's 1-based epoch
                try:
                    stats = train_one_epoch(
                        self.train_net, self.train_loader, self.optimizer, self.scaler, self.amp, self.ctx,
                        epoch=epoch1, num_steps=self.steps_per_epoch(), use_triplet=epoch1 > c.tri_start_epoch,
                        margin=c.margin, backend=c.backend, channels_last=c.channels_last,
                        skip=self.resume_step if epoch == self.start_epoch else 0,
                        stop_requested=lambda: self._stop_requested, progress=not c.no_progress,
                        max_epoch=c.max_epoch, on_step=self._step_saver(epoch), log_every=c.log_every)
                except NonFiniteLossError as exc:
                    last = self.last_checkpoint_path()
                    keep = (f"the last good checkpoint is {last}" if os.path.isfile(last)
                            else "no checkpoint was written before it (use --save_checkpoint)")
                    self.log(f"==> Stopping: {exc}. Nothing was saved for this epoch; {keep}. Try a lower --lr, "
                             f"or --amp off to rule out precision.")
                    return EXIT_NONFINITE
                if stats.interrupted:
                    path = self.save_last(epoch - 1, resume_step=stats.steps)
                    self.log(f"==> Interrupted at epoch {epoch1}, step {stats.steps}: saved {path}; continue "
                             f"with --resume {path}")
                    return EXIT_INTERRUPTED
                self.scheduler.step()  # per epoch, after training (the seed's train_cssc.train)
                if c.print_train_info_epoch_freq > 0 and epoch1 % c.print_train_info_epoch_freq == 0:
                    self.log(f"Ep{stats.epoch} Id:{stats.id_loss:.4f} Tri:{stats.tri_loss:.4f} lr:{stats.lr:.2e} "
                             f"{stats.images_per_s:.1f} img/s {stats.seconds:.1f}s")
                if epoch_lines:  # no bar (stderr is a file, or --no_progress): one flushed line an epoch
                    progress_line(f"epoch {stats.epoch}/{c.max_epoch} done: id {stats.id_loss:.4f} "
                                  f"tri {stats.tri_loss:.4f} lr {stats.lr:.2e}, {stats.images_per_s:.1f} img/s, "
                                  f"{stats.seconds:.1f}s")
                row: dict[str, Any] = {"epoch": stats.epoch, "lr": stats.lr, "id_loss": stats.id_loss,
                                       "tri_loss": stats.tri_loss, "steps": stats.steps,
                                       "train_seconds": round(stats.seconds, 3),
                                       "images_per_s": round(stats.images_per_s, 2)}
                due = (epoch1 > c.start_eval_epoch and c.eval_epoch > 0 and epoch1 % c.eval_epoch == 0) \
                    or epoch1 == c.max_epoch
                t_eval = time.perf_counter()
                results = self.evaluate(epoch1) if due else None
                eval_seconds = time.perf_counter() - t_eval
                self.record.add_epoch(row, results, eval_seconds)  # before the checkpoints, which carry it
                flags: dict[str, tuple[bool, bool]] = {}
                if results:
                    flags = self.best.update(epoch1, results)
                    for name, r in results.items():
                        row.update({f"{name}/mAP": r.mAP, f"{name}/rank1": r.rank(1), f"{name}/rank5": r.rank(5),
                                    f"{name}/rank10": r.rank(10), f"{name}/mINP": r.mINP})
                if c.save_checkpoint and self.ctx.is_main:
                    if results:
                        self.save_evaluated(epoch, results, flags)
                    else:
                        self.save_last(epoch)
                self.metrics.add(row, self.best.state())
                self.record.write()
                if epochs_bar is not None:
                    epochs_bar.update(1)
                stop = all_reduce_sum(torch.full((1,), float(self._stop_requested), device=self.device), self.ctx)
                if stop.item() > 0 and epoch1 < c.max_epoch:
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


def run_evaluate(cfg: TrainConfig | argparse.Namespace, ctx: DistContext, log: Callable[[str], None]
                 ) -> dict[str, Any]:
    """``fastccreid eval`` / ``--evaluate``: load a fastccreid or official checkpoint and evaluate it (with
    ``--reranking``, ``--save_features``). The class count comes from the checkpoint, so any CSSC checkpoint loads."""
    from fastccreid.data import build_dataset
    from fastccreid.models import CSSC, load_model_state, strip_module_prefix

    cfg = as_config(cfg)
    cfg.validate()
    ck = ckpt_io.load_checkpoint(cfg.resume)
    sd = strip_module_prefix(ck["model_state_dict"])
    weight = sd.get("classifier.weight")
    if weight is None or weight.dim() != 2:
        raise ckpt_io.CheckpointError(f"--resume {cfg.resume}: no 'classifier.weight' [classes, 2048]: not a CSSC "
                                      f"checkpoint")
    dataset = build_dataset(cfg.dataset, cfg.dataset_path)
    if ctx.is_main:
        log(dataset.summary())
    model = CSSC(int(weight.shape[0]), last_stride=1, pretrained=None)
    load_model_state(model, sd, source=f"--resume {cfg.resume}")
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(ctx.device).to(memory_format=memory_format).eval()
    amp = eval_amp_config(cfg, ctx.device)
    # cuDNN's flags on by default for evaluation; deterministic algorithms only when --deterministic is given
    apply_deterministic(cfg.deterministic is not False, ctx.device if cfg.deterministic else None)
    use_compile = resolve_compile(cfg.compile, ctx.device)
    net = torch.compile(model, dynamic=False) if use_compile else model
    eval_cfg = EvalConfig(height=cfg.height, width=cfg.width, batch_size=cfg.test_batch, amp=amp,
                          channels_last=cfg.channels_last, loader=cfg.loader, num_workers=cfg.num_workers,
                          skip_bad_images=cfg.skip_bad_images, static_batch=use_compile,
                          progress=not cfg.no_progress, loader_output=cfg.loader_output)
    epoch = ck.get("epoch")
    if ctx.is_main:
        log(f"Evaluate only: {cfg.resume}" + (f" (epoch {int(epoch) + 1})" if epoch is not None else "")
            + f", amp {amp.name}, device {ctx.device}")
    record = eval_record(cfg, ck, dataset, ctx)
    record.write()
    try:
        results = evaluate(model, net, dataset, eval_cfg, ctx, rerank=cfg.reranking,
                           save_features_path=cfg.save_features, log=log)
    except BaseException:
        record.finish("failed", 1)
        record.write()
        raise
    record.set_evaluation(int(epoch) + 1 if epoch is not None else None, results, amp=amp.name,
                          reranking=bool(cfg.reranking))
    record.finish("finished", EXIT_OK)
    record.write()
    return results


def eval_record(cfg: TrainConfig, ck: dict[str, Any], dataset, ctx: DistContext) -> runrecord.RunRecord:
    """An ``eval`` run's record (``run.json``, or ``run_eval.json`` beside a training run's): the config, the
    environment, the dataset fingerprint and which checkpoint (path, size, the run that trained it)."""
    main = ctx.is_main
    meta = ck.get("fastccreid") if isinstance(ck.get("fastccreid"), dict) else {}
    trained = meta.get("run") if isinstance(meta.get("run"), dict) else {}
    rec = runrecord.RunRecord(
        runrecord.record_path(cfg.save_dir, "eval"), kind="eval", config=cfg.to_dict(), seed=cfg.seed,
        env=runrecord.environment(ctx.device, ctx.world_size) if main else {},
        dataset=runrecord.dataset_fingerprint(dataset, cfg.dataset, cfg.dataset_path) if main else None,
        enabled=main)
    rec.data["checkpoint"] = {
        "path": os.path.abspath(cfg.resume), "bytes": os.path.getsize(cfg.resume),
        "epoch": int(ck["epoch"]) + 1 if ck.get("epoch") is not None else None,
        "trained_by": {k: trained.get(k) for k in ("started_at", "seed", "environment", "dataset", "results")}
        if trained else None}
    return rec


def check_data(cfg: TrainConfig) -> None:
    """Issue 28's pre-flight: parse the dataset (a bad manifest row: one ``FILE:LINE`` error) and, for training, run
    ``fastccreid data check``'s errors (missing files, no countable true match, one camera, clothes ids missing),
    so no training starts on a dataset whose evaluation cannot count a match. ``--skip_bad_images`` keeps its
    meaning: missing files are then a warning (rank 0 prints it) and the loaders skip them."""
    from fastccreid.data import build_dataset
    from fastccreid.data.check import preflight

    if cfg.evaluate:
        build_dataset(cfg.dataset, cfg.dataset_path)
        return
    quiet = os.environ.get("RANK", "0") != "0"
    preflight(cfg.dataset, cfg.dataset_path, skip_bad_images=cfg.skip_bad_images,
              warn=(lambda m: None) if quiet else (lambda m: print(m, file=sys.stderr)))


def resume_after_restart(cfg: TrainConfig) -> TrainConfig:
    """A worker the elastic agent restarted: resume from ``--save_dir``'s ``checkpoint_last.pth`` when there is
    one (the newest state any rank 0 wrote: every S steps with ``--checkpoint_every_steps``, at epoch ends with
    ``--save_checkpoint``), else from what the first start resumed from."""
    last = os.path.join(cfg.save_dir, ckpt_io.LAST_NAME)
    return cfg.replace(resume=last) if os.path.isfile(last) else cfg


def run_train(cfg: TrainConfig | argparse.Namespace, *, prog: str | None = None) -> int:
    """Entry point of ``fastccreid train`` and ``fastccreid eval``; returns the exit code."""
    from fastccreid.models import PretrainedWeightsError

    if prog is None:
        prog = "fastccreid eval" if getattr(cfg, "command", "") == "eval" else "fastccreid train"
    cfg = as_config(cfg)
    log: RunLog | None = None
    try:
        apply_visible_devices(cfg.gpu_devices)  # before the first CUDA query (the CLI has done it already)
        check_data(cfg)  # before any process, log or model: a bad dataset writes nothing
        if not under_launcher():
            nproc = resolve_nproc(cfg, torch.cuda.is_available())
            if nproc > 1 or cfg.nnodes > 1 or cfg.max_restarts > 0:
                cfg.validate()
                return launch(cfg, nproc, prog=prog)
        restarted = restart_count() > 0 and not cfg.evaluate
        if restarted:
            cfg = resume_after_restart(cfg)
        ctx = setup(cfg.use_cpu, cfg.gpu_devices, cfg.dist_backend)
        name = "log_test.txt" if cfg.evaluate else "log_train.txt"
        log = RunLog(os.path.join(cfg.save_dir, name), ctx.is_main, not cfg.no_progress)
        if ctx.is_main:
            log("------------------------ Args -------------------------")
            for k, v in cfg.to_dict().items():
                log(f"{k}: {v}")
            log("--------------------- Args End ------------------------")
            if restarted:
                log(f"==> Restart {restart_count()} of {cfg.max_restarts} after a worker failure: "
                    + (f"resuming from {cfg.resume}" if cfg.resume else "no checkpoint yet, starting over"))
        if cfg.evaluate:
            run_evaluate(cfg, ctx, log)
            return EXIT_OK
        trainer = Trainer(cfg, ctx, log)
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
