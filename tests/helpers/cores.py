"""The CPU cores this process may run on (its affinity set where the OS has one: os.cpu_count can count CPUs
outside it)."""

from __future__ import annotations

import os


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
