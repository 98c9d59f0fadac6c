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


def test_soft_margin_and_bad_values(capsys):
    assert build_parser().parse_args(["train", "--margin", "none"]).margin is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--margin", "wide"])
    assert "--margin must be a number or 'none'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--dataset", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["synth", "--layout", "ltcc", "--root", "x", "--size", "12by4"])
    assert "--size must look like HxW" in capsys.readouterr().err


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "fastccreid", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for command in ("train", "eval", "eval-features", "synth", "bench", "demo"):
        assert command in out.stdout


def test_parsed_defaults_are_the_train_config_defaults():
    """One definition of every train/eval default: the parser's come from TrainConfig, and converting the parsed
    arguments gives TrainConfig() back."""
    from fastccreid.engine.config import TrainConfig

    for command in ("train", "eval"):
        assert TrainConfig.from_namespace(build_parser().parse_args([command])) == TrainConfig()
    cfg = TrainConfig.from_namespace(build_parser().parse_args(["train", "--margin", "none", "--step_milestones",
                                                                "40", "70", "--no-channels_last", "-j", "2"]))
    assert (cfg.margin, cfg.step_milestones, cfg.channels_last, cfg.num_workers) == (None, [40, 70], False, 2)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig.from_dict({**cfg.to_dict(), "a_future_field": 1}) == cfg


@pytest.mark.parametrize("field,value,message", [
    ("dataset", "nope", "--dataset must be one of ltcc, prcc"),
    ("amp", "int8", "--amp must be one of auto, bf16, fp16, off"),
    ("loader", "pil", "--loader must be one of auto, dali, torch"),
    ("warm_up_method", "cosine", "--warm_up_method must be one of constant, linear"),
    ("height", 64, "--height/--width must be at least 128x32"),
    ("print_train_info_epoch_freq", 0, "--print_train_info_epoch_freq must be a positive number"),
    ("max_steps_per_epoch", -1, "--max_steps_per_epoch must be >= 0"),
])
def test_train_config_rejects_bad_values_naming_the_flag(field, value, message):
    from fastccreid.engine.config import TrainConfig

    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value}).validate()
