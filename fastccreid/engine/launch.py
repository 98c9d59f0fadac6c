"""One-command multi-process training: ``fastccreid train --gpu_devices 0,1`` (one DDP process per listed GPU) or
``--use_cpu --nproc N`` (N gloo processes), started without torchrun.

The launcher writes the run's ``TrainConfig`` to a JSON file and starts N children ``python -m
fastccreid.engine.launch CONFIG`` with the environment torchrun would set (RANK, WORLD_SIZE, LOCAL_RANK); they
meet through a file store in the launcher's own folder rather than a TCP port. The children run in their own
session so that a terminal's Ctrl-C reaches the launcher alone, which forwards each SIGINT / SIGTERM once: the
first makes every rank finish its step and rank 0 save ``checkpoint_last.pth`` (exit 130), a second aborts, as in
one process. When one child fails, the others are stopped (SIGTERM, then SIGKILL after a grace period) and the
launcher exits with the failing child's code, so a crash never leaves the others waiting in a collective.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from fastccreid.engine.config import TrainConfig
from fastccreid.engine.distributed import INIT_METHOD_ENV

GRACE_S = 20.0  # after SIGTERM: how long the other ranks get to exit before SIGKILL
POLL_S = 0.2


def under_launcher() -> bool:
    """True inside a process that torchrun or this launcher started (it must not launch again)."""
    return "WORLD_SIZE" in os.environ


def resolve_nproc(cfg: TrainConfig, cuda_available: bool) -> int:
    """How many processes ``cfg`` asks for: ``--nproc`` when given, else one per ``--gpu_devices`` entry on CUDA
    and one on a CPU."""
    on_cuda = cuda_available and not cfg.use_cpu
    if not on_cuda:
        return cfg.nproc or 1
    devices = [d for d in cfg.gpu_devices.split(",") if d.strip()]
    n = cfg.nproc or len(devices)
    if n > len(devices) and cfg.dist_backend != "gloo":  # gloo lets ranks share a GPU (NCCL refuses)
        raise ValueError(f"--nproc {n} needs as many GPUs in --gpu_devices, got {cfg.gpu_devices!r} "
                         f"({len(devices)}); on a CPU add --use_cpu, to share GPUs add --dist_backend gloo")
    return n


def _die_with_parent() -> None:
    """In the child before exec: receive SIGTERM if the launcher dies (Linux prctl PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def launch(cfg: TrainConfig, nproc: int, *, prog: str = "fastccreid train") -> int:
    """Run ``cfg`` in ``nproc`` DDP processes on this machine; returns the exit code (0, or the first failing
    rank's code; 130 after an interrupt)."""
    workdir = tempfile.mkdtemp(prefix="fastccreid-launch-")
    cfg_path = os.path.join(workdir, "config.json")
    with open(cfg_path, "w") as f:
        json.dump(cfg.to_dict(), f)
    # The ranks meet through a file store in a folder only this launcher uses: no TCP port to race for.
    env = dict(os.environ, WORLD_SIZE=str(nproc), **{INIT_METHOD_ENV: "file://" + os.path.join(workdir, "store")})
    procs: list[subprocess.Popen] = []
    received: list[int] = []
    previous: dict[int, object] = {}

    def forward(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
        received.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            if sig == signal.SIGINT and signal.getsignal(sig) is signal.SIG_IGN:
                continue  # started with Ctrl-C ignored (nohup, background jobs): keep ignoring it
            previous[sig] = signal.signal(sig, forward)
        for rank in range(nproc):
            child_env = dict(env, RANK=str(rank), LOCAL_RANK=str(rank))
            procs.append(subprocess.Popen([sys.executable, "-m", "fastccreid.engine.launch", cfg_path],
                                          env=child_env, start_new_session=True, preexec_fn=_die_with_parent))
        print(f"{prog}: started {nproc} processes (ranks 0-{nproc - 1}, {'gloo' if cfg.use_cpu else 'DDP'})",
              file=sys.stderr, flush=True)
        return _supervise(procs, received, prog)
    finally:
        for p in procs:  # never leave a child behind (an exception in the launcher itself)
            if p.poll() is None:
                p.kill()
                p.wait()
        for sig, h in previous.items():
            signal.signal(sig, h)
        shutil.rmtree(workdir, ignore_errors=True)


def _supervise(procs: list[subprocess.Popen], received: list[int], prog: str, settle_s: float = 0.0) -> int:
    """Wait for every child; on the first failure give the others ``settle_s`` to exit on their own (ranks that stop
    together and print their own errors), then stop them (SIGTERM, SIGKILL after GRACE_S) and return the first
    failure's exit code."""
    failed: tuple[int, int] | None = None
    term_at = kill_at = None
    while True:
        codes = [p.poll() for p in procs]
        if failed is None:
            for rank, code in enumerate(codes):
                if code not in (None, 0) and not (received and code == 130):
                    failed = (rank, code)
                    print(f"{prog}: rank {rank} exited with code {code}; stopping the other processes",
                          file=sys.stderr, flush=True)
                    term_at = time.monotonic() + settle_s
                    break
        if all(c is not None for c in codes):
            break
        now = time.monotonic()
        if term_at is not None and now >= term_at:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            term_at, kill_at = None, now + GRACE_S
        if kill_at is not None and now > kill_at:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            kill_at = None
        time.sleep(POLL_S)
    codes = [p.returncode for p in procs]
    if failed is not None:
        rank, code = failed
        return code if code > 0 else 128 - code  # killed by a signal: the shell's 128 + N
    if any(c == 130 for c in codes):
        return 130
    return max(codes, key=abs)


def main(argv: list[str] | None = None) -> int:
    """A child: rebuild the config the launcher wrote and run it as this rank."""
    from fastccreid.engine.trainer import run_train

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m fastccreid.engine.launch CONFIG.json (started by fastccreid train)")
    with open(argv[0]) as f:
        cfg = TrainConfig.from_dict(json.load(f))
    return run_train(cfg, prog="fastccreid eval" if cfg.evaluate else "fastccreid train")


if __name__ == "__main__":
    sys.exit(main())
