"""`freshrec eval --parts topics`: the catalog's topics (coherence, top words), topic-level
diversity of the recommended lists, and which user properties go with per-user quality.

The helpers (`umass_coherence`, `spearman_ci`, `topic_diversity`, `ndcg_at`) are small pure
functions tested on inputs with known answers (tests/offline/evaluation/test_analysis.py).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from freshrec.config import ModelConfig
from freshrec.progress import log

BOOTSTRAP = 1000  # resamples of the users for each correlation's 95% interval
# The user properties set against per-user NDCG@10, in the report's order.
FEATURES = {
    "history_length": "events in the history",
    "days_since_last": "days from the last history event to the test event",
    "history_popularity": "mean popularity of the history's items (training users who rated each)",
    "rating_spread": "standard deviation of the history's ratings",
    "topic_entropy": "entropy of the interest profile (nats)",
}


def ndcg_at(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """Per-user NDCG@k of one held-out item at 0-based `ranks` (rank >= k: 0)."""
    r = np.asarray(ranks, np.float64)
    return np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)


def umass_coherence(doc_words: Sequence[set[int]], topic_words: Sequence[Sequence[int]]) -> list[float]:
    """UMass coherence (Mimno et al., 2011) of each topic's top words over the documents, as the
    mean over word pairs of log((D(w_m, w_l) + 1) / D(w_l)), w_l ranked above w_m (D: document
    frequency, co-document frequency). 0 is the best; lower is less coherent."""
    out = []
    for words in topic_words:
        scores = []
        for m in range(1, len(words)):
            for l_ in range(m):
                d_l = sum(1 for d in doc_words if words[l_] in d)
                d_ml = sum(1 for d in doc_words if words[l_] in d and words[m] in d)
                if d_l:
                    scores.append(np.log((d_ml + 1.0) / d_l))
        out.append(float(np.mean(scores)) if scores else 0.0)
    return out


def spearman_ci(x: np.ndarray, y: np.ndarray, n_boot: int = BOOTSTRAP, seed: int = 0) -> dict[str, float]:
    """Spearman's rank correlation of x and y (pairs with a NaN dropped) and its bootstrap 95%
    percentile interval over resampled pairs (fixed seed)."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    if len(x) < 3:  # e.g. the rating spread of a dataset with no ratings: nothing to correlate
        return {"rho": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": int(len(x))}
    rho = float(spearmanr(x, y).statistic)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(x), len(x))
        if np.ptp(x[idx]) > 0 and np.ptp(y[idx]) > 0:
            boots.append(spearmanr(x[idx], y[idx]).statistic)
    lo, hi = (np.percentile(boots, [2.5, 97.5]) if boots else (float("nan"), float("nan")))
    return {"rho": rho, "ci_low": float(lo), "ci_high": float(hi), "n": int(len(x))}


def topic_diversity(top: np.ndarray, mixtures: np.ndarray) -> dict[str, float]:
    """Topic-level diversity of (U, K) top lists: the intra-list diversity of the items' topic
    mixtures (mean pairwise 1 - cosine, as `intra_list_diversity` of the text embeddings) and
    the mean number of distinct dominant topics per list."""
    from freshrec.training.metrics import intra_list_diversity

    top = np.asarray(top, np.int64)
    dominant = np.asarray(mixtures).argmax(1)[top]  # (U, K)
    return {"topic_ild": intra_list_diversity(top, mixtures), "distinct_topics": float(np.mean([len(set(r)) for r in dominant.tolist()]))}


def user_features(p, mixtures: np.ndarray, cfg: ModelConfig, popularity: np.ndarray) -> dict[str, np.ndarray]:
    """Each test user's properties (in the order of `p.test`): from the history the model saw
    when it ranked the test item (training + validation events)."""
    from freshrec.models.topics import entropy, interest_profile
    from freshrec.serving.pipeline import content_weight

    e, split = p.ds.events, p.split
    out: dict[str, list[float]] = {k: [] for k in FEATURES}
    for user in sorted(split.test):
        idx = split.history(user, "test")
        rows = np.array([p.row[i] for i in e.item_id[idx]], np.int64)
        out["history_length"].append(len(idx))
        out["days_since_last"].append((e.timestamp[split.test[user]] - e.timestamp[idx[-1]]) / 86400.0 if len(idx) else np.nan)
        out["history_popularity"].append(float(popularity[rows].mean()) if len(rows) else np.nan)
        values = e.value[idx].astype(np.float64)
        values = values[~np.isnan(values)]
        out["rating_spread"].append(float(values.std()) if len(values) >= 2 else np.nan)
        # the profile as served: the user tower's window, the same weights (freshrec.serving.pipeline.Recommender.interest_events)
        last = idx[-cfg.user.max_history :]
        n = len(last)
        weights = np.array([content_weight(e.event_type[j], float(e.value[j]), cfg.events.content_weights) * cfg.topics.profile_decay ** (n - 1 - a)
                            for a, j in enumerate(last)])  # fmt: skip
        profile = interest_profile(mixtures[[p.row[i] for i in e.item_id[last]]], weights) if n else None
        out["topic_entropy"].append(entropy(profile) if profile is not None else np.nan)
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def topics_section(ds, cfg: ModelConfig, build_dir: Path) -> dict:
    """The topics of the seed-0 build and the correlation analysis on its leave-one-out test."""
    from freshrec.contract import TOPICS_FILE
    from freshrec.models.checkpoints import CHECKPOINTS, load_models
    from freshrec.models.topics import TopicModel, document
    from freshrec.training.build import fit_topics, prepare
    from freshrec.training.metrics import intra_list_diversity
    from freshrec.training.train import rank_users

    t0 = time.time()
    _, modules, _ = load_models(build_dir)
    p = prepare(ds, cfg)
    cfg = dataclasses.replace(p.cfg, topics=cfg.topics)
    path = build_dir / CHECKPOINTS / TOPICS_FILE
    docs = [document(t, m) for t, m in zip(p.catalog.texts, p.catalog.metadata)]
    if path.exists():
        model = TopicModel.load(path)
        mixtures = model.transform(docs)
    else:  # a build from before topics: fitted here, as the build does
        model, mixtures, _ = fit_topics(p.catalog, cfg)
    k_words = cfg.topics.top_words
    # coherence over the items' documents, of each topic's top vocabulary entries
    counts = model.counts(docs)
    doc_words = [set(ids.tolist()) for ids, _ in counts]
    top_ids = [np.argsort(-model.components[t], kind="stable")[:k_words].tolist() for t in range(model.n_topics)]
    coherence = umass_coherence(doc_words, top_ids)
    share = mixtures.mean(0)
    topics = [{"topic": t, "words": model.top_words(t, k_words), "umass": round(coherence[t], 4), "catalog_share": round(float(share[t]), 4)}
              for t in range(model.n_topics)]  # fmt: skip

    e = p.ds.events
    train_rows = p.split.train_indices()
    popularity = np.zeros(len(p.catalog.item_ids), np.float64)  # training users who rated each item (eval's novelty counts)
    for _, row in {(u, p.row[i]) for u, i in zip(e.user_id[train_rows].tolist(), e.item_id[train_rows].tolist())}:
        popularity[row] += 1
    r = rank_users(p.cfg, modules["item_tower"], modules["user_tower"], modules.get("reranker"), p.catalog, *p.test)
    ranks = r.rerank_ranks if r.rerank_ranks is not None else r.retrieval_ranks
    top = r.rerank_top if r.rerank_top is not None else r.retrieval_top
    ndcg = ndcg_at(ranks, 10)
    diversity = {"ild@10": intra_list_diversity(top[:, :10], p.catalog.text_embedding), **{f"{k}@10": v for k, v in topic_diversity(top[:, :10], mixtures).items()}}
    feats = user_features(p, mixtures, cfg, popularity)
    corr = {name: spearman_ci(x, ndcg) for name, x in feats.items()}
    # the binned means behind the plot: NDCG@10 by quintile of each property
    bins = {}
    for name, x in feats.items():
        ok = ~np.isnan(x)
        if not ok.any():
            bins[name] = []
            continue
        edges = np.unique(np.quantile(x[ok], np.linspace(0, 1, 6)))
        which = np.clip(np.searchsorted(edges, x[ok], side="right") - 1, 0, len(edges) - 2)
        bins[name] = [{"low": float(edges[b]), "high": float(edges[b + 1]), "users": int((which == b).sum()),
                       "ndcg@10": float(ndcg[ok][which == b].mean())} for b in range(len(edges) - 1) if (which == b).any()]  # fmt: skip
    log(f"topics: {model.n_topics} topics, mean UMass {np.mean(coherence):.3f}; "
        + "; ".join(f"{n} rho {c['rho']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]" for n, c in corr.items()))
    return {
        "model": {"n_topics": model.n_topics, "vocabulary": len(model.vocabulary), "fit_seconds": model.fit_seconds,
                  "config": dataclasses.asdict(cfg.topics), "from_build": path.exists()},  # fmt: skip
        "coherence": {"measure": "UMass, mean over word pairs of the top words, over the catalog's item documents",
                      "mean": float(np.mean(coherence)), "top_words": k_words},  # fmt: skip
        "topics": topics,
        "diversity": {"model": "freshrec two-stage (seed-0 build), top-10 of every test user", **diversity},
        "correlation": {"target": "per-user NDCG@10 (freshrec two-stage, leave-one-out test)", "users": int(len(ndcg)),
                        "mean_ndcg@10": float(ndcg.mean()), "bootstrap": BOOTSTRAP, "features": corr, "bins": bins,
                        "descriptions": FEATURES},  # fmt: skip
        "build": str(build_dir),
        "seconds": round(time.time() - t0, 1),
    }

