"""Triton kernel tests: natively on a CUDA machine, else on CPU tensors under the Triton interpreter.

``@triton.jit`` picks the interpreter when a kernel module is imported, so TRITON_INTERPRET=1 must be in the
environment before ``fastccreid.kernels._*_triton`` is first imported. A plain ``python -m pytest`` session on a
CPU-only machine has already imported them compiled for GPUs (tests/test_triton_compile.py), so there the kernel
test files are left out of that session and ``test_interpreter_session.py`` runs this folder as its own pytest
session with TRITON_INTERPRET=1, failing with that session's report (test ids name the shape and dtype). With
TRITON_INTERPRET=1 set, or with a GPU, the kernel tests run in this process and the launcher is left out.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
IN_PROCESS = INTERPRETED or torch.cuda.is_available()
KERNEL_TEST_FILES = sorted(p.name for p in Path(__file__).parent.glob("test_triton_*.py"))

collect_ignore = ["test_interpreter_session.py"] if IN_PROCESS else KERNEL_TEST_FILES
