"""Tiny training runs shared by the trainer, DDP and CLI tests: a synthetic LTCC at 128x32, random init, CPU."""

from __future__ import annotations

from fastccreid.engine.config import TrainConfig

H, W = 128, 32


def tiny_config(root: str, save_dir: str, **overrides) -> TrainConfig:
    """2 steps an epoch of batch 8 (2 ids x 4), triplet from the first epoch, evaluation only at the end."""
    base = dict(dataset="ltcc", dataset_root=root, dataset_filename="", height=H, width=W, train_batch=8,
                num_instances=4, test_batch=16, num_workers=0, pretrained="none", use_cpu=True, no_progress=True,
                loader="torch", save_dir=save_dir, max_steps_per_epoch=2, tri_start_epoch=0, eval_epoch=-1, seed=1,
                amp="bf16")
    base.update(overrides)
    return TrainConfig(**base)


def tiny_argv(root: str, save_dir: str, *extra: str, command: str = "train") -> list[str]:
    """The same run as ``tiny_config`` as ``fastccreid`` command-line arguments."""
    return [command, "--dataset", "ltcc", "--dataset_root", root, "--dataset_filename", "", "--height", str(H),
            "--width", str(W), "--train_batch", "8", "--num_instances", "4", "--test_batch", "16", "-j", "0",
            "--pretrained", "none", "--use_cpu", "--no_progress", "--loader", "torch", "--save_dir", save_dir,
            "--max_steps_per_epoch", "2", "--tri_start_epoch", "0", "--eval_epoch", "-1", "--seed", "1",
            "--amp", "bf16", *extra]


def make_tiny_ltcc(root: str, ids: int = 8) -> str:
    from fastccreid.data.synth import make_synthetic

    return make_synthetic("ltcc", root, ids=ids, seed=0, clothes=2, cams=2, images_per=2, size=(H, W))


def _default_sigint() -> None:
    """In the child: Ctrl-C handled as in an interactive shell even when the suite runs with SIGINT ignored."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cli(argv: list[str], **kw):
    """``python -m fastccreid ARGV`` as a child process (stdout/stderr piped, no stdin, default Ctrl-C handling)."""
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "fastccreid", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, preexec_fn=_default_sigint,
                            **kw)


def wait_for_file(path, proc, timeout: float = 240) -> None:
    """Wait until ``path`` exists while ``proc`` runs; fail with its stderr if it exits first, or after ``timeout``."""
    import os
    import time

    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.2)
