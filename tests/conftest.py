"""Suite-wide settings: reproducible hypothesis runs, caches and environment kept inside the test session.

Per-test timeouts (pytest-timeout, with stack dumps of every thread) are configured in pyproject.toml, so a hang
fails one test with a trace instead of eating CI's time.
"""

from __future__ import annotations

import os
import tempfile

import pytest

# torch.compile / Triton caches go to a throw-away folder, never into the checkout or the user's home.
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
