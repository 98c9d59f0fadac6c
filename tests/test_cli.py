"""The command line: every subcommand has --help, and the seed's commands parse unchanged."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest

from fastccreid.cli import build_parser

SEED_COMMANDS = [
    "--gpu_devices 0 --dataset ltcc --dataset_root DATASET_ROOT --dataset_filename LTCC-reID "
    "--save_dir SAVE_DIR --save_checkpoint",
    "--gpu_devices 0 --dataset prcc --dataset_root DATASET_ROOT --dataset_filename PRCC --save_dir SAVE_DIR "
    "--save_checkpoint",
    "--gpu_devices 0 --dataset celeb --dataset_root DATASET_ROOT --dataset_filename Celeb-reID --num_instances 4 "
    "--save_dir SAVE_DIR --save_checkpoint",
    "--gpu_devices 0 --dataset ltcc --dataset_root DATASET_ROOT --dataset_filename LTCC-reID --resume R.pth "
    "--save_dir SAVE_DIR --evaluate",
]


@pytest.mark.parametrize("command", ["train", "eval", "eval-features", "synth", "bench", "demo"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([command, "--help"])
    assert exc.value.code == 0
    assert "usage: fastccreid " + command in capsys.readouterr().out


@pytest.mark.parametrize("line", SEED_COMMANDS)
def test_seed_readme_commands_parse(line):
    args = build_parser().parse_args(["train", *shlex.split(line)])
    assert args.dataset in ("ltcc", "prcc", "celeb")
    assert args.dataset_root == "DATASET_ROOT"
    assert args.save_dir == "SAVE_DIR"


def test_seed_defaults():
    a = build_parser().parse_args(["train"])
    assert (a.height, a.width, a.train_batch, a.test_batch, a.num_instances) == (384, 192, 32, 128, 8)
    assert (a.lr, a.weight_decay, a.max_epoch, a.margin, a.tri_start_epoch) == (3e-4, 5e-4, 120, 0.3, 35)
    assert (a.step_milestones, a.gamma, a.warm_up_factor, a.warm_up_epochs, a.seed) == ([30, 60], 0.1, 0.1, 10, 666)
    assert (a.eval_epoch, a.start_eval_epoch, a.pretrained, a.amp) == (5, 0, "imagenet", "auto")


def test_soft_margin_and_bad_values():
    assert build_parser().parse_args(["train", "--margin", "none"]).margin is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--margin", "wide"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--dataset", "nope"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["synth", "--layout", "ltcc", "--root", "x", "--size", "12by4"])


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "fastccreid", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for command in ("train", "eval", "eval-features", "synth", "bench", "demo"):
        assert command in out.stdout
