"""The seed's k-reciprocal re-ranking (Zhong et al., CVPR 2017), dense numpy, as FIRe-CCReID
``evaluate/re_ranking.py`` (L. Hao's port) computes it for ``--reranking``.

Where the seed calls it: only ``test.py::test`` (the non clothes-changing datasets, e.g. Celeb-reID) with
``re_ranking(qf, gf, k1=20, k2=6, lambda_value=0.3)``, where qf / gf are the L2-normalised (flip-summed) torch
features from ``get_data``; the re-ranked [Q, G] matrix then replaces ``get_distmat``'s. ``test_cc.py`` (LTCC,
PRCC) ignores ``--reranking``. So the input is FEATURES, and the base distance is their squared euclidean
distance (no sqrt, no clamp), computed in fp32 torch over the concatenated (Q+G) set.

The oracle: dense (Q+G)^2 arrays, Python loops over every item. Do not optimise. Departures from the seed:
``np.argsort(..., kind="stable")`` (ties by index; the seed's default quicksort is unstable, see
``evaluation``), no progress prints, the removed ``addmm_(1, -2, a, b)`` overload written with keywords, and
``local_distmat`` / ``only_local`` (unused by the seed's callers) not reproduced.
"""

from __future__ import annotations

import numpy as np
import torch


def re_ranking(probFea, galFea, k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:  # noqa: N803
    """Re-ranked distance [Q, G] from query features probFea [Q, D] and gallery features galFea [G, D]
    (torch tensors or arrays). V and the Jaccard term are float16 as in the seed; the result is float32."""
    probFea = torch.as_tensor(probFea).float().cpu()  # noqa: N806
    galFea = torch.as_tensor(galFea).float().cpu()  # noqa: N806
    query_num = probFea.size(0)
    all_num = query_num + galFea.size(0)
    feat = torch.cat([probFea, galFea])
    distmat = torch.pow(feat, 2).sum(dim=1, keepdim=True).expand(all_num, all_num) + \
        torch.pow(feat, 2).sum(dim=1, keepdim=True).expand(all_num, all_num).t()
    distmat = distmat.addmm(feat, feat.t(), beta=1, alpha=-2)
    original_dist = distmat.numpy()
    gallery_num = original_dist.shape[0]
    # column-wise max normalisation, then transpose (the seed's exact order of operations)
    original_dist = np.transpose(original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist).astype(np.float16)  # noqa: N806
    initial_rank = np.argsort(original_dist, kind="stable").astype(np.int32)

    for i in range(all_num):
        forward_k_neigh_index = initial_rank[i, :k1 + 1]
        backward_k_neigh_index = initial_rank[forward_k_neigh_index, :k1 + 1]
        fi = np.where(backward_k_neigh_index == i)[0]
        k_reciprocal_index = forward_k_neigh_index[fi]
        k_reciprocal_expansion_index = k_reciprocal_index
        half = int(np.around(k1 / 2)) + 1
        for j in range(len(k_reciprocal_index)):
            candidate = k_reciprocal_index[j]
            candidate_forward = initial_rank[candidate, :half]
            candidate_backward = initial_rank[candidate_forward, :half]
            fi_candidate = np.where(candidate_backward == candidate)[0]
            candidate_k_reciprocal_index = candidate_forward[fi_candidate]
            if len(np.intersect1d(candidate_k_reciprocal_index, k_reciprocal_index)) > \
                    2 / 3 * len(candidate_k_reciprocal_index):
                k_reciprocal_expansion_index = np.append(k_reciprocal_expansion_index, candidate_k_reciprocal_index)
        k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
        weight = np.exp(-original_dist[i, k_reciprocal_expansion_index])
        V[i, k_reciprocal_expansion_index] = weight / np.sum(weight)

    original_dist = original_dist[:query_num, ]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float16)  # noqa: N806
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe  # noqa: N806
    del initial_rank
    inv_index = []
    for i in range(gallery_num):
        inv_index.append(np.where(V[:, i] != 0)[0])

    jaccard_dist = np.zeros_like(original_dist, dtype=np.float16)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, gallery_num], dtype=np.float16)
        ind_non_zero = np.where(V[i, :] != 0)[0]
        ind_images = [inv_index[ind] for ind in ind_non_zero]
        for j in range(len(ind_non_zero)):
            temp_min[0, ind_images[j]] = temp_min[0, ind_images[j]] + np.minimum(V[i, ind_non_zero[j]],
                                                                                 V[ind_images[j], ind_non_zero[j]])
        jaccard_dist[i] = 1 - temp_min / (2 - temp_min)

    final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
    return final_dist[:query_num, query_num:]
