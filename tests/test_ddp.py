"""DDP on CPU: two gloo processes train 2 steps on a tiny synthetic LTCC and end with identical parameters; the
evaluation is sharded over the ranks and gathered, so both ranks report the same, complete numbers."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

H, W = 128, 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from fastccreid.cli import build_parser
    from fastccreid.engine.distributed import cleanup, setup
    from fastccreid.engine.trainer import Trainer

    args = build_parser().parse_args([
        "train", "--dataset", "ltcc", "--dataset_root", root, "--dataset_filename", "", "--height", str(H),
        "--width", str(W), "--train_batch", "16", "--num_instances", "4", "--test_batch", "16", "-j", "0",
        "--pretrained", "none", "--use_cpu", "--no_progress", "--loader", "torch", "--save_dir", out,
        "--max_steps_per_epoch", "2", "--max_epoch", "1", "--tri_start_epoch", "0", "--amp", "bf16",
        "--save_checkpoint"])
    ctx = setup(use_cpu=True)
    try:
        tr = Trainer(args, ctx, log=lambda m: None)
        init = {k: v.detach().clone() for k, v in tr.model.named_parameters()}
        code = tr.fit()
        params = {k: v.detach().clone() for k, v in tr.model.named_parameters()}
        changed = sum(not torch.equal(init[k], params[k]) for k in params)
        torch.save(params, os.path.join(out, f"rank{rank}.pt"))
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump({"code": code, "changed": changed, "steps": tr.steps_per_epoch(),
                       "results": {k: [r.mAP, r.rank(1), r.num_queries] for k, r in tr.last_results.items()},
                       "num_gallery": int(tr.last_features["gallery"].feats.shape[0]),
                       "len_gallery": len(tr.dataset.gallery)}, f)
    finally:
        cleanup()


def test_two_gloo_processes_end_with_identical_weights(tmp_path):
    from fastccreid.data.synth import make_synthetic

    root = make_synthetic("ltcc", str(tmp_path / "data"), ids=8, seed=0, clothes=2, cams=2, images_per=2,
                          size=(H, W))
    out = str(tmp_path / "run")
    os.makedirs(out)
    mp.spawn(_worker, args=(2, _free_port(), root, out), nprocs=2, join=True)
    reports = [json.load(open(os.path.join(out, f"rank{r}.json"))) for r in range(2)]
    assert [r["code"] for r in reports] == [0, 0]
    assert reports[0]["changed"] > 0  # training moved the weights
    p0 = torch.load(os.path.join(out, "rank0.pt"))
    p1 = torch.load(os.path.join(out, "rank1.pt"))
    assert p0.keys() == p1.keys()
    for k in p0:
        assert torch.equal(p0[k], p1[k]), k
    # sharded evaluation, gathered: every rank sees the whole gallery and the same metrics
    assert reports[0]["num_gallery"] == reports[0]["len_gallery"] == reports[1]["num_gallery"]
    assert reports[0]["results"] == reports[1]["results"]
    assert set(reports[0]["results"]) == {"general", "clothes-changing"}
    # rank 0 alone writes checkpoints and logs
    assert os.path.isfile(os.path.join(out, "checkpoint_last.pth"))


@pytest.mark.parametrize("n,world", [(10, 3), (2, 4), (0, 2)])
def test_shards_tile_the_range_in_order(n, world):
    from fastccreid.engine.distributed import DistContext, shard_range

    spans = [shard_range(n, DistContext(r, world, r, torch.device("cpu"))) for r in range(world)]
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
