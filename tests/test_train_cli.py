"""``fastccreid train`` end to end: Ctrl-C / SIGTERM through the real process (exit 130, a resumable checkpoint), a
second Ctrl-C, a stop at an epoch boundary, usage errors with their messages, and the trainer's step against the
seed's reference step on the same batch and weights."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from helpers.train_cases import make_tiny_ltcc, start_cli, tiny_argv, tiny_config, wait_for_file

from fastccreid.cli import main
from fastccreid.engine.checkpoint import LAST_NAME, load_checkpoint


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    return make_tiny_ltcc(str(tmp_path_factory.mktemp("cli") / "ltcc"))


# SIGTERM through the CLI is slow-only: tests/test_trainer.py's SIGTERM test covers the same handler in-process
@pytest.mark.parametrize("sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_signal_saves_a_resumable_checkpoint_and_exits_130(data_root, tmp_path, sig):
    save = str(tmp_path / "run")
    proc = start_cli(tiny_argv(data_root, save, "--max_epoch", "40", "--amp", "off"))
    try:
        wait_for_file(os.path.join(save, "metrics.csv"), proc)  # one epoch done: the loop is running
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert f"{signal.Signals(sig).name} received" in err
    ck = load_checkpoint(os.path.join(save, LAST_NAME))
    done = int(ck["epoch"]) + 1
    assert 1 <= done < 40
    # resumable: one more epoch from where it stopped
    assert main(tiny_argv(data_root, save, "--max_epoch", str(done + 1), "--amp", "off", "--save_checkpoint",
                          "--resume", os.path.join(save, LAST_NAME))) == 0
    assert int(load_checkpoint(os.path.join(save, LAST_NAME))["epoch"]) == done


def test_a_second_ctrl_c_aborts_at_once(data_root, tmp_path):
    save = str(tmp_path / "run")
    proc = start_cli(tiny_argv(data_root, save, "--max_epoch", "40", "--amp", "off", "--save_checkpoint"))
    try:
        wait_for_file(os.path.join(save, "metrics.csv"), proc)  # written after the epoch's checkpoint
        before = open(os.path.join(save, LAST_NAME), "rb").read()
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    log = open(os.path.join(save, "log_train.txt")).read()
    if "Aborted by a second interrupt" in log:  # the usual case: the second signal came within the step
        assert open(os.path.join(save, LAST_NAME), "rb").read() == before  # the last checkpoint untouched
    else:  # both signals landed after the step had already saved: still a clean stop
        assert "continue with --resume" in log


def test_a_stop_during_evaluation_saves_at_the_epoch_boundary(data_root, tmp_path):
    """A signal that arrives after the epoch's steps (here: during its evaluation) stops at the epoch boundary:
    the checkpoint holds the whole epoch and the resumed run equals the straight one."""
    from fastccreid.engine.trainer import EXIT_INTERRUPTED, EXIT_OK, Trainer

    def params(model):
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    straight = Trainer(tiny_config(data_root, str(tmp_path / "straight"), max_epoch=2, eval_epoch=1), log=_quiet)
    assert straight.fit() == EXIT_OK
    save = str(tmp_path / "run")
    tr = Trainer(tiny_config(data_root, save, max_epoch=2, eval_epoch=1), log=_quiet)
    saved = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    original = tr.evaluate

    def evaluate_then_interrupt(epoch=None):
        os.kill(os.getpid(), signal.SIGINT)
        return original(epoch)

    tr.evaluate = evaluate_then_interrupt
    try:
        assert tr.fit() == EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGINT, saved)
    ck = load_checkpoint(os.path.join(save, LAST_NAME))
    assert (int(ck["epoch"]), int(ck["resume_step"])) == (0, 0)
    resumed = Trainer(tiny_config(data_root, save, max_epoch=2, eval_epoch=1, resume=os.path.join(save, LAST_NAME)),
                      log=_quiet)
    assert resumed.fit() == EXIT_OK
    want, got = params(straight.model), params(resumed.model)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def _quiet(msg: str = "") -> None:
    pass


def test_usage_errors_name_what_is_wrong(data_root, tmp_path, capsys):
    # a missing dataset folder
    assert main(tiny_argv(str(tmp_path / "nowhere"), str(tmp_path / "a"))) == 2
    err = capsys.readouterr().err
    assert "fastccreid train: error:" in err and "nowhere" in err
    # a non-empty --dataset_filename joins --dataset_root (the seed's layout)
    parent = str(tmp_path / "root")
    os.makedirs(parent)
    os.symlink(data_root, os.path.join(parent, "LTCC-reID"))
    argv = tiny_argv(parent, str(tmp_path / "b"), "--max_epoch", "1", "--save_checkpoint", "--amp", "off")
    argv[argv.index("--dataset_filename") + 1] = "LTCC-reID"
    assert main(argv) == 0
    last = os.path.join(str(tmp_path / "b"), LAST_NAME)
    capsys.readouterr()
    # --resume of a checkpoint trained on another dataset (another class count)
    foreign = str(tmp_path / "foreign.pth")
    ck = load_checkpoint(last)
    ck["model_state_dict"]["classifier.weight"] = torch.zeros(77, 2048)
    torch.save(ck, foreign)
    assert main(tiny_argv(data_root, str(tmp_path / "c"), "--resume", foreign)) == 2
    err = capsys.readouterr().err
    assert foreign in err and "77" in err
    # an optimizer state that does not fit this model
    mismatch = str(tmp_path / "mismatch.pth")
    ck = load_checkpoint(last)
    ck["optimizer_state_dict"]["param_groups"][0]["params"] = [0, 1]
    torch.save(ck, mismatch)
    assert main(tiny_argv(data_root, str(tmp_path / "d"), "--resume", mismatch)) == 2
    err = capsys.readouterr().err
    assert mismatch in err and "optimizer state does not fit this model" in err


def test_the_trainer_step_equals_the_seed_reference_step(data_root, tmp_path):
    """One fp32 step of ``train_one_epoch`` vs ``reference_train_step`` (the seed's criteria and Adam) on the same
    batch and weights, past the triplet start: the same loss and the same gradients."""
    import copy

    from fastccreid.data.loaders import to_model_input
    from fastccreid.engine.trainer import Trainer, train_one_epoch
    from fastccreid.reference.losses import CrossEntropyLabelSmooth, TripletLoss
    from fastccreid.reference.train_step import reference_train_step

    # weight_decay 0: fused Adam may fold the decay into .grad in place, and the gradients are read after the step
    tr = Trainer(tiny_config(data_root, str(tmp_path), amp="off", channels_last=False, random_erasing_pro=0.0,
                             weight_decay=0.0), log=_quiet)
    tr.train_loader.set_epoch(0)
    batch = next(iter(tr.train_loader))
    ref_model = copy.deepcopy(tr.model)

    class OneBatch:
        def set_epoch(self, epoch, start_batch=0):
            pass

        def __iter__(self):
            yield batch

    stats = train_one_epoch(tr.model, OneBatch(), tr.optimizer, tr.scaler, tr.amp, tr.ctx, epoch=36, num_steps=1,
                            use_triplet=True, margin=0.3, channels_last=False)
    x = to_model_input(batch, channels_last=False, dtype=torch.float32)
    pids = torch.as_tensor(batch.pids)
    opt = torch.optim.Adam([{"params": ref_model.parameters(), "initial_lr": 3e-4}], lr=3e-4, weight_decay=0.0)
    ref_loss = reference_train_step(ref_model, x, pids, opt, CrossEntropyLabelSmooth(tr.num_classes),
                                    TripletLoss(margin=0.3), epoch=36, tri_start_epoch=35)
    assert stats.tri_loss > 0
    assert stats.id_loss + stats.tri_loss == pytest.approx(ref_loss, rel=1e-5)
    ours = dict(tr.model.named_parameters())
    compared = 0
    for name, p in ref_model.named_parameters():
        if p.grad is None:
            assert ours[name].grad is None or not ours[name].grad.any(), name
            continue
        g = ours[name].grad
        # relative 1e-4, plus an absolute floor for gradients that are 0 up to rounding (~1e-7 here)
        diff, scale = float((g - p.grad).norm()), float(p.grad.norm())
        assert diff <= 1e-4 * scale + 1e-5, (name, diff, scale)
        compared += 1
    assert compared > 100
