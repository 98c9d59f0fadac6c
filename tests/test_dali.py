"""Input pipeline, DALI path (CPU mode here, ``device_id=None``): parity with torchvision/PIL with augmentation off
and on (same host-drawn parameters), P x K epochs equal to the sampler's, determinism, eval order with the last
partial batch, bad images, image formats. Skipped cleanly where nvidia.dali does not import."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from fastccreid.data.loaders import build_eval_loader, build_train_loader, choose_loader, to_model_input
from fastccreid.data.sampler import IdentitySampler
from fastccreid.data.transforms import BadImageError
from fastccreid.reference.transforms import build_test_transform

pytest.importorskip("nvidia.dali")
pytestmark = pytest.mark.dali

from helpers.data_cases import PAD, corrupt_copy, make_records, write_formats  # noqa: E402

# Upscaling (as 128x64 / 256x128 -> 384x192): DALI's and PIL's bilinear agree within one grey level (measured max
# 0.0175 in normalised units = 1/255/std); decoding itself is bit-identical (both libjpeg-turbo / libpng).
H, W = 96, 48
TOL = 1.01 / (255 * 0.225)  # one grey level on the channel with the smallest std


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return make_records(str(tmp_path_factory.mktemp("dali_imgs")), ids=6, per_id=5)


def test_auto_picks_dali_in_cpu_mode():
    backend, reason = choose_loader("auto", "cpu")
    assert backend == "dali" and "CPU mode" in reason


def test_eval_matches_torchvision_aug_off(records):
    loader = build_eval_loader(records, height=H, width=W, batch_size=7, loader="dali", num_workers=1)
    assert loader.backend == "dali"
    batches = list(loader)
    assert [len(b) for b in batches] == [7, 7, 7, 7, 2] and len(loader) == 5  # every image once, last batch kept
    assert torch.cat([b.indices for b in batches]).tolist() == list(range(len(records)))
    assert torch.equal(torch.cat([b.pids for b in batches]), torch.tensor([r.pid for r in records]))
    x = torch.cat([to_model_input(b) for b in batches])
    ref = torch.stack([build_test_transform(H, W)(Image.open(r.path).convert("RGB")) for r in records])
    diff = (x - ref).abs().max().item()
    print(f"DALI vs torchvision (aug off) max abs diff: {diff:.4f} (normalised units)")
    assert diff <= TOL


@pytest.mark.parametrize("in_loader", [True, False])  # normalised in DALI (CPU run) / uint8 out (GPU form)
def test_train_matches_torch_path_aug_on(records, in_loader):
    """Same host-drawn flip / crop / erase parameters: DALI's resize with a mirrored, shifted ROI plus the painted
    padding equals PIL flip + Pad + crop up to the resize tolerance; erase boxes identical, erased areas exactly 0."""
    kw = dict(height=H, width=W, batch_size=8, num_instances=4, seed=9, num_workers=1, pad=PAD, erase_p=0.7)
    dali = build_train_loader(records, loader="dali", output="float" if in_loader else "uint8", **kw)
    assert dali.normalize_in_loader is in_loader
    ref = build_train_loader(records, loader="torch", **kw)
    assert dali.backend == "dali" and ref.backend == "torch"
    for loader in (dali, ref):
        loader.set_epoch(3)
    d_batches, r_batches = list(dali), list(ref)
    assert len(d_batches) == len(r_batches) == len(dali)
    worst = 0.0
    for a, b in zip(d_batches, r_batches, strict=True):
        assert torch.equal(a.indices, b.indices) and torch.equal(a.pids, b.pids)
        assert torch.equal(a.erase_boxes, b.erase_boxes)
        xa, xb = to_model_input(a), to_model_input(b)
        worst = max(worst, (xa - xb).abs().max().item())
        for i, (y0, x0, h, w) in enumerate(a.erase_boxes.tolist()):
            if h:
                assert torch.all(xa[i, :, y0:y0 + h, x0:x0 + w] == 0)
    print(f"DALI vs torch path (aug on) max abs diff: {worst:.4f}")
    assert worst <= TOL
    assert any(h > 0 for b in d_batches for h in b.erase_boxes[:, 2].tolist())


def test_epoch_is_the_samplers_pk_and_seeded_runs_repeat(records):
    kw = dict(height=H, width=W, batch_size=8, num_instances=4, seed=4, loader="dali", num_workers=2, pad=PAD)
    loader = build_train_loader(records, **kw)
    sampler = IdentitySampler([r.pid for r in records], 8, 4, seed=4)
    loader.set_epoch(1)
    batches = list(loader)
    assert torch.cat([b.indices for b in batches]).tolist() == sampler.epoch_indices(1)
    for b in batches:
        counts = torch.bincount(b.pids)
        assert sorted(counts[counts > 0].tolist()) == [4, 4]
        assert to_model_input(b).shape == (8, 3, H, W)
    again = build_train_loader(records, **kw)
    again.set_epoch(1)
    assert all(torch.equal(a.images, b.images) for a, b in zip(again, batches, strict=True))
    loader.set_epoch(2)
    assert torch.cat([b.indices for b in loader]).tolist() == sampler.epoch_indices(2)
    # a mid-epoch resume starts at batch 2: the same batches (images, augmentation) as the whole epoch's tail
    again.set_epoch(1, start_batch=2)
    tail = list(again)
    assert len(tail) == len(batches) - 2 and len(again) == len(batches)
    assert all(torch.equal(a.images, b.images) and torch.equal(a.indices, b.indices)
               for a, b in zip(tail, batches[2:], strict=True))


def test_image_formats(tmp_path):
    recs = write_formats(str(tmp_path))  # RGB/gray JPEG, RGB/RGBA/palette/gray PNG
    (batch,) = list(build_eval_loader(recs, height=H, width=W, batch_size=8, loader="dali", num_workers=1))
    ref = torch.stack([build_test_transform(H, W)(Image.open(r.path).convert("RGB")) for r in recs])
    assert (to_model_input(batch) - ref).abs().max().item() <= TOL


def _check_skipped_training_epoch(loader, bad: set[int]) -> None:
    """One epoch with --skip_bad_images: a warning with the count, every batch still P x K, no bad index in it."""
    with pytest.warns(UserWarning, match=f"skipped {len(bad)} unreadable"):
        batches = list(loader)
    assert loader.bad_images == len(bad) and len(batches) == len(loader)
    for b in batches:
        assert not bad & set(b.indices.tolist())
        assert sorted(torch.bincount(b.pids)[torch.bincount(b.pids) > 0].tolist()) == [4, 4]


def test_bad_images(records, tmp_path):
    bad, _ = corrupt_copy(records, str(tmp_path), 7)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    bad[12] = type(bad[12])(str(garbage), bad[12].pid, bad[12].camid, bad[12].clothes_id)
    kw = dict(height=H, width=W, batch_size=8, num_instances=4, seed=0, loader="dali", num_workers=1, pad=PAD)
    with pytest.raises(BadImageError, match="truncated_|garbage"):
        list(build_train_loader(bad, **kw))
    with pytest.raises(BadImageError, match="garbage"):
        list(build_eval_loader(bad, height=H, width=W, batch_size=8, loader="dali", num_workers=1))
    _check_skipped_training_epoch(build_train_loader(bad, skip_bad_images=True, **kw), {7, 12})
    ev = build_eval_loader(bad, height=H, width=W, batch_size=8, loader="dali", num_workers=1, skip_bad_images=True)
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        got = torch.cat([b.indices for b in ev]).tolist()
    assert got == [i for i in range(len(bad)) if i not in (7, 12)] and ev.bad_images == 2


def test_zero_copy_batches_stay_valid(records):
    """CPU batches are views of DALI's output buffers: holding many batches (more than the prefetch depth) and
    the finished pipeline must not change them."""
    held, clones = [], []
    for b in build_eval_loader(records, height=H, width=W, batch_size=2, loader="dali", num_workers=1):
        held.append(b.images)
        clones.append(b.images.clone())
    assert len(held) == 15 and all(torch.equal(a, c) for a, c in zip(held, clones, strict=True))


def test_mixed_image_sizes_match_the_torch_path(tmp_path):
    """Real datasets mix image sizes (and some are larger than the output): the CPU pipeline resizes each size group
    with torch's antialiased bilinear kernel, which must stay within one grey level of PIL's in both loaders."""
    import numpy as np

    from fastccreid.data.records import ImageRecord

    rng = np.random.default_rng(0)
    sizes = [(40, 20), (96, 48), (130, 70), (200, 90), (96, 48), (61, 33)]  # (h, w): up, equal, down, odd
    recs = []
    for i in range(24):
        h, w = sizes[i % len(sizes)]
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img[: h // 2] //= 2  # some low-frequency structure besides the noise
        path = str(tmp_path / f"{i:02d}.{'png' if i % 2 else 'jpg'}")
        Image.fromarray(img).save(path, quality=95) if i % 2 == 0 else Image.fromarray(img).save(path)
        recs.append(ImageRecord(path, i // 4, i % 2, 0))
    ev = list(build_eval_loader(recs, height=H, width=W, batch_size=10, loader="dali", num_workers=2))
    ref = torch.stack([build_test_transform(H, W)(Image.open(r.path).convert("RGB")) for r in recs])
    assert (torch.cat([to_model_input(b) for b in ev]) - ref).abs().max().item() <= TOL
    kw = dict(height=H, width=W, batch_size=8, num_instances=4, seed=2, num_workers=2, pad=PAD, erase_p=0.5)
    for output in ("float", "uint8"):
        dali = build_train_loader(recs, loader="dali", output=output, **kw)
        torch_path = build_train_loader(recs, loader="torch", **kw)
        for a, b in zip(dali, torch_path, strict=True):
            assert torch.equal(a.indices, b.indices)
            assert (to_model_input(a) - to_model_input(b)).abs().max().item() <= TOL


def test_parallel_external_source_gives_the_same_batches(records, tmp_path):
    """--dali_py_workers 2: files are read and augmentation drawn in spawned processes (DALI's parallel per-sample
    external_source); the epoch, a resumed epoch's tail and the next epoch equal the batch-mode loader's bit for
    bit, and a bad file is still named (or skipped and counted)."""
    kw = dict(height=H, width=W, batch_size=8, num_instances=4, seed=5, loader="dali", num_workers=2, pad=PAD,
              erase_p=0.5, output="uint8")
    serial = build_train_loader(records, **kw)
    parallel = build_train_loader(records, dali_py_workers=2, **kw)
    pipes = []
    # epoch 1 reuses epoch 0's pipeline and workers, a resume (epoch 2 from batch 1) builds a new one, epoch 3
    # reuses that one (its first epoch skipped a batch, the next must not)
    for epoch, start in ((0, 0), (1, 0), (2, 1), (3, 0)):
        serial.set_epoch(epoch, start_batch=start)
        parallel.set_epoch(epoch, start_batch=start)
        got, want = list(parallel), list(serial)
        assert len(got) == len(want) == len(serial) - start > 0
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a.indices, b.indices) and torch.equal(a.images, b.images)
            assert torch.equal(a.erase_boxes, b.erase_boxes) and torch.equal(a.valid_boxes, b.valid_boxes)
        pipes.append(parallel._kept[0])
    assert pipes[0] is pipes[1] and pipes[1] is not pipes[2] and pipes[2] is pipes[3]

    bad, _ = corrupt_copy(records, str(tmp_path), 7)  # truncated: DALI's decoder fails in the main process
    garbage = tmp_path / "garbage.jpg"  # not an image: the worker's magic check raises there
    garbage.write_bytes(b"not an image at all")
    bad[12] = type(bad[12])(str(garbage), bad[12].pid, bad[12].camid, bad[12].clothes_id)
    kw["seed"] = 0  # an epoch-0 order that uses both bad files (the sampler leaves one image of each id out)
    with pytest.raises(BadImageError, match="truncated_|garbage"):
        list(build_train_loader(bad, dali_py_workers=2, **kw))
    _check_skipped_training_epoch(build_train_loader(bad, dali_py_workers=2, skip_bad_images=True, **kw), {7, 12})
    with pytest.raises(ValueError, match="--dali_py_workers"):
        build_train_loader(records, dali_py_workers=-1, **kw)
