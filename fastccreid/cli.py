"""The ``fastccreid`` command line: train, eval, eval-features, synth, data check, bench, demo.

Each subcommand's flags are declared here; the work lives in the module named in its ``run`` call, imported
only when that subcommand runs, so ``fastccreid --help`` stays fast and light.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fastccreid.bench import SUITES
from fastccreid.data.datasets import DATASET_CHOICES, MANIFEST_SPLITS
from fastccreid.engine.config import (
    AMP_CHOICES,
    BACKEND_CHOICES,
    BN_CHOICES,
    DIST_BACKEND_CHOICES,
    LOADER_CHOICES,
    LOADER_OUTPUT_CHOICES,
    WARM_UP_METHODS,
    TrainConfig,
)
from fastccreid.export import EXPORTERS
from fastccreid.export import FORMATS as EXPORT_FORMATS
from fastccreid.protocols import PROTOCOLS

BENCH_SUITES = (*SUITES, "all")
_D = TrainConfig()  # every train/eval flag's default comes from the config record


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must look like HxW (e.g. 128x64), got {text!r}") from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"--size must be positive, got {text!r}")
    return h, w


def add_seed_arguments(p: argparse.ArgumentParser) -> None:
    """The seed's utils/arguments.py flags, unchanged (names, defaults, meanings)."""
    g = p.add_argument_group("data (seed flags)")
    g.add_argument("-d", "--dataset", type=str, default=_D.dataset, choices=DATASET_CHOICES,
                   help="a public layout, or manifest (--dataset_root names the CSV / JSON Lines file)")
    g.add_argument("--dataset_root", type=str, default=_D.dataset_root, help="root path to data directory")
    g.add_argument("--dataset_filename", type=str, default=_D.dataset_filename,
                   help="dataset folder under --dataset_root")
    g.add_argument("--height", type=int, default=_D.height, help="height of an image")
    g.add_argument("--width", type=int, default=_D.width, help="width of an image")
    g.add_argument("--horizontal_flip_pro", type=float, default=_D.horizontal_flip_pro,
                   help="probability of a horizontal flip")
    g.add_argument("--pad_size", type=int, default=_D.pad_size, help="zero padding before the random crop")
    g.add_argument("--random_erasing_pro", type=float, default=_D.random_erasing_pro,
                   help="probability of random erasing")
    g.add_argument("--split_id", type=int, default=_D.split_id, help="split index (kept for seed compatibility)")
    g.add_argument("--train_batch", default=_D.train_batch, type=int, help="train batch size (P x K)")
    g.add_argument("--test_batch", default=_D.test_batch, type=int, help="test batch size")
    g.add_argument("-j", "--num_workers", default=_D.num_workers, type=int, help="number of data loading workers")
    g.add_argument("--num_instances", type=int, default=_D.num_instances, help="number of instances per identity (K)")

    g = p.add_argument_group("optimisation (seed flags)")
    g.add_argument("--start_epoch", default=_D.start_epoch, type=int, help="manual epoch number (useful on restarts)")
    g.add_argument("--max_epoch", default=_D.max_epoch, type=int, help="maximum epochs to run")
    g.add_argument("--margin", type=_margin, default=_D.margin, help="triplet margin; 'none' for the soft margin")
    g.add_argument("--lr", default=_D.lr, type=float, help="initial learning rate")
    g.add_argument("--warm_up_factor", default=_D.warm_up_factor, type=float, help="warm-up start factor")
    g.add_argument("--warm_up_method", default=_D.warm_up_method, type=str, choices=WARM_UP_METHODS)
    g.add_argument("--warm_up_epochs", default=_D.warm_up_epochs, type=int, help="epochs of warm-up")
    g.add_argument("--step_milestones", default=_D.step_milestones, nargs="*", type=int, help="epochs where lr decays")
    g.add_argument("--gamma", default=_D.gamma, type=float, help="learning rate decay")
    g.add_argument("--weight_decay", default=_D.weight_decay, type=float, help="weight decay")
    g.add_argument("--weight_decay_bias", default=_D.weight_decay_bias, type=float,
                   help="kept for seed compatibility (unused)")
    g.add_argument("--resume", type=str, default=_D.resume, metavar="PATH", help="checkpoint to resume or evaluate")
    g.add_argument("--use_cpu", action="store_true", help="use cpu")
    g.add_argument("--gpu_devices", default=_D.gpu_devices, type=str, help="gpu device ids for CUDA_VISIBLE_DEVICES")
    g.add_argument("--seed", type=int, default=_D.seed, help="manual seed")
    g.add_argument("--evaluate", action="store_true", help="evaluation only")
    g.add_argument("--print_train_info_epoch_freq", type=int, default=_D.print_train_info_epoch_freq,
                   help="print train info every N epochs")
    g.add_argument("--start_eval_epoch", type=int, default=_D.start_eval_epoch, help="evaluate only after this epoch")
    g.add_argument("--eval_epoch", type=int, default=_D.eval_epoch,
                   help="evaluate every N epochs (-1: only at the end)")
    g.add_argument("--reranking", action="store_true", help="k-reciprocal re-ranking at evaluation")
    g.add_argument("--save_dir", type=str, default=_D.save_dir)
    g.add_argument("--save_checkpoint", action="store_true", help="save model checkpoints")
    g.add_argument("--tri_start_epoch", type=int, default=_D.tri_start_epoch,
                   help="epoch after which the triplet loss is used")


def _seeds(text: str) -> list[int]:
    from fastccreid.engine.seeds import parse_seeds

    try:
        return parse_seeds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _margin(text: str) -> float | None:
    if text.lower() in ("none", "soft"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--margin must be a number or 'none', got {text!r}") from None


def add_fast_arguments(p: argparse.ArgumentParser) -> None:
    """fastccreid's own training/evaluation flags (on top of the seed's)."""
    g = p.add_argument_group("fastccreid")
    g.add_argument("--pretrained", default=_D.pretrained, metavar="{imagenet,none,PATH}",
                   help="backbone weights: torchvision ImageNet (cache/download), none, or a local file")
    g.add_argument("--amp", default=_D.amp, choices=AMP_CHOICES,
                   help="mixed precision: auto = bf16 where supported (this CPU included), fp16+GradScaler else")
    g.add_argument("--compile", dest="compile", action=argparse.BooleanOptionalAction, default=_D.compile,
                   help="torch.compile the model (default: on for CUDA, off on CPU unless it measurably wins)")
    g.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=_D.channels_last,
                   help="channels_last memory format for the model and inputs")
    g.add_argument("--loader", default=_D.loader, choices=LOADER_CHOICES,
                   help="input pipeline: DALI when it imports (auto), or the torchvision DataLoader")
    g.add_argument("--loader_output", default=_D.loader_output, choices=LOADER_OUTPUT_CHOICES,
                   help="what the loader hands the model: normalised float batches (the loader does the float work) or "
                        "uint8 batches normalised on the model's device; auto = float on CPU, uint8 on GPU")
    g.add_argument("--dali_py_workers", type=int, default=_D.dali_py_workers,
                   help="DALI training loader: read files and draw augmentation in this many spawned processes "
                        "(DALI's parallel external_source; helps when file reads are slow); 0 = in the main thread")
    g.add_argument("--skip_bad_images", action="store_true",
                   help="warn about and skip unreadable images instead of stopping")
    g.add_argument("--backend", default=_D.backend, choices=BACKEND_CHOICES,
                   help="kernel backend (also FASTCCREID_BACKEND)")
    g.add_argument("--sync_bn", action="store_true",
                   help="kept for old scripts: the same as --bn global, the default with more than one process")
    g.add_argument("--bn", default=_D.bn, choices=BN_CHOICES,
                   help="BatchNorm statistics with more than one process: global = over every rank's images (what one "
                        "process computes; SyncBatchNorm on NCCL), per_rank = each rank's own B/N images (DDP's plain "
                        "behaviour elsewhere)")
    g.add_argument("--max_restarts", type=int, default=_D.max_restarts,
                   help="restart the process group up to this many times when a worker dies; a restart resumes from "
                        "the newest checkpoint_last.pth in --save_dir")
    g.add_argument("--checkpoint_every_steps", type=int, default=_D.checkpoint_every_steps, metavar="S",
                   help="rank 0 also writes checkpoint_last.pth (atomically) every S training steps, mid-epoch, so a "
                        "restart loses little work (0: only at epoch ends / interrupts)")
    g.add_argument("--nnodes", type=int, default=_D.nnodes,
                   help="machines in the run (torchrun's meaning); each runs the same command with its --node_rank")
    g.add_argument("--node_rank", type=int, default=_D.node_rank, help="this machine's index in [0, --nnodes)")
    g.add_argument("--rdzv_endpoint", default=_D.rdzv_endpoint, metavar="HOST:PORT",
                   help="node 0's address where the agents meet (torchrun's static rendezvous); for --nnodes > 1")
    g.add_argument("--save_features", default=_D.save_features, metavar="FILE",
                   help="with --evaluate/eval: write query and gallery features (eval-features .npz format)")
    g.add_argument("--max_steps_per_epoch", type=int, default=_D.max_steps_per_epoch,
                   help="cap the batches per epoch (0: the whole epoch); for quick runs and tests")
    g.add_argument("--no_progress", action="store_true",
                   help="no tqdm progress bars (bars are drawn only when stderr is a terminal; otherwise one flushed "
                        "line an epoch)")
    g.add_argument("--log_every", type=int, default=_D.log_every, metavar="N",
                   help="without bars (stderr not a terminal, or --no_progress): also a line every N training steps "
                        "(0: one line an epoch)")
    g.add_argument("--nproc", type=int, default=_D.nproc,
                   help="processes to start (DDP; gloo with --use_cpu): default one per --gpu_devices entry on CUDA, "
                        "one on CPU; ignored under torchrun")
    g.add_argument("--eval_amp", action="store_true",
                   help="compute evaluation features under --amp too (default: fp32, the official numbers)")
    g.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=_D.deterministic,
                   help="cuDNN deterministic=True, benchmark=False as the seed (default: on for eval, off for train); "
                        "given explicitly on CUDA also torch.use_deterministic_algorithms (warn_only)")
    g.add_argument("--dist_backend", default=_D.dist_backend, choices=DIST_BACKEND_CHOICES,
                   help="process-group backend: auto = NCCL on CUDA, gloo on CPU; gloo on CUDA lets several ranks "
                        "share one GPU (e.g. --gpu_devices 0 --nproc 2 --dist_backend gloo)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastccreid",
        description="Fast, faithful CSSC cloth-changing person re-identification.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="train CSSC (the seed's main.py flags, unchanged)",
                       description="Train CSSC; every flag of the seed's main.py works unchanged.")
    add_seed_arguments(p)
    add_fast_arguments(p)
    p.add_argument("--seeds", type=_seeds, default=None, metavar="N[,N...]",
                   help="one training per seed in SAVE_DIR/seed-N (one after another; with several --gpu_devices on "
                        "CUDA one per GPU in parallel), then the mean ± std of R-1 / mAP / mINP (last and best epoch) "
                        "and each run, written to SAVE_DIR/seeds.json")

    p = sub.add_parser("eval", help="evaluate a saved or official checkpoint (the seed's --evaluate)",
                       description="Evaluate a checkpoint: same as `train --evaluate --resume CKPT`.")
    add_seed_arguments(p)
    add_fast_arguments(p)

    p = sub.add_parser("eval-features", help="CMC / mAP / mINP from saved query and gallery features",
                       description="Evaluate saved features. Files: .npz with keys feats, pids, camids[, clothes]; "
                                   ".pt holding a dict with the same keys; or .npy features with a sibling "
                                   "<name>.labels.npz holding pids, camids[, clothes].")
    p.add_argument("query", help="query features file")
    p.add_argument("gallery", help="gallery features file")
    p.add_argument("--protocol", default="market", choices=PROTOCOLS)
    p.add_argument("--max-rank", dest="max_rank", type=int, default=50)
    p.add_argument("--compare-protocols", dest="compare_protocols", action="store_true",
                   help="one table of R-1 / mAP / mINP under every protocol and codebase convention the labels "
                        "allow (seed/FIRe, CAL CC/SC, torchreid, fast-reid, strong-baseline, open-reid, layumi)")
    p.add_argument("--json", dest="json_out", default="", metavar="OUT", help="also write the result as JSON")
    p.add_argument("--no-normalize", dest="normalize", action="store_false",
                   help="use raw features (default: L2-normalise, as the seed)")
    p.add_argument("--reranking", action="store_true", help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3)")
    p.add_argument("--roc", action="store_true",
                   help="also TPR at FPR 1e-4 / 1e-3 / 1e-2 over every non-junk query-gallery pair (exact), in the "
                        "table and the JSON (one process)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="feature precision for the distance screening (results stay exact with fp32)")
    p.add_argument("--nproc", type=int, default=1,
                   help="evaluate with the gallery sharded over N gloo processes on this machine (each reads only "
                        "its rows of a .npy gallery); the result equals one process's. Under torchrun: its ranks")

    p = sub.add_parser("synth", help="write a synthetic dataset in a real dataset's on-disk layout",
                       description="Procedural people: identity cues persist across outfits, clothes change, "
                                   "cameras change background and lighting. Deterministic for a seed.")
    p.add_argument("--layout", required=True, choices=DATASET_CHOICES,
                   help="manifest: images/<split>/<pid>/*.jpg with manifest.csv and manifest.jsonl")
    p.add_argument("--root", required=True, help="folder to write the dataset into")
    p.add_argument("--ids", type=int, default=40, help="number of identities")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clothes", type=int, default=3, help="outfits per identity")
    p.add_argument("--cams", type=int, default=4, help="number of cameras")
    p.add_argument("--images-per", dest="images_per", type=int, default=2,
                   help="images per (identity, outfit, camera) drawn")
    p.add_argument("--size", type=_size, default=(128, 64), metavar="HxW", help="image size")

    p = sub.add_parser("data", help="dataset tools: check a dataset or manifest for labelling mistakes")
    data_sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    p = data_sub.add_parser("check", help="statistics and labelling mistakes of a dataset or manifest",
                            description="The statistics table, then errors (exit 1: missing / unreadable files, no "
                                        "countable true match, query and gallery on one camera, clothes ids missing "
                                        "for a clothes-changing protocol, bad manifest rows) and warnings (exit 0; "
                                        "--strict: 1): ids shared by train and test, duplicate files, query ids "
                                        "absent from the gallery, images smaller than the input, train ids with "
                                        "fewer than --num_instances images.")
    p.add_argument("-d", "--dataset", default=_D.dataset, choices=DATASET_CHOICES)
    p.add_argument("--dataset_root", default=_D.dataset_root, help="dataset folder's parent, or the manifest file")
    p.add_argument("--dataset_filename", default=_D.dataset_filename, help="dataset folder under --dataset_root")
    p.add_argument("--json", dest="json_out", default="", metavar="FILE", help="also write the report as JSON")
    p.add_argument("--decode", action="store_true",
                   help="decode every image with the training decoder (default: existence, size and header only)")
    p.add_argument("--strict", action="store_true", help="warnings are errors too (exit 1)")
    p.add_argument("--protocol", default=None, choices=PROTOCOLS,
                   help="check this protocol on every query set (default: the settings training evaluates)")
    p.add_argument("--num_instances", type=int, default=_D.num_instances,
                   help="warn about train ids with fewer images than this (K)")
    p.add_argument("--height", type=int, default=_D.height, help="model input height (smaller images: a warning)")
    p.add_argument("--width", type=int, default=_D.width, help="model input width")
    p.add_argument("-j", "--num_workers", type=int, default=_D.num_workers, help="decode processes with --decode")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")

    p = sub.add_parser("bench", help="fast vs reference benchmarks (kernels, eval, pipeline, train)")
    p.add_argument("suite", choices=BENCH_SUITES)
    p.add_argument("--quick", action="store_true", help="small sizes; `all` finishes within 10 minutes on 2 cores")
    p.add_argument("--json", dest="json_out", default="", metavar="FILE", help="write rows as JSON")
    p.add_argument("--out", default="", metavar="DIR", help="also write a markdown table and PNG plots")
    p.add_argument("--md", dest="md_out", default="", metavar="FILE",
                   help="write the rows' table and the summary table (one markdown file)")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                   help="run each suite in its own process, so a failure or a timeout loses only that suite "
                        "(default: on for `all`)")
    p.add_argument("--skip_suites", default="", metavar="NAME[,NAME...]",
                   help="suites of `all` not to run (recorded as skipped in the JSON and the summary)")
    p.add_argument("--suite_timeout", default="", metavar="S|NAME=S,...",
                   help="with --isolate: seconds each suite may run (one number, or e.g. kernels=60,default=120)")

    p = sub.add_parser("doctor", help="check what this machine runs: versions, backends, fast paths vs their twins")
    p.add_argument("--json", dest="json_out", default="", metavar="FILE", help="also write the report as JSON")

    p = sub.add_parser("demo", help="synthetic LTCC -> train CSSC -> evaluate, in minutes on a CPU")
    p.add_argument("--out", default="demo_out", help="output folder (data, checkpoints, plots)")
    p.add_argument("--ids", type=int, default=24, help="synthetic identities")
    p.add_argument("--epochs", type=int, default=0, help="training epochs (0: as many as fit --minutes)")
    p.add_argument("--minutes", type=float, default=None,
                   help="training time budget (default 3.5): the first steps are timed and the epochs sized to fit "
                        "(4 to 16 epochs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--use_cpu", action="store_true", help="stay on the CPU even when a GPU is present")

    p = sub.add_parser("extract", help="features of a folder (or list) of images -> an eval-features .npz",
                       description="The seed's test features (flip TTA, L2-normalised) of every image in a folder "
                                   "(sub-folders included) or a text list of paths, written as the .npz that "
                                   "eval-features reads, plus the image paths ('paths'). With --layout, pids / "
                                   "camids / clothes ids come from the file names as that dataset's parser reads "
                                   "them (--layout manifest: --images is a manifest, its rows give paths and "
                                   "labels, --split picks the split); without it they are -1 (features only).")
    p.add_argument("--resume", required=True, metavar="CKPT", help="fastccreid or official CSSC checkpoint")
    p.add_argument("--images", required=True, metavar="DIR_OR_LISTFILE", help="image folder, list file, or manifest")
    p.add_argument("--out", required=True, metavar="FEATS.npz", help="features file to write (atomically)")
    p.add_argument("--layout", default=None, choices=DATASET_CHOICES,
                   help="read labels from the file names; manifest: --images is a manifest (CSV / JSON Lines) and "
                        "paths and labels (as written) come from its rows")
    p.add_argument("--split", default=None, choices=(*MANIFEST_SPLITS, "all"),
                   help="with --layout manifest: the split to extract into --out (default all: one "
                        "<out>_<split>.npz per split with rows, as eval --save_features names them)")
    p.add_argument("--batch_size", type=int, default=_D.test_batch, help="images per forward pass")
    p.add_argument("--height", type=int, default=None, help="input height (default: the checkpoint's, else 384)")
    p.add_argument("--width", type=int, default=None, help="input width (default: the checkpoint's, else 192)")
    p.add_argument("--amp", default="off", choices=AMP_CHOICES, help="feature precision (default fp32, as eval)")
    p.add_argument("--loader", default=_D.loader, choices=LOADER_CHOICES, help="input pipeline, as eval's")
    p.add_argument("-j", "--num_workers", type=int, default=_D.num_workers, help="data loading workers")
    p.add_argument("--use_cpu", action="store_true", help="stay on the CPU even when a GPU is present")
    p.add_argument("--skip_bad_images", action="store_true", help="warn about and skip unreadable images")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")

    p = sub.add_parser("report", help="runs side by side from their run.json: a Markdown table and PNG plots",
                       description="Read run records (a train / eval --save_dir with run.json, or a train --seeds "
                                   "SAVE_DIR with seeds.json: all its seed-N runs) and write report.md (last and best "
                                   "R-1 / mAP / mINP per setting, mean ± std over seeds, what ran, configuration "
                                   "differences) and losses.png, lr.png, map.png, cmc.png.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders (or --seeds SAVE_DIRs)")
    p.add_argument("--out", default="report", metavar="DIR", help="folder for report.md and the PNGs")

    p = sub.add_parser("export", help="export a checkpoint's evaluation model (ONNX)",
                       description="Export the evaluation feature (input 'images' float [B, 3, H, W], "
                                   "ImageNet-normalised; output 'features' [B, 2048] = normalize(f(x) + f(flip x)), "
                                   "the flip inside the graph: what eval and FeatureExtractor compute). --raw: the "
                                   "model's output before flip TTA and L2 normalisation (the older graph). --verify "
                                   "--dataset ...: evaluate the file with ONNX Runtime and torch and exit 1 when an "
                                   "mAP differs by more than --tolerance points.")
    p.add_argument("--resume", required=True, metavar="CKPT", help="fastccreid or official CSSC checkpoint")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="output format")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write (atomically)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--dynamic-batch", dest="dynamic_batch", action="store_true",
                   help="a variable batch dimension (default: fixed at --batch)")
    p.add_argument("--batch", type=int, default=1, help="the fixed batch size without --dynamic-batch")
    p.add_argument("--height", type=int, default=None, help="input height (default: the checkpoint's, else 384)")
    p.add_argument("--width", type=int, default=None, help="input width (default: the checkpoint's, else 192)")
    p.add_argument("--exporter", default="dynamo", choices=EXPORTERS,
                   help="torch.onnx exporter: dynamo (torch.export; needs onnxscript) or the older torchscript")
    p.add_argument("--raw", action="store_true",
                   help="the older graph: the model's output before flip TTA and L2 normalisation")
    g = p.add_argument_group("verification (ONNX Runtime vs torch on a dataset)")
    g.add_argument("--verify", action="store_true",
                   help="after exporting, extract the query and gallery features through ONNX Runtime and torch, "
                        "evaluate both, print mAP / R-1 and the largest feature difference; exit 1 past --tolerance")
    g.add_argument("--verify-only", dest="verify_only", action="store_true",
                   help="verify the existing --out file against --resume without exporting")
    g.add_argument("--tolerance", type=float, default=0.1, metavar="POINTS",
                   help="largest |mAP difference| (percentage points) that passes (default 0.1)")
    g.add_argument("-d", "--dataset", default=None, choices=DATASET_CHOICES,
                   help="the dataset to verify on (a public layout, or manifest)")
    g.add_argument("--dataset_root", default=_D.dataset_root, help="as train's (manifest: the manifest file)")
    g.add_argument("--dataset_filename", default=_D.dataset_filename, help="as train's")
    g.add_argument("--test_batch", type=int, default=64, help="images per batch while verifying")
    g.add_argument("--loader", default="torch", choices=LOADER_CHOICES, help="input pipeline while verifying")
    g.add_argument("-j", "--num_workers", type=int, default=0, help="data loading workers while verifying")
    g.add_argument("--use_cpu", action="store_true", help="torch and ONNX Runtime on the CPU even with a GPU")
    g.add_argument("--verify_json", default="", metavar="FILE", help="also write the verification as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cmd = args.command
    if cmd in ("train", "eval"):
        from fastccreid.engine.distributed import apply_visible_devices

        apply_visible_devices(args.gpu_devices)  # CUDA reads it once, at its first device query: before anything
        from fastccreid.engine.trainer import run_train

        cfg = TrainConfig.from_namespace(args)
        if cmd == "eval":
            cfg.evaluate = True
        if getattr(args, "seeds", None):
            from fastccreid.engine.seeds import run_seeds

            try:
                return run_seeds(cfg, args.seeds, prog=f"fastccreid {cmd}")
            except ValueError as exc:
                print(f"fastccreid {cmd}: error: {exc}", file=sys.stderr)
                return 2
        return run_train(cfg, prog=f"fastccreid {cmd}")
    if cmd == "eval-features":
        from fastccreid.features_io import run_eval_features

        return run_eval_features(args)
    if cmd == "synth":
        from fastccreid.data.synth import run_synth

        return run_synth(args)
    if cmd == "data":
        from fastccreid.data.check import run_cli as run_data_check

        return run_data_check(args)
    if cmd == "bench":
        from fastccreid.bench import run_bench

        return run_bench(args)
    if cmd == "doctor":
        from fastccreid.doctor import run_cli

        return run_cli(args)
    if cmd == "demo":
        from fastccreid.demo import run_demo

        return run_demo(args)
    if cmd == "extract":
        from fastccreid.inference import run_extract

        return run_extract(args)
    if cmd == "report":
        from fastccreid.report import run_report

        return run_report(args)
    if cmd == "export":
        from fastccreid.export import run_export

        return run_export(args)
    raise ValueError(f"unknown command {cmd!r}")  # argparse already restricts the choices


if __name__ == "__main__":
    sys.exit(main())
