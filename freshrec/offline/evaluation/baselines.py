"""Baselines of the offline evaluation (EVALUATION.md), run by us on the identical split.

Popularity, time-decayed popularity, item-kNN, PureSVD, ALS (implicit) and SASRec trained with
full softmax cross-entropy (ID-only). Every model learns from `Interactions` (catalog rows, time
ordered) and scores whole requests: a history of catalog rows plus the request time, so a user
seen after fitting (or a history that gained the validation event) is scored without a refit.
Scores cover the whole catalog; the caller (`full_ranks`) masks what the user has seen.

Tuning (`fit_tuned`): every config of `GRIDS[name]` is fit on the training events and scored on
the validation requests; the best NDCG@10 is refit on training + validation events. SASRec
early-stops on the validation requests instead and is not refit (the test request reads the
validation event from its history).

scipy and implicit (the `eval` extra) are imported where a baseline needs them.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from freshrec.training.metrics import rank_metrics

if TYPE_CHECKING:
    from freshrec.training.data import Dataset, Split

DAY = 86400.0


# -- data ------------------------------------------------------------------------------------
@dataclass
class Interactions:
    """Events a model may learn from, in time order (ties in source order)."""

    user: np.ndarray  # (E,) int64 user index in [0, n_users)
    row: np.ndarray  # (E,) int64 catalog row in [0, n_items)
    time: np.ndarray  # (E,) float64 unix seconds
    n_users: int
    n_items: int

    def __post_init__(self) -> None:
        self.user = np.asarray(self.user, dtype=np.int64)
        self.row = np.asarray(self.row, dtype=np.int64)
        self.time = np.asarray(self.time, dtype=np.float64)
        n = len(self.user)
        if self.row.shape != (n,) or self.time.shape != (n,) or self.user.ndim != 1:
            raise ValueError(f"interactions: user/row/time must be 1-D of equal length, got {self.user.shape}, {self.row.shape}, {self.time.shape}")
        if n and (self.user.min() < 0 or self.user.max() >= self.n_users):
            raise ValueError(f"interactions: user index outside [0, {self.n_users})")
        if n and (self.row.min() < 0 or self.row.max() >= self.n_items):
            raise ValueError(f"interactions: catalog row outside [0, {self.n_items})")

    def __len__(self) -> int:
        return len(self.user)

    def user_items(self, dtype=np.float32):
        """Binary (n_users, n_items) CSR matrix: 1 where the user interacted with the item."""
        import scipy.sparse as sp

        m = sp.csr_matrix((np.ones(len(self), dtype), (self.user, self.row)), shape=(self.n_users, self.n_items))
        m.sum_duplicates()
        m.data[:] = 1
        return m

    def sequences(self) -> list[np.ndarray]:
        """Per user index (all n_users of them), the catalog rows in time order (ties: source order)."""
        order = np.lexsort((np.arange(len(self)), self.time, self.user))
        bounds = np.searchsorted(self.user[order], np.arange(self.n_users + 1))
        rows = self.row[order]
        return [rows[bounds[u] : bounds[u + 1]] for u in range(self.n_users)]


@dataclass
class EvalSet:
    """One request per user: the history seen (catalog rows, oldest first), the target row, the request time."""

    histories: list[np.ndarray]  # each (n_i,) int64
    targets: np.ndarray  # (U,) int64
    times: np.ndarray  # (U,) float64: the target event's timestamp (the moment of the request)

    def __post_init__(self) -> None:
        self.histories = [np.asarray(h, dtype=np.int64) for h in self.histories]
        self.targets = np.asarray(self.targets, dtype=np.int64)
        self.times = np.asarray(self.times, dtype=np.float64)
        if not len(self.histories) == len(self.targets) == len(self.times):
            raise ValueError("eval set: histories, targets and times must have equal lengths")

    def __len__(self) -> int:
        return len(self.targets)


class Baseline(Protocol):
    name: str
    params: dict

    def fit(self, data: Interactions, valid: EvalSet | None = None) -> Baseline: ...

    def score(self, histories: list[np.ndarray], times: np.ndarray) -> np.ndarray:
        """(B, n_items) float32, higher = better; the CALLER masks seen items."""
        ...


# -- ranking ---------------------------------------------------------------------------------
def full_ranks(scores: np.ndarray, histories: list[np.ndarray], targets: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Mask every item in each history with -inf, return (0-based rank of each target among all
    items, counted as the number of items scoring strictly higher; (B, k) top-k rows).

    Ties count in the target's favour (strictly higher only); the top-k lists order equal scores
    by catalog row. `scores` is not modified. NaN scores are an error.
    """
    s = np.array(scores, dtype=np.float32, copy=True)
    targets = np.asarray(targets, dtype=np.int64)
    if s.ndim != 2 or s.shape[0] != len(targets) or len(histories) != len(targets):
        raise ValueError(f"full_ranks: scores {s.shape} do not match {len(histories)} histories / {len(targets)} targets")
    if np.isnan(s).any():
        raise ValueError("full_ranks: NaN scores")
    B, N = s.shape
    for b, h in enumerate(histories):
        if len(h):
            s[b, np.asarray(h, dtype=np.int64)] = -np.inf
    t = s[np.arange(B), targets]
    ranks = (s > t[:, None]).sum(1).astype(np.int64)
    top = np.argsort(-s, axis=1, kind="stable")[:, : min(k, N)]
    return ranks, top.astype(np.int64)


def evaluate_baseline(model: Baseline, data: EvalSet, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Ranks (U,) and top-10 rows (U, 10) over the whole EvalSet, batched."""
    ranks, tops = [], []
    for i in range(0, len(data), batch_size):
        hist = data.histories[i : i + batch_size]
        scores = model.score(hist, data.times[i : i + batch_size])
        r, t = full_ranks(scores, hist, data.targets[i : i + batch_size], k=10)
        ranks.append(r)
        tops.append(t)
    if not ranks:
        return np.zeros(0, np.int64), np.zeros((0, 10), np.int64)
    return np.concatenate(ranks), np.concatenate(tops)


def _valid_metrics(model: Baseline, valid: EvalSet) -> dict[str, float]:
    ranks, _ = evaluate_baseline(model, valid)
    m = rank_metrics(ranks, (10,))[10]
    return {"hr@10": m["hr"], "ndcg@10": m["ndcg"]}


def _history_matrix(histories: list[np.ndarray], n_items: int, weights: list[np.ndarray] | None = None, dtype=np.float32):
    """(B, n_items) CSR: 1 (or the given weight; a repeated item keeps its latest weight) per history item."""
    import scipy.sparse as sp

    dense = np.zeros((len(histories), n_items), dtype)
    for b, h in enumerate(histories):
        if len(h):
            dense[b, np.asarray(h, dtype=np.int64)] = 1.0 if weights is None else weights[b]
    return sp.csr_matrix(dense)


class _Base:
    """Params = the defaults overridden by the given dict (an unknown key is an error)."""

    name = ""
    defaults: dict[str, Any] = {}

    def __init__(self, params: dict | None = None, seed: int = 0) -> None:
        params = dict(params or {})
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise ValueError(f"{self.name}: unknown params {sorted(unknown)} (known: {sorted(self.defaults)})")
        self.params = {**self.defaults, **params}
        self.seed = seed
        self.n_items = 0

    def _check_fitted(self) -> None:
        if not self.n_items:
            raise RuntimeError(f"{self.name}: score() before fit()")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params}, seed={self.seed})"


# -- popularity ------------------------------------------------------------------------------
class Popularity(_Base):
    """Number of events per item in the fitted data."""

    name = "popularity"
    defaults: dict[str, Any] = {}

    def fit(self, data: Interactions, valid: EvalSet | None = None) -> Popularity:
        self.n_items = data.n_items
        self.counts = np.bincount(data.row, minlength=data.n_items).astype(np.float32)
        return self

    def score(self, histories: list[np.ndarray], times: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return np.repeat(self.counts[None, :], len(histories), axis=0)


class TimeDecayedPopularity(_Base):
    """At request time t: score_i = sum over fitted events e of item i with t_e < t of
    exp(-(t - t_e) / tau). Only events strictly before the request count.

    Exact and O(E + B * N) per call: requests are visited in time order and one per-item state is
    carried forward (decayed by exp(-dt / tau), plus the events that happened in between).
    Returned scores are log(score) (same order; float32 keeps tiny weights apart), and
    log(1e-300) for items with no earlier event.
    """

    name = "time_decayed_popularity"
    defaults: dict[str, Any] = {"tau_days": 7.0}

    def fit(self, data: Interactions, valid: EvalSet | None = None) -> TimeDecayedPopularity:
        if not self.params["tau_days"] > 0:
            raise ValueError(f"{self.name}: tau_days must be > 0")
        order = np.argsort(data.time, kind="stable")
        self._t, self._r = data.time[order], data.row[order]
        self.n_items = data.n_items
        return self

    def decayed_counts(self, times: np.ndarray) -> np.ndarray:
        """(B, n_items) float64 decayed counts at each request time."""
        self._check_fitted()
        times = np.asarray(times, dtype=np.float64)
        tau = float(self.params["tau_days"]) * DAY
        out = np.zeros((len(times), self.n_items), np.float64)
        state = np.zeros(self.n_items, np.float64)
        t_state, ptr = None, 0
        for b in np.argsort(times, kind="stable"):
            t = times[b]
            if t_state is not None and t > t_state:
                state *= math.exp(-(t - t_state) / tau)
            end = int(np.searchsorted(self._t, t, side="left"))  # events strictly before t
            if end > ptr:
                w = np.exp(-(t - self._t[ptr:end]) / tau)
                state += np.bincount(self._r[ptr:end], weights=w, minlength=self.n_items)
                ptr = end
            t_state = t
            out[b] = state
        return out

    def score(self, histories: list[np.ndarray], times: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(self.decayed_counts(times), 1e-300)).astype(np.float32)


# -- item-kNN --------------------------------------------------------------------------------
class ItemKNN(_Base):
    """Item-item cosine on the binary user-item matrix: sim(i, j) = |U_i & U_j| /
    (sqrt(|U_i| |U_j|) + shrink), self-similarity 0, the top-`k` neighbours kept per item
    (k=None: all). A user's score for item i = sum over history items j of w_j * sim(j, i), w_j =
    `recent_weight` for the last `last_n` history items, 1 for older ones.
    Dense N x N similarity: fine for catalogs of a few thousand items.
    """

    name = "item_knn"
    defaults: dict[str, Any] = {"k": 50, "shrink": 0.0, "last_n": 0, "recent_weight": 1.0}

    def fit(self, data: Interactions, valid: EvalSet | None = None) -> ItemKNN:
        X = data.user_items(np.float64)
        co = (X.T @ X).toarray()
        n = np.diag(co).copy()
        norm = np.sqrt(n)
        sim = co / (norm[:, None] * norm[None, :] + float(self.params["shrink"]) + 1e-12)
        np.fill_diagonal(sim, 0.0)
        k = self.params["k"]
        if k is not None and k < sim.shape[1]:
            drop = np.argpartition(-sim, k, axis=1)[:, k:]
            np.put_along_axis(sim, drop, 0.0, axis=1)
        self.sim = sim.astype(np.float32)
        self.n_items = data.n_items
        return self

    def score(self, histories: list[np.ndarray], times: np.ndarray) -> np.ndarray:
        self._check_fitted()
        n_last, w_recent = int(self.params["last_n"]), float(self.params["recent_weight"])
        weights = None
        if n_last > 0 and w_recent != 1.0:
            weights = []
            for h in histories:
                w = np.ones(len(h), np.float32)
                w[max(0, len(h) - n_last) :] = w_recent
                weights.append(w)
        H = _history_matrix(histories, self.n_items, weights)
        return np.asarray(H @ self.sim, dtype=np.float32)


# -- matrix factorisation --------------------------------------------------------------------
class PureSVD(_Base):
    """PureSVD (Cremonesi, Koren & Turrin, RecSys 2010): truncated SVD X ~ U S V^T of the binary
    user-item matrix; a request is folded in from its history x (binary): score = x V V^T."""

    name = "svd"
    defaults: dict[str, Any] = {"rank": 64}

    def fit(self, data: Interactions, valid: EvalSet | None = None) -> PureSVD:
        from scipy.sparse.linalg import svds

        X = data.user_items(np.float64)
        rank = max(1, min(int(self.params["rank"]), min(X.shape) - 1))
        _, _, vt = svds(X, k=rank, rng=np.random.default_rng(self.seed))
        self.V = np.ascontiguousarray(vt.T, dtype=np.float32)  # (N, r)
        self.n_items = data.n_items
        return self

    def score(self, histories: list[np.ndarray], times: np.ndarray) -> np.ndarray:
        self._check_fitted()
        H = _history_matrix(histories, self.n_items)
        return np.asarray((H @ self.V) @ self.V.T, dtype=np.float32)


class ALS(_Base):
    """Implicit-feedback ALS (Hu, Koren & Volinsky 2008) from `implicit` 0.7 (CPU), on the binary
    user-item matrix with confidence alpha. A request's user factors are recomputed from its
    history (`recalculate_user`: one exact least-squares solve against the item factors), so the
    history need not be a fitted user's. BLAS is limited to one thread around implicit's calls
    (implicit's own threads do the work; an OpenBLAS pool slows it down and makes it warn)."""

    name = "als"
    defaults: dict[str, Any] = {"factors": 64, "regularization": 0.1, "alpha": 10.0, "iterations": 15, "num_threads": 2}

    def fit(self, data: Interactions, valid: EvalSet | None = None) -> ALS:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        p = self.params
        with threadpool_limits(1, "blas"):
            self.model = AlternatingLeastSquares(
                factors=int(p["factors"]), regularization=float(p["regularization"]), alpha=float(p["alpha"]),
                iterations=int(p["iterations"]), num_threads=int(p["num_threads"]), random_state=self.seed,
            )  # fmt: skip
            self.model.fit(data.user_items(np.float32), show_progress=False)
        self.n_items = data.n_items
        return self

    def score(self, histories: list[np.ndarray], times: np.ndarray) -> np.ndarray:
        from threadpoolctl import threadpool_limits

        self._check_fitted()
        H = _history_matrix(histories, self.n_items)
        with threadpool_limits(1, "blas"):
            users = self.model.recalculate_user(np.arange(len(histories)), H)
        return np.asarray(users @ self.model.item_factors.T, dtype=np.float32)


# -- SASRec ----------------------------------------------------------------------------------
def _sasrec_net(n_items: int, dim: int, layers: int, heads: int, dropout: float, max_len: int):
    import torch
    from torch import nn

    from freshrec.models.layers import Block, causal_allowed

    class SASRecNet(nn.Module):
        """Kang & McAuley 2018 with pre-norm blocks: item + learned position embedding, causal
        self-attention, final LayerNorm; logits = hidden @ item table (tied). Row 0 = padding."""

        def __init__(self) -> None:
            super().__init__()
            self.item = nn.Embedding(n_items + 1, dim, padding_idx=0)
            self.position = nn.Embedding(max_len, dim)
            self.drop = nn.Dropout(dropout)
            self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
            self.ln = nn.LayerNorm(dim)
            for emb in (self.item, self.position):
                nn.init.normal_(emb.weight, std=0.02)
            with torch.no_grad():
                self.item.weight[0].zero_()

        def forward(self, rows: torch.Tensor) -> torch.Tensor:
            """rows: (B, L) catalog row + 1, left-padded with 0 -> (B, L, D). Position L-1 is newest."""
            mask = rows > 0
            L = rows.shape[1]
            pos = torch.arange(max_len - L, max_len, device=rows.device)
            x = self.drop(self.item(rows) * math.sqrt(dim) + self.position(pos)[None]) * mask[..., None]
            allowed = causal_allowed(mask)
            for block in self.blocks:
                x = block(x, allowed) * mask[..., None]
            return self.ln(x)

        def logits(self, h: torch.Tensor) -> torch.Tensor:
            return h @ self.item.weight[1:].T

    return SASRecNet()


def _pad_left(seqs: list[np.ndarray], ends: list[int], length: int) -> np.ndarray:
    """Rows [end-length, end) of each sequence, +1 (0 = padding), left-padded -> (B, length)."""
    out = np.zeros((len(seqs), length), np.int64)
    for b, (s, end) in enumerate(zip(seqs, ends)):
        start = max(0, end - length)
        if end > start:
            out[b, length - (end - start) :] = s[start:end] + 1
    return out


@contextlib.contextmanager
def _torch_threads(n: int):
    """torch intra-op threads set to `n` (0: unchanged) for the block, then restored. One thread
    is the fast choice for a 64-wide model on a small shared CPU (measured: 2 threads under load
    were several times slower)."""
    import torch

    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class SASRec(_Base):
    """SASRec (Kang & McAuley, ICDM 2018), ID-only, trained with full softmax cross-entropy over
    the catalog. Every position of a user's training sequence predicts the next item (windows of
    max_len + 1 events from the end, each event a target once); Adam; after each epoch the
    validation NDCG@10 is measured and training stops after `patience` epochs without a gain,
    keeping the best epoch's weights (without `valid`: `max_epochs` epochs). `threads`: torch
    intra-op threads while fitting/scoring (0 = leave torch's setting).
    Scoring reads the last `max_len` rows of the given history: no refit for new events."""

    name = "sasrec"
    defaults: dict[str, Any] = {
        "dim": 64, "layers": 2, "heads": 2, "dropout": 0.2, "lr": 1e-3, "max_len": 50,
        "batch_size": 128, "max_epochs": 20, "patience": 5, "threads": 1,
    }  # fmt: skip
    on_epoch: Callable[[dict], None] | None = None  # progress hook, called with each epoch's row

    def fit(self, data: Interactions, valid: EvalSet | None = None) -> SASRec:
        with _torch_threads(int(self.params["threads"])):
            return self._fit(data, valid)

    def _fit(self, data: Interactions, valid: EvalSet | None) -> SASRec:
        import torch
        import torch.nn.functional as F

        p = self.params
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        L = int(p["max_len"])
        self.n_items = data.n_items
        self.net = _sasrec_net(data.n_items, int(p["dim"]), int(p["layers"]), int(p["heads"]), float(p["dropout"]), L)
        opt = torch.optim.Adam(self.net.parameters(), lr=float(p["lr"]))
        seqs = [s for s in data.sequences() if len(s) >= 2]
        windows = [(s, end) for s in seqs for end in range(len(s), 1, -L)]
        best, best_state, stale = -1.0, None, 0
        self.history: list[dict] = []
        self.best_epoch = 0
        for epoch in range(1, int(p["max_epochs"]) + 1):
            t0 = time.time()
            self.net.train()
            total, count = 0.0, 0
            order = rng.permutation(len(windows))
            for i in range(0, len(order), int(p["batch_size"])):
                chunk = [windows[j] for j in order[i : i + int(p["batch_size"])]]
                rows = torch.from_numpy(_pad_left([s for s, _ in chunk], [e for _, e in chunk], L + 1))
                inputs, targets = rows[:, :-1], rows[:, 1:]
                keep = (inputs > 0) & (targets > 0)
                h = self.net(inputs)[keep]  # (P, D)
                loss = F.cross_entropy(self.net.logits(h), targets[keep] - 1)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * int(keep.sum())
                count += int(keep.sum())
            row = {"epoch": epoch, "loss": total / max(count, 1), "seconds": round(time.time() - t0, 2)}
            if valid is not None and len(valid):
                row.update({f"valid_{k}": v for k, v in _valid_metrics(self, valid).items()})
                if row["valid_ndcg@10"] > best:
                    best, stale, self.best_epoch = row["valid_ndcg@10"], 0, epoch
                    best_state = copy.deepcopy(self.net.state_dict())
                else:
                    stale += 1
            else:
                self.best_epoch = epoch
            self.history.append(row)
            if self.on_epoch is not None:
                self.on_epoch(row)
            if valid is not None and stale >= int(p["patience"]):
                break
        if best_state is not None:
            self.net.load_state_dict(best_state)
        self.net.eval()
        return self

    def score(self, histories: list[np.ndarray], times: np.ndarray) -> np.ndarray:
        import torch

        self._check_fitted()
        L = int(self.params["max_len"])
        rows = torch.from_numpy(_pad_left([np.asarray(h, np.int64) for h in histories], [len(h) for h in histories], L))
        was_training = self.net.training
        self.net.eval()
        with torch.no_grad(), _torch_threads(int(self.params["threads"])):
            out = self.net.logits(self.net(rows)[:, -1]).numpy().astype(np.float32)
        self.net.train(was_training)
        return out


# -- registry and tuning ---------------------------------------------------------------------
BASELINES: dict[str, Callable[[dict, int], Baseline]] = {
    cls.name: (lambda params, seed, cls=cls: cls(params, seed))
    for cls in (Popularity, TimeDecayedPopularity, ItemKNN, PureSVD, ALS, SASRec)
}

GRIDS: dict[str, list[dict]] = {
    "popularity": [{}],
    "time_decayed_popularity": [{"tau_days": t} for t in (1.0, 7.0, 30.0, 90.0)],
    "item_knn": [
        {"k": k, "shrink": shrink, "last_n": last_n, "recent_weight": w}
        for k in (10, 20, 50, None)
        for shrink in (0.0, 10.0)
        for last_n, w in ((0, 1.0), (10, 3.0), (10, 10.0))
    ],
    "svd": [{"rank": r} for r in (16, 32, 64, 128)],
    "als": [
        {"factors": f, "regularization": reg, "alpha": a}
        for f in (32, 64, 128)
        for reg in (0.1, 1.0, 10.0)
        for a in (1.0, 10.0)
    ],
    "sasrec": [{"dim": 64, "layers": 2, "heads": 2, "dropout": d, "lr": 1e-3} for d in (0.2, 0.5)],
}

# Baselines that early-stop on the validation requests and are not refit on train + validation.
NO_REFIT = frozenset({"sasrec"})


def refit(name: str, params: dict, seed: int, train: Interactions, valid: EvalSet, full: Interactions) -> Baseline:
    """The final model of `fit_tuned` for chosen `params` and any seed: SASRec learns from
    `train` and early-stops on `valid` (fitting it on `full` would put the validation targets in
    its training data); every other baseline is fit on `full` (train + validation events)."""
    model = BASELINES[name](params, seed)
    return model.fit(train, valid) if name in NO_REFIT else model.fit(full, None)


def fit_tuned(
    name: str, train: Interactions, valid: EvalSet, full: Interactions, seed: int, log=print, grid: list[dict] | None = None
) -> tuple[Baseline, dict, list[dict]]:
    """Fit every config of GRIDS[name] (or `grid`) on `train`, pick the best NDCG@10 on `valid`,
    refit the best on `full` (train + validation events), return (model, best params, one dict
    per tried config with its valid HR@10/NDCG@10 and fit seconds). SASRec uses `valid` for early
    stopping and is not refit (its rows say "refit": False and give the best epoch)."""
    if name not in BASELINES:
        raise KeyError(f"unknown baseline {name!r} (known: {sorted(BASELINES)})")
    configs = GRIDS[name] if grid is None else grid
    if not configs:
        raise ValueError(f"{name}: empty grid")
    tried: list[dict] = []
    best: tuple[float, dict, Baseline] | None = None
    for params in configs:
        t0 = time.time()
        model = BASELINES[name](dict(params), seed)
        if isinstance(model, SASRec):
            model.on_epoch = lambda r: log(
                f"{name} epoch {r['epoch']} loss {r['loss']:.4f} valid NDCG@10 {r.get('valid_ndcg@10', float('nan')):.4f} ({r['seconds']:.1f}s)"
            )
        model.fit(train, valid)
        fit_s = time.time() - t0
        m = _valid_metrics(model, valid)
        row = {"params": dict(model.params), "valid_hr@10": m["hr@10"], "valid_ndcg@10": m["ndcg@10"],
               "fit_seconds": round(fit_s, 2), "refit": name not in NO_REFIT}  # fmt: skip
        if hasattr(model, "best_epoch"):  # epochs and early stopping
            row.update(best_epoch=model.best_epoch, epochs=len(model.history))
        tried.append(row)
        log(f"{name} {row['params']}: valid HR@10 {m['hr@10']:.4f} NDCG@10 {m['ndcg@10']:.4f} ({fit_s:.1f}s)")
        if best is None or m["ndcg@10"] > best[0]:
            best = (m["ndcg@10"], dict(model.params), model)
    assert best is not None
    _, params, model = best
    if name not in NO_REFIT:
        t0 = time.time()
        model = BASELINES[name](params, seed).fit(full, None)
        log(f"{name}: best {params} refit on train + validation ({time.time() - t0:.1f}s)")
    return model, params, tried


# -- MovieLens leave-one-out -----------------------------------------------------------------
def movielens_sets(ds: Dataset, split: Split) -> tuple[Interactions, EvalSet, Interactions, EvalSet]:
    """(train, valid, full, test) from a Dataset and its temporal leave-one-out Split.

    User index = position in the sorted user ids of the split; rows = `ds.items.index()`.
    train: every training event; full: train + validation events (both sorted by timestamp, ties
    by the source `order` column). valid: per user with a validation event (sorted ids), history =
    training events, target = validation event; test: history = training + validation events,
    target = test event; times = the target event's timestamp.
    """
    ev = ds.events
    index = ds.items.index()
    users = sorted(split.train)
    uidx = {u: i for i, u in enumerate(users)}
    rows = np.array([index[i] for i in ev.item_id.tolist()], dtype=np.int64)

    def interactions(event_rows: list[int], event_users: list[int]) -> Interactions:
        e = np.asarray(event_rows, dtype=np.int64)
        order = np.lexsort((ev.order[e], ev.timestamp[e]))
        e = e[order]
        return Interactions(np.asarray(event_users, np.int64)[order], rows[e], ev.timestamp[e], len(users), len(ds.items))

    tr_rows = [r for u in users for r in split.train[u]]
    tr_users = [uidx[u] for u in users for _ in split.train[u]]
    eval_users = [u for u in users if u in split.valid]
    va_rows = [split.valid[u] for u in eval_users]
    train = interactions(tr_rows, tr_users)
    full = interactions(tr_rows + va_rows, tr_users + [uidx[u] for u in eval_users])
    valid = EvalSet(
        [rows[split.train[u]] for u in eval_users],
        rows[va_rows] if va_rows else np.zeros(0, np.int64),
        ev.timestamp[va_rows] if va_rows else np.zeros(0),
    )
    te_rows = [split.test[u] for u in eval_users]
    test = EvalSet(
        [rows[split.train[u] + [split.valid[u]]] for u in eval_users],
        rows[te_rows] if te_rows else np.zeros(0, np.int64),
        ev.timestamp[te_rows] if te_rows else np.zeros(0),
    )
    return train, valid, full, test
