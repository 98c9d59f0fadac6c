"""The seed's losses, eager fp32 (FIRe-CCReID ``utils/util.py``, ``losses/triplet_loss.py``,
``losses/cross_entropy_loss.py``, which CSSC-CCReID imports unchanged).

Kept deliberately as the seed writes them (dense [N, N] distance, boolean-mask hard mining that assumes every
label has the same number of samples in the batch, a dense one-hot target for label smoothing): this is the
oracle for parity tests and the baseline for benchmarks. Do not optimise.
"""

from __future__ import annotations

import torch
from torch import nn


def euclidean_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Euclidean distance [M, N] between rows of x [M, D] and y [N, D]: ``sqrt(clamp(|x|^2 + |y|^2 - 2 x·y, 1e-12))``.

    The clamp keeps the gradient of sqrt finite on the diagonal (distance 0 becomes 1e-6)."""
    m, n = x.size(0), y.size(0)
    xx = torch.pow(x, 2).sum(1, keepdim=True).expand(m, n)
    yy = torch.pow(y, 2).sum(1, keepdim=True).expand(n, m).t()
    dist = xx + yy
    dist = dist.addmm(x, y.t(), beta=1, alpha=-2)
    return dist.clamp(min=1e-12).sqrt()


def hard_example_mining(dist_mat: torch.Tensor, labels: torch.Tensor, return_inds: bool = False, *,
                        mining_method: str = "batch_hard"):
    """Batch-hard mining: per anchor, the farthest positive and the nearest negative.

    dist_mat [N, N], labels [N]. Returns (dist_ap [N], dist_an [N]) and, with ``return_inds``, also
    (p_inds [N], n_inds [N]) as indices into the batch. As the seed: the positives (resp. negatives) of every row
    are gathered with a boolean mask and reshaped to [N, -1], which is only valid when every label occurs equally
    often in the batch (P x K); the anchor itself counts as one of its positives (distance sqrt(1e-12)). Ties go
    to the first index (torch.max / torch.min). Only the seed's default ``batch_hard`` method is reproduced.
    """
    if mining_method != "batch_hard":
        raise ValueError(f"mining_method must be 'batch_hard' (the seed's default), got {mining_method!r}")
    if dist_mat.dim() != 2 or dist_mat.size(0) != dist_mat.size(1):
        raise ValueError(f"dist_mat must be square [N, N], got shape {tuple(dist_mat.shape)}")
    n = dist_mat.size(0)
    counts = torch.unique(labels, return_counts=True)[1]
    if len(counts) > 1 and bool((counts != counts[0]).any()):
        # the seed's view(N, -1) then raises, or (when the sizes happen to divide) silently mixes rows
        raise ValueError(f"labels must hold every identity equally often (a P x K batch), got counts "
                         f"{counts.tolist()}")
    is_pos = labels.expand(n, n).eq(labels.expand(n, n).t())
    is_neg = labels.expand(n, n).ne(labels.expand(n, n).t())
    dist_ap, rel_p = torch.max(dist_mat[is_pos].contiguous().view(n, -1), 1, keepdim=True)
    dist_an, rel_n = torch.min(dist_mat[is_neg].contiguous().view(n, -1), 1, keepdim=True)
    dist_ap = dist_ap.squeeze(1)
    dist_an = dist_an.squeeze(1)
    if return_inds:
        ind = torch.arange(0, n, dtype=torch.long, device=labels.device).unsqueeze(0).expand(n, n)
        p_inds = torch.gather(ind[is_pos].contiguous().view(n, -1), 1, rel_p).squeeze(1)
        n_inds = torch.gather(ind[is_neg].contiguous().view(n, -1), 1, rel_n).squeeze(1)
        return dist_ap, dist_an, p_inds, n_inds
    return dist_ap, dist_an


class TripletLoss(nn.Module):
    """Batch-hard triplet loss on euclidean distances (Hermans et al. 2017), as the seed.

    ``forward(inputs [N, D], targets [N])`` returns ONLY the scalar loss (the seed's ``__call__`` returns just
    the loss, not the mined distances): with a margin, ``mean(relu(dist_ap - dist_an + margin))``
    (MarginRankingLoss with y = 1); with ``margin=None``, ``mean(log(1 + exp(dist_ap - dist_an)))``
    (SoftMarginLoss). The seed's class is a plain object whose own default margin is None; its ``main.py``
    always passes ``--margin`` (0.3), so 0.3 is the default here.
    """

    def __init__(self, margin: float | None = 0.3):
        super().__init__()
        self.margin = margin
        if margin is not None:
            self.ranking_loss = nn.MarginRankingLoss(margin=margin)
        else:
            self.ranking_loss = nn.SoftMarginLoss()

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        dist_mat = euclidean_dist(inputs, inputs)
        dist_ap, dist_an = hard_example_mining(dist_mat, targets)
        y = torch.ones_like(dist_an)
        if self.margin is not None:
            return self.ranking_loss(dist_an, dist_ap, y)
        return self.ranking_loss(dist_an - dist_ap, y)


class CrossEntropyLabelSmooth(nn.Module):
    """Cross-entropy with label smoothing (Szegedy et al. 2016): target ``(1 - eps) * onehot + eps / K``.

    ``forward(inputs [N, K] logits, targets [N] int)`` -> scalar ``sum_k mean_n(-target * log_softmax)``.
    As the seed, the one-hot target is built densely on the CPU with ``scatter_`` and moved to the logits'
    device (the seed moves it with ``.cuda()`` when ``use_gpu``; here it follows ``inputs.device`` either way).
    """

    def __init__(self, num_classes: int, epsilon: float = 0.1, use_gpu: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.epsilon = epsilon
        self.use_gpu = use_gpu
        self.logsoftmax = nn.LogSoftmax(dim=1)

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_probs = self.logsoftmax(inputs)
        onehot = torch.zeros(log_probs.size()).scatter_(1, targets.unsqueeze(1).detach().cpu(), 1)
        onehot = onehot.to(log_probs.device)
        smooth = (1 - self.epsilon) * onehot + self.epsilon / self.num_classes
        return (-smooth * log_probs).mean(0).sum()
