"""Issue 29: the run record (``run.json``), ``train --seeds``, ``fastccreid report`` and logs under a redirected stderr.

One real command serves most tests: ``fastccreid train ... --seeds 1,2 --log_every 2`` on a tiny synthetic LTCC
(128x32, fp32, one epoch of two steps of batch 8, random init) started as under nohup (stdin from /dev/null, stdout
and stderr to files, no --no_progress). Its two seed folders then feed the schema, table, report and log tests.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest
from helpers.train_cases import make_tiny_ltcc, tiny_argv

from fastccreid.cli import main
from fastccreid.engine import runrecord
from fastccreid.engine.checkpoint import LAST_NAME, load_checkpoint

METRIC_NAMES = {"R-1": "rank1", "mAP": "mAP", "mINP": "mINP"}


@pytest.fixture(scope="module")
def seeds_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seeds")
    root = make_tiny_ltcc(str(tmp / "ltcc"))
    save = str(tmp / "runs")
    argv = [a for a in tiny_argv(root, save, "--max_epoch", "1", "--save_checkpoint", "--seeds", "1,2",
                                 "--log_every", "2") if a != "--no_progress"]
    argv[argv.index("--amp") + 1] = "off"  # fp32: bf16 is emulated (slow) on CPUs without it
    out_path, err_path = tmp / "stdout.txt", tmp / "stderr.txt"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.run([sys.executable, "-m", "fastccreid", *argv], stdout=out, stderr=err,
                              stdin=subprocess.DEVNULL, timeout=900)
    stdout, stderr = out_path.read_bytes(), err_path.read_bytes()
    assert proc.returncode == 0, (stdout[-2000:], stderr[-3000:])
    return {"root": root, "save": save, "stdout": stdout, "stderr": stderr}


def _record(seeds_run, seed: int) -> dict:
    with open(os.path.join(seeds_run["save"], f"seed-{seed}", "run.json")) as f:
        return json.load(f)


# ------------------------------------------------------------------------------------------------ run.json
def test_run_json_schema(seeds_run):
    from fastccreid.data import build_dataset

    rec = _record(seeds_run, 1)
    assert rec["schema"] == runrecord.SCHEMA and rec["kind"] == "train"
    assert rec["status"] == "finished" and rec["exit_code"] == 0 and rec["seed"] == 1
    cfg = rec["config"]
    assert cfg["seed"] == 1 and cfg["save_dir"] == os.path.join(seeds_run["save"], "seed-1")
    assert cfg["max_epoch"] == 1 and cfg["amp"] == "off" and cfg["log_every"] == 2
    env = rec["environment"]
    for key in ("fastccreid", "python", "torch", "cuda", "cudnn", "torchvision", "triton", "dali", "git"):
        assert key in env
    import torch

    assert env["torch"] == torch.__version__ and env["devices"]["cpu"] == runrecord.cpu_model()
    assert env["devices"]["processes"] == 1 and env["devices"]["type"] == "cpu"
    if env["git"] is not None:  # run from a checkout
        assert re.fullmatch(r"[0-9a-f]{40}", env["git"]["commit"])
    ds = rec["dataset"]
    fresh = runrecord.dataset_fingerprint(build_dataset("ltcc", seeds_run["root"]), "ltcc", seeds_run["root"])
    assert ds["sha256"] == fresh["sha256"] and ds["splits"] == fresh["splits"]
    assert ds["splits"]["train"]["images"] > 0 and ds["splits"]["gallery"]["images"] > 0
    (epoch,) = rec["epochs"]
    assert epoch["epoch"] == 1 and epoch["steps"] == 2 and epoch["images_per_s"] > 0
    for key in ("id_loss", "tri_loss", "lr", "train_seconds", "eval_seconds"):
        assert key in epoch
    assert set(epoch["eval"]) == {"general", "clothes-changing"}
    res = rec["results"]
    assert res["best"]["label"].startswith("best (seed's rule)") and res["last"]["label"].startswith("last:")
    assert res["best"]["epoch"] == res["last"]["epoch"] == 1 and res["selection_setting"] == "general"
    # the numbers are those of metrics.json (the same evaluation)
    with open(os.path.join(seeds_run["save"], "seed-1", "metrics.json")) as f:
        row = json.load(f)["epochs"][0]
    for setting in ("general", "clothes-changing"):
        assert res["last"]["settings"][setting]["mAP"] == pytest.approx(row[f"{setting}/mAP"], abs=1e-12)
        assert res["last"]["settings"][setting]["rank1"] == pytest.approx(row[f"{setting}/rank1"], abs=1e-12)
        assert len(res["last"]["settings"][setting]["cmc"]) > 1
    # the checkpoint carries the same record (written before the final status)
    ck = load_checkpoint(os.path.join(seeds_run["save"], "seed-1", LAST_NAME))
    carried = ck["fastccreid"]["run"]
    assert carried["schema"] == runrecord.SCHEMA and carried["config"] == rec["config"]
    assert carried["epochs"] == rec["epochs"] and carried["results"] == rec["results"]
    assert carried["dataset"] == rec["dataset"]


def test_dataset_fingerprint_follows_files_and_labels_not_the_location(tmp_path):
    from fastccreid.data.records import ImageRecord, ReIDDataset

    def ds(root, pid=1):
        recs = [ImageRecord(os.path.join(root, "train", "a.png"), pid, 0, 0),
                ImageRecord(os.path.join(root, "test", "b.png"), 2, 1, 0)]
        return ReIDDataset("x", root, recs[:1], [], recs[1:], 1, 1)

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    os.makedirs(a)
    os.makedirs(b)
    h = runrecord.dataset_fingerprint(ds(a), "x", a)["sha256"]
    assert runrecord.dataset_fingerprint(ds(b), "x", b)["sha256"] == h  # moved: the same data
    assert runrecord.dataset_fingerprint(ds(a, pid=3), "x", a)["sha256"] != h  # one label changed


def test_a_kill_mid_write_leaves_the_previous_record_readable(tmp_path):
    """The child writes a record, adds an epoch and is SIGKILLed halfway through writing the new one."""
    path = str(tmp_path / "run.json")
    child = textwrap.dedent(f"""
        import json, os, signal
        from fastccreid.engine import runrecord
        rec = runrecord.RunRecord({path!r}, kind="train", config={{"seed": 1}}, seed=1, env={{}})
        rec.write()
        rec.add_epoch({{"epoch": 1, "id_loss": 1.0, "tri_loss": 0.5, "lr": 1e-3, "pad": "x" * 200000}})
        def dump(obj, f, **kw):  # half of the new record reaches the disk, then the process dies
            text = json.dumps(obj, **kw)
            f.write(text[: len(text) // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        runrecord.json.dump = dump
        rec.write()
    """)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    rec = runrecord.read_run(path)  # readable, and the previous version
    assert rec["schema"] == runrecord.SCHEMA and rec["epochs"] == [] and rec["status"] == "running"


def test_a_resumed_record_keeps_the_done_epochs(tmp_path):
    prev = runrecord.RunRecord(str(tmp_path / "a.json"), kind="train", config={}, seed=1, env={}, enabled=False)
    for e in (1, 2, 3):
        prev.add_epoch({"epoch": e, "id_loss": 1.0 / e})
    rec = runrecord.RunRecord(str(tmp_path / "b.json"), kind="train", config={}, seed=1, env={},
                              previous=prev.to_dict(), resume_epoch=2, resume_from="ck.pth")
    assert [e["epoch"] for e in rec.data["epochs"]] == [1, 2]
    assert rec.data["resumes"][0]["from"] == "ck.pth" and rec.data["resumes"][0]["epoch"] == 2


def test_best_is_the_seeds_rule_and_last_is_labelled(tmp_path):
    class R:
        def __init__(self, m, r1):
            self.mAP, self.mINP, self.num_valid_queries, self.cmc = m, m / 2, 4, [r1, 1.0]

        def rank(self, k):
            return float(self.cmc[min(k, len(self.cmc)) - 1])

    rec = runrecord.RunRecord(str(tmp_path / "r.json"), kind="train", config={}, seed=1, env={}, enabled=False)
    for epoch, (g, cc) in enumerate([(0.3, 0.9), (0.5, 0.1), (0.5, 0.2), (0.4, 0.3)], start=1):
        rec.add_epoch({"epoch": epoch}, {"general": R(g, g), "clothes-changing": R(cc, cc)})
    res = rec.to_dict()["results"]
    assert res["best"]["epoch"] == 2  # the first setting's highest mAP, earliest on ties (not clothes-changing's)
    assert res["best"]["settings"]["clothes-changing"]["mAP"] == 0.1  # that epoch's numbers, every setting
    assert res["last"]["epoch"] == 4 and res["last"]["settings"]["general"]["mAP"] == 0.4
    assert res["best_per_setting"]["clothes-changing"]["mAP_epoch"] == 1


# ------------------------------------------------------------------------------------------------ --seeds
def _table_rows(stdout: str) -> list[tuple[str, str, str, float, float | None, list[float]]]:
    rows = []
    for line in stdout.splitlines():
        m = re.match(r"^(general|clothes-changing)\s+(last|best)\s+(R-1|mAP|mINP)\s+([\d.]+) ± (\S+)((?:\s+[\d.]+)+)$",
                     line)
        if m:
            std = None if m.group(5) == "-" else float(m.group(5))
            rows.append((m.group(1), m.group(2), m.group(3), float(m.group(4)), std,
                         [float(v) for v in m.group(6).split()]))
    return rows


def test_seeds_table_is_the_mean_of_the_printed_runs(seeds_run):
    stdout = seeds_run["stdout"].decode()
    assert re.search(r"seed 1\s+seed 2\s*$", stdout, re.M)  # two run columns
    rows = _table_rows(stdout)
    assert len(rows) == 2 * 2 * 3  # settings x (last, best) x (R-1, mAP, mINP)
    records = {1: _record(seeds_run, 1), 2: _record(seeds_run, 2)}
    differ = 0
    for setting, which, metric, mean, std, values in rows:
        assert len(values) == 2
        assert mean == pytest.approx(sum(values) / 2, abs=0.0101)  # of the printed (rounded) values
        assert std == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5, abs=0.0101)  # sample std (n - 1)
        for seed, v in zip((1, 2), values, strict=True):
            want = 100 * records[seed]["results"][which]["settings"][setting][METRIC_NAMES[metric]]
            assert v == pytest.approx(want, abs=0.0051)  # each column is that seed's run.json
        differ += values[0] != values[1]
    assert differ > 0  # the two seeds trained differently (else the mean/std checks prove little)
    with open(os.path.join(seeds_run["save"], "seeds.json")) as f:
        seeds = json.load(f)
    assert seeds["seeds"] == [1, 2] and [r["dir"] for r in seeds["runs"]] == ["seed-1", "seed-2"]
    assert all(r["exit_code"] == 0 and r["status"] == "finished" for r in seeds["runs"])
    slot = seeds["summary"]["general"]["last"]["mAP"]
    vals = [records[s]["results"]["last"]["settings"]["general"]["mAP"] for s in (1, 2)]
    assert slot["values"] == {"1": vals[0], "2": vals[1]}
    assert slot["mean"] == pytest.approx(sum(vals) / 2, abs=1e-12)


def test_seeds_flag_errors_are_named(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["train", "--seeds", "1,x"])
    assert "--seeds must be comma-separated integers, e.g. --seeds 1,2,3; got '1,x'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--seeds", "1,1"])
    assert "--seeds must not repeat a seed" in capsys.readouterr().err
    root = make_tiny_ltcc(str(tmp_path / "ltcc"))
    assert main(tiny_argv(root, str(tmp_path / "r"), "--seeds", "1,2", "--resume", "x.pth")) == 2
    assert "--seeds trains from scratch once per seed" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ logs
def test_logs_to_a_file_have_no_carriage_returns(seeds_run):
    err, out = seeds_run["stderr"], seeds_run["stdout"]
    assert b"\r" not in err and b"\r" not in out
    text = err.decode()
    assert text.count("epoch 1/1 step 2/2: id ") == 2  # --log_every 2: step 2 of each seed's epoch...
    assert "step 1/2" not in text  # ...and not step 1
    assert text.count("epoch 1/1 done: id ") == 2  # one line an epoch, per seed
    assert "==> seed 2 (2 of 2)" in out.decode()


# ------------------------------------------------------------------------------------------------ report
def test_report_writes_png_plots_and_the_table(seeds_run, tmp_path, capsys):
    from PIL import Image

    runs = [os.path.join(seeds_run["save"], f"seed-{s}") for s in (1, 2)]
    out = str(tmp_path / "report")
    assert main(["report", *runs, "--out", out]) == 0
    for name in ("losses.png", "lr.png", "map.png", "cmc.png"):
        with Image.open(os.path.join(out, name)) as im:
            assert im.format == "PNG" and im.size[0] > 400 and im.size[1] > 200
    with open(os.path.join(out, "report.md")) as f:
        md = f.read()
    for seed in (1, 2):
        rec = _record(seeds_run, seed)
        m = rec["results"]["last"]["settings"]["general"]["mAP"]
        assert re.search(rf"^\| seed-{seed} \| {seed} \| finished \| 1 \| general \| {100 * m:.2f} \|", md, re.M)
    vals = [100 * _record(seeds_run, s)["results"]["last"]["settings"]["general"]["mAP"] for s in (1, 2)]
    assert re.search(rf"\| 2 \| general \| {sum(vals) / 2:.2f} ± ", md)  # the two seeds grouped: mean ± std
    assert "![losses](losses.png)" in md and "## What ran" in md
    # the --seeds SAVE_DIR stands for its seed folders: the same table
    out2 = str(tmp_path / "report2")
    assert main(["report", seeds_run["save"], "--out", out2]) == 0
    with open(os.path.join(out2, "report.md")) as f:
        assert f.read().split("## What ran")[0] == md.split("## What ran")[0]
    capsys.readouterr()
    assert main(["report", str(tmp_path), "--out", out2]) == 2
    assert f"RUN_DIR {tmp_path}: no run.json or seeds.json in it" in capsys.readouterr().err


def test_eval_run_records_the_same_numbers_beside_the_training_record(seeds_run, capsys):
    """``fastccreid eval`` of seed 1's checkpoint into its own folder: the training record is left alone, the eval
    record goes to run_eval.json and holds the numbers the training run recorded (same weights, fp32)."""
    folder = os.path.join(seeds_run["save"], "seed-1")
    with open(os.path.join(folder, "run.json"), "rb") as f:
        before = f.read()
    argv = tiny_argv(seeds_run["root"], folder, "--resume", os.path.join(folder, LAST_NAME), command="eval")
    argv[argv.index("--amp") + 1] = "off"
    assert main(argv) == 0
    capsys.readouterr()
    with open(os.path.join(folder, "run.json"), "rb") as f:
        assert f.read() == before
    ev = runrecord.read_run(os.path.join(folder, runrecord.EVAL_RUN_NAME))
    assert ev["kind"] == "eval" and ev["status"] == "finished" and ev["checkpoint"]["epoch"] == 1
    assert ev["checkpoint"]["trained_by"]["seed"] == 1
    trained = _record(seeds_run, 1)["results"]["last"]["settings"]
    for setting, m in ev["results"]["last"]["settings"].items():
        assert m["mAP"] == pytest.approx(trained[setting]["mAP"], abs=1e-6)
        assert m["rank1"] == pytest.approx(trained[setting]["rank1"], abs=1e-6)


def test_parallel_seeds_run_one_child_per_device(tmp_path, capsys):
    """The per-GPU path's plumbing (child entry point, config hand-over, one run per device, console.txt, exit
    codes into seeds.json), with runs that fail at once (no dataset) so no GPU and no training is needed."""
    from helpers.train_cases import tiny_config

    from fastccreid.engine.seeds import parallel_devices, run_seeds

    cfg = tiny_config(str(tmp_path / "missing"), str(tmp_path / "runs"))
    assert run_seeds(cfg, [1, 2], devices=["0", "1"]) == 2
    out = capsys.readouterr().out
    assert "seed 1 on GPU 0" in out and "seed 2 on GPU 1" in out and "no seed finished" in out
    for seed in (1, 2):
        with open(tmp_path / "runs" / f"seed-{seed}" / "console.txt") as f:
            assert "fastccreid train: error:" in f.read()
    with open(tmp_path / "runs" / "seeds.json") as f:
        runs = json.load(f)["runs"]
    assert [(r["seed"], r["exit_code"]) for r in runs] == [(1, 2), (2, 2)]
    # which runs go in parallel: several GPUs on CUDA, unless --nproc > 1 or --use_cpu
    gpu = cfg.replace(use_cpu=False, gpu_devices="0,1,2")
    assert parallel_devices(gpu, cuda_available=True) == ["0", "1", "2"]
    assert parallel_devices(gpu.replace(nproc=3), cuda_available=True) == []
    assert parallel_devices(gpu, cuda_available=False) == [] and parallel_devices(cfg, cuda_available=True) == []
