"""Ranking metrics with one target per user (EVALUATION.md): HR@K (= Recall@K), NDCG@K, MRR@K."""

from __future__ import annotations

import numpy as np


def rank_metrics(ranks: np.ndarray, ks: tuple[int, ...] = (5, 10, 20)) -> dict[int, dict[str, float]]:
    """ranks: 0-based rank of each user's target among all candidates (a huge value = not ranked).

    Returns {k: {"hr", "ndcg", "mrr"}} averaged over all users.
    """
    r = np.asarray(ranks, dtype=np.float64)
    out = {}
    for k in ks:
        hit = r < k
        out[k] = {
            "hr": float(hit.mean()) if len(r) else 0.0,
            "ndcg": float(np.where(hit, 1.0 / np.log2(r + 2.0), 0.0).mean()) if len(r) else 0.0,
            "mrr": float(np.where(hit, 1.0 / (r + 1.0), 0.0).mean()) if len(r) else 0.0,
        }
    return out
