"""Input validation shared by every public entry (``fastccreid.metrics.evaluate``, ``rank_stats``,
``topk_ranking``, ``pairwise_distance``, the triplet ops): one place for the checks and their messages, as
torchmetrics keeps ``_check_retrieval_functional_inputs`` beside its retrieval functions.

Each entry calls its ``check_*_inputs`` function first; the building blocks below raise ValueError / TypeError
naming the argument at fault and, for a choice, listing the valid ones. Imports only numpy and torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# Protocol junk rules of the rank ops: None (the whole gallery counts), "market" (drop same pid and same camera),
# "ltcc-cc" (drop same pid and same camera or same clothes); the codes are what the registered ops take.
# "ltcc-sc" (CAL's same-clothes rule: drop same pid and same camera or other clothes) is a rule of the rank
# statistics only (RANK_JUNK_RULES); the top-k op has no code for it.
JUNK_RULES = (None, "market", "ltcc-cc")
RANK_JUNK_RULES = (*JUNK_RULES, "ltcc-sc")
CLOTHES_RULES = ("ltcc-cc", "ltcc-sc")
JUNK_CODES = {None: 0, "market": 1, "ltcc-cc": 2}
JUNK_NAMES = {v: k for k, v in JUNK_CODES.items()}
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class LabelDtypeError(TypeError, ValueError):
    """Labels that are not integers. A TypeError for the evaluator's callers and a ValueError for the triplet
    ops' (each has raised its own kind since its first release)."""


def check_choice(value, name: str, choices) -> None:
    """ValueError listing ``choices`` unless ``value`` is one of them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def _is_compiling() -> bool:
    return torch.compiler.is_compiling()


def as_tensor(x, name: str) -> torch.Tensor:
    """A tensor view of x (torch tensor, numpy array or nested sequence; detached, never copied when avoidable)."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - report any unconvertible input as a TypeError naming it
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}") from exc
    if arr.dtype == object:
        raise TypeError(f"{name} must be numeric, got an object array")
    return torch.from_numpy(np.ascontiguousarray(arr))


def as_float(x, name: str) -> torch.Tensor:
    """x as a floating tensor (integers become fp32; floating dtypes are kept)."""
    t = as_tensor(x, name)
    if not t.is_floating_point():
        t = t.to(torch.float32)
    return t


def check_labels(x, name: str, n: int | None, device=None, *, per: str = "entry") -> torch.Tensor:
    """1-D integer labels of length ``n`` (tensor, array or sequence) as int64 on ``device``.

    ``per`` names what each entry belongs to ("feature row", "query", ...) in the length message."""
    if not isinstance(x, torch.Tensor):
        try:
            arr = np.asarray(x)
        except Exception as exc:  # noqa: BLE001 - any unconvertible input is a TypeError naming it
            raise TypeError(f"{name} must be a 1-D tensor or array of integers, got {type(x).__name__}") from exc
        if arr.dtype.kind not in "iu":
            if arr.dtype.kind in "OUSV":
                raise TypeError(f"{name} must be a 1-D tensor or array of integers, got {type(x).__name__} "
                                f"of {arr.dtype}")
            raise LabelDtypeError(f"{name} must hold integers (int64, int32, ...), got dtype {arr.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(arr))
    t = x.detach()
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise LabelDtypeError(f"{name} must hold integers (int64, int32, ...), got dtype {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if n is not None and t.numel() != n:
        raise ValueError(f"{name} must be 1-D with one entry per {per} ({n}), got {t.numel()} entries")
    return t.to(device=device if device is not None else t.device, dtype=torch.int64)


def check_features(x, name: str, *, finite: bool = True) -> torch.Tensor:
    """A [N, D] float torch tensor (N, D > 0; finite unless ``finite=False``) for the differentiable ops."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D [N, D], got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32, float16, bfloat16 or float64, got {x.dtype}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one column, got shape {tuple(x.shape)}")
    # data-dependent check, skipped while torch.compile traces (it would break the graph). aminmax is one
    # reduction pass without a [N, D] temporary (NaN propagates into it, Inf shows as an extreme)
    if finite and not _is_compiling():
        lo, hi = torch.aminmax(x)
        if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
            raise ValueError(f"{name} contains NaN or Inf")
    return x


def check_norms(sq: torch.Tensor, name: str) -> None:
    """ValueError when a squared row norm [N] is NaN / Inf: a NaN or Inf feature (or one whose square overflows)
    makes its norm non-finite, so checking [N] norms replaces a pass over [N, D]."""
    # amax propagates NaN: one reduction and one host read instead of isfinite + all + read
    if not _is_compiling() and not math.isfinite(float(sq.amax())):
        raise ValueError(f"{name} contains NaN or Inf (or values whose squares overflow)")


def all_finite(x: torch.Tensor) -> bool:
    """True when x has no NaN/Inf: a cheap row-sum test first, the elementwise test only if a sum overflowed."""
    if bool(torch.isfinite(x.sum(-1)).all()):
        return True
    return bool(torch.isfinite(x).all())


def require_finite(x: torch.Tensor) -> None:
    """ValueError "features contain NaN or Inf" unless ``all_finite(x)``."""
    if not all_finite(x):
        raise ValueError("features contain NaN or Inf")


def check_pair_shapes(a: torch.Tensor, b: torch.Tensor, an: str, bn: str) -> None:
    """a [N, D] and b [M, D]: 2-D, the same feature dimension, the same device."""
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"{an} and {bn} must be 2-D [N, D], got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{an} and {bn} feature dims differ: {a.shape[1]} vs {b.shape[1]} "
                         f"({an} [Q, D] and {bn} [G, D] must be 2-D with equal D)")
    if a.device != b.device:
        raise ValueError(f"{an} and {bn} are on different devices: {a.device} vs {b.device}")


def check_distmat(x, *, allow_inf: bool = False) -> torch.Tensor:
    """A [Q, G] distance matrix as a floating tensor (fp16 / bf16 widened exactly to fp32); no NaN, and no +-inf
    unless ``allow_inf``."""
    dm = as_float(x, "distmat")
    if dm.dtype in (torch.float16, torch.bfloat16):
        dm = dm.float()  # exact widening; keeps the order, and the lookup-table arithmetic in range
    if dm.dim() != 2:
        raise ValueError(f"distmat must be 2-D [Q, G], got shape {tuple(dm.shape)}")
    if bool(torch.isnan(dm).any()):
        raise ValueError("distmat contains NaN")
    if not allow_inf and bool(torch.isinf(dm).any()):
        raise ValueError("distmat contains +-inf; distances must be finite")
    return dm


def check_protocol_labels(q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, junk, nq: int, ng: int,
                          device, *, what: str = "junk", rules=JUNK_RULES):
    """(qp, gp, qc, gc, qcl, gcl) int64 on ``device`` for a junk rule; labels the rule does not use are None.

    ``what`` names the argument that set the rule in the "needs ..." messages ("junk" or "protocol"); ``rules``
    the rules the caller supports."""
    check_choice(junk, "junk", rules)
    if q_pids is None or g_pids is None:
        raise ValueError("q_pids and g_pids are required")
    qp = check_labels(q_pids, "q_pids", nq, device, per="query")
    gp = check_labels(g_pids, "g_pids", ng, device, per="gallery item")
    qc = gc = qcl = gcl = None
    if junk in ("market", *CLOTHES_RULES):
        if q_camids is None or g_camids is None:
            raise ValueError(f"junk={junk!r} needs q_camids and g_camids")
        qc = check_labels(q_camids, "q_camids", nq, device, per="query")
        gc = check_labels(g_camids, "g_camids", ng, device, per="gallery item")
    if junk in CLOTHES_RULES:
        if q_clothes is None or g_clothes is None:
            raise ValueError(f"junk={junk!r} needs q_clothes and g_clothes")
        qcl = check_labels(q_clothes, "q_clothes", nq, device, per="query")
        gcl = check_labels(g_clothes, "g_clothes", ng, device, per="gallery item")
    return qp, gp, qc, gc, qcl, gcl


@dataclass
class RankInputs:
    """Checked inputs of a rank op: ``dm`` [Q, G] (precomputed) or features ``q`` [Q, D] / ``g`` [G, D], and the
    int64 labels (None where the junk rule does not use them, all None when labels were optional and absent)."""

    dm: torch.Tensor | None
    q: torch.Tensor | None
    g: torch.Tensor | None
    labels: tuple | None
    nq: int
    ng: int
    device: torch.device


def check_rank_inputs(q, g, metric: str, metrics, *, junk, q_pids=None, g_pids=None, q_camids=None, g_camids=None,
                      q_clothes=None, g_clothes=None, labels_required: bool = True, allow_inf: bool = False,
                      finite_features: bool = False, rules=JUNK_RULES) -> RankInputs:
    """The checks of ``rank_stats`` and ``topk_ranking``: metric, junk rule, distances or features, sizes, labels.

    ``allow_inf``: +-inf distances are allowed (top-k). ``finite_features``: features are checked for NaN / Inf
    here (rank_stats checks the gallery later, where it streams it once)."""
    check_choice(metric, "metric", metrics)
    check_choice(junk, "junk", rules)
    dm = None
    if metric == "precomputed":
        if g is not None:
            raise ValueError("with metric='precomputed' pass the distance matrix as q and leave g None")
        dm = check_distmat(q, allow_inf=allow_inf)
        q = None
        nq, ng = dm.shape
        device = dm.device
    else:
        if g is None:
            raise ValueError("g (gallery features) is required unless metric='precomputed'")
        q, g = as_float(q, "q"), as_float(g, "g")
        check_pair_shapes(q, g, "q", "g")
        if finite_features and not (all_finite(q) and all_finite(g)):
            raise ValueError("features contain NaN or Inf")
        nq, ng = q.shape[0], g.shape[0]
        device = q.device
    if nq == 0 or ng == 0:
        raise ValueError(f"need at least one query and one gallery item, got {nq} and {ng}")
    labels = None
    if labels_required or junk is not None:
        labels = check_protocol_labels(q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, junk, nq, ng,
                                       device, rules=rules)
    return RankInputs(dm, q, g, labels, nq, ng, device)


def check_pairwise_inputs(x, y, metric: str, metrics) -> torch.Tensor:
    """The checks of ``pairwise_distance``: metric, x [M, D] (and y [N, D] unless None: then y is x), same
    column count and device. Returns y (x when y is None). NaN / Inf are found later, from the row norms."""
    check_choice(metric, "metric", metrics)
    check_features(x, "x", finite=False)
    if y is None:
        return x
    check_features(y, "y", finite=False)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same number of columns, got x {tuple(x.shape)} and y {tuple(y.shape)}")
    if x.device != y.device:
        raise ValueError(f"x and y must be on the same device, got {x.device} and {y.device}")
    return y


def check_margin(margin) -> float | None:
    """A finite float margin, or None (soft margin)."""
    if margin is None:
        return None
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
        raise ValueError(f"margin must be a finite float or None (soft margin), got {margin!r}")
    return float(margin)


def check_triplet_inputs(features, labels) -> torch.Tensor:
    """The checks of the triplet ops: features [B, D] float (NaN / Inf are checked by the kernel that runs) and
    labels [B] integers; returns the labels as int64 on the features' device."""
    check_features(features, "features", finite=False)
    return check_labels(labels, "labels", features.shape[0], features.device, per="feature row")


def check_positive_int(value, name: str) -> int:
    """A positive int (not a bool)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass
class EvalInputs:
    """Checked inputs of ``fastccreid.metrics.evaluate``: ``dm`` [Q, G] or features ``q`` [Q, D] / ``g`` [G, D],
    and int64 labels on their device (camera / clothes labels None when not given)."""

    dm: torch.Tensor | None
    q: torch.Tensor | None
    g: torch.Tensor | None
    qp: torch.Tensor
    gp: torch.Tensor
    qc: torch.Tensor | None
    gc: torch.Tensor | None
    qcl: torch.Tensor | None
    gcl: torch.Tensor | None
    nq: int
    ng: int


def check_eval_inputs(distmat, qf, gf, *, q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, protocol: str,
                      protocols, junk_of: dict, precision: str, precisions, max_rank) -> EvalInputs:
    """The checks of ``fastccreid.metrics.evaluate``: protocol and precision choices, max_rank, a distance
    matrix or both feature sets (2-D, floating, equal D), non-empty sets, and the labels the protocol needs."""
    check_choice(protocol, "protocol", protocols)
    check_choice(precision, "precision", precisions)
    check_positive_int(max_rank, "max_rank")
    junk = junk_of[protocol]
    if (distmat is None) == (qf is None or gf is None):
        raise ValueError("give either distmat or both qf and gf (features), not both and not neither")
    dm = q = g = None
    if distmat is not None:
        dm = as_tensor(distmat, "distmat")
        if dm.dim() != 2:
            raise ValueError(f"distmat must be 2-D [Q, G], got shape {tuple(dm.shape)}")
        if not dm.is_floating_point():
            dm = dm.to(torch.float64)
        nq, ng = dm.shape
        device = dm.device
    else:
        q, g = as_tensor(qf, "qf"), as_tensor(gf, "gf")
        for name, t in (("qf", q), ("gf", g)):
            if t.dim() != 2:
                raise ValueError(f"{name} must be 2-D [N, D], got shape {tuple(t.shape)}")
            if not t.is_floating_point():
                raise TypeError(f"{name} must be floating point, got {t.dtype}")
        check_pair_shapes(q, g, "qf", "gf")
        nq, ng = q.shape[0], g.shape[0]
        device = q.device
    if nq == 0:
        raise ValueError("the query set is empty")
    if ng == 0:
        raise ValueError("the gallery is empty")
    qp = check_labels(q_pids, "q_pids", nq, device, per="query")
    gp = check_labels(g_pids, "g_pids", ng, device, per="gallery item")
    if junk is not None and (q_camids is None or g_camids is None):
        raise ValueError(f"protocol {protocol!r} needs q_camids and g_camids")
    qc = check_labels(q_camids, "q_camids", nq, device, per="query") if q_camids is not None else None
    gc = check_labels(g_camids, "g_camids", ng, device, per="gallery item") if g_camids is not None else None
    if junk in CLOTHES_RULES and (q_clothes is None or g_clothes is None):
        raise ValueError(f"protocol {protocol!r} needs q_clothes and g_clothes")
    qcl = check_labels(q_clothes, "q_clothes", nq, device, per="query") if q_clothes is not None else None
    gcl = check_labels(g_clothes, "g_clothes", ng, device, per="gallery item") if g_clothes is not None else None
    return EvalInputs(dm, q, g, qp, gp, qc, gc, qcl, gcl, nq, ng)
