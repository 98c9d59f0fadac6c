"""The elastic launch end to end (CPU, gloo, loopback): a SIGKILLed rank costs a restart, not the run, and the
restarted run ends with the weights of an uninterrupted one (bitwise: the same process count, threads and steps);
two agents (--nnodes 2, one process each) train what one agent with --nproc 2 trains; and through the CLI in fp32
one step on 2 processes gives the one-process BN running statistics and printed losses (global BN)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from helpers.train_cases import make_tiny_ltcc, start_cli, tiny_argv

from fastccreid.engine.checkpoint import LAST_NAME, load_checkpoint


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> str:
    return make_tiny_ltcc(str(tmp_path_factory.mktemp("elastic") / "ltcc"))


def _cli(argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastccreid", *argv], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _weights(save: str) -> dict[str, torch.Tensor]:
    return load_checkpoint(os.path.join(save, LAST_NAME))["model_state_dict"]


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


def _worker_pid(launcher: int, rank: int) -> int | None:
    """The launcher's child whose environment says RANK=rank (the elastic agent runs in the launcher)."""
    for child in _children(launcher):
        try:
            with open(f"/proc/{child}/environ", "rb") as f:
                env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
        except OSError:
            continue
        if env.get(b"RANK") == str(rank).encode() and b"TORCHELASTIC_RESTART_COUNT" in env:
            return child
    return None


RUN = ("--nproc", "2", "--max_epoch", "2", "--max_steps_per_epoch", "3", "--amp", "off", "--save_checkpoint",
       "--checkpoint_every_steps", "1")


@pytest.mark.slow
def test_a_sigkilled_rank_costs_a_restart_and_the_weights_equal_an_uninterrupted_run(tiny_root, tmp_path):
    straight = str(tmp_path / "straight")
    res = _cli(tiny_argv(tiny_root, straight, *RUN))
    assert res.returncode == 0, res.stderr[-3000:]
    save = str(tmp_path / "killed")
    proc = start_cli(tiny_argv(tiny_root, save, *RUN, "--max_restarts", "1"))
    try:
        deadline = time.monotonic() + 240
        last = os.path.join(save, LAST_NAME)
        while not os.path.exists(last):  # the first mid-epoch save: rank 0 has done step 1 of epoch 1
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no mid-epoch checkpoint"
            time.sleep(0.05)
        victim = _worker_pid(proc.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert re.search(r"rank 1 exited with code -9 \(SIGKILL\); stopping the other processes; restarting the group",
                     err), err[-3000:]
    log = open(os.path.join(save, "log_train.txt")).read()
    assert "Restart 1 of 1 after a worker failure: resuming from" in log
    assert re.search(r"Resumed from .*checkpoint_last\.pth: continuing at epoch \d", log), log[-2000:]
    _assert_same_weights(_weights(save), _weights(straight))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_agents_on_loopback_train_what_one_agent_with_two_processes_trains(tiny_root, tmp_path):
    one = str(tmp_path / "one")
    res = _cli(tiny_argv(tiny_root, one, "--nproc", "2", "--max_epoch", "1", "--amp", "off", "--save_checkpoint"))
    assert res.returncode == 0, res.stderr[-3000:]
    two = str(tmp_path / "two")
    endpoint = f"127.0.0.1:{_free_port()}"
    procs = [start_cli(tiny_argv(tiny_root, two, "--nproc", "1", "--nnodes", "2", "--node_rank", str(r),
                                 "--rdzv_endpoint", endpoint, "--max_epoch", "1", "--amp", "off",
                                 "--save_checkpoint")) for r in range(2)]
    try:
        errs = [p.communicate(timeout=400)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for e in errs]
    assert "node 0 of 2" in errs[0] and "node 1 of 2" in errs[1]
    assert "(2 process(es))" in open(os.path.join(two, "log_train.txt")).read()
    _assert_same_weights(_weights(two), _weights(one))


_LOSSES = re.compile(r"Ep1 Id:([\d.]+) Tri:([\d.]+)")


def test_cli_one_fp32_step_on_two_processes_keeps_the_one_process_bn_statistics(tiny_root, tmp_path):
    """fp32 through the CLI, one step of batch 8: the checkpoint's BN running statistics within 1e-4 relative of
    one process's (global BN; per-rank BN moves them by percents) and the printed losses equal to 4 digits."""
    common = ("--max_epoch", "1", "--max_steps_per_epoch", "1", "--amp", "off", "--save_checkpoint",
              "--print_train_info_epoch_freq", "1")
    runs = {}
    for n in (1, 2):
        save = str(tmp_path / f"n{n}")
        res = _cli(tiny_argv(tiny_root, save, "--nproc", str(n), *common))
        assert res.returncode == 0, res.stderr[-3000:]
        runs[n] = (_weights(save), _LOSSES.search(open(os.path.join(save, "log_train.txt")).read()))
    (w1, l1), (w2, l2) = runs[1], runs[2]
    assert l1 is not None and l2 is not None
    for a, b in zip(l1.groups(), l2.groups(), strict=True):  # 4 significant digits: relative 5e-4
        assert abs(float(a) - float(b)) <= 5e-4 * abs(float(b)), (l1.groups(), l2.groups())
    assert float(l1.group(2)) > 0  # the triplet term is in the step
    stats = [k for k in w1 if k.endswith(("running_mean", "running_var"))]
    assert len(stats) > 100
    for k in stats:
        diff = float((w2[k] - w1[k]).abs().max())
        assert diff <= 1e-4 * float(w1[k].abs().max()) + 1e-7, (k, diff)
