"""fastccreid: fast, faithful CSSC cloth-changing person re-identification.

Kept import-light on purpose: ``import fastccreid`` (and ``fastccreid.metrics``) pulls in neither torch
submodules beyond what is asked for, nor DALI, torchvision or Triton.
"""

__version__ = "0.1.0"
