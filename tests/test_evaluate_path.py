"""The evaluation path end to end against the seed's: ``extract_features`` (flip TTA, L2-normalised) and
``evaluate_model`` on tiny synthetic datasets of every protocol family, compared with the reference path (seed
dataloader + ``reference_extract_features`` + ``reference_distance`` + the seed's numpy evaluation).

The expected settings per dataset are written here from the seed (FIRe-CCReID ``test.py`` / ``test_cc.py``), not read
from ``eval_settings``: LTCC general (junk = same pid and camera) and clothes-changing (also same clothes), PRCC
same-clothes (query B) and clothes-changing (query C) against the whole gallery A, Celeb-reID and Market-1501 with the
market protocol. Random-init CSSC, fp32, CPU, images written at the eval size (both loaders' resize is the identity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from fastccreid.data.datasets import build_dataset
from fastccreid.data.synth import make_synthetic
from fastccreid.engine.amp import resolve_amp
from fastccreid.engine.distributed import DistContext
from fastccreid.engine.evaluate import EvalConfig, Features, evaluate_model
from fastccreid.models import CSSC
from fastccreid.reference.dataloader import build_reference_loaders
from fastccreid.reference.evaluation import evaluate, evaluate_ltcc, evaluate_prcc_all_gallery
from fastccreid.reference.train_step import reference_distance, reference_extract_features

HEIGHT, WIDTH = 64, 32  # small: 4 CSSC forwards per test image (2 paths x flip TTA) on CPU
CPU = torch.device("cpu")


@dataclass(frozen=True)
class RefSetting:
    """One setting the seed reports: its query set (fast name, reference-loader name) and its metric function."""

    name: str
    query: str  # attribute of ReIDDataset ("query", "query_same", "query_diff")
    ref_query: str  # key of build_reference_loaders(...).queries
    metric: Any  # (distmat, q: Features-like, g) -> (cmc, mAP, mINP)


def _market(dm, q, g):
    return evaluate(dm, q.pids, g.pids, q.camids, g.camids)


def _ltcc(cc: bool):
    return lambda dm, q, g: evaluate_ltcc(dm, q.pids, g.pids, q.camids, g.camids, q.clothes, g.clothes,
                                          ltcc_cc_setting=cc)


def _prcc(dm, q, g):
    return evaluate_prcc_all_gallery(dm, q.pids, g.pids)  # the seed's default: every query counted


# layout -> (make_synthetic keywords, the seed's settings): 2-3 test identities, 6 to 12 test images per dataset
# (37 in all), every query with a true match under its protocol. Market: 2 images per camera, so the same-pid
# same-camera junk rule removes something; Celeb-reID gives every image its own camera (no junk).
CASES: dict[str, tuple[dict[str, int], list[RefSetting]]] = {
    "ltcc": (dict(ids=4, clothes=2, cams=3, images_per=1),
             [RefSetting("general", "query", "query", _ltcc(False)),
              RefSetting("clothes-changing", "query", "query", _ltcc(True))]),
    "prcc": (dict(ids=6, images_per=1),
             [RefSetting("same-clothes", "query_same", "same-clothes", _prcc),
              RefSetting("clothes-changing", "query_diff", "clothes-changing", _prcc)]),
    "celeb": (dict(ids=4, clothes=2, cams=2, images_per=1), [RefSetting("market", "query", "query", _market)]),
    "market1501": (dict(ids=4, clothes=1, cams=2, images_per=2),
                   [RefSetting("market", "query", "query", _market)]),
}


@dataclass
class RefFeatures:
    feats: torch.Tensor
    pids: np.ndarray
    camids: np.ndarray
    clothes: np.ndarray


@pytest.fixture(scope="module")
def model() -> CSSC:
    torch.manual_seed(0)
    return CSSC(5, last_stride=1, pretrained=None).eval()


@pytest.mark.parametrize("layout", list(CASES))
def test_evaluate_model_matches_reference_path(tmp_path, model, layout):
    synth_kw, expected = CASES[layout]
    root = make_synthetic(layout, tmp_path / layout, seed=4, size=(HEIGHT, WIDTH), **synth_kw)
    dataset = build_dataset(layout, root)
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=CPU)
    # batch 4 leaves a partial last batch; the reference uses batch 5, so no batch is the same on both sides.
    cfg = EvalConfig(height=HEIGHT, width=WIDTH, batch_size=4, amp=resolve_amp("off", CPU), loader="torch",
                     num_workers=0, progress=False)
    fast_feats: dict[str, Features] = {}
    results = evaluate_model(model, dataset, cfg, ctx, log=lambda _line: None, features_out=fast_feats)
    assert list(results) == [s.name for s in expected]

    loaders = build_reference_loaders(dataset, height=HEIGHT, width=WIDTH, train_batch=4, test_batch=5,
                                      num_instances=2, num_workers=0, use_gpu=False)
    ref_sets = {"gallery": (loaders.gallery, dataset.gallery)}
    ref_sets.update({s.query: (loaders.queries[s.ref_query], getattr(dataset, s.query)) for s in expected})
    ref_feats: dict[str, RefFeatures] = {}
    for set_name, (loader, records) in ref_sets.items():
        assert len(records) > 0, f"{layout}: empty {set_name}"
        ref = RefFeatures(*reference_extract_features(model, loader, device=CPU))
        fast = fast_feats[set_name]
        # Labels in record order on both sides.
        np.testing.assert_array_equal(fast.pids, ref.pids, err_msg=f"{layout} {set_name} pids")
        np.testing.assert_array_equal(fast.camids, ref.camids, err_msg=f"{layout} {set_name} camids")
        np.testing.assert_array_equal(fast.clothes, ref.clothes, err_msg=f"{layout} {set_name} clothes")
        # Unit-norm fp32 features; fast side channels_last in batches of 4, reference contiguous in batches of 5:
        # only summation order differs (seen ~1e-7 here), 1e-5 catches a missing flip or normalisation.
        assert fast.feats.dtype == torch.float32 and fast.feats.shape == ref.feats.shape
        torch.testing.assert_close(fast.feats, ref.feats, rtol=1e-4, atol=1e-5, msg=f"{layout} {set_name}")
        ref_feats[set_name] = ref

    g = ref_feats["gallery"]
    seen = []
    for s in expected:
        q = ref_feats[s.query]
        dm = reference_distance(q.feats, g.feats)
        # Random-init features are nearly parallel (squared distances ~0.004-0.02), so check that the rankings cannot
        # hinge on the feature noise: every gap between a row's sorted distances must exceed 10x the largest change
        # the fast features make to a distance, plus 1e-6 for the fast evaluator's own fp32 rounding of distances
        # <= 4 (seen: moved ~4e-7, gaps ~1e-4 with dataset seed 4; a failure here is a data problem, not a bug).
        moved = np.abs(reference_distance(fast_feats[s.query].feats, fast_feats["gallery"].feats) - dm).max()
        gap = np.diff(np.sort(dm, axis=1), axis=1).min()
        assert gap > 10 * moved + 1e-6, f"{layout} {s.name}: near-tied distances (gap {gap:.1e}, moved {moved:.1e})"
        cmc, m_ap, m_inp = s.metric(dm, q, g)
        r = results[s.name]
        # The seed sums CMC rows in float32 (its astype): 1e-6 absolute; AP / INP the same ranks, same formulas.
        np.testing.assert_allclose(r.cmc, cmc, rtol=0, atol=1e-6, err_msg=f"{layout} {s.name} CMC")
        assert r.mAP == pytest.approx(m_ap, abs=1e-6), f"{layout} {s.name} mAP"
        assert r.mINP == pytest.approx(m_inp, abs=1e-6), f"{layout} {s.name} mINP"
        assert r.num_queries == len(q.pids)
        seen.append((r.mAP, r.mINP, tuple(r.cmc)))
    if layout == "ltcc":  # the two protocols differ on this data, so a swapped protocol fails the test
        assert seen[0] != seen[1]
