"""The supported version range: declared once (fastccreid.versions), matching pyproject.toml's lower bounds and the
README's table, and enforced at ``import fastccreid`` with one line naming the version found and the range."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fastccreid.versions import ALLOW_ENV, SUPPORTED, release, version_problems

ROOT = Path(__file__).resolve().parent.parent


def test_release_parsing():
    assert release("2.11.0+cu130") == (2, 11)
    assert release("3.6.0rc1") == (3, 6)
    assert release("0.29.1") == (0, 29)
    with pytest.raises(ValueError, match="'nightly'"):
        release("nightly")


def test_range_edges():
    ok = {"torch": "2.11.0", "torchvision": "0.26.0", "triton": "3.6.0"}
    assert version_problems(ok) == ([], [])
    assert version_problems({"torch": "2.14.1+cu130", "torchvision": "0.29.1", "triton": "3.8.0"}) == ([], [])
    old, new = version_problems({**ok, "torch": "2.10.0"})
    assert old == ["fastccreid needs torch 2.11-2.14, found torch 2.10.0"] and new == []
    old, new = version_problems({**ok, "triton": "3.9.0"})
    assert old == [] and new == ["fastccreid is tested on triton 3.6-3.8, found triton 3.9.0"]
    assert version_problems({"torch": "2.12.0"}) == ([], [])  # absent packages are not checked


def test_pyproject_lower_bounds_and_readme_table_match():
    text = (ROOT / "pyproject.toml").read_text()
    readme = (ROOT / "README.md").read_text()
    for s in SUPPORTED:
        lo = f"{s.oldest[0]}.{s.oldest[1]}"
        assert re.search(rf'"{s.package}>={re.escape(lo)}[",;\s]', text), f"pyproject.toml: {s.package}>={lo}"
        assert re.search(rf"\| {s.package} \| {re.escape(lo)} \| {s.newest[0]}\.{s.newest[1]} \|", readme), s.package


def _fake_dist(tmp_path: Path, package: str, version: str) -> Path:
    """A site folder holding only a dist-info for ``package`` at ``version`` (found first by importlib.metadata)."""
    info = tmp_path / f"{package}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
    return tmp_path


def _import_with(site: Path, **env) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k != ALLOW_ENV}
    e.update(PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]), **env)
    return subprocess.run([sys.executable, "-c", "import fastccreid"], env=e, capture_output=True, text=True,
                          timeout=120)


def test_import_refuses_a_torch_older_than_the_range(tmp_path):
    out = _import_with(_fake_dist(tmp_path, "torch", "2.9.1"))
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: fastccreid needs torch 2.11-2.14, found torch 2.9.1"), out.stderr


def test_import_refuses_an_untested_newer_triton_unless_allowed(tmp_path):
    site = _fake_dist(tmp_path, "triton", "3.9.0")
    out = _import_with(site)
    assert out.returncode != 0 and "found triton 3.9.0" in out.stderr and ALLOW_ENV in out.stderr
    out = _import_with(site, **{ALLOW_ENV: "1"})
    assert out.returncode == 0 and "untested" in out.stderr, out.stderr
