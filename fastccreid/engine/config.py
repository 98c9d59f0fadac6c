"""``TrainConfig``: every flag of ``fastccreid train`` / ``eval`` as one typed record.

The field names are the seed's ``utils/arguments.py`` flags (same defaults and meanings) plus fastccreid's own. The
CLI declares its flags with these defaults and converts the parsed arguments with ``TrainConfig.from_namespace``;
the demo, the tests, the multi-process launcher and the feature extractor build one directly. Checkpoints store
``to_dict()``, so a run's whole configuration travels with its weights. Imports nothing heavy (no torch).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

MIN_HEIGHT = 128  # SMR cuts the stride-16 map into 8 stripes: the map needs >= 8 rows
MIN_WIDTH = 32  # >= 2 columns at stride 16: on CPU, bf16 3x3 stride-2 convs with a 1-wide output give NaN/garbage

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
LOADER_CHOICES = ("auto", "dali", "torch")
LOADER_OUTPUT_CHOICES = ("auto", "float", "uint8")
BACKEND_CHOICES = ("auto", "triton", "torch")
DIST_BACKEND_CHOICES = ("auto", "nccl", "gloo")  # auto: NCCL on CUDA, gloo on CPU
WARM_UP_METHODS = ("constant", "linear")
BN_CHOICES = ("global", "per_rank")  # global: BN statistics over every rank's images (one process's BN)


@dataclass
class TrainConfig:
    """One training or evaluation run. ``margin=None`` is the soft-margin triplet; ``compile=None`` means "on for
    CUDA, off on CPU"; ``nproc=0`` one process per ``gpu_devices`` entry on CUDA, one on CPU; ``deterministic=None``
    on for evaluation only."""

    # data (seed flags)
    dataset: str = "ltcc"
    dataset_root: str = "data"
    dataset_filename: str = "LTCC-reID"
    height: int = 384
    width: int = 192
    horizontal_flip_pro: float = 0.5
    pad_size: int = 10
    random_erasing_pro: float = 0.5
    split_id: int = 0
    train_batch: int = 32
    test_batch: int = 128
    num_workers: int = 8
    num_instances: int = 8
    # optimisation (seed flags)
    start_epoch: int = 0
    max_epoch: int = 120
    margin: float | None = 0.3
    lr: float = 0.0003
    warm_up_factor: float = 0.1
    warm_up_method: str = "linear"
    warm_up_epochs: int = 10
    step_milestones: list[int] = field(default_factory=lambda: [30, 60])
    gamma: float = 0.1
    weight_decay: float = 5e-04
    weight_decay_bias: float = 0.0005
    resume: str = ""
    use_cpu: bool = False
    gpu_devices: str = "0"
    seed: int = 666
    evaluate: bool = False
    print_train_info_epoch_freq: int = 5
    start_eval_epoch: int = 0
    eval_epoch: int = 5
    reranking: bool = False
    save_dir: str = "log"
    save_checkpoint: bool = False
    tri_start_epoch: int = 35
    # fastccreid
    pretrained: str = "imagenet"
    amp: str = "auto"
    compile: bool | None = None
    channels_last: bool = True
    loader: str = "auto"
    loader_output: str = "auto"
    dali_py_workers: int = 0
    skip_bad_images: bool = False
    backend: str = "auto"
    sync_bn: bool = False
    save_features: str = ""
    max_steps_per_epoch: int = 0
    no_progress: bool = False
    log_every: int = 0  # without bars (stderr not a terminal, or --no_progress): a line every N steps (0: epochs only)
    nproc: int = 0
    eval_amp: bool = False
    deterministic: bool | None = None
    dist_backend: str = "auto"
    bn: str = "global"
    max_restarts: int = 0
    checkpoint_every_steps: int = 0
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str = ""

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> TrainConfig:
        """The config named by parsed CLI arguments; attributes that are not fields (``command``) are ignored."""
        values = vars(args)
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of ``to_dict``; keys this version does not know (a newer checkpoint's) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (str, int, float, bool, None, list[int]): ``torch.load(weights_only=True)`` reads them."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @property
    def dataset_path(self) -> str:
        """The dataset's own folder: ``--dataset_root/--dataset_filename`` (the root alone when the name is empty);
        for ``--dataset manifest`` the manifest file: ``--dataset_root`` (or --dataset_filename in that folder)."""
        if self.dataset == "manifest":
            from fastccreid.data.datasets import manifest_location

            return manifest_location(self.dataset_root, self.dataset_filename)
        return os.path.join(self.dataset_root, self.dataset_filename) if self.dataset_filename else self.dataset_root

    def validate(self) -> None:
        """Reject values the run cannot use, naming the flag (and the valid choices where there is a list)."""
        from fastccreid.data.datasets import DATASET_CHOICES

        for flag, value, choices in (("--dataset", self.dataset, DATASET_CHOICES), ("--amp", self.amp, AMP_CHOICES),
                                     ("--loader", self.loader, LOADER_CHOICES),
                                     ("--loader_output", self.loader_output, LOADER_OUTPUT_CHOICES),
                                     ("--backend", self.backend, BACKEND_CHOICES),
                                     ("--warm_up_method", self.warm_up_method, WARM_UP_METHODS),
                                     ("--dist_backend", self.dist_backend, DIST_BACKEND_CHOICES),
                                     ("--bn", self.bn, BN_CHOICES)):
            if value not in choices:
                raise ValueError(f"{flag} must be one of {', '.join(choices)}; got {value!r}")
        if self.height < MIN_HEIGHT or self.width < MIN_WIDTH:
            raise ValueError(f"--height/--width must be at least {MIN_HEIGHT}x{MIN_WIDTH} (SMR splits the 1/16-scale "
                             f"map into 8 stripes; a 1-wide map breaks oneDNN's bf16 strided convolutions, which "
                             f"return NaN), got {self.height}x{self.width}")
        if self.train_batch <= 0 or self.test_batch <= 0:
            raise ValueError(f"--train_batch and --test_batch must be positive, got {self.train_batch}, "
                             f"{self.test_batch}")
        if self.max_epoch <= 0:
            raise ValueError(f"--max_epoch must be positive, got {self.max_epoch}")
        if self.max_steps_per_epoch < 0:
            raise ValueError(f"--max_steps_per_epoch must be >= 0, got {self.max_steps_per_epoch}")
        if self.num_workers < 0 or self.dali_py_workers < 0:
            raise ValueError(f"-j/--num_workers and --dali_py_workers must be >= 0, got {self.num_workers}, "
                             f"{self.dali_py_workers}")
        if self.print_train_info_epoch_freq == 0 or self.print_train_info_epoch_freq < -1:
            raise ValueError(f"--print_train_info_epoch_freq must be a positive number of epochs or -1 (never), got "
                             f"{self.print_train_info_epoch_freq}")
        if self.nproc < 0:
            raise ValueError(f"--nproc must be >= 0 (0: one process per --gpu_devices entry), got {self.nproc}")
        for flag, value in (("--max_restarts", self.max_restarts), ("--log_every", self.log_every),
                            ("--checkpoint_every_steps", self.checkpoint_every_steps), ("--node_rank", self.node_rank)):
            if value < 0:
                raise ValueError(f"{flag} must be >= 0, got {value}")
        if self.nnodes < 1 or self.node_rank >= self.nnodes:
            raise ValueError(f"--nnodes must be >= 1 and --node_rank in [0, --nnodes), got --nnodes {self.nnodes} "
                             f"--node_rank {self.node_rank}")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("--nnodes > 1 needs --rdzv_endpoint HOST:PORT (node 0's address, reachable from every "
                             "node)")
        if self.dist_backend == "nccl" and self.use_cpu:
            raise ValueError("--dist_backend nccl needs CUDA devices; with --use_cpu use gloo (or auto)")
        if self.evaluate and not self.resume:
            raise ValueError("evaluation needs a checkpoint: pass --resume PATH")
