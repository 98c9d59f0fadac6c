"""``fastccreid demo``: synthetic LTCC-layout data -> train CSSC at a reduced size -> evaluate -> table and plots.

Runs on a CPU in minutes (no downloads: ``--pretrained none``). The recipe is the seed's, shortened for a from-scratch
run of a few epochs: input 128x32 (the smallest the model takes), batch 16 = 4 ids x 4, triplet loss from the first
epoch, a 1-epoch warm-up. The number of epochs comes from a time budget (``--minutes``): the first steps are timed and
the run is sized to fit, so a slow CPU trains fewer epochs instead of running long. Writes into ``--out``: the dataset
(``data/``), the run (``run/``: log, metrics, last checkpoint), ``cmc.png`` and ``ranked_list.png`` (clothes-changing
queries with their top 10; true matches green, others red).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fastccreid.engine.config import TrainConfig

HEIGHT, WIDTH = 128, 32
DEFAULT_MINUTES = 3.5  # the training budget: with set-up and both evaluations the demo takes about 4 minutes
MIN_EPOCHS, MAX_EPOCHS = 4, 16  # fewer epochs do not beat the untrained model reliably; more add little
PROBE_STEPS = 3  # timed after one warm-up step, to size the run


@dataclass
class DemoResult:
    """Before/after-training results by setting, the PNGs written, and timings (seconds)."""

    untrained: dict[str, Any]
    trained: dict[str, Any]
    files: list[str] = field(default_factory=list)
    train_seconds: float = 0.0
    total_seconds: float = 0.0
    epochs: int = 0
    estimate_seconds: float = 0.0  # the training time predicted after the first steps (0: epochs were given)


def demo_train_config(data_root: str, save_dir: str, *, epochs: int, seed: int, use_cpu: bool,
                      height: int = HEIGHT, width: int = WIDTH, train_batch: int = 16, num_instances: int = 4,
                      lr: float = 1e-3, erase_p: float = 0.0, progress: bool = True,
                      amp: str = "auto") -> TrainConfig:
    """The demo's training run: the seed's recipe shortened for a from-scratch run of a few epochs."""
    return TrainConfig(
        dataset="ltcc", dataset_root=data_root, dataset_filename="", height=height, width=width,
        train_batch=train_batch, num_instances=num_instances, test_batch=64, num_workers=0, max_epoch=epochs,
        eval_epoch=-1, tri_start_epoch=0, warm_up_epochs=1, step_milestones=[max(1, int(epochs * 0.75))], lr=lr,
        pad_size=max(1, round(10 * width / 192)), random_erasing_pro=erase_p, pretrained="none", save_dir=save_dir,
        seed=seed, save_checkpoint=True, loader="torch", print_train_info_epoch_freq=1, use_cpu=use_cpu,
        no_progress=not progress, amp=amp)


def _ranked(features: dict[str, Any], dataset, k: int = 10, max_queries: int = 6):
    """Clothes-changing ranked lists: per shown query, its top-k gallery images after the LTCC-cc junk removal
    (same identity seen by the same camera or in the same clothes)."""
    q, g = features["query"], features["gallery"]
    dist = 2.0 - 2.0 * (q.feats @ g.feats.t()).cpu().numpy()  # squared euclidean of unit vectors [Q, G]
    shown: list[int] = []
    seen: set[int] = set()
    for i, pid in enumerate(q.pids.tolist()):
        if pid not in seen:
            seen.add(pid)
            shown.append(i)
        if len(shown) == max_queries:
            break
    query_paths, ranked_paths, ranked_match = [], [], []
    for i in shown:
        junk = (g.pids == q.pids[i]) & ((g.camids == q.camids[i]) | (g.clothes == q.clothes[i]))
        order = np.argsort(np.where(junk, np.inf, dist[i]), kind="stable")
        order = [j for j in order if not junk[j]][:k]
        query_paths.append(dataset.query[i].path)
        ranked_paths.append([dataset.gallery[j].path for j in order])
        ranked_match.append([bool(g.pids[j] == q.pids[i]) for j in order])
    return query_paths, ranked_paths, ranked_match


def run_demo_pipeline(out: str, *, ids: int = 24, epochs: int = 0, minutes: float = DEFAULT_MINUTES, seed: int = 0,
                      use_cpu: bool = False, height: int = HEIGHT, width: int = WIDTH, train_batch: int = 16,
                      num_instances: int = 4, lr: float = 1e-3, erase_p: float = 0.0, progress: bool = True,
                      plots: bool = True, log_line=print, amp: str = "auto") -> DemoResult:
    """The whole demo; returns the before/after metrics. ``epochs=0`` sizes the run to ``minutes`` of training from
    the first steps' measured speed; ``epochs > 0`` trains exactly that many (the tests' fixed variant)."""
    from fastccreid.data.synth import make_synthetic
    from fastccreid.engine.distributed import setup
    from fastccreid.engine.runlog import RunLog
    from fastccreid.engine.trainer import Trainer, train_one_epoch

    if ids < 8:
        raise ValueError(f"--ids must be >= 8 (half train, half test, 4 identities per batch), got {ids}")
    if epochs < 0:
        raise ValueError(f"--epochs must be >= 1 (or 0: sized from --minutes), got {epochs}")
    if not epochs and minutes <= 0:
        raise ValueError(f"--minutes must be positive, got {minutes}")
    t0 = time.perf_counter()
    data_root = os.path.join(out, "data", "LTCC-synth")
    make_synthetic("ltcc", data_root, ids=ids, seed=seed, size=(height, width))
    save_dir = os.path.join(out, "run")
    cfg = demo_train_config(data_root, save_dir, epochs=epochs or MAX_EPOCHS, seed=seed, use_cpu=use_cpu,
                            height=height, width=width, train_batch=train_batch, num_instances=num_instances, lr=lr,
                            erase_p=erase_p, progress=progress, amp=amp)
    ctx = setup(cfg.use_cpu, cfg.gpu_devices)
    log = RunLog(os.path.join(save_dir, "log_train.txt"), True, progress)
    try:
        trainer = Trainer(cfg, ctx, log)
        log("==> Untrained model (random initialisation):")
        t_eval = time.perf_counter()
        untrained = trainer.evaluate()
        eval_seconds = time.perf_counter() - t_eval
        t1 = time.perf_counter()
        estimate = 0.0
        if not epochs:
            epochs, estimate = _size_run(trainer, train_one_epoch, minutes * 60.0, eval_seconds, log_line)
        code = trainer.fit()
        train_seconds = time.perf_counter() - t1
        if code != 0:
            raise RuntimeError(f"demo training stopped with exit code {code}; see {save_dir}/log_train.txt")
        trained = trainer.last_results
        result = DemoResult(untrained=untrained, trained=trained, train_seconds=train_seconds, epochs=epochs,
                            estimate_seconds=estimate)
        if plots:
            from fastccreid.viz import plot_cmc, plot_ranked_list

            curves = {f"{name} (trained)": r.cmc for name, r in trained.items()}
            curves.update({f"{name} (untrained)": r.cmc for name, r in untrained.items()})
            result.files.append(plot_cmc(curves, os.path.join(out, "cmc.png"),
                                         title=f"CSSC on synthetic LTCC ({ids} ids, {epochs} epochs)"))
            qp, rp, rm = _ranked(trainer.last_features, trainer.dataset)
            title = (f"Clothes-changing setting, LTCC query set: {len(qp)} of {len(trainer.dataset.query)} queries "
                     f"with their top {max(len(r) for r in rp)} (green: same identity, red: another)")
            result.files.append(plot_ranked_list(qp, rp, rm, os.path.join(out, "ranked_list.png"),
                                                 thumb=(height, width), title=title))
        result.total_seconds = time.perf_counter() - t0
        return result
    finally:
        log.close()


def _size_run(trainer, train_one_epoch, budget_s: float, eval_seconds: float, log_line) -> tuple[int, float]:
    """Train the first 1 + PROBE_STEPS steps of epoch 1 (the steps ``fit`` would take: it then resumes after them),
    time the last PROBE_STEPS, and set the number of epochs that fits ``budget_s`` with the final evaluation.
    Returns (epochs, predicted training seconds)."""
    c = trainer.cfg
    steps = trainer.steps_per_epoch()
    probe = min(PROBE_STEPS, steps - 1)
    kw = dict(use_triplet=1 > c.tri_start_epoch, margin=c.margin, backend=c.backend, channels_last=c.channels_last)
    t = time.perf_counter()
    train_one_epoch(trainer.train_net, trainer.train_loader, trainer.optimizer, trainer.scaler, trainer.amp,
                    trainer.ctx, epoch=1, num_steps=1, **kw)  # warm-up: first-call allocations, kernel choice
    warm = time.perf_counter() - t
    stats = train_one_epoch(trainer.train_net, trainer.train_loader, trainer.optimizer, trainer.scaler, trainer.amp,
                            trainer.ctx, epoch=1, num_steps=1 + probe, skip=1, **kw)
    per_step = stats.seconds / max(probe, 1)
    per_epoch = per_step * steps
    fit = int((budget_s - eval_seconds - warm - stats.seconds) // per_epoch) if per_epoch > 0 else MAX_EPOCHS
    epochs = max(MIN_EPOCHS, min(MAX_EPOCHS, fit))
    trainer.resume_step = 1 + probe  # fit continues epoch 1 after the probed steps: the same run as without them
    c.max_epoch = epochs
    c.step_milestones = [max(1, int(epochs * 0.75))]
    trainer.scheduler.milestones = list(c.step_milestones)
    estimate = warm + stats.seconds + per_epoch * epochs - per_step * (1 + probe) + eval_seconds
    note = "" if fit >= MIN_EPOCHS else f" (more than the {budget_s / 60:.1f}-minute budget: {MIN_EPOCHS} is the least)"
    log_line(f"==> {per_step:.2f} s a step here, {steps} steps an epoch: training {epochs} epochs, about "
             f"{estimate / 60:.1f} minutes{note}", flush=True)
    return epochs, estimate


def format_table(result: DemoResult) -> str:
    """Untrained vs trained mAP and R-1/5/10 (percent) for each setting."""
    head = f"{'setting':<18}{'untrained mAP':>14}{'R-1':>7} |{'trained mAP':>12}{'R-1':>7}{'R-5':>7}{'R-10':>7}"
    lines = [head, "-" * len(head)]
    for name, r in result.trained.items():
        u = result.untrained[name]
        lines.append(f"{name:<18}{100 * u.mAP:>14.1f}{100 * u.rank(1):>7.1f} |{100 * r.mAP:>12.1f}"
                     f"{100 * r.rank(1):>7.1f}{100 * r.rank(5):>7.1f}{100 * r.rank(10):>7.1f}")
    return "\n".join(lines)


def run_demo(args: argparse.Namespace) -> int:
    """``fastccreid demo``: print the table, where the plots went and what to run next; exit code 0 on success."""
    use_cpu = bool(args.use_cpu) or not torch.cuda.is_available()
    minutes = DEFAULT_MINUTES if args.minutes is None else args.minutes
    size = f"{args.epochs} epochs" if args.epochs else f"a {minutes:g}-minute training budget"
    print(f"fastccreid demo: synthetic LTCC ({args.ids} identities) -> CSSC {HEIGHT}x{WIDTH}, {size} on "
          f"{'CPU' if use_cpu else 'GPU'} -> evaluation; output in {args.out}", flush=True)
    try:
        result = run_demo_pipeline(args.out, ids=args.ids, epochs=args.epochs, minutes=minutes, seed=args.seed,
                                   use_cpu=use_cpu)
    except ValueError as exc:
        print(f"fastccreid demo: error: {exc}", file=sys.stderr)
        return 2
    print()
    print(format_table(result))
    print(f"\ntraining {result.train_seconds:.0f}s ({result.epochs} epochs"
          + (f"; {result.estimate_seconds:.0f}s predicted" if result.estimate_seconds else "")
          + f"), total {result.total_seconds:.0f}s")
    for path in result.files:
        print(f"wrote {path}")
    print("\nNext: train on a real dataset:  fastccreid train --dataset ltcc --dataset_root DATA "
          "--dataset_filename LTCC-reID --save_dir runs/ltcc --save_checkpoint")
    print("      evaluate saved features:  fastccreid eval-features query.npz gallery.npz --protocol ltcc-cc "
          "(write them with fastccreid eval --resume CKPT --save_features feats.npz)")
    return 0
