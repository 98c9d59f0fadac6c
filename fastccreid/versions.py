"""The torch / torchvision / triton versions fastccreid supports, checked at ``import fastccreid``.

Read from the installed distributions' metadata (``importlib.metadata``), so the check imports none of them. Each
range is the oldest and newest release line the test suite runs on (CI runs the suite on the newest and its
version-sensitive part on the oldest: ``.ci/run``). Older releases are refused: on them compiled gradients, Triton
launches under the interpreter or autotune configs are known to be wrong or to fail. Newer release lines are refused
too, since nothing here has run on them, unless ``FASTCCREID_ALLOW_UNTESTED_VERSIONS=1`` turns that refusal into a
warning.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import re
import warnings


@dataclasses.dataclass(frozen=True)
class Supported:
    """A package's supported release lines, oldest and newest (major, minor) inclusive."""

    package: str
    oldest: tuple[int, int]
    newest: tuple[int, int]

    def text(self) -> str:
        return f"{self.package} {self.oldest[0]}.{self.oldest[1]}-{self.newest[0]}.{self.newest[1]}"


SUPPORTED = (
    Supported("torch", (2, 11), (2, 14)),
    Supported("torchvision", (0, 26), (0, 29)),
    Supported("triton", (3, 6), (3, 8)),
)
ALLOW_ENV = "FASTCCREID_ALLOW_UNTESTED_VERSIONS"
_VERSION = re.compile(r"(\d+)\.(\d+)")


def release(version: str) -> tuple[int, int]:
    """(major, minor) of a version string such as ``2.11.0+cu130`` or ``3.6.0rc1``; ValueError if it has none."""
    m = _VERSION.match(version.strip())
    if m is None:
        raise ValueError(f"cannot read a major.minor release from version {version!r}")
    return int(m.group(1)), int(m.group(2))


def installed(package: str) -> str | None:
    """The installed distribution's version, or None when it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def version_problems(found: dict[str, str | None] | None = None) -> tuple[list[str], list[str]]:
    """(too_old, too_new) one-line messages for the packages outside their range; ``found`` maps package -> version
    (default: what is installed; a package not installed is not checked: triton is absent off Linux x86_64)."""
    too_old, too_new = [], []
    for s in SUPPORTED:
        v = installed(s.package) if found is None else found.get(s.package)
        if v is None:
            continue
        r = release(v)
        if r < s.oldest:
            too_old.append(f"fastccreid needs {s.text()}, found {s.package} {v}")
        elif r > s.newest:
            too_new.append(f"fastccreid is tested on {s.text()}, found {s.package} {v}")
    return too_old, too_new


def check_versions() -> None:
    """ImportError (one line) when torch / torchvision / triton is older than supported, or newer unless
    ``FASTCCREID_ALLOW_UNTESTED_VERSIONS=1`` (then a warning)."""
    too_old, too_new = version_problems()
    if too_old:
        raise ImportError("; ".join(too_old) + " (pip install -U 'torch>=2.11' 'torchvision>=0.26' 'triton>=3.6')")
    if too_new:
        msg = "; ".join(too_new)
        if os.environ.get(ALLOW_ENV, "0") not in ("", "0"):
            warnings.warn(msg + f" (untested; allowed by {ALLOW_ENV})", RuntimeWarning, stacklevel=3)
        else:
            raise ImportError(msg + f": untested; set {ALLOW_ENV}=1 to run anyway")
