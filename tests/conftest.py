"""Suite-wide settings: reproducible hypothesis runs, caches and environment kept inside the test session.

Per-test timeouts (pytest-timeout, with stack dumps of every thread) are configured in pyproject.toml, so a hang
fails one test with a trace instead of eating CI's time.
"""

from __future__ import annotations

import os
import tempfile

import pytest
from helpers.cores import usable_cores

# Under pytest-xdist (the README's test command: two workers) the cores are shared out: each worker, and the
# processes it starts, gets cores / workers OpenMP threads (1 on 2 cores: two 2-thread pools on two cores would
# spin-wait on each other), unless OMP_NUM_THREADS is set. Set before torch is imported by any test module.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
if os.environ.get("PYTEST_XDIST_WORKER") and _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, usable_cores() // _WORKERS))

# torch.compile / Triton caches go to a throw-away folder, never into the checkout or the user's home (one folder
# for all the workers of an xdist run: a kernel compiled by one is reused by the other).
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
if _RUN:
    _CACHE_DIR = os.path.join(tempfile.gettempdir(), f"fastccreid-test-cache-{_RUN}")
    os.makedirs(_CACHE_DIR, exist_ok=True)
else:
    _CACHE_DIR = tempfile.mkdtemp(prefix="fastccreid-test-cache-")
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(_CACHE_DIR, "inductor"))
os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(_CACHE_DIR, "triton"))

try:
    from hypothesis import settings

    # No example database on disk (.hypothesis/ stays out of the checkout); a failure prints the blob that
    # replays it (@reproduce_failure). Under CI=true the examples are derandomized: the same run every time.
    settings.register_profile("fastccreid", database=None, print_blob=True)
    settings.register_profile("ci", database=None, print_blob=True, derandomize=True)
    settings.load_profile("ci" if os.environ.get("CI") else "fastccreid")
except ImportError:  # hypothesis is a dev dependency; the tests that use it import it themselves
    pass


@pytest.fixture(autouse=True)
def _restore_process_environment():
    """Code under test may set CUDA_VISIBLE_DEVICES (the seed's --gpu_devices) or other variables: each test
    starts from the environment the session started with."""
    before = dict(os.environ)
    yield
    if os.environ != before:
        os.environ.clear()
        os.environ.update(before)
