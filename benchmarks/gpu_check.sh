#!/usr/bin/env bash
# One call on a fresh GPU machine: validate every fast path (fastccreid doctor), then measure (bench all --quick).
# Built to finish in under 8 minutes on one GPU: the doctor's checks take seconds on CUDA, `bench all --quick` uses
# the small sizes; each step is bounded (110 s + 340 s, plus 10 s grace each), so the call ends within 8 minutes.
# Usage: benchmarks/gpu_check.sh [OUT_DIR]   (default: gpu_check_out)
# Writes OUT_DIR/doctor.json, OUT_DIR/bench.json and the bench's markdown table / plots under OUT_DIR/bench/.
# The bench's GPU pdist rows carry extra.fraction_of_cublas_flop_rate (cuBLAS x @ y.T on the same shapes); its
# "rank_stats cuda" eval rows time both rank_stats backends as multiples of the cuBLAS q @ g.T (the data for
# backend="auto"'s CUDA evaluation rule, kernels/_backend.py).
set -euo pipefail
out="${1:-gpu_check_out}"
mkdir -p "$out/bench"
status=0
# the doctor's exit status is kept (1: a fast path disagrees with its twin) but the bench still runs
timeout --kill-after=10 110 python -m fastccreid doctor --json "$out/doctor.json" || status=$?
timeout --kill-after=10 340 python -m fastccreid bench all --quick --json "$out/bench.json" --out "$out/bench" \
    || status=$?
echo "gpu_check: doctor + bench written to $out (exit $status)"
exit "$status"
