"""Pins each piece of ``fastccreid.reference`` (the seed's algorithms) on small hand-checked cases."""

from __future__ import annotations

import copy
import math
import random
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F  # noqa: N812

from fastccreid.data.records import ImageRecord, ReIDDataset
from fastccreid.reference import (
    CrossEntropyLabelSmooth,
    RandomIdentitySampler,
    TripletLoss,
    WarmupMultiStepLR,
    euclidean_dist,
    evaluate,
    evaluate_ltcc,
    evaluate_prcc_all_gallery,
    get_distmat,
    hard_example_mining,
    re_ranking,
)
from fastccreid.reference.dataloader import ImageDataset, build_reference_loaders, read_image
from fastccreid.reference.train_step import reference_distance, reference_extract_features, reference_train_step
from fastccreid.reference.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomErasing,
    build_test_transform,
    build_train_transform,
)

# ----------------------------------------------------------------------------------------------- evaluation


def test_market_evaluate_hand_checked():
    # q0: pid 1 cam 0. Sorted gallery: g1 (pid 2), g2 (pid 1 cam 0: junk), g3 (pid 2), g4 (pid 1), g0 (pid 1)
    #     kept matches [0, 0, 1, 1]: first hit at rank 3; AP = (1/3 + 2/4) / 2 = 5/12; INP = 2/4.
    #     Only 4 kept < max_rank 5: CMC row [0, 0, 1, 1] padded with 1 (the seed would be ragged).
    # q1: pid 2 cam 0 (its gallery matches are cam 1: no junk). Sorted: g3, g1 (pid 2), g0, g2, g4 (pid 1)
    #     matches [1, 1, 0, 0, 0]: AP = 1, INP = 2/2 = 1, CMC [1, 1, 1, 1, 1].
    # q2: pid 3 has no gallery match: skipped.
    distmat = np.array([[0.5, 0.1, 0.2, 0.3, 0.4],
                        [0.3, 0.2, 0.4, 0.1, 0.5],
                        [0.1, 0.2, 0.3, 0.4, 0.5]], dtype=np.float32)
    q_pids, q_cams = np.array([1, 2, 3]), np.array([0, 0, 0])
    g_pids, g_cams = np.array([1, 2, 1, 2, 1]), np.array([1, 1, 0, 1, 1])
    cmc, mAP, mINP = evaluate(distmat, q_pids, g_pids, q_cams, g_cams)
    np.testing.assert_allclose(cmc, [0.5, 0.5, 1.0, 1.0, 1.0])
    assert cmc.dtype == np.float32
    assert mAP == pytest.approx((5 / 12 + 1) / 2)
    assert mINP == pytest.approx((0.5 + 1) / 2)
    cmc3, mAP3, _ = evaluate(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=3)
    np.testing.assert_allclose(cmc3, [0.5, 0.5, 1.0])
    assert mAP3 == pytest.approx(mAP)


def test_ties_break_by_gallery_index():
    # 40 gallery items at the same distance; the only true match is the last one: with a stable sort it ranks
    # 40th (AP = INP = 1/40); an unstable sort could put it anywhere.
    g_pids = np.array([2] * 39 + [1])
    distmat = np.zeros((1, 40), dtype=np.float32)
    cmc, mAP, mINP = evaluate(distmat, np.array([1]), g_pids, np.array([0]), np.ones(40, dtype=int))
    assert mAP == pytest.approx(1 / 40) and mINP == pytest.approx(1 / 40)
    assert cmc[38] == 0 and cmc[39] == 1


def test_no_valid_query_is_an_error():
    with pytest.raises(ValueError, match="do not appear"):
        evaluate(np.zeros((1, 2)), np.array([1]), np.array([2, 3]), np.array([0]), np.array([0, 0]))
    with pytest.raises(ValueError, match="distmat"):
        evaluate(np.zeros((2, 2)), np.array([1]), np.array([2, 3]), np.array([0]), np.array([0, 0]))


def test_ltcc_general_and_clothes_changing_hand_checked():
    # Query: pid 1, cam 0, clothes 5. Gallery (distance): g0 pid 1 cam 1 clothes 5 (0.1); g1 pid 1 cam 0 cl 6 (0.2);
    # g2 pid 1 cam 2 cl 7 (0.4); g3 pid 9 cam 1 cl 5 (0.3). Sorted: g0, g1, g3, g2.
    # General: junk g1 (same cam) -> kept [g0 1, g3 0, g2 1]: AP = (1 + 2/3)/2, INP = 2/3, CMC [1,1,1] padded to 4.
    # Clothes-changing: junk g0 (same clothes), g1 (same cam) -> kept [g3 0, g2 1]: AP = 1/2, INP = 1/2.
    distmat = np.array([[0.1, 0.2, 0.4, 0.3]], dtype=np.float32)
    args = (np.array([1]), np.array([1, 1, 1, 9]), np.array([0]), np.array([1, 0, 2, 1]),
            np.array([5]), np.array([5, 6, 7, 5]))
    cmc, mAP, mINP = evaluate_ltcc(distmat, *args, ltcc_cc_setting=False)
    np.testing.assert_allclose(cmc, [1, 1, 1, 1])
    assert mAP == pytest.approx((1 + 2 / 3) / 2) and mINP == pytest.approx(2 / 3)
    cmc, mAP, mINP = evaluate_ltcc(distmat, *args, ltcc_cc_setting=True)
    np.testing.assert_allclose(cmc, [0, 1, 1, 1])
    assert mAP == pytest.approx(0.5) and mINP == pytest.approx(0.5)
    # The general setting equals the market protocol.
    out = evaluate(distmat, args[0], args[1], args[2], args[3])
    np.testing.assert_allclose(out[0], evaluate_ltcc(distmat, *args)[0])


def test_prcc_all_gallery_hand_checked_and_no_match_flag():
    # No junk. q0 pid 1: sorted g1 (2), g2 (1), g0 (1) -> [0,1,1]: AP = (1/2 + 2/3)/2, INP = 2/3.
    # q1 pid 2: sorted g0 (1), g1 (2), g2 (1) -> [0,1,0]: AP = 1/2, INP = 1/2. CMC both [0, 1, 1].
    distmat = np.array([[0.3, 0.1, 0.2], [0.1, 0.2, 0.3]], dtype=np.float32)
    g_pids = np.array([1, 2, 1])
    cmc, mAP, mINP = evaluate_prcc_all_gallery(distmat, np.array([1, 2]), g_pids)
    np.testing.assert_allclose(cmc, [0, 1, 1])
    assert mAP == pytest.approx(((0.5 + 2 / 3) / 2 + 0.5) / 2)
    assert mINP == pytest.approx((2 / 3 + 0.5) / 2)
    # A query without any match (pid 7): the seed counts it (CMC 0, AP NaN -> mAP NaN); the flag skips it.
    distmat3 = np.vstack([distmat, [[0.1, 0.2, 0.3]]])
    cmc, mAP, _ = evaluate_prcc_all_gallery(distmat3, np.array([1, 2, 7]), g_pids)
    assert math.isnan(mAP)
    np.testing.assert_allclose(cmc, [0, 2 / 3, 2 / 3], rtol=1e-6)
    cmc, mAP2, _ = evaluate_prcc_all_gallery(distmat3, np.array([1, 2, 7]), g_pids, skip_no_match=True)
    np.testing.assert_allclose(cmc, [0, 1, 1])
    assert mAP2 == pytest.approx(((0.5 + 2 / 3) / 2 + 0.5) / 2)


def test_get_distmat_is_squared_distance_of_normalised_features():
    q = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    g = torch.tensor([[0.0, 2.0], [-1.0, 0.0]])
    # unit vectors: q0 (0.6, 0.8), q1 (1, 0); g0 (0, 1), g1 (-1, 0); squared distance = 2 - 2 cos
    expected = np.array([[2 - 2 * 0.8, 2 + 2 * 0.6], [2.0, 4.0]], dtype=np.float32)
    dm = get_distmat(q, g)
    assert isinstance(dm, np.ndarray) and dm.dtype == np.float32
    np.testing.assert_allclose(dm, expected, atol=1e-6)
    np.testing.assert_allclose(reference_distance(q, g), expected, atol=1e-6)


# ----------------------------------------------------------------------------------------------- losses


def _four_points():
    # a=(0,0), b=(5,0) are label 0; c=(0,3), d=(4,3) are label 1.
    x = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 3.0], [4.0, 3.0]])
    return x, torch.tensor([0, 0, 1, 1])


def test_euclidean_dist_and_hard_mining_hand_checked():
    x, labels = _four_points()
    d = euclidean_dist(x, x)
    s10 = math.sqrt(10.0)  # |b - d|
    expected = torch.tensor([[1e-6, 5, 3, 5], [5, 1e-6, math.sqrt(34), s10], [3, math.sqrt(34), 1e-6, 4],
                             [5, s10, 4, 1e-6]])
    torch.testing.assert_close(d, expected, atol=1e-5, rtol=1e-6)
    # hardest positive: a->b 5, b->a 5, c->d 4, d->c 4; hardest negative: a->c 3, b->d sqrt10, c->a 3, d->b sqrt10
    dist_ap, dist_an, p_inds, n_inds = hard_example_mining(d, labels, return_inds=True)
    torch.testing.assert_close(dist_ap, torch.tensor([5.0, 5.0, 4.0, 4.0]))
    torch.testing.assert_close(dist_an, torch.tensor([3.0, s10, 3.0, s10]))
    assert p_inds.tolist() == [1, 0, 3, 2] and n_inds.tolist() == [2, 3, 0, 1]
    ap2, an2 = hard_example_mining(d, labels)
    torch.testing.assert_close(ap2, dist_ap)
    torch.testing.assert_close(an2, dist_an)
    with pytest.raises(ValueError, match="mining_method"):
        hard_example_mining(d, labels, mining_method="batch_soft")


def test_triplet_loss_hand_checked():
    x, labels = _four_points()
    s10 = math.sqrt(10.0)
    # relu(ap - an + 0.3): a 5-3+.3, b 5-s10+.3, c 4-3+.3, d 4-s10+.3 (all positive)
    loss = TripletLoss(margin=0.3)(x, labels)
    assert loss.dim() == 0  # the seed returns only the loss
    assert loss.item() == pytest.approx((13.2 - 2 * s10) / 4, rel=1e-6)
    # soft margin: mean log(1 + exp(ap - an))
    diffs = [2.0, 5 - s10, 1.0, 4 - s10]
    soft = TripletLoss(margin=None)(x, labels)
    assert soft.item() == pytest.approx(sum(math.log1p(math.exp(v)) for v in diffs) / 4, rel=1e-6)
    # a generous margin: an easy batch gives 0
    far = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.1, 0.0]])
    assert TripletLoss(margin=0.3)(far, labels).item() == 0.0
    # gradients flow (the clamp keeps sqrt finite on the diagonal)
    xg = x.clone().requires_grad_(True)
    TripletLoss(0.3)(xg, labels).backward()
    assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0


def test_label_smoothing_two_classes_hand_checked():
    # logits (log 3, 0) -> probs (0.75, 0.25). eps 0.1, K 2 -> targets 0.95 / 0.05.
    # target 0: -(0.95 log .75 + 0.05 log .25); target 1: -(0.05 log .75 + 0.95 log .25); loss = their mean.
    logits = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0]])
    crit = CrossEntropyLabelSmooth(num_classes=2, epsilon=0.1)
    l0 = -(0.95 * math.log(0.75) + 0.05 * math.log(0.25))
    l1 = -(0.05 * math.log(0.75) + 0.95 * math.log(0.25))
    assert crit(logits, torch.tensor([0, 1])).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    assert crit(logits[:1], torch.tensor([0])).item() == pytest.approx(l0, rel=1e-6)
    # the same formula as torch's label_smoothing
    z = torch.randn(6, 5)
    t = torch.tensor([0, 1, 2, 3, 4, 0])
    ref = F.cross_entropy(z, t, label_smoothing=0.1)
    torch.testing.assert_close(CrossEntropyLabelSmooth(5)(z, t), ref)


# ----------------------------------------------------------------------------------------------- scheduler


def test_warmup_multistep_factors():
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([{"params": [param], "initial_lr": 3e-4}], lr=3e-4)
    sched = WarmupMultiStepLR(opt, milestones=[30, 60], gamma=0.1, warmup_factor=0.1)
    lrs = []
    for _ in range(70):  # as the seed: train an epoch at the current lr, then step
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # linear warm-up: 0.1 * (1 - e/10) + e/10; then x0.1 at 30 and at 60
    expected = {0: 0.1, 5: 0.55, 9: 0.91, 10: 1.0, 29: 1.0, 30: 0.1, 59: 0.1, 60: 0.01, 69: 0.01}
    for e, f in expected.items():
        assert lrs[e] == pytest.approx(3e-4 * f, rel=1e-9), e
    # resuming (last_epoch = start_epoch - 1) lands on the same schedule
    opt2 = torch.optim.Adam([{"params": [param], "initial_lr": 3e-4}], lr=3e-4)
    WarmupMultiStepLR(opt2, milestones=[30, 60], last_epoch=4)
    assert opt2.param_groups[0]["lr"] == pytest.approx(3e-4 * 0.55)
    with pytest.raises(ValueError, match="milestones"):
        WarmupMultiStepLR(opt2, milestones=[60, 30])
    with pytest.raises(ValueError, match="warmup_method"):
        WarmupMultiStepLR(opt2, milestones=[30], warmup_method="exp")


def _lr_run(cls, method: str, epochs: int = 120, start: tuple | None = None, **kw) -> list[list[float]]:
    """Per-epoch lrs of two param groups (base 3e-4 and 1e-3) under ``cls``, stepping once per epoch as the seed.
    ``start`` = (optimizer state, scheduler state, epoch): continue a saved run from that epoch instead."""
    params = [nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))]
    opt = torch.optim.Adam([{"params": [params[0]], "lr": 3e-4}, {"params": [params[1]], "lr": 1e-3}])
    sched = cls(opt, milestones=[40, 70], gamma=0.1, warmup_factor=0.1, warmup_iters=10, warmup_method=method, **kw)
    first = 0
    if start is not None:
        opt.load_state_dict(start[0])
        sched.load_state_dict(start[1])
        first = start[2]
    lrs = []
    for _ in range(first, epochs):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    _lr_run.last = (opt.state_dict(), sched.state_dict())
    return lrs


@pytest.mark.parametrize("method", ["linear", "constant"])
def test_production_scheduler_matches_the_reference(method):
    """``fastccreid.engine.scheduler.WarmupMultiStepLR`` (written apart from the reference) gives the reference's lr
    at every one of 120 epochs, for both warm-up methods, when resumed by ``last_epoch`` and by ``state_dict`` (each
    side loading the other's state too: checkpoints from either keep working)."""
    from fastccreid.engine.scheduler import WarmupMultiStepLR as Production

    ref = _lr_run(WarmupMultiStepLR, method)
    assert _lr_run(Production, method) == ref  # the same arithmetic: equal, not close
    assert ref[0] == pytest.approx([3e-5, 1e-4])  # warmup_factor 0.1 either way
    assert ref[5] == pytest.approx([3e-4 * 0.55, 1e-3 * 0.55] if method == "linear" else [3e-5, 1e-4])
    assert ref[39] == pytest.approx([3e-4, 1e-3]) and ref[40] == pytest.approx([3e-5, 1e-4])
    assert ref[119] == pytest.approx([3e-6, 1e-5])
    # resume by last_epoch = start_epoch - 1 (the groups carry initial_lr, as after loading a checkpoint)
    for epoch in (1, 7, 10, 40, 41, 95):
        for cls in (Production, WarmupMultiStepLR):
            p = nn.Parameter(torch.zeros(1))
            opt = torch.optim.Adam([{"params": [p], "lr": 0.0, "initial_lr": 3e-4}])
            cls(opt, milestones=[40, 70], warmup_method=method, last_epoch=epoch - 1)
            assert opt.param_groups[0]["lr"] == ref[epoch][0], (cls.__module__, epoch)
    # resume from saved optimizer + scheduler states, across implementations
    for saver, loader in ((Production, Production), (WarmupMultiStepLR, Production), (Production, WarmupMultiStepLR)):
        _lr_run(saver, method, epochs=50)
        opt_state, sched_state = _lr_run.last
        assert _lr_run(loader, method, start=(opt_state, sched_state, 50)) == ref[50:], (saver, loader)


def test_production_scheduler_rejects_what_the_reference_rejects():
    from fastccreid.engine.scheduler import WarmupMultiStepLR as Production

    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=3e-4)
    with pytest.raises(ValueError, match="milestones must be a list of increasing integers"):
        Production(opt, milestones=[60, 30])
    with pytest.raises(ValueError, match="warmup_method must be one of constant, linear, got 'exp'"):
        Production(opt, milestones=[30], warmup_method="exp")


# ----------------------------------------------------------------------------------------------- sampler

COUNTS = {0: 8, 1: 4, 2: 2, 3: 5, 4: 12}  # chunks of K=4: 2, 1, 1 (with replacement), 1, 3 -> 8 chunks


def _records(counts):
    return [ImageRecord(f"p{pid}_{i}.png", pid, 0, 0) for pid, c in counts.items() for i in range(c)]


@pytest.mark.parametrize("as_tuples", [False, True])
def test_identity_sampler_block_structure(as_tuples):
    recs = _records(COUNTS)
    data = [(r.path, r.pid, r.camid, r.clothes_id) for r in recs] if as_tuples else recs
    random.seed(0)
    np.random.seed(0)
    sampler = RandomIdentitySampler(data, batch_size=8, num_instances=4)
    assert len(sampler) == 32  # the seed's estimate: 8 chunks of 4
    chunk_cap = {pid: max(c, 4) // 4 for pid, c in COUNTS.items()}
    for _ in range(20):
        idx = list(iter(sampler))
        assert len(idx) % 8 == 0 and len(sampler) == len(idx)
        pids = [recs[i].pid for i in idx]
        for s in range(0, len(idx), 4):  # every K-chunk is one identity
            assert len(set(pids[s:s + 4])) == 1
        for s in range(0, len(idx), 8):  # every batch is P = 2 distinct identities
            assert len(set(pids[s:s + 8])) == 2
        used = Counter(pids[s] for s in range(0, len(idx), 4))
        assert all(used[p] <= chunk_cap[p] for p in used)
        left = {p for p in chunk_cap if used[p] < chunk_cap[p]}
        assert len(left) < 2  # stops only when fewer than P identities still have chunks
        assert len(set(idx[pids.index(2):pids.index(2) + 4])) <= 2  # pid 2 has 2 images: drawn with replacement
        for s in range(0, len(idx), 4):  # within a chunk of a pid with >= K images, no index repeats
            if COUNTS[pids[s]] >= 4:
                assert len(set(idx[s:s + 4])) == 4


def test_identity_sampler_uses_global_rngs():
    recs = _records(COUNTS)
    random.seed(5)
    np.random.seed(5)
    a = list(RandomIdentitySampler(recs, 8, 4))
    random.seed(5)
    np.random.seed(5)
    b = list(RandomIdentitySampler(recs, 8, 4))
    assert a == b
    with pytest.raises(TypeError, match="data_source"):
        RandomIdentitySampler([1, 2, 3], 8, 4)
    with pytest.raises(ValueError, match="num_instances"):
        RandomIdentitySampler(recs, 2, 4)


# ----------------------------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("channels", [3, 1])
def test_random_erasing_rectangle_area_in_range(channels):
    random.seed(1)
    H, W = 64, 32  # noqa: N806
    erase = RandomErasing(probability=1.0, mean=[0.0, 0.0, 0.0])
    for _ in range(50):
        img = torch.ones(channels, H, W)
        out = erase(img)
        zero = out[0] == 0
        rows = torch.nonzero(zero.any(1)).flatten()
        cols = torch.nonzero(zero.any(0)).flatten()
        h, w = len(rows), len(cols)
        assert 0 < h < H and 0 < w < W
        assert rows.max() - rows.min() + 1 == h and cols.max() - cols.min() + 1 == w  # contiguous
        assert zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # a full rectangle
        assert int(zero.sum()) == h * w
        for c in range(channels):
            assert torch.equal(out[c] == 0, zero)
        # h = round(sqrt(A r)), w = round(sqrt(A / r)) with A in [0.02, 0.4] * H * W: A = sqrt(A r) * sqrt(A / r)
        assert (h - 0.5) * (w - 0.5) <= 0.4 * H * W and (h + 0.5) * (w + 0.5) >= 0.02 * H * W
    img = torch.ones(3, H, W)
    assert torch.equal(RandomErasing(probability=0.0)(img), torch.ones(3, H, W))


def _gradient_image(h=30, w=20):
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None]
    arr[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    arr[..., 2] = 77
    return Image.fromarray(arr)


def test_test_transform_shape_and_normalisation():
    colour = (124, 116, 104)
    img = Image.new("RGB", (50, 100), colour)
    out = build_test_transform(64, 32)(img)
    assert out.shape == (3, 64, 32) and out.dtype == torch.float32
    for c in range(3):
        expected = (colour[c] / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        torch.testing.assert_close(out[c], torch.full((64, 32), expected), atol=1e-6, rtol=0)


def test_train_transform_flip_pad_crop_erase():
    img = _gradient_image()
    torch.manual_seed(0)
    # flip with p=1, no pad, no erasing: the test transform's output mirrored
    flipped = build_train_transform(64, 32, flip_p=1.0, pad=0, erase_p=0.0)(img)
    torch.testing.assert_close(flipped, torch.flip(build_test_transform(64, 32)(img), [2]))
    # constant image + zero padding: every value is the colour or the (normalised) black border
    colour = (200, 100, 50)
    const = Image.new("RGB", (40, 80), colour)
    seen_border = False
    for _ in range(10):
        out = build_train_transform(64, 32, pad=10, erase_p=0.0)(const)
        assert out.shape == (3, 64, 32)
        for c in range(3):
            inside = (colour[c] / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
            border = -IMAGENET_MEAN[c] / IMAGENET_STD[c]
            ok = torch.isclose(out[c], torch.tensor(inside), atol=1e-5) | torch.isclose(out[c], torch.tensor(border),
                                                                                          atol=1e-5)
            assert ok.all()
            seen_border |= bool(torch.isclose(out[c], torch.tensor(border), atol=1e-5).any())
    assert seen_border
    # erasing with p=1 fills 0 (the normalised mean colour) on every channel
    random.seed(3)
    out = build_train_transform(64, 32, pad=0, erase_p=1.0)(const)
    zero = out == 0
    assert zero.any() and torch.equal(zero[0], zero[1]) and torch.equal(zero[1], zero[2])


# ----------------------------------------------------------------------------------------------- data loading


def _write_tree(tmp_path, pids=4, per=4):
    recs = []
    rng = np.random.default_rng(0)
    for pid in range(pids):
        for i in range(per):
            p = tmp_path / f"{pid:03d}_{i}.png"
            Image.fromarray(rng.integers(0, 255, (24, 12, 3), dtype=np.uint8)).save(p)
            recs.append(ImageRecord(str(p), pid, i % 2, pid * 10 + i // 2))
    return recs


def test_image_dataset_and_loaders(tmp_path):
    recs = _write_tree(tmp_path)
    ds = ImageDataset(recs, build_test_transform(16, 8))
    img, pid, camid, clothes = ds[5]
    assert img.shape == (3, 16, 8) and (pid, camid, clothes) == (1, 1, 10 + 0)
    assert read_image(recs[0].path).mode == "RGB"
    with pytest.raises(OSError, match="does not exist"):
        read_image(str(tmp_path / "missing.png"))
    dataset = ReIDDataset("ltcc", str(tmp_path), train=recs, query=recs[:3], gallery=recs[3:], num_train_pids=4,
                          num_train_clothes=8)
    random.seed(0)
    np.random.seed(0)
    loaders = build_reference_loaders(dataset, height=16, width=8, train_batch=8, test_batch=5, num_instances=4,
                                      num_workers=0, use_gpu=False)
    batches = list(loaders.train)
    assert len(batches) == 2 and all(b[0].shape == (8, 3, 16, 8) for b in batches)
    for b in batches:
        assert len(set(b[1][:4].tolist())) == 1 and len(set(b[1].tolist())) == 2
    assert list(loaders.queries) == ["query"]
    g = list(loaders.gallery)
    assert [x[0].shape[0] for x in g] == [5, 5, 3]  # drop_last=False, in order
    assert torch.cat([x[1] for x in g]).tolist() == [r.pid for r in recs[3:]]


# ----------------------------------------------------------------------------------------------- train step


class _TinyModel(nn.Module):
    """Train: ([feat, 2 * feat], [logits_a, logits_b]); eval: feat [B, 6]."""

    def __init__(self, in_dim: int, classes: int):
        super().__init__()
        self.embed = nn.Linear(in_dim, 6)
        self.cls_a = nn.Linear(6, classes, bias=False)
        self.cls_b = nn.Linear(12, classes, bias=False)

    def forward(self, x):
        f = self.embed(x.flatten(1))
        if not self.training:
            return f
        return [f, 2 * f], [self.cls_a(f), self.cls_b(torch.cat([f, f.relu()], 1))]


@pytest.mark.parametrize("epoch", [35, 36])
def test_reference_train_step_loss_and_update(epoch):
    torch.manual_seed(0)
    model = _TinyModel(3 * 4 * 2, 4)
    imgs = torch.randn(8, 3, 4, 2)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    ce, tri = CrossEntropyLabelSmooth(4), TripletLoss(0.3)
    ref_model = copy.deepcopy(model).train()
    feats, logits = ref_model(imgs)
    expected = sum(ce(y, pids) for y in logits)
    if epoch > 35:  # the triplet term only after tri_start_epoch (1-based epochs, as the seed's train())
        expected = expected + sum(tri(f, pids) for f in feats)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=5e-4)
    before = model.embed.weight.detach().clone()
    loss = reference_train_step(model, imgs, pids, opt, ce, tri, epoch=epoch, tri_start_epoch=35)
    assert isinstance(loss, float)
    assert loss == pytest.approx(expected.item(), rel=1e-6)
    assert not torch.equal(before, model.embed.weight)
    assert model.training


def test_reference_extract_features_flip_and_normalise():
    torch.manual_seed(0)
    model = _TinyModel(3 * 4 * 2, 4)
    imgs = torch.randn(5, 3, 4, 2)
    loader = [(imgs[:3], torch.tensor([1, 2, 3]), torch.tensor([0, 1, 0]), torch.tensor([7, 7, 8])),
              (imgs[3:], torch.tensor([4, 5]), torch.tensor([1, 1]), torch.tensor([9, 9]))]
    feats, pids, camids, clothes = reference_extract_features(model, loader)
    assert not model.training
    with torch.no_grad():
        raw = model(imgs) + model(torch.flip(imgs, [3]))
    torch.testing.assert_close(feats, raw / raw.norm(dim=1, keepdim=True))
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(5))
    assert pids.tolist() == [1, 2, 3, 4, 5] and camids.tolist() == [0, 1, 0, 1, 1]
    assert clothes.tolist() == [7, 7, 8, 9, 9]


# ----------------------------------------------------------------------------------------------- re-ranking


def test_re_ranking_lambda_one_is_row_normalised_distance():
    rng = np.random.default_rng(0)
    q = torch.from_numpy(rng.standard_normal((4, 8)).astype(np.float32))
    g = torch.from_numpy(rng.standard_normal((10, 8)).astype(np.float32))
    out = re_ranking(q, g, k1=4, k2=2, lambda_value=1.0)
    allf = torch.cat([q, g])
    d = torch.cdist(allf, allf).pow(2).numpy()
    expected = (d / d.max(axis=1, keepdims=True))[:4, 4:]
    assert out.shape == (4, 10)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_re_ranking_separates_clusters():
    # two tight clusters: the re-ranked (Jaccard) distance within a cluster is far below the one across
    rng = np.random.default_rng(1)
    centres = np.array([[5.0, 0, 0, 0], [0, 5.0, 0, 0]], dtype=np.float32)
    lab_q, lab_g = np.array([0, 1]), np.array([0] * 6 + [1] * 6)
    q = centres[lab_q] + 0.1 * rng.standard_normal((2, 4)).astype(np.float32)
    g = centres[lab_g] + 0.1 * rng.standard_normal((12, 4)).astype(np.float32)
    out = re_ranking(torch.from_numpy(q), torch.from_numpy(g), k1=5, k2=3, lambda_value=0.3)
    assert out.dtype == np.float32
    same = lab_q[:, None] == lab_g[None]
    assert out[same].max() < out[~same].min()


def test_re_ranking_matches_fast_rerank():
    from fastccreid import rerank as fast

    rng = np.random.default_rng(2)
    q = F.normalize(torch.from_numpy(rng.standard_normal((6, 16)).astype(np.float32)), dim=1)
    g = F.normalize(torch.from_numpy(rng.standard_normal((30, 16)).astype(np.float32)), dim=1)
    ref = re_ranking(q, g, k1=6, k2=3, lambda_value=0.3)
    np.testing.assert_allclose(fast.re_ranking(q, g, k1=6, k2=3, lambda_value=0.3), ref, atol=2e-3)


def test_hard_mining_rejects_unbalanced_batch():
    d = euclidean_dist(torch.randn(6, 3), torch.randn(6, 3))
    with pytest.raises(ValueError, match="P x K"):
        hard_example_mining(d, torch.tensor([0, 0, 0, 1, 1, 2]))


def test_reference_train_step_on_cssc():
    """Smoke: the real CSSC model (no pretrained weights) through the seed's step and feature extraction."""
    from fastccreid.models import cssc

    torch.manual_seed(0)
    model = cssc.CSSC(num_classes=4, pretrained=None)
    imgs = torch.randn(8, 3, 128, 64)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    opt = torch.optim.Adam(model.parameters(), lr=3e-4, weight_decay=5e-4)
    loss = reference_train_step(model, imgs, pids, opt, CrossEntropyLabelSmooth(4), TripletLoss(0.3), epoch=36)
    assert math.isfinite(loss) and loss > 5 * math.log(4) * 0.5
    feats, p, _, _ = reference_extract_features(model, [(imgs[:2], pids[:2], pids[:2], pids[:2])])
    assert feats.shape == (2, 2048) and p.tolist() == [0, 0]
