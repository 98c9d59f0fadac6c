"""fastccreid.kernels: Triton kernels with vectorised-torch CPU twins, chosen per call by ``backend=``.

Ops (one file each: Triton kernel in ``_<op>_triton.py``, imported only when a Triton path runs):
``pairwise_distance``, ``batch_hard_mining``, ``batch_hard_triplet_loss``, ``topk_ranking``, ``rank_stats``.
Shared: ``checks`` (the input validation every public entry calls first), ``seed_distance`` (the seed's
normalisation and squared-euclidean forms), ``_triton_gram`` (the Triton Gram tile). The streaming evaluation driver
behind ``rank_stats`` is ``fastccreid.evaluation``; nothing here imports it at import time.
"""

from fastccreid.kernels._backend import BACKENDS, resolve_backend
from fastccreid.kernels.pairwise_distance import pairwise_distance
from fastccreid.kernels.rank_stats import rank_stats
from fastccreid.kernels.topk import topk_ranking
from fastccreid.kernels.triplet import batch_hard_mining, batch_hard_triplet_loss

__all__ = [
    "BACKENDS",
    "batch_hard_mining",
    "batch_hard_triplet_loss",
    "pairwise_distance",
    "rank_stats",
    "resolve_backend",
    "topk_ranking",
]
