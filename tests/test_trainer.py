"""The training engine on a tiny synthetic LTCC (CPU, 128x32 inputs, random init, 2 steps per epoch): exact resume,
Ctrl-C save + resume, NaN stop keeping the last good checkpoint, the eval command on saved and official-style
checkpoints, metrics files, the seed's lr schedule, AMP resolution, and loss parity with the seed's criteria."""

from __future__ import annotations

import json
import os
import re
import signal

import numpy as np
import pytest
import torch
from helpers.train_cases import make_tiny_ltcc, tiny_config

from fastccreid.engine.amp import cpu_supports_bf16, resolve_amp
from fastccreid.engine.checkpoint import LAST_NAME, load_checkpoint
from fastccreid.engine.config import TrainConfig
from fastccreid.engine.trainer import EXIT_INTERRUPTED, EXIT_NONFINITE, EXIT_OK, Trainer, run_train


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    return make_tiny_ltcc(str(tmp_path_factory.mktemp("synth") / "ltcc"))


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class _Lines(list):
    def __call__(self, msg: str = "") -> None:
        self.append(msg)


@pytest.fixture(scope="module")
def straight(data_root, tmp_path_factory):
    """Two epochs in one go: the weights every resumed run must reproduce."""
    save = str(tmp_path_factory.mktemp("straight"))
    lines = _Lines()
    tr = Trainer(tiny_config(data_root, save, max_epoch=2, print_train_info_epoch_freq=2), log=lines)
    assert tr.fit() == EXIT_OK
    # the seed's --print_train_info_epoch_freq: the epoch's training line every 2nd epoch only
    assert [ln.split()[0] for ln in lines if re.match(r"Ep\d+ Id:", ln)] == ["Ep2"]
    return _params(tr.model), save


def test_resume_continues_exactly(data_root, straight, tmp_path):
    weights, save_straight = straight
    save = str(tmp_path)
    first = Trainer(tiny_config(data_root, save, max_epoch=1, save_checkpoint=True), log=_Lines())
    assert first.fit() == EXIT_OK
    last = os.path.join(save, LAST_NAME)
    assert load_checkpoint(last)["epoch"] == 0
    # the checkpoint carries the whole run configuration
    assert TrainConfig.from_dict(load_checkpoint(last)["fastccreid"]["config"]) == first.cfg
    second = Trainer(tiny_config(data_root, save, max_epoch=2, resume=last), log=_Lines())
    assert second.start_epoch == 1
    assert second.fit() == EXIT_OK
    got = _params(second.model)
    assert got.keys() == weights.keys()
    for k in weights:
        assert torch.equal(got[k], weights[k]), k
    # the seed's per-epoch schedule: warm-up factor 0.1 at epoch 1, 0.19 at epoch 2 (linear over 10 epochs)
    rows = json.load(open(os.path.join(save_straight, "metrics.json")))["epochs"]
    assert [r["epoch"] for r in rows] == [1, 2]
    np.testing.assert_allclose([r["lr"] for r in rows], [3e-4 * 0.1, 3e-4 * 0.19], rtol=1e-9)
    assert "general/mAP" in rows[1] and "clothes-changing/mAP" in rows[1]
    with open(os.path.join(save_straight, "metrics.csv")) as f:
        assert f.readline().startswith("epoch,lr,id_loss,tri_loss")


def test_uint8_loader_output_trains_the_same_weights(data_root, straight, tmp_path):
    """--loader_output uint8: the loader hands uint8 batches and the step normalises them; same weights as the
    default float batches normalised in the loader."""
    weights, _ = straight
    tr = Trainer(tiny_config(data_root, str(tmp_path), max_epoch=2, loader_output="uint8"), log=_Lines())
    assert not tr.train_loader.normalize_in_loader
    assert tr.fit() == EXIT_OK
    got = _params(tr.model)
    for k in weights:
        assert torch.equal(got[k], weights[k]), k


class _SignalAt:
    """Wraps the train loader: sends this process a real signal just before yielding batch ``n``, so the flag is
    seen when step ``n``'s losses are reduced and the run stops after step ``n``."""

    def __init__(self, loader, n: int, sig: int = signal.SIGINT) -> None:
        self.loader, self.n, self.sig = loader, n, sig

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.loader.set_epoch(epoch, start_batch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.n:
                os.kill(os.getpid(), self.sig)
            yield batch


@pytest.fixture
def sigint_handler():
    """Run a test with a chosen SIGINT disposition, whatever the suite was started with (``nohup``, ``&`` and job
    schedulers start processes with SIGINT ignored); the session's own handler is put back afterwards."""
    saved = signal.getsignal(signal.SIGINT)

    def use(handler):
        signal.signal(signal.SIGINT, handler)
        return handler

    yield use
    signal.signal(signal.SIGINT, saved)


def _check_resume_matches(data_root, save, weights):
    last = os.path.join(save, LAST_NAME)
    ck = load_checkpoint(last)
    assert ck["epoch"] == -1 and ck["resume_step"] == 1  # stopped after the first step of the first epoch
    resumed = Trainer(tiny_config(data_root, save, max_epoch=2, resume=last), log=_Lines())
    assert (resumed.start_epoch, resumed.resume_step) == (0, 1)
    assert resumed.fit() == EXIT_OK
    got = _params(resumed.model)
    for k in weights:
        assert torch.equal(got[k], weights[k]), k


def test_ctrl_c_saves_mid_epoch_and_resume_matches_straight_run(data_root, straight, tmp_path, sigint_handler):
    weights, _ = straight
    save = str(tmp_path)
    before = sigint_handler(signal.default_int_handler)
    sigterm_before = signal.getsignal(signal.SIGTERM)
    tr = Trainer(tiny_config(data_root, save, max_epoch=2), log=_Lines())
    tr.train_loader = _SignalAt(tr.train_loader, n=0)
    assert tr.fit() == EXIT_INTERRUPTED
    assert signal.getsignal(signal.SIGINT) is before  # the handlers in force before fit() are back
    assert signal.getsignal(signal.SIGTERM) is sigterm_before
    _check_resume_matches(data_root, save, weights)


def test_sigterm_stops_like_ctrl_c_when_sigint_is_ignored(data_root, straight, tmp_path, sigint_handler):
    """Started in the background (SIGINT ignored): SIGINT stays ignored, SIGTERM still saves and stops."""
    weights, _ = straight
    sigint_handler(signal.SIG_IGN)
    ignored = Trainer(tiny_config(data_root, str(tmp_path / "ign"), max_epoch=1), log=_Lines())
    ignored.train_loader = _SignalAt(ignored.train_loader, n=0, sig=signal.SIGINT)
    assert ignored.fit() == EXIT_OK  # the ignored Ctrl-C changed nothing
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    save = str(tmp_path / "term")
    tr = Trainer(tiny_config(data_root, save, max_epoch=2), log=_Lines())
    tr.train_loader = _SignalAt(tr.train_loader, n=0, sig=signal.SIGTERM)
    assert tr.fit() == EXIT_INTERRUPTED
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    _check_resume_matches(data_root, save, weights)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(data_root, tmp_path):
    save = str(tmp_path)
    assert Trainer(tiny_config(data_root, save, max_epoch=1, save_checkpoint=True), log=_Lines()).fit() == 0
    last = os.path.join(save, LAST_NAME)
    before = open(last, "rb").read()
    lines = _Lines()
    tr = Trainer(tiny_config(data_root, save, max_epoch=3, save_checkpoint=True, resume=last), log=lines)
    with torch.no_grad():
        tr.model.classifier.weight.fill_(float("nan"))
    assert tr.fit() == EXIT_NONFINITE
    msg = "\n".join(lines)
    assert "non-finite loss at epoch 2, step 1" in msg and LAST_NAME in msg
    assert open(last, "rb").read() == before


def test_eval_command_on_saved_and_official_style_checkpoints(data_root, tmp_path, capsys):
    from fastccreid.features_io import load_features

    save = str(tmp_path / "train")
    tr = Trainer(tiny_config(data_root, save, max_epoch=1), log=_Lines())
    assert tr.fit() == EXIT_OK
    trained = tr.last_results
    ckpt = str(tmp_path / "mine.pth")
    torch.save(tr.checkpoint_state(0), ckpt)
    feats = str(tmp_path / "feats.npz")
    args = tiny_config(data_root, str(tmp_path / "eval"), resume=ckpt, save_features=feats, evaluate=True)
    assert run_train(args) == EXIT_OK
    log = open(tmp_path / "eval" / "log_test.txt").read()
    assert "general" in log and "clothes-changing" in log
    assert f"mAP: {trained['clothes-changing'].mAP:.2%}" in log  # same weights, same numbers
    g = load_features(str(tmp_path / "feats_gallery.npz"))
    q = load_features(str(tmp_path / "feats_query.npz"))
    assert g.feats.shape == (len(tr.dataset.gallery), 2048) and q.feats.shape[0] == len(tr.dataset.query)
    np.testing.assert_allclose(np.linalg.norm(g.feats, axis=1), 1.0, rtol=1e-5)

    # An official-style file: DataParallel prefix, numpy scalars, no optimizer/scheduler, other class count.
    official = str(tmp_path / "official.pth")
    sd = {f"module.{k}": v for k, v in tr.model.state_dict().items()}
    sd["module.classifier.weight"] = torch.zeros(77, 2048)
    for name in ("smr_c_branch1", "smr_s_branch1", "smr_s_branch2", "smr_c_branch2"):
        sd[f"module.{name}.classifier.weight"] = torch.zeros(77, 4096)
    torch.save({"model_state_dict": sd, "rank1": np.float32(0.5), "mAP": np.float64(0.25), "epoch": 119}, official)
    args = tiny_config(data_root, str(tmp_path / "eval2"), resume=official, reranking=True, evaluate=True)
    assert run_train(args) == EXIT_OK
    log2 = open(tmp_path / "eval2" / "log_test.txt").read()
    assert "With Reranking" in log2 and "(epoch 120)" in log2

    bad = str(tmp_path / "bad.pth")
    sd2 = tr.model.state_dict()
    sd2["smr_c_branch1.extra"] = torch.zeros(1)
    del sd2["backbone_layer43.conv1.weight"]
    torch.save({"model_state_dict": sd2}, bad)
    args = tiny_config(data_root, str(tmp_path / "eval3"), resume=bad, evaluate=True)
    assert run_train(args) == 2
    err = capsys.readouterr().err
    assert "backbone_layer43.conv1.weight" in err and "smr_c_branch1.extra" in err


def test_bad_flags_are_usage_errors(data_root, tmp_path, capsys):
    assert run_train(tiny_config(data_root, str(tmp_path), height=64)) == 2
    assert "--height/--width must be at least 128x32" in capsys.readouterr().err
    args = tiny_config(data_root, str(tmp_path), evaluate=True)
    assert run_train(args) == 2
    assert "--resume PATH" in capsys.readouterr().err
    assert run_train(tiny_config(data_root, str(tmp_path), resume=str(tmp_path / "nope.pth"))) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_amp_resolution():
    cpu = torch.device("cpu")
    assert resolve_amp("off", cpu).dtype is None
    assert resolve_amp("bf16", cpu).dtype is torch.bfloat16 and not resolve_amp("bf16", cpu).scaler
    fp16 = resolve_amp("fp16", cpu)
    assert fp16.dtype is torch.float16 and fp16.scaler and fp16.grad_scaler().is_enabled()
    assert resolve_amp("auto", cpu).dtype is (torch.bfloat16 if cpu_supports_bf16() else None)
    with pytest.raises(ValueError, match="--amp must be one of"):
        resolve_amp("int8", cpu)


@pytest.mark.parametrize("margin", [0.3, None])
def test_loss_matches_the_seeds_criteria(margin):
    from fastccreid.engine.loss import cssc_loss
    from fastccreid.reference.losses import CrossEntropyLabelSmooth, TripletLoss

    torch.manual_seed(5)
    pids = torch.arange(4).repeat_interleave(4)
    feats = [torch.randn(16, 64, requires_grad=True) for _ in range(5)]
    logits = [torch.randn(16, 11, requires_grad=True) for _ in range(5)]
    ce, tri = CrossEntropyLabelSmooth(11, epsilon=0.1), TripletLoss(margin=margin)
    for use_triplet in (False, True):
        ours = cssc_loss(feats, logits, pids, use_triplet=use_triplet, margin=margin)
        ref = sum(ce(y, pids) for y in logits)
        if use_triplet:
            ref = ref + sum(tri(f, pids) for f in feats)
        torch.testing.assert_close(ours.total, ref, rtol=1e-5, atol=1e-5)
        inputs = feats + logits if use_triplet else logits
        g_ours = torch.autograd.grad(ours.total, inputs)
        g_ref = torch.autograd.grad(ref, inputs)
        for a, b in zip(g_ours, g_ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    bf = cssc_loss([f.bfloat16() for f in feats], [y.bfloat16() for y in logits], pids, use_triplet=True,
                   margin=margin)
    assert bf.total.dtype == torch.float32  # losses computed in fp32 under AMP


@pytest.mark.slow
def test_compile_does_not_recompile_across_epochs_or_eval(data_root, tmp_path):
    """torch.compile with static shapes: after epoch 1 (train graph + eval graph) nothing compiles again."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    tr = Trainer(tiny_config(data_root, str(tmp_path), max_epoch=1, compile=True, eval_epoch=1),
                 log=_Lines())
    assert tr.fit() == EXIT_OK
    after_first = counters["stats"]["unique_graphs"]
    assert after_first > 0
    tr.cfg.max_epoch = 3
    tr.start_epoch = 1
    assert tr.fit() == EXIT_OK
    assert counters["stats"]["unique_graphs"] == after_first


def test_nonfinite_loss_under_fp16_and_grad_scaler_stops(data_root, tmp_path):
    """fp16 autocast with a GradScaler (CPU autocast supports fp16): a NaN loss still stops the run (exit 3)
    instead of being skipped as an overflowing step forever. One step: a CPU fp16 backward takes ~30 s (2 cores)."""
    lines = _Lines()
    tr = Trainer(tiny_config(data_root, str(tmp_path), max_epoch=1, amp="fp16", max_steps_per_epoch=1), log=lines)
    assert tr.amp.dtype is torch.float16 and tr.scaler.is_enabled()
    with torch.no_grad():
        tr.model.classifier.weight.fill_(float("nan"))
    assert tr.fit() == EXIT_NONFINITE
    assert "non-finite loss at epoch 1, step 1" in "\n".join(lines)


@pytest.mark.dali
def test_dali_resume_across_the_triplet_start_is_exact(data_root, tmp_path):
    """The DALI loader (CPU mode) resumed at the epoch where the triplet loss starts: the same weights as the
    uninterrupted run."""
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI (an optional dependency) is not installed")
    kw = dict(loader="dali", tri_start_epoch=1, amp="off")
    straight = Trainer(tiny_config(data_root, str(tmp_path / "straight"), max_epoch=2, **kw), log=_Lines())
    assert straight.fit() == EXIT_OK
    save = str(tmp_path / "split")
    first = Trainer(tiny_config(data_root, save, max_epoch=1, save_checkpoint=True, **kw), log=_Lines())
    assert first.fit() == EXIT_OK
    second = Trainer(tiny_config(data_root, save, max_epoch=2, resume=os.path.join(save, LAST_NAME), **kw),
                     log=_Lines())
    assert second.start_epoch == 1 and second.fit() == EXIT_OK
    want, got = _params(straight.model), _params(second.model)
    for k in want:
        assert torch.equal(got[k], want[k]), k
