"""Metadata lives in pyproject.toml; this file only declares the optional C extension: the CPU kernels
(kernels/csrc/*.c: the re-ranking scan and Jaccard sums, the rank statistics' placement; one library loaded
with ctypes by fastccreid.kernels._cpu_library). ``optional=True``: without a C
compiler the package still installs and re-ranks on the torch path."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "fastccreid.kernels._cpu_kernels",
            sources=["kernels/csrc/rerank_cpu.c", "kernels/csrc/rank_place_cpu.c"],
            # -ffp-contract=off: no fused multiply-adds, so every float op rounds as torch's separate ops do (the
            # kernels are bit-identical to the torch path); -O3: the branch-free inner loops are vectorised
            extra_compile_args=["-O3", "-std=c11", "-ffp-contract=off"],
            optional=True,
        )
    ]
)
