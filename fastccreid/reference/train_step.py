"""The seed's training step and feature extraction, eager fp32 (CSSC-CCReID ``train_cssc.py``, FIRe-CCReID
``test.py::get_data`` / ``test_cc.py::get_data_for_cc`` / ``test.py::get_distmat``). Not optimised: no AMP,
no channels-last, no compilation, a host sync per step (``loss.item()``)."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812

from fastccreid.reference.evaluation import get_distmat


def reference_train_step(model: torch.nn.Module, imgs: torch.Tensor, pids: torch.Tensor,
                         optimizer: torch.optim.Optimizer, class_criterion, metric_criterion, epoch: int,
                         tri_start_epoch: int = 35) -> float:
    """One optimiser step on a batch imgs [B, 3, H, W], pids [B]; returns the total loss as a float.

    ``model`` in train mode returns (features list, logits list) (CSSC: 5 and 5). Loss = sum of
    ``class_criterion`` over the logits + (only when ``epoch > tri_start_epoch``) sum of ``metric_criterion``
    over the features. ``epoch`` is 1-based, as the seed's ``train`` receives it (``main.py`` passes
    ``epoch + 1``), so the triplet term starts at the 36th epoch with the default 35."""
    model.train()
    feat_list, y_list = model(imgs)
    loss = 0
    for y in y_list:
        loss += class_criterion(y, pids)
    if epoch > tri_start_epoch:
        for feat in feat_list:
            loss += metric_criterion(feat, pids)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def reference_extract_features(model: torch.nn.Module, loader,
                               device: torch.device | str | None = None
                               ) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """Eval-mode features of every image of ``loader``: ``normalize(model(x) + model(flip_w(x)))``.

    Returns (feats [N, D] float CPU tensor, pids [N], camids [N], clothes_ids [N]) in loader order. ``loader``
    yields (img, pid, camid, clothes_id) batches (``reference.dataloader.ImageDataset``); ``device`` defaults
    to that of the model's first parameter."""
    if device is None:
        device = next(model.parameters()).device
    model.eval()
    feats, pids, camids, clothes = [], [], [], []
    with torch.no_grad():
        for img, pid, camid, clothes_id in loader:
            flip_img = torch.flip(img, [3])
            img, flip_img = img.to(device), flip_img.to(device)
            feat = model(img)
            feat_flip = model(flip_img)
            feat = feat + feat_flip
            feat = F.normalize(feat, p=2, dim=1)
            feats.append(feat.detach().cpu())
            pids.extend(torch.as_tensor(pid).tolist())
            camids.extend(torch.as_tensor(camid).tolist())
            clothes.extend(torch.as_tensor(clothes_id).tolist())
    feats_t = torch.cat(feats, 0)
    return feats_t, np.asarray(pids), np.asarray(camids), np.asarray(clothes)


def reference_distance(qf: torch.Tensor, gf: torch.Tensor) -> np.ndarray:
    """The seed's query-gallery distance [Q, G] (numpy float32): squared euclidean of the re-normalised features
    (``get_distmat``)."""
    return get_distmat(qf, gf)
