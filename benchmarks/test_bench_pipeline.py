"""Training input throughput (decode + augment to 384x192, batch 32 = 8 ids x 4), DALI loader vs the seed's
DataLoader at the same worker count (2), on Celeb-reID-like 128x256 JPEGs and LTCC-like PNGs, with pytest-benchmark.

Run: ``python -m pytest benchmarks/test_bench_pipeline.py --benchmark-only -s``. Timings are reported in
``extra_info`` (images/s of both paths; speed-up), never asserted. ``output="float"``: both end at normalised float
batches; ``output="uint8"``: DALI ends at uint8 batches on the model's device, whose normalisation moves into the
model's step (``to_model_input``: on a GPU, next to free; its CPU cost is in ``fastccreid bench pipeline``).
What is asserted is that both paths deliver the same epoch size and P x K batches.
"""

from __future__ import annotations

import time

import pytest
import torch

pytest.importorskip("nvidia.dali")

from fastccreid.bench.pipeline import OUT_H, OUT_W, WORKERS  # noqa: E402
from fastccreid.data import build_dataset  # noqa: E402
from fastccreid.data.loaders import build_train_loader, to_model_input  # noqa: E402
from fastccreid.data.synth import make_synthetic  # noqa: E402
from fastccreid.reference.dataloader import build_reference_loaders  # noqa: E402


def _epoch(loader, finish) -> int:
    n = 0
    for batch in loader:
        n += int(finish(batch).shape[0])
    return n


@pytest.mark.parametrize("output", ["float", "uint8"])
@pytest.mark.parametrize("layout", ["celeb", "ltcc"])
def test_pipeline_fast_vs_reference(benchmark, tmp_path, layout, output):
    root = make_synthetic(layout, str(tmp_path / layout), ids=16, seed=0, clothes=2, cams=4, images_per=4,
                          size=(256, 128))
    ds = build_dataset(layout, root)
    kw = dict(height=OUT_H, width=OUT_W, batch_size=32, num_instances=4, seed=0, num_workers=WORKERS)
    fast = build_train_loader(ds.train, loader="dali", output=output, **kw)
    finish = to_model_input if output == "float" else (lambda b: b.images)
    ref = build_reference_loaders(ds, height=OUT_H, width=OUT_W, train_batch=32, num_instances=4,
                                  num_workers=WORKERS, use_gpu=False).train
    n_fast = benchmark.pedantic(_epoch, args=(fast, finish), rounds=3, warmup_rounds=1, iterations=1)
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        n_ref = _epoch(ref, lambda b: b[0])
        times.append(time.perf_counter() - t0)
    fast_s, ref_s = benchmark.stats.stats.median, min(times)
    benchmark.extra_info.update(fast_img_per_s=n_fast / fast_s, reference_img_per_s=n_ref / ref_s,
                                speedup=ref_s / fast_s * n_fast / n_ref, workers=WORKERS)
    print(f"{layout}: DALI ({output} out) {n_fast / fast_s:,.0f} img/s, reference {n_ref / ref_s:,.0f} img/s")
    assert n_fast == len(fast) * 32 and n_ref % 32 == 0 and n_ref > 0
    for batch in fast:
        counts = torch.bincount(batch.pids)
        assert sorted(counts[counts > 0].tolist()) == [4] * 8
        break
