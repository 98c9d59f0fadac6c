"""fastccreid: fast, faithful CSSC cloth-changing person re-identification.

Kept import-light on purpose: ``import fastccreid`` (and ``fastccreid.metrics``) pulls in neither torch
submodules beyond what is asked for, nor DALI, torchvision or Triton. It does check, from the installed packages'
metadata, that torch / torchvision / triton are within the supported range (``fastccreid.versions``), and raises a
one-line ImportError naming the version found and the range when they are not.
"""

from fastccreid.versions import check_versions

__version__ = "0.1.0"

check_versions()
