"""Training on CPU: the two towers (full or sampled softmax over the catalog), then the reranker
(cross-entropy over retrieved candidates). Progress lines, seeds, checkpoints, early stopping on
the validation split."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from freshrec.config import ModelConfig
from freshrec.models.features import event_features, gather_vectors, windows
from freshrec.models.reranker import Reranker
from freshrec.models.text_encoder import TextEncoder, embed_texts
from freshrec.models.tokenizer import Tokenizer
from freshrec.models.towers import ItemTower, UserTower
from freshrec.progress import log
from freshrec.training.distributed import Ranks
from freshrec.training.metrics import rank_metrics


@dataclass
class Catalog:
    """Every item of the dataset, in a fixed row order."""

    item_ids: list[str]
    texts: list[str]
    metadata: list[str]
    text_embedding: np.ndarray  # (N, E) float32
    id_index: np.ndarray  # (N,) int64, 0 = no learned id row


@dataclass
class Sequence:
    """One user's events in time order, as catalog rows and features."""

    user_id: str
    rows: np.ndarray  # (n,) int64
    types: np.ndarray  # (n,) int64
    features: np.ndarray  # (n, F) float32


def make_sequence(user_id: str, rows, types, timestamps, values) -> Sequence:
    return Sequence(
        user_id,
        np.asarray(rows, np.int64),
        np.asarray(types, np.int64),
        event_features(np.asarray(timestamps, np.float64), np.asarray(values, np.float32)),
    )


def pad_batch(seqs: list[Sequence], ends: list[int], length: int) -> dict[str, np.ndarray]:
    """For each (sequence, end) the events [end-length, end) left-padded (features.windows, the
    recipe serving uses) -> rows and the contract's history arrays, (B, length, ...)."""
    return windows([s.rows for s in seqs], [s.types for s in seqs], [s.features for s in seqs], ends, length)


def history_inputs(batch: dict[str, np.ndarray], item_vectors: torch.Tensor) -> dict[str, torch.Tensor]:
    """A padded batch -> the contract's history tensors, vectors gathered from `item_vectors`."""
    mask = torch.from_numpy(batch["history_mask"])
    return {
        "history_vectors": gather_vectors(item_vectors, torch.from_numpy(batch["rows"]), mask),
        "history_features": torch.from_numpy(batch["history_features"]),
        "history_types": torch.from_numpy(batch["history_types"]),
        "history_mask": mask,
    }


def seed_everything(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def all_item_vectors(tower: ItemTower, catalog: Catalog) -> torch.Tensor:
    return tower(torch.from_numpy(catalog.text_embedding), torch.from_numpy(catalog.id_index)[:, None])


# -- evaluation used for early stopping, the build report and `freshrec eval` ------------------
@dataclass
class Ranked:
    """Per user: 0-based rank of the target (10**9 = not ranked) and the top-`k` catalog rows."""

    retrieval_ranks: np.ndarray  # (U,)
    retrieval_top: np.ndarray  # (U, k)
    rerank_ranks: np.ndarray | None = None  # (U,): 10**9 where the target was not retrieved
    rerank_top: np.ndarray | None = None  # (U, k)


@torch.no_grad()
def rank_users(
    cfg: ModelConfig,
    item_tower: ItemTower,
    user_tower: UserTower,
    reranker: Reranker | None,
    catalog: Catalog,
    histories: list[Sequence],
    targets: np.ndarray,
    k: int = 10,
    batch_size: int = 256,
) -> Ranked:
    """Full ranking over the catalog, everything the user has seen masked; then, with a
    reranker, the top `num_candidates` retrieved items reordered (as served)."""
    for m in (item_tower, user_tower, reranker):
        if m is not None:
            m.eval()
    items = all_item_vectors(item_tower, catalog)
    L, C = cfg.user.max_history, cfg.reranker.num_candidates
    ret_ranks, ret_top, rr_ranks, rr_top = [], [], [], []
    for i in range(0, len(histories), batch_size):
        seqs = histories[i : i + batch_size]
        tgt = torch.from_numpy(targets[i : i + batch_size])
        batch = pad_batch(seqs, [len(s.rows) for s in seqs], L)
        hist = history_inputs(batch, items)
        u = user_tower(**hist)  # (B, D)
        scores = u @ items.T  # (B, N)
        for b, s in enumerate(seqs):  # mask everything the user has seen, not only the window
            scores[b, torch.from_numpy(s.rows)] = float("-inf")
        target_scores = scores.gather(1, tgt[:, None])
        ret_ranks.append((scores > target_scores).sum(1))
        ret_top.append(scores.topk(k, dim=1).indices)
        if reranker is not None:
            top = scores.topk(C, dim=1)
            cand = top.indices  # (B, C)
            rr = reranker(
                **hist, candidate_vectors=items[cand], candidate_mask=torch.ones_like(cand, dtype=torch.bool), candidate_scores=top.values
            )
            hit = cand == tgt[:, None]
            inside = hit.any(1)
            t_score = (rr * hit).sum(1)
            rank = (rr > t_score[:, None]).sum(1)
            rr_ranks.append(torch.where(inside, rank, torch.full_like(rank, 10**9)))
            rr_top.append(cand.gather(1, rr.topk(k, dim=1).indices))
    cat = lambda xs: torch.cat(xs).numpy() if xs else None  # noqa: E731
    return Ranked(cat(ret_ranks), cat(ret_top), cat(rr_ranks), cat(rr_top))


def evaluate(
    cfg: ModelConfig,
    item_tower: ItemTower,
    user_tower: UserTower,
    reranker: Reranker | None,
    catalog: Catalog,
    histories: list[Sequence],
    targets: np.ndarray,
    ks: tuple[int, ...] = (5, 10, 20),
    batch_size: int = 256,
) -> dict[str, float]:
    """Full-ranking metrics, seen items masked: retrieval alone and retrieval + reranker."""
    r = rank_users(cfg, item_tower, user_tower, reranker, catalog, histories, targets, batch_size=batch_size)
    out = {f"retrieval_{k}": v for k, v in rank_metrics(r.retrieval_ranks, ks).items()}
    if r.rerank_ranks is not None:
        out.update({f"rerank_{k}": v for k, v in rank_metrics(r.rerank_ranks, ks).items()})
    return out


# -- stage 1: two towers -----------------------------------------------------------------------
class _Towers(torch.nn.Module):
    """Both towers as one module, so that DDP sees one forward and one backward per step."""

    def __init__(self, item_tower: ItemTower, user_tower: UserTower, ranks: Ranks) -> None:
        super().__init__()
        self.item_tower, self.user_tower, self.ranks = item_tower, user_tower, ranks

    def forward(self, text: torch.Tensor, ids: torch.Tensor, inputs: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        with self.ranks.shared_rng():  # every rank embeds the catalog alike
            items = self.item_tower(text, ids)  # (N, D): the whole catalog, so the softmax is exact
        return items, self.user_tower.encode(**history_inputs(inputs, items))  # (B, L, D)


def train_towers(cfg: ModelConfig, catalog: Catalog, train: list[Sequence], valid: tuple[list[Sequence], np.ndarray], rng,
                 ranks: Ranks | None = None) -> tuple[ItemTower, UserTower, dict]:  # fmt: skip
    tc = cfg.train
    L = cfg.user.max_history
    ranks = ranks or Ranks()
    item_tower, user_tower = ItemTower(cfg.item), UserTower(cfg.user)
    ranks.seed(tc.seed)
    model = ranks.wrap(_Towers(item_tower, user_tower, ranks))
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    text = torch.from_numpy(catalog.text_embedding)
    ids = torch.from_numpy(catalog.id_index)[:, None]
    N = len(catalog.item_ids)

    # Windows of L+1 events cover every training event once as a target (SASRec-style).
    spans = [(s, end) for s in train if len(s.rows) >= 2 for end in range(len(s.rows), 1, -L)]
    best, best_state, history = -1.0, None, []
    for epoch in range(1, tc.retrieval_epochs + 1):
        model.train()
        t0, total, count = time.time(), 0.0, 0
        order = rng.permutation(len(spans))
        for i in range(0, len(order), tc.batch_size):
            chunk, counted = ranks.share([spans[j] for j in order[i : i + tc.batch_size]])
            batch = pad_batch([s for s, _ in chunk], [e for _, e in chunk], L + 1)
            inputs = {k: v[:, :-1] for k, v in batch.items()}
            targets = torch.from_numpy(batch["rows"][:, 1:])
            valid_pos = torch.from_numpy(batch["history_mask"][:, 1:] & batch["history_mask"][:, :-1])
            items, u = model(text, ids, inputs)
            u, targets = u[valid_pos], targets[valid_pos]  # (P, D), (P,)
            if 0 < tc.num_negatives < N:
                # Sampled softmax: the batch's targets (every rank's) plus uniform negatives, logQ-corrected.
                neg = torch.from_numpy(rng.choice(N, tc.num_negatives, replace=False))
                batch_targets, first = ranks.gather(targets if counted else targets[:0])
                if not counted:  # a stand-in share (its loss counts 0): its own targets lead the candidates
                    batch_targets, first = targets, 0
                cand = torch.cat([batch_targets, neg])
                logits = u @ items[cand].T / tc.temperature
                logits[:, len(batch_targets) :] += math.log(N / tc.num_negatives)
                labels = torch.arange(len(targets))
                own = labels + first
                clash = cand[None, :] == targets[:, None]  # the same item elsewhere is not a negative
                clash[labels, own] = False
                logits = logits.masked_fill(clash, float("-inf"))
                loss, n = ranks.mean_loss(logits, own, counted)
            else:
                loss, n = ranks.mean_loss(u @ items.T / tc.temperature, targets, counted)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * n / ranks.world  # this rank's sum of losses
            count += n
        total = ranks.sum(total)
        metrics = evaluate(cfg, item_tower, user_tower, None, catalog, *valid, ks=(10,))
        history.append({"epoch": epoch, "loss": total / max(count, 1), **metrics})
        if epoch % tc.log_every == 0 or epoch == tc.retrieval_epochs:
            log(f"towers epoch {epoch}/{tc.retrieval_epochs} loss {total / max(count, 1):.4f} "
                f"valid HR@10 {metrics['retrieval_10']['hr']:.4f} NDCG@10 {metrics['retrieval_10']['ndcg']:.4f} ({time.time() - t0:.1f}s)")
        score = metrics["retrieval_10"]["ndcg"]
        if score > best:
            best, best_state = score, (clone_state(item_tower), clone_state(user_tower))
    item_tower.load_state_dict(best_state[0])
    user_tower.load_state_dict(best_state[1])
    return item_tower.eval(), user_tower.eval(), {"epochs": history, "best_valid_ndcg10": best}


def clone_state(m: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


# -- stage 2: reranker -------------------------------------------------------------------------
@torch.no_grad()
def rerank_samples(cfg: ModelConfig, item_tower, user_tower, catalog: Catalog, train: list[Sequence], rng) -> tuple[list, np.ndarray, np.ndarray]:
    """(sequence, end) prefixes with retrieved candidates; the target is put among them."""
    prefixes = []
    for s in train:
        n = len(s.rows)
        if n < 2:
            continue
        ends = {n - 1} | set(rng.integers(1, n, size=cfg.train.rerank_positions - 1).tolist())
        prefixes += [(s, e) for e in sorted(ends)]
    return prefixes, *rerank_candidates(cfg, all_item_vectors(item_tower, catalog), user_tower, prefixes, rng)


@torch.no_grad()
def rerank_candidates(cfg: ModelConfig, items: torch.Tensor, user_tower, prefixes: list[tuple[Sequence, int]], rng) -> tuple[np.ndarray, np.ndarray]:
    """For each (sequence, end) prefix: the towers' top C-1 items (seen ones and the target
    excluded) with the target put at a random position -> (candidates (N, C), target positions)."""
    L, C = cfg.user.max_history, cfg.reranker.num_candidates
    cands, labels = np.zeros((len(prefixes), C), np.int64), np.zeros(len(prefixes), np.int64)
    for i in range(0, len(prefixes), 512):
        chunk = prefixes[i : i + 512]
        batch = pad_batch([s for s, _ in chunk], [e for _, e in chunk], L)
        scores = user_tower(**history_inputs(batch, items)) @ items.T
        for b, (s, e) in enumerate(chunk):
            scores[b, torch.from_numpy(s.rows[:e])] = float("-inf")
            scores[b, s.rows[e]] = float("-inf")
        top = scores.topk(C - 1, dim=1).indices.numpy()
        for b, (s, e) in enumerate(chunk):
            pos = rng.integers(0, C)
            row = np.insert(top[b], pos, s.rows[e])
            cands[i + b], labels[i + b] = row, pos
    return cands, labels


def reranker_epoch(cfg: ModelConfig, reranker: torch.nn.Module, opt, items: torch.Tensor, user_tower, prefixes: list, cands: np.ndarray,
                   labels: np.ndarray, rng, ranks: Ranks | None = None) -> float:  # fmt: skip
    """One pass of the reranker's objective (softmax over the candidates) -> mean loss.
    `reranker` may be DDP-wrapped (`ranks.wrap`); each rank then trains on its share of a batch."""
    ranks = ranks or Ranks()
    reranker.train()
    total, order = 0.0, rng.permutation(len(prefixes))
    bs = max(1, cfg.train.batch_size // 2)
    for i in range(0, len(order), bs):
        idx, counted = ranks.share(order[i : i + bs])
        idx = np.asarray(idx)
        batch = pad_batch([prefixes[j][0] for j in idx], [prefixes[j][1] for j in idx], cfg.reranker.max_history)
        c = torch.from_numpy(cands[idx])
        scores = reranker(
            **history_inputs(batch, items), candidate_vectors=items[c], candidate_mask=torch.ones_like(c, dtype=torch.bool),
            candidate_scores=candidate_scores(user_tower, items, batch, c),
        )  # fmt: skip
        loss, n = ranks.mean_loss(scores, torch.from_numpy(labels[idx]), counted)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item() * n / ranks.world
    reranker.eval()
    return ranks.sum(total) / max(len(order), 1)


@torch.no_grad()
def candidate_scores(user_tower, items: torch.Tensor, batch: dict[str, np.ndarray], cands: torch.Tensor) -> torch.Tensor:
    """Retrieval cosine of each candidate for each prefix: (B, C)."""
    u = user_tower(**history_inputs(batch, items))  # (B, D)
    return (items[cands] * u[:, None, :]).sum(-1)


def train_reranker(cfg: ModelConfig, item_tower, user_tower, catalog: Catalog, train: list[Sequence], valid, rng,
                   ranks: Ranks | None = None) -> tuple[Reranker, dict]:  # fmt: skip
    tc = cfg.train
    ranks = ranks or Ranks()
    reranker = Reranker(cfg.reranker)
    model = ranks.wrap(reranker)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.rerank_lr, weight_decay=tc.weight_decay)
    with torch.no_grad():
        items = all_item_vectors(item_tower, catalog)
    best, best_state, best_epoch, history = -1.0, None, 0, []
    for epoch in range(1, tc.rerank_epochs + 1):
        t0 = time.time()
        prefixes, cands, labels = rerank_samples(cfg, item_tower, user_tower, catalog, train, rng)
        loss = reranker_epoch(cfg, model, opt, items, user_tower, prefixes, cands, labels, rng, ranks)
        metrics = evaluate(cfg, item_tower, user_tower, reranker, catalog, *valid, ks=(10,))
        history.append({"epoch": epoch, "loss": loss, **metrics})
        log(f"reranker epoch {epoch}/{tc.rerank_epochs} loss {loss:.4f} "
            f"valid HR@10 {metrics['rerank_10']['hr']:.4f} NDCG@10 {metrics['rerank_10']['ndcg']:.4f} ({time.time() - t0:.1f}s)")
        if metrics["rerank_10"]["ndcg"] > best:
            best, best_state, best_epoch = metrics["rerank_10"]["ndcg"], clone_state(reranker), epoch
        elif epoch - best_epoch >= tc.rerank_patience:
            log(f"reranker: no better validation NDCG@10 for {tc.rerank_patience} epochs; best epoch {best_epoch}")
            break
    reranker.load_state_dict(best_state)
    return reranker.eval(), {"epochs": history, "best_valid_ndcg10": best}


def text_embeddings(texts: list[str], minilm: Path, max_tokens: int, cache: Path | None) -> np.ndarray:
    """MiniLM embeddings of the catalog texts, cached by content hash (the encoder is frozen)."""
    import hashlib

    key = hashlib.sha256(json.dumps([max_tokens, texts]).encode()).hexdigest()[:16]
    if cache is not None:
        path = cache / f"text_embeddings-{key}.npy"
        if path.exists():
            return np.load(path)
    t0 = time.time()
    log(f"embedding {len(texts)} item texts with all-MiniLM-L6-v2 ...")
    emb = embed_texts(TextEncoder(minilm), Tokenizer(minilm, max_tokens), texts).astype(np.float32)
    log(f"embedded {len(texts)} texts in {time.time() - t0:.1f}s")
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        np.save(path, emb)
    return emb
