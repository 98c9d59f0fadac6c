"""One-command multi-process training on torch's own elastic agent (what ``torchrun`` runs):
``fastccreid train --gpu_devices 0,1`` (one DDP process per listed GPU), ``--use_cpu --nproc N`` (N gloo processes)
and ``fastccreid eval-features --nproc N``, without typing torchrun.

``launch`` writes the run's ``TrainConfig`` to a JSON file and hands ``python -m fastccreid.engine.launch CONFIG``
to ``torch.distributed.launcher.api.elastic_launch``. The agent starts the workers (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR / MASTER_PORT and its TCP store, as torchrun), forwards SIGINT / SIGTERM to them (the first makes every
rank finish its step and rank 0 save ``checkpoint_last.pth``, exit 130; a second aborts), stops the others when one
fails, and with ``--max_restarts K`` restarts the whole group up to K times: a restarted worker
(TORCHELASTIC_RESTART_COUNT > 0) resumes from the newest ``checkpoint_last.pth`` in ``--save_dir`` by itself.
One machine: a c10d rendezvous on 127.0.0.1 port 0 (the OS picks a free port: no race). Several machines:
``--nnodes N --node_rank R --rdzv_endpoint HOST:PORT`` with torchrun's meanings (its default static rendezvous:
node R's workers are ranks R*nproc .. R*nproc+nproc-1, node 0 hosts the store at HOST:PORT).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from fastccreid.engine.config import TrainConfig

RESTART_ENV = "TORCHELASTIC_RESTART_COUNT"  # set by the elastic agent in every worker it starts
SHUTDOWN_TIMEOUT_S = 120  # after the agent forwards a signal: time for a step + rank 0's checkpoint before SIGKILL
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Rendezvous:
    """Where the agents of one run meet. ``nnodes == 1`` with no endpoint: this machine alone (c10d on loopback,
    a free port); otherwise torchrun's static rendezvous at ``endpoint`` (HOST:PORT), this agent being node
    ``node_rank``."""

    nnodes: int = 1
    node_rank: int = 0
    endpoint: str = ""

    def validate(self) -> None:
        if self.nnodes < 1:
            raise ValueError(f"--nnodes must be >= 1, got {self.nnodes}")
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"--node_rank must be in [0, --nnodes {self.nnodes}), got {self.node_rank}")
        if self.nnodes > 1 and not self.endpoint:
            raise ValueError("--nnodes > 1 needs --rdzv_endpoint HOST:PORT (node 0's address, reachable from every "
                             "node)")
        if self.endpoint:
            host, _, port = self.endpoint.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"--rdzv_endpoint must be HOST:PORT, got {self.endpoint!r}")


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


def _config_kwargs(rdzv: Rendezvous, nproc: int, max_restarts: int, run_id: str) -> dict:
    from torch.distributed.launcher.api import LaunchConfig

    if rdzv.endpoint:  # torchrun's default: static rendezvous, node R's ranks fixed by --node_rank
        backend, endpoint = "static", rdzv.endpoint
        configs = {"rank": rdzv.node_rank}
    else:  # torchrun --standalone on loopback: c10d on a port the OS picks
        backend, endpoint, configs = "c10d", "127.0.0.1:0", {"is_host": True}
    kw = dict(min_nodes=rdzv.nnodes, max_nodes=rdzv.nnodes, nproc_per_node=nproc, run_id=run_id,
              rdzv_backend=backend, rdzv_endpoint=endpoint, rdzv_configs=configs, max_restarts=max_restarts,
              monitor_interval=0.1, start_method="spawn")
    if not rdzv.endpoint:
        kw["local_addr"] = "127.0.0.1"
    if "shutdown_timeout" in {f.name for f in dataclasses.fields(LaunchConfig)}:  # torch >= 2.12
        kw["shutdown_timeout"] = SHUTDOWN_TIMEOUT_S
    return kw


class _FailureReporter(logging.Handler):
    """Turns the agent's "failed (exitcode: C) local_rank: L" record into fastccreid's own line naming the global
    rank, and whether the group restarts (the agent restarts it while restarts are left)."""

    def __init__(self, prog: str, first_rank: int, max_restarts: int) -> None:
        super().__init__(logging.ERROR)
        self.prog, self.first_rank, self.max_restarts = prog, first_rank, max_restarts
        self.failures = 0

    def emit(self, record: logging.LogRecord) -> None:
        if not str(record.msg).startswith("failed (exitcode"):
            return
        code, local_rank = record.args[0], record.args[1]
        self.failures += 1
        what = "stopping the other processes"
        if self.failures <= self.max_restarts:
            what += f"; restarting the group ({self.failures} of {self.max_restarts} restarts), which resumes from " \
                    "the newest checkpoint_last.pth"
        try:
            name = f" ({signal.Signals(-int(code)).name})" if int(code) < 0 else ""
        except (ValueError, TypeError):
            name = ""
        print(f"{self.prog}: rank {self.first_rank + int(local_rank)} exited with code {code}{name}; {what}",
              file=sys.stderr, flush=True)


def run_elastic(argv: Sequence[str], nproc: int, *, prog: str, rdzv: Rendezvous = Rendezvous(),
                max_restarts: int = 0, env: dict[str, str] | None = None) -> int:
    """Run ``python ARGV`` as ``nproc`` workers per node under the elastic agent; returns 0, the first failing
    worker's exit code (a signal N as the shell's 128 + N), or 130 when the agent was interrupted."""
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing import api as mp_api
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    rdzv.validate()
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    if max_restarts < 0:
        raise ValueError(f"--max_restarts must be >= 0, got {max_restarts}")
    run_id = os.environ.get("FASTCCREID_RUN_ID") or (uuid.uuid4().hex if not rdzv.endpoint else "fastccreid")
    config = LaunchConfig(**_config_kwargs(rdzv, nproc, max_restarts, run_id))
    reporter = _FailureReporter(prog, rdzv.node_rank * nproc, max_restarts)
    agent_log = logging.getLogger(mp_api.logger.name)
    agent_log.addHandler(reporter)
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})  # the agent gives its workers a copy of its own environment
    where = f"node {rdzv.node_rank} of {rdzv.nnodes}, " if rdzv.nnodes > 1 else ""
    print(f"{prog}: started {nproc} processes ({where}elastic agent, max_restarts {max_restarts})",
          file=sys.stderr, flush=True)
    try:
        elastic_launch(config, sys.executable)(*argv)
        return 0
    except SignalException:
        return EXIT_INTERRUPTED
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = int(failure.exitcode)
        if code == EXIT_INTERRUPTED:
            return code
        return code if code > 0 else 128 - code  # killed by a signal: the shell's 128 + N
    finally:
        agent_log.removeHandler(reporter)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def launch(cfg: TrainConfig, nproc: int, *, prog: str = "fastccreid train") -> int:
    """Run ``cfg`` in ``nproc`` DDP processes per node (``--nnodes`` / ``--node_rank`` / ``--rdzv_endpoint``) under
    the elastic agent with ``--max_restarts``; returns the exit code (0, the first failing rank's, 130 after an
    interrupt)."""
    workdir = tempfile.mkdtemp(prefix="fastccreid-launch-")
    cfg_path = os.path.join(workdir, "config.json")
    with open(cfg_path, "w") as f:
        json.dump(cfg.to_dict(), f)
    try:
        return run_elastic(["-m", "fastccreid.engine.launch", cfg_path], nproc, prog=prog,
                           rdzv=Rendezvous(cfg.nnodes, cfg.node_rank, cfg.rdzv_endpoint),
                           max_restarts=cfg.max_restarts)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def restart_count() -> int:
    """How many times the elastic agent has restarted this worker's group (0 outside the agent)."""
    try:
        return int(os.environ.get(RESTART_ENV, "0"))
    except ValueError:
        return 0


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
