"""Trains tiny towers and a reranker on synthetic data; run alone or under torchrun.

`python ddp_worker.py OUT NUM_NEGATIVES [DROPOUT]` writes the trained state dicts to OUT (rank 0 only).
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import torch

from freshrec.config import TEXT_DIM, ItemTowerConfig, ModelConfig, TrainConfig
from freshrec.training.distributed import from_env
from freshrec.training.train import (
    Catalog,
    all_item_vectors,
    history_inputs,
    make_sequence,
    pad_batch,
    seed_everything,
    train_reranker,
    train_towers,
)


def data(n_items: int = 60, n_users: int = 41):
    g = np.random.default_rng(123)
    catalog = Catalog([f"i{k}" for k in range(n_items)], [""] * n_items, ["{}"] * n_items,
                      g.standard_normal((n_items, TEXT_DIM)).astype(np.float32), np.arange(n_items, dtype=np.int64))  # fmt: skip
    seqs = []
    for u in range(n_users):
        n = int(g.integers(3, 14))
        seqs.append(make_sequence(f"u{u}", g.integers(0, n_items, n), np.zeros(n, np.int64), np.arange(n) * 60.0, np.ones(n)))
    valid = (seqs[:12], g.integers(0, n_items, 12))
    return catalog, seqs, valid


def main() -> None:
    out, negatives = sys.argv[1], int(sys.argv[2])
    dropout = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    cfg = ModelConfig.tiny()
    cfg = dataclasses.replace(
        cfg,
        item=dataclasses.replace(ItemTowerConfig.tiny(), id_vocab=60, dropout=dropout, id_dropout=dropout),
        train=dataclasses.replace(TrainConfig.tiny(), retrieval_epochs=2, rerank_epochs=1, num_negatives=negatives),
    )
    catalog, seqs, valid = data()
    # A batch size that leaves one sequence window for the last batch: one rank gets a stand-in share.
    L = cfg.user.max_history
    windows = sum(len(range(len(s.rows), 1, -L)) for s in seqs if len(s.rows) >= 2)
    batch_size = next(b for b in range(8, windows) if windows % b == 1)  # 55 windows: 9
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=batch_size))
    ranks = from_env()
    rng = seed_everything(cfg.train.seed)
    item_tower, user_tower, log = train_towers(cfg, catalog, seqs, valid, rng, ranks)
    reranker, _ = train_reranker(cfg, item_tower, user_tower, catalog, seqs, valid, rng, ranks)
    if ranks.main:  # what the models compute on the validation users: vectors and reranker scores
        with torch.no_grad():
            items = all_item_vectors(item_tower.eval(), catalog)
            batch = pad_batch(valid[0], [len(s.rows) for s in valid[0]], cfg.user.max_history)
            hist = history_inputs(batch, items)
            users = user_tower(**hist)
            cand = torch.arange(cfg.reranker.num_candidates).repeat(len(valid[0]), 1)
            scores = reranker.eval()(**hist, candidate_vectors=items[cand], candidate_mask=torch.ones_like(cand, dtype=torch.bool),
                                     candidate_scores=(items[cand] * users[:, None, :]).sum(-1))  # fmt: skip
        torch.save({"items": items, "users": users, "scores": scores, "losses": [e["loss"] for e in log["epochs"]],
                    "world": ranks.world}, out)  # fmt: skip
    ranks.close()


if __name__ == "__main__":
    main()
