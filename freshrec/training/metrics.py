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


# -- beyond accuracy (top-K lists: (U, K) catalog rows) ---------------------------------------
def coverage(top: np.ndarray, n_items: int) -> float:
    """Catalog coverage: distinct items over all top-K lists / n_items."""
    if n_items <= 0:
        raise ValueError(f"coverage: n_items must be > 0, got {n_items}")
    return float(len(np.unique(np.asarray(top)))) / n_items


def intra_list_diversity(top: np.ndarray, item_embeddings: np.ndarray) -> float:
    """Mean over lists of the mean pairwise cosine distance (1 - cos) between the list's items.

    Embeddings (e.g. item text embeddings) are L2-normalised first; an all-zero embedding stays
    zero (cosine 0, distance 1 to everything). Lists of fewer than 2 items count as 0.
    """
    top = np.asarray(top, dtype=np.int64)
    if top.ndim != 2 or top.shape[0] == 0:
        return 0.0
    U, K = top.shape
    if K < 2:
        return 0.0
    emb = np.asarray(item_embeddings, dtype=np.float64)
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    emb = emb / np.where(norm > 0, norm, 1.0)
    vecs = emb[top]  # (U, K, D)
    cos = np.einsum("ukd,ujd->ukj", vecs, vecs)  # (U, K, K)
    off_diag = ~np.eye(K, dtype=bool)
    per_list = (1.0 - cos[:, off_diag]).mean(axis=1)
    return float(per_list.mean())


def novelty(top: np.ndarray, popularity: np.ndarray, n_users: int) -> float:
    """Mean self-information of the recommended items, in bits:

        novelty = mean over every entry i of every top-K list of -log2(p_i),
        p_i = (number of distinct users who interacted with i in training + 1) / (n_users + 1).

    `popularity[i]` is that distinct-user count; the +1 keeps never-seen items finite.
    """
    top = np.asarray(top, dtype=np.int64)
    if top.size == 0:
        return 0.0
    pop = np.asarray(popularity, dtype=np.float64)
    p = (pop[top] + 1.0) / (n_users + 1.0)
    return float(-np.log2(p).mean())
