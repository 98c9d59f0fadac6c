"""The streaming evaluation driver: ``fastccreid.metrics.evaluate`` -> ``rank_stats`` here -> the rank ops of
``fastccreid.kernels``. Modules: ``engine`` (checks, pid grouping, query chunks, backend choice), ``gallery``
(gallery tiling, normalisation and low precision), ``workspace`` (scratch buffers reused across chunks),
``sharded`` (the gallery sharded over the processes of a ``torch.distributed`` group, exactly).
"""

from fastccreid.evaluation.engine import rank_stats
from fastccreid.kernels.rank_stats import RankStats

__all__ = ["RankStats", "rank_stats"]
