"""Input pipeline, torch path: parity with the seed's transforms, augmentation statistics vs the reference, P x K
batches that are exactly the sampler's epoch, determinism, eval order, bad-image handling, image formats."""

from __future__ import annotations

import ast
import math
import multiprocessing
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers.data_cases import PAD, corrupt_copy, make_records, smooth_image, truncate_file, write_formats
from PIL import Image
from torchvision import transforms as T  # noqa: N812
from torchvision.transforms import functional as TF  # noqa: N812

from fastccreid.data import torch_loader, transforms
from fastccreid.data.loaders import (
    Batch,
    build_eval_loader,
    build_train_loader,
    choose_loader,
    to_model_input,
    usable_cpus,
)
from fastccreid.data.records import ImageRecord
from fastccreid.data.sampler import IdentitySampler
from fastccreid.data.torch_loader import DEBUG_ENV
from fastccreid.data.transforms import BadImageError, sample_aug_params
from fastccreid.reference import transforms as reference_transforms
from fastccreid.reference.transforms import IMAGENET_MEAN, IMAGENET_STD, RandomErasing, build_test_transform

H, W = 48, 24


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return make_records(str(tmp_path_factory.mktemp("imgs")))


def _ref_normalize(pil: Image.Image) -> torch.Tensor:
    return T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(TF.to_tensor(pil))


def test_to_model_input_normalizes_and_erases_exactly():
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (3, 8, 6, 3), dtype=torch.uint8, generator=g)
    before = u8.clone()
    boxes = torch.tensor([[1, 2, 3, 2], [0, 0, 0, 0], [0, 0, 8, 6]], dtype=torch.int32)
    x = to_model_input(Batch(u8, *(torch.zeros(3, dtype=torch.int64),) * 4, False, boxes))
    assert torch.equal(u8, before)  # input not modified
    assert x.shape == (3, 3, 8, 6) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    ref = torch.stack([_ref_normalize(Image.fromarray(a.numpy())) for a in u8])
    ref[0, :, 1:4, 2:4] = 0
    ref[2] = 0
    assert (x - ref).abs().max().item() < 1e-5
    assert torch.all(x[0, :, 1:4, 2:4] == 0) and torch.all(x[2] == 0)
    # CHW uint8 in, contiguous out; float passes through.
    y = to_model_input(u8.permute(0, 3, 1, 2).contiguous(), channels_last=False)
    assert y.is_contiguous() and (y - torch.stack([_ref_normalize(Image.fromarray(a.numpy())) for a in u8])
                                  ).abs().max() < 1e-5
    assert torch.equal(to_model_input(ref, channels_last=False), ref)
    with pytest.raises(TypeError, match="to_model_input takes a Batch or a torch.Tensor, got ndarray"):
        to_model_input(u8.numpy())


def test_choose_loader_checks_and_reasons():
    assert choose_loader("torch", "cpu") == ("torch", "--loader torch")
    backend, reason = choose_loader("auto", "cpu")
    assert backend in ("dali", "torch") and reason.startswith("--loader auto")
    with pytest.raises(ValueError, match="auto, dali, torch"):
        choose_loader("fast", "cpu")


def test_torch_eval_matches_reference_test_transform(records):
    loader = build_eval_loader(records, height=H, width=W, batch_size=7, loader="torch", num_workers=0)
    batches = list(loader)
    assert [len(b) for b in batches] == [7, 7, 7, 7, 2]  # the last partial batch kept
    idx = torch.cat([b.indices for b in batches])
    assert idx.tolist() == list(range(len(records)))
    x = torch.cat([to_model_input(b) for b in batches])
    ref = torch.stack([build_test_transform(H, W)(Image.open(r.path).convert("RGB")) for r in records])
    assert (x - ref).abs().max().item() < 1e-5  # the same PIL decode + resize: float rounding only
    assert torch.equal(torch.cat([b.pids for b in batches]), torch.tensor([r.pid for r in records]))
    assert torch.equal(torch.cat([b.clothes_ids for b in batches]), torch.tensor([r.clothes_id for r in records]))


def _apply_reference(path: str, flip: int, dy: int, dx: int, box) -> torch.Tensor:
    """The seed's train transform with given parameters: Resize -> flip -> Pad -> crop -> normalise -> erase 0."""
    img = Image.open(path).convert("RGB").resize((W, H), Image.BILINEAR)
    if flip:
        img = TF.hflip(img)
    img = TF.crop(TF.pad(img, PAD), dy, dx, H, W)
    x = _ref_normalize(img)
    y0, x0, h, w = box
    x[:, y0:y0 + h, x0:x0 + w] = 0
    return x


@pytest.mark.parametrize("in_loader", [True, False])  # float finished in the workers (CPU run) / uint8 out (GPU)
def test_torch_train_equals_reference_ops_with_drawn_params(records, in_loader):
    loader = build_train_loader(records, height=H, width=W, batch_size=8, num_instances=4, seed=3, loader="torch",
                                num_workers=0, pad=PAD, erase_p=0.7, output="float" if in_loader else "uint8")
    assert loader.normalize_in_loader is in_loader
    loader.set_epoch(2)
    batches = list(loader)
    order = IdentitySampler([r.pid for r in records], 8, 4, seed=3).epoch_indices(2)
    params = sample_aug_params(3, 2, np.arange(len(order)), H, W, PAD, 0.5, 0.7)
    x = torch.cat([to_model_input(b, channels_last=False) for b in batches])
    for pos, idx in enumerate(order):
        ref = _apply_reference(records[idx].path, params.flip[pos], *params.crop[pos], params.erase[pos])
        assert (x[pos] - ref).abs().max().item() < 1e-5, pos


def test_train_batches_are_the_samplers_epoch_pk_and_repeat(records):
    kw = dict(height=H, width=W, batch_size=8, num_instances=4, seed=5, loader="torch", num_workers=0, pad=PAD)
    loader = build_train_loader(records, **kw, output="uint8")  # the accelerator form, asked for on a CPU
    sampler = IdentitySampler([r.pid for r in records], 8, 4, seed=5)
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(loader) == len(sampler.epoch_indices(epoch)) // 8
        assert torch.cat([b.indices for b in batches]).tolist() == sampler.epoch_indices(epoch)
        for b in batches:
            counts = torch.bincount(b.pids)
            assert sorted(counts[counts > 0].tolist()) == [4, 4]  # P=2 identities x K=4
            assert b.images.shape == (8, H, W, 3) and b.images.dtype == torch.uint8 and not b.normalized
    again = build_train_loader(records, **kw, output="uint8")
    again.set_epoch(1)
    first = list(again)
    assert all(torch.equal(a.images, b.images) and torch.equal(a.erase_boxes, b.erase_boxes)
               for a, b in zip(first, batches, strict=True))
    # A mid-epoch resume (start_batch) yields exactly the epoch's remaining batches; a bad value is named.
    again.set_epoch(1, start_batch=1)
    tail = list(again)
    assert len(tail) == len(batches) - 1
    assert all(torch.equal(a.images, b.images) and torch.equal(a.erase_boxes, b.erase_boxes)
               for a, b in zip(tail, batches[1:], strict=True))
    with pytest.raises(ValueError, match="start_batch must be a non-negative integer"):
        again.set_epoch(1, start_batch=-1)
    # Workers do not change the result (parameters are per position, not per worker).
    w1 = build_train_loader(records, **{**kw, "num_workers": 1})  # normalising in the worker this time
    w1.set_epoch(1)
    assert all(torch.equal(to_model_input(a), to_model_input(b)) for a, b in zip(w1, batches, strict=True))


def test_rank_shards_union_is_the_global_batch(records):
    kw = dict(height=H, width=W, batch_size=8, num_instances=2, seed=1, loader="torch", num_workers=0, pad=PAD)
    full = list(build_train_loader(records, **kw))
    shards = [list(build_train_loader(records, rank=r, world_size=2, **kw)) for r in (0, 1)]
    for g, a, b in zip(full, *shards, strict=True):
        assert torch.equal(torch.cat([a.indices, b.indices]), g.indices)
        assert torch.equal(torch.cat([a.images, b.images]), g.images)


def _ks_stat(a: np.ndarray, b: np.ndarray) -> float:
    grid = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


def test_augmentation_statistics_match_the_reference():
    """Flip rate, crop offsets, erase rate and erased-area distribution vs the seed's torchvision/RandomErasing draws
    at 384 x 192, pad 10 (two-sample tests at the 1e-3 level)."""
    n, h, w, pad = 2500, 384, 192, 10
    ours = sample_aug_params(7, 0, np.arange(n), h, w, pad, 0.5, 0.5)
    torch.manual_seed(0)
    random.seed(0)
    flips = np.array([float(torch.rand(1) < 0.5) for _ in range(n)])
    crops = np.array([T.RandomCrop.get_params(torch.empty(1, h + 2 * pad, w + 2 * pad), (h, w))[:2]
                      for _ in range(n)])
    eraser = RandomErasing(0.5, mean=[0.0, 0.0, 0.0])
    ref_boxes = []
    t = torch.ones(1, h, w)
    arr = t.numpy()  # numpy view for the bookkeeping: many tiny torch ops are slow on a busy 2-core machine
    for _ in range(n):
        arr.fill(1.0)
        eraser(t)
        zero = arr[0] == 0
        ref_boxes.append((int(zero.any(1).sum()), int(zero.any(0).sum())))  # the erased box's (h, w)
    ref_boxes = np.array(ref_boxes)
    sd = math.sqrt(0.25 / n) * math.sqrt(2)
    assert abs(ours.flip.mean() - flips.mean()) < 4 * sd
    ref_erase = ref_boxes[:, 0] > 0
    our_erase = ours.erase[:, 2] > 0
    assert abs(our_erase.mean() - ref_erase.mean()) < 4 * sd
    ks_crit = 1.95 * math.sqrt(2 / n)  # two-sample KS at alpha = 0.001
    for axis in (0, 1):
        assert set(ours.crop[:, axis].tolist()) == set(range(2 * pad + 1))
        assert _ks_stat(ours.crop[:, axis], crops[:, axis]) < ks_crit
    area_ours = (ours.erase[our_erase, 2] * ours.erase[our_erase, 3]) / (h * w)
    area_ref = (ref_boxes[ref_erase, 0] * ref_boxes[ref_erase, 1]) / (h * w)
    crit = 1.95 * math.sqrt((len(area_ours) + len(area_ref)) / (len(area_ours) * len(area_ref)))
    assert _ks_stat(area_ours, area_ref) < crit
    assert 0.015 < area_ours.min() and area_ours.max() < 0.41
    aspect_ours = ours.erase[our_erase, 2] / ours.erase[our_erase, 3]
    aspect_ref = ref_boxes[ref_erase, 0] / ref_boxes[ref_erase, 1]
    assert _ks_stat(aspect_ours, aspect_ref) < crit
    # Box positions: fully inside the image.
    e = ours.erase[our_erase]
    assert (e[:, 0] + e[:, 2] <= h).all() and (e[:, 1] + e[:, 3] <= w).all()


@pytest.mark.parametrize("backend", ["torch"])
def test_image_formats_decode_as_pil_rgb(tmp_path, backend):
    recs = write_formats(str(tmp_path))
    (batch,) = list(build_eval_loader(recs, height=H, width=W, batch_size=8, loader=backend, num_workers=0))
    ref = torch.stack([build_test_transform(H, W)(Image.open(r.path).convert("RGB")) for r in recs])
    assert (to_model_input(batch) - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize("workers", [0, 1])
def test_bad_image_raises_by_name_or_is_skipped(records, tmp_path, workers):
    bad, path = corrupt_copy(records, str(tmp_path), 7)
    kw = dict(height=H, width=W, batch_size=8, num_instances=4, seed=0, loader="torch", num_workers=workers, pad=PAD)
    with pytest.raises(BadImageError, match="truncated_"):
        list(build_train_loader(bad, **kw))
    if workers:
        return  # the skipping below runs in-process; the worker case above checks the error crosses processes
    with pytest.raises(BadImageError, match="truncated_"):
        list(build_eval_loader(bad, height=H, width=W, loader="torch", num_workers=workers))
    loader = build_train_loader(bad, skip_bad_images=True, **kw)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        batches = list(loader)
    assert loader.bad_images == 1 and len(batches) == len(loader)
    for b in batches:
        assert 7 not in b.indices.tolist()
        assert sorted(torch.bincount(b.pids)[torch.bincount(b.pids) > 0].tolist()) == [4, 4]
    ev = build_eval_loader(bad, height=H, width=W, batch_size=8, loader="torch", num_workers=workers,
                           skip_bad_images=True)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        got = torch.cat([b.indices for b in ev]).tolist()
    assert got == [i for i in range(len(bad)) if i != 7] and ev.bad_images == 1


@pytest.mark.parametrize("kind", ["train", "eval"])
def test_bad_image_in_a_worker_reaches_the_user_as_one_line(records, tmp_path, monkeypatch, kind):
    """An unreadable file found in a DataLoader worker raises the same one-line BadImageError (with ``.path``) as
    in-process, not torch's "Caught BadImageError in DataLoader worker process N. Original Traceback ..." wall;
    FASTCCREID_DEBUG=1 keeps the worker's traceback."""
    bad, path = corrupt_copy(records, str(tmp_path), 7)

    def error(workers: int) -> BadImageError:
        if kind == "train":
            loader = build_train_loader(bad, height=H, width=W, batch_size=8, num_instances=4, seed=0,
                                        loader="torch", num_workers=workers, pad=PAD)
        else:
            loader = build_eval_loader(bad, height=H, width=W, batch_size=8, loader="torch", num_workers=workers)
        with pytest.raises(BadImageError, match="truncated_") as info:
            list(loader)
        return info.value

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    err = error(2)
    assert str(err).startswith(f"cannot read image {path!r}: ") and "\n" not in str(err)
    assert "Traceback" not in str(err) and "DataLoader worker" not in str(err) and err.path == path
    if kind == "eval":
        return  # the debug switch is the same code for both sets; once is enough (a raising worker's shutdown
        # waits out torch's 5 s join timeout)
    monkeypatch.setenv(DEBUG_ENV, "1")
    err = error(1)
    assert "Original Traceback" in str(err) and path in str(err)


def test_train_cli_names_a_corrupt_image_in_one_line(tmp_path):
    """``fastccreid train --loader torch -j 2`` on a synthetic LTCC with one truncated training image: exit 2 and a
    message naming the file, without torch's worker traceback."""
    from fastccreid.data import build_dataset
    from fastccreid.data.synth import make_synthetic

    root = make_synthetic("ltcc", str(tmp_path / "ltcc"), ids=8, seed=0, clothes=2, cams=2, images_per=2,
                          size=(128, 32))
    train = build_dataset("ltcc", root).train
    first = IdentitySampler([r.pid for r in train], 8, 4, seed=1).epoch_indices(0)[0]  # in the first batch: no step
    path = truncate_file(train[first].path)
    env = {k: v for k, v in os.environ.items() if k != DEBUG_ENV}
    argv = [sys.executable, "-m", "fastccreid", "train", "--dataset", "ltcc", "--dataset_root", root,
            "--dataset_filename", "", "--height", "128", "--width", "32", "--train_batch", "8", "--num_instances", "4",
            "--test_batch", "16", "-j", "2", "--pretrained", "none", "--use_cpu", "--no_progress", "--loader",
            "torch", "--save_dir", str(tmp_path / "run"), "--max_epoch", "1", "--eval_epoch", "-1", "--seed", "1"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert path in proc.stderr and "cannot read image" in proc.stderr, proc.stderr[-3000:]
    assert "Original Traceback" not in proc.stderr and "DataLoader worker" not in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_num_workers_capped_at_the_cpus_this_process_may_use(records, capsys, recwarn):
    """-j above the CPUs in this process's affinity mask: one line says so, the loader runs that many workers and
    torch warns nothing; the cap follows the affinity mask (taskset, containers), not the machine's CPU count."""
    cpus = len(os.sched_getaffinity(0))
    kw = dict(height=H, width=W, batch_size=8, num_instances=4, seed=0, loader="torch", pad=PAD)
    loader = build_train_loader(records, num_workers=cpus + 6, **kw)
    assert loader.num_workers == cpus
    assert usable_cpus() == cpus
    build_eval_loader(records, height=H, width=W, loader="torch", num_workers=cpus + 6)  # said once per process
    out = capsys.readouterr().out
    assert out.count(f"=> -j/--num_workers {cpus + 6} capped at {cpus}: this process may use {cpus} CPU(s)") == 1
    assert len(list(loader)) == len(loader)
    assert not [w for w in recwarn if "worker" in str(w.message)], [str(w.message) for w in recwarn]
    assert build_train_loader(records, num_workers=cpus, **kw).num_workers == cpus  # at the limit: unchanged
    assert "capped" not in capsys.readouterr().out
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})  # this thread only; restored below
        assert usable_cpus() == 1
        assert build_eval_loader(records, height=H, width=W, loader="torch", num_workers=3).num_workers == 1
    finally:
        os.sched_setaffinity(0, before)


def test_workers_start_by_forkserver_once_threads_are_live(records, monkeypatch):
    """NumPy's and torch's thread pools are up in this process, so forking could copy a lock another thread holds:
    the loaders' workers start from the forkserver (the batches are the same: test above with 1 worker)."""
    assert torch_loader.live_threads() > 1
    ctx, name = torch_loader.worker_context(2)
    assert name == "forkserver" and ctx.get_start_method() == "forkserver"
    assert torch_loader.worker_context(0) == (None, "in-process")
    loader = build_train_loader(records, height=H, width=W, batch_size=8, num_instances=4, loader="torch",
                                num_workers=1, pad=PAD)
    dl = torch_loader._data_loader(loader.dataset, batch_sampler=loader.batch_keys(), num_workers=1)
    assert dl.multiprocessing_context.get_start_method() == "forkserver"
    monkeypatch.setattr(torch_loader, "live_threads", lambda: 1)  # a single-threaded process may fork
    assert torch_loader.worker_context(2) == (None, multiprocessing.get_start_method())


def test_imagenet_constants_are_pinned():
    """The normalisation constants, production and reference (each defines its own), are ImageNet's."""
    for mod in (transforms, reference_transforms):
        assert tuple(mod.IMAGENET_MEAN) == (0.485, 0.456, 0.406), mod.__name__
        assert tuple(mod.IMAGENET_STD) == (0.229, 0.224, 0.225), mod.__name__


def _imports(package_dir: str, package: str) -> dict[str, set[str]]:
    """module -> the modules of ``package`` it imports (at the top or inside functions), read with ast."""
    names = {f"{package}.{f[:-3]}" if f != "__init__.py" else package
             for f in os.listdir(package_dir) if f.endswith(".py")}
    graph: dict[str, set[str]] = {}
    for mod in names:
        file = "__init__.py" if mod == package else mod.rsplit(".", 1)[1] + ".py"
        tree = ast.parse(open(os.path.join(package_dir, file)).read())
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                deps.add(node.module)
                deps |= {f"{node.module}.{a.name}" for a in node.names}
        graph[mod] = {d for d in deps if d in names and d != mod}
    return graph


@pytest.mark.parametrize("package", ["fastccreid.data", "fastccreid.bench"])
def test_no_import_cycles(package):
    """Within the data and bench packages no module imports (directly or through others) one that imports it."""
    import importlib

    pkg_dir = os.path.dirname(importlib.import_module(package).__file__)
    graph = _imports(pkg_dir, package)
    assert graph, package

    def reach(start: str) -> set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += graph[m]
        return seen

    cycles = sorted(m for m in graph if m in reach(m))
    assert not cycles, {m: sorted(graph[m]) for m in cycles}


def test_production_data_code_never_imports_the_reference():
    """The oracle stays an oracle: importing the input pipeline and the production scheduler loads no
    ``fastccreid.reference`` module (fresh interpreter)."""
    code = ("import sys; import fastccreid.data.loaders, fastccreid.data.dali, fastccreid.data.synth, "
            "fastccreid.data.datasets, fastccreid.engine.scheduler; "
            "print(sorted(m for m in sys.modules if m.startswith('fastccreid.reference')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_builder_input_checks(records):
    with pytest.raises(ValueError, match="records is empty"):
        build_train_loader([], loader="torch")
    with pytest.raises(ValueError, match="--random_erasing_pro"):
        build_train_loader(records, erase_p=1.5, loader="torch")
    with pytest.raises(ValueError, match="--loader"):
        build_eval_loader(records, loader="nvjpeg")


def test_box_painting_cpu_loop_equals_accelerator_masks():
    """The CPU slice-loop and the broadcast-mask version (used on CUDA) paint the same pixels."""
    from fastccreid.data.transforms import _paint_boxes_loop, _paint_boxes_masked

    g = torch.Generator().manual_seed(1)
    out = torch.randn(4, 3, 12, 8, generator=g).contiguous(memory_format=torch.channels_last)
    shift = torch.randn(1, 3, 1, 1, generator=g)
    valid = torch.tensor([[0, 0, 12, 8], [2, 0, 10, 5], [0, 3, 9, 5], [1, 1, 10, 6]], dtype=torch.int32)
    erase = torch.tensor([[1, 1, 3, 2], [0, 0, 0, 0], [5, 4, 7, 4], [0, 0, 12, 8]], dtype=torch.int32)
    masked = _paint_boxes_masked(out.clone(), erase, valid, shift)
    looped = out.clone()
    _paint_boxes_loop(looped, erase, valid, shift[0])
    assert torch.equal(masked, looped)
    assert torch.equal(looped[1, :, :2], shift[0].expand(3, 2, 8)) and torch.all(looped[3] == 0)


def test_loader_output_choices(records):
    """``output`` / ``--loader_output``: auto = float on a CPU run; uint8 hands out uint8 HWC batches that
    to_model_input turns into exactly the float batches; a bad value names the flag and the choices."""
    kw = dict(height=H, width=W, batch_size=8, num_instances=4, seed=1, loader="torch", num_workers=0, pad=PAD)
    auto = build_train_loader(records, **kw)
    u8 = build_train_loader(records, **kw, output="uint8")
    assert auto.normalize_in_loader and not u8.normalize_in_loader
    for a, b in zip(auto, u8, strict=True):
        assert a.normalized and a.images.is_floating_point()
        assert b.images.dtype == torch.uint8 and b.images.shape == (8, H, W, 3)
        assert torch.equal(to_model_input(a), to_model_input(b))
    ev = build_eval_loader(records, height=H, width=W, batch_size=7, loader="torch", num_workers=0, output="uint8")
    assert all(b.images.dtype == torch.uint8 for b in ev)
    for build in (build_train_loader, build_eval_loader):
        with pytest.raises(ValueError, match=r"--loader_output must be one of auto, float, uint8, got 'half'"):
            build(records, height=H, width=W, loader="torch", num_workers=0, output="half")


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_16bit_grayscale_png_scales_to_8_bits(tmp_path, backend):
    """A 16-bit grayscale PNG decodes as its 8-bit picture (v * 255 / 65535, as DALI's decoder), not PIL's
    convert('RGB') clipped to white; both loaders agree with the 8-bit PNG of the same picture."""
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    a = smooth_image(5)[..., 0]
    Image.fromarray(a).save(tmp_path / "gray8.png")
    Image.fromarray(a.astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    with Image.open(tmp_path / "gray16.png") as im:
        assert im.mode.startswith("I")  # really a 16-bit image
    recs = [ImageRecord(str(tmp_path / n), 0, 0, 0) for n in ("gray8.png", "gray16.png")]
    (batch,) = list(build_eval_loader(recs, height=H, width=W, batch_size=2, loader=backend, num_workers=1))
    x = to_model_input(batch)
    assert torch.equal(x[0], x[1])
    assert x[1].min().item() < 0  # not PIL's clipped white (>= 2.2 everywhere in normalised units)
