"""Baselines of the offline evaluation and the beyond-accuracy metrics, on tiny synthetic data
where the right answer is known (item j is usually followed by item j+1)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from freshrec.offline.evaluation.baselines import (
    BASELINES,
    GRIDS,
    EvalSet,
    Interactions,
    evaluate_baseline,
    fit_tuned,
    full_ranks,
    movielens_sets,
    refit,
)
from freshrec.training.data import Dataset, Events, Items, temporal_leave_one_out
from freshrec.training.metrics import coverage, intra_list_diversity, novelty, rank_metrics

N_USERS, N_ITEMS, LENGTH = 30, 40, 14


def chain_data(seed: int = 0, noise: float = 0.1):
    """Each user walks j, j+1, j+2, ... (mod N_ITEMS) from a random start; with probability
    `noise` a step is a random item instead. Events interleave in time across users.
    Returns (train, valid, full, test) the way `movielens_sets` builds them."""
    rng = np.random.default_rng(seed)
    seqs, times = [], []
    for u in range(N_USERS):
        start = int(rng.integers(N_ITEMS))
        seq = [(start + i) % N_ITEMS for i in range(LENGTH)]
        for i in range(1, LENGTH - 2):  # keep the last two steps (valid, test) clean
            if rng.random() < noise:
                seq[i] = int(rng.integers(N_ITEMS))
        seqs.append(np.array(seq, np.int64))
        times.append(1_000_000.0 + u * 10.0 + np.arange(LENGTH) * 1000.0)

    def inter(upto: int) -> Interactions:
        user = np.concatenate([np.full(upto, u) for u in range(N_USERS)])
        row = np.concatenate([s[:upto] for s in seqs])
        t = np.concatenate([ts[:upto] for ts in times])
        order = np.argsort(t, kind="stable")
        return Interactions(user[order], row[order], t[order], N_USERS, N_ITEMS)

    valid = EvalSet([s[: LENGTH - 2] for s in seqs], np.array([s[LENGTH - 2] for s in seqs]), np.array([t[LENGTH - 2] for t in times]))
    test = EvalSet([s[: LENGTH - 1] for s in seqs], np.array([s[LENGTH - 1] for s in seqs]), np.array([t[LENGTH - 1] for t in times]))
    return inter(LENGTH - 2), valid, inter(LENGTH - 1), test


@pytest.fixture(scope="module")
def chain():
    return chain_data()


def hr10(model, data: EvalSet) -> float:
    ranks, _ = evaluate_baseline(model, data)
    return rank_metrics(ranks, (10,))[10]["hr"]


# Random ranking: 10 of the ~28 unseen items -> HR@10 about 0.36 on this data.
RANDOM_HR10 = 10 / (N_ITEMS - (LENGTH - 1))


# -- ranking ---------------------------------------------------------------------------------
def test_full_ranks_masks_history_and_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    B, N = 6, 25
    scores = rng.integers(0, 8, size=(B, N)).astype(np.float32)  # many ties
    histories = [rng.choice(N, size=n, replace=False) for n in (0, 1, 3, 5, 8, 24)]
    targets = np.array([rng.choice(np.setdiff1d(np.arange(N), h)) for h in histories])
    histories[3] = np.append(histories[3], histories[3][0])  # a repeated history item
    before = scores.copy()
    ranks, top = full_ranks(scores, histories, targets, k=5)
    np.testing.assert_array_equal(scores, before)  # not modified
    assert top.shape == (B, 5)
    for b in range(B):
        seen = set(histories[b].tolist())
        expect = sum(1 for i in range(N) if i not in seen and scores[b, i] > scores[b, targets[b]])
        assert ranks[b] == expect
        masked = np.array([-np.inf if i in seen else scores[b, i] for i in range(N)])
        np.testing.assert_array_equal(masked[top[b]], np.sort(masked)[::-1][:5])
        if N - len(seen) >= 5:
            assert not seen & set(top[b].tolist())
    # The target scoring highest among unseen items has rank 0 even if a seen item scores more.
    r, t = full_ranks(np.array([[9.0, 5.0, 1.0]]), [np.array([0])], np.array([1]), k=2)
    assert r[0] == 0 and t[0].tolist() == [1, 2]
    with pytest.raises(ValueError, match="NaN"):
        full_ranks(np.array([[np.nan, 1.0]]), [np.array([], np.int64)], np.array([1]))


def test_evaluate_baseline_batches_agree(chain) -> None:
    train, valid, _, _ = chain
    model = BASELINES["item_knn"]({}, 0).fit(train)
    r1, t1 = evaluate_baseline(model, valid, batch_size=7)
    r2, t2 = evaluate_baseline(model, valid, batch_size=1000)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(t1, t2)
    assert r1.shape == (N_USERS,) and t1.shape == (N_USERS, 10)


# -- popularity ------------------------------------------------------------------------------
def test_popularity_ranks_most_frequent_first() -> None:
    rows = np.array([3, 3, 3, 1, 1, 2, 0, 3, 1])
    data = Interactions(np.arange(9) % 4, rows, np.arange(9.0), 4, 5)
    model = BASELINES["popularity"]({}, 0).fit(data)
    s = model.score([np.array([], np.int64), np.array([3])], np.zeros(2))
    assert s.shape == (2, 5) and s.dtype == np.float32
    _, top = full_ranks(s, [np.array([], np.int64), np.array([3])], np.array([0, 0]), k=3)
    assert top[0].tolist() == [3, 1, 0]  # counts 4, 3, then 1/1 ties by row
    assert top[1].tolist() == [1, 0, 2]  # 3 is seen


def test_time_decayed_popularity_ignores_events_at_or_after_the_request() -> None:
    day = 86400.0
    t = 100 * day
    # Item 0: one event two days before t. Item 1: many events at t and after (the future).
    user = np.arange(12)
    row = np.array([0] + [1] * 11)
    time_ = np.array([t - 2 * day, t] + [t + i * day for i in range(1, 11)])
    data = Interactions(user, row, time_, 12, 3)
    model = BASELINES["time_decayed_popularity"]({"tau_days": 7.0}, 0).fit(data)
    s = model.score([np.array([], np.int64)], np.array([t]))
    assert s[0, 0] > s[0, 1], "events at or after the request time must not count"
    counts = model.decayed_counts(np.array([t, t + 1.0]))
    assert counts[0, 1] == 0.0 and counts[0, 0] == pytest.approx(math.exp(-2 / 7))
    assert counts[1, 1] == pytest.approx(math.exp(-1 / 86400 / 7))  # once the request is later


def test_time_decayed_popularity_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    E, N = 300, 12
    time_ = np.sort(rng.uniform(0, 60 * 86400, E).round(-3))  # rounded: equal timestamps exist
    row = rng.integers(0, N, E)
    data = Interactions(rng.integers(0, 5, E), row, time_, 5, N)
    req = np.concatenate([rng.choice(time_, 20), rng.uniform(0, 70 * 86400, 20)])  # some on event times
    for tau_days in (1.0, 30.0):
        model = BASELINES["time_decayed_popularity"]({"tau_days": tau_days}, 0).fit(data)
        got = model.decayed_counts(req)
        want = np.zeros((len(req), N))
        for b, t in enumerate(req):
            before = time_ < t
            np.add.at(want[b], row[before], np.exp(-(t - time_[before]) / (tau_days * 86400)))
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-300)
        np.testing.assert_allclose(model.score([np.array([], np.int64)] * len(req), req), np.log(np.maximum(want, 1e-300)), rtol=1e-5)


# -- neighbourhood and factor models ---------------------------------------------------------
def circular(a: int, b: int) -> int:
    return min((a - b) % N_ITEMS, (b - a) % N_ITEMS)


def test_item_knn_neighbours_of_the_last_item_rank_high(chain) -> None:
    train, _, _, test = chain
    model = BASELINES["item_knn"]({"k": 10}, 0).fit(train)
    for j in range(N_ITEMS):
        assert np.count_nonzero(model.sim[j]) <= 10  # top-k neighbours kept
        assert model.sim[j, j] == 0
        # A one-item history [j]: the usual successor j+1 is among the top 10, and the top 5
        # all lie on j's stretch of the chain (a window spans 13 items).
        s = model.score([np.array([j])], np.zeros(1))
        ranks, top = full_ranks(s, [np.array([j])], np.array([(j + 1) % N_ITEMS]), k=5)
        assert ranks[0] < 10
        assert all(circular(i, j) <= 8 for i in top[0])
    # Recency: weighting the last history item up moves the top items to its neighbours.
    hist = np.array([10, 11, 12, 30])
    plain = BASELINES["item_knn"]({"k": 10}, 0).fit(train).score([hist], np.zeros(1))
    recent = BASELINES["item_knn"]({"k": 10, "last_n": 1, "recent_weight": 10.0}, 0).fit(train).score([hist], np.zeros(1))
    _, top_plain = full_ranks(plain, [hist], np.array([0]), k=3)
    _, top_recent = full_ranks(recent, [hist], np.array([0]), k=3)
    assert all(circular(i, 11) <= 8 for i in top_plain[0])
    assert all(circular(i, 30) <= 8 for i in top_recent[0])
    assert hr10(model, test) > RANDOM_HR10 + 0.3


@pytest.mark.parametrize("name, params", [("svd", {"rank": 8}), ("als", {"factors": 8, "regularization": 0.1, "iterations": 10})])
def test_factor_models_beat_random(chain, name: str, params: dict) -> None:
    train, _, full, test = chain
    model = BASELINES[name](params, 0).fit(full)
    assert hr10(model, test) > RANDOM_HR10 + 0.3
    s = model.score(test.histories[:3], test.times[:3])
    assert s.shape == (3, N_ITEMS) and s.dtype == np.float32
    # Folded in from the history, not looked up by user: an unseen history gets its own scores.
    s2 = model.score([np.array([20, 21, 22])], np.zeros(1))
    _, top = full_ranks(s2, [np.array([20, 21, 22])], np.array([0]), k=4)
    assert {19, 23} & set(top[0].tolist())


def test_als_seeded_and_no_blas_thread_warning(chain) -> None:
    import implicit.utils

    train = chain[0]
    implicit.utils._checked_blas_config = False  # implicit warns once per process; re-arm it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = BASELINES["als"]({"factors": 8, "iterations": 3}, 7).fit(train)
    b = BASELINES["als"]({"factors": 8, "iterations": 3}, 7).fit(train)
    c = BASELINES["als"]({"factors": 8, "iterations": 3}, 8).fit(train)
    h = [np.array([1, 2, 3])]
    np.testing.assert_allclose(a.score(h, np.zeros(1)), b.score(h, np.zeros(1)), rtol=1e-5)
    assert not np.allclose(a.model.item_factors, c.model.item_factors)


# -- SASRec ----------------------------------------------------------------------------------
def test_sasrec_learns_the_successor_pattern(chain) -> None:
    train, valid, _, test = chain
    params = {"dim": 32, "layers": 1, "heads": 2, "dropout": 0.1, "lr": 5e-3, "max_len": 20, "max_epochs": 15, "patience": 4}
    model = BASELINES["sasrec"](params, 0).fit(train, valid)
    assert hr10(model, test) > RANDOM_HR10 + 0.3
    # It reads the history given at scoring time: after j the next item j+1 is near the top.
    hist = np.array([5, 6, 7, 8])
    _, top = full_ranks(model.score([hist], np.zeros(1)), [hist], np.array([0]), k=3)
    assert 9 in top[0]
    assert 1 <= model.best_epoch <= len(model.history) <= 15
    # Seeded: the same seed gives the same model.
    short = {**params, "max_epochs": 2}
    s1 = BASELINES["sasrec"](short, 3).fit(train).score([hist], np.zeros(1))
    s2 = BASELINES["sasrec"](short, 3).fit(train).score([hist], np.zeros(1))
    np.testing.assert_allclose(s1, s2, rtol=1e-5, atol=1e-6)


def test_sasrec_early_stopping_keeps_the_best_epoch(chain) -> None:
    train, valid, _, _ = chain
    # Validation targets across the chain from the last item: the better SASRec learns the
    # chain, the worse it does here, so the curve peaks early and then falls.
    away = EvalSet(valid.histories, np.array([(h[-1] + N_ITEMS // 2) % N_ITEMS for h in valid.histories]), valid.times)
    params = {"dim": 16, "layers": 1, "heads": 1, "dropout": 0.0, "lr": 1e-2, "max_len": 20, "max_epochs": 12, "patience": 3}
    model = BASELINES["sasrec"](params, 0).fit(train, away)
    curve = [r["valid_ndcg@10"] for r in model.history]
    assert curve[model.best_epoch - 1] == max(curve)
    assert len(curve) == model.best_epoch + 3 < 12  # stopped after `patience` epochs without a gain
    ranks, _ = evaluate_baseline(model, away)  # the restored weights are the best epoch's
    assert rank_metrics(ranks, (10,))[10]["ndcg"] == pytest.approx(max(curve))
    assert rank_metrics(ranks, (10,))[10]["ndcg"] > curve[-1]


# -- tuning ----------------------------------------------------------------------------------
def test_fit_tuned_picks_the_best_config_and_refits_on_full(chain) -> None:
    train, valid, full, _ = chain
    grid = [{"rank": 1}, {"rank": 8}, {"rank": 3}]
    lines: list[str] = []
    model, params, tried = fit_tuned("svd", train, valid, full, 0, log=lines.append, grid=grid)
    assert [t["params"]["rank"] for t in tried] == [1, 8, 3]
    assert all({"valid_hr@10", "valid_ndcg@10", "fit_seconds", "refit"} <= set(t) for t in tried)
    best = max(tried, key=lambda t: t["valid_ndcg@10"])
    assert params == best["params"] and params["rank"] != 1
    assert len(lines) == len(grid) + 1
    # Refit on full: popularity counts equal the full data's.
    pop, _, tried_pop = fit_tuned("popularity", train, valid, full, 0, log=lambda _: None)
    np.testing.assert_array_equal(pop.counts, np.bincount(full.row, minlength=N_ITEMS))
    assert tried_pop[0]["refit"] is True
    # refit() gives the same final model for a seed.
    np.testing.assert_allclose(
        refit("svd", params, 0, train, valid, full).score(valid.histories, valid.times), model.score(valid.histories, valid.times), atol=1e-5
    )


def test_fit_tuned_sasrec_is_not_refit(chain) -> None:
    train, valid, full, _ = chain
    grid = [{"dim": 16, "layers": 1, "heads": 1, "max_len": 20, "max_epochs": 2}]
    model, _, tried = fit_tuned("sasrec", train, valid, full, 0, log=lambda _: None, grid=grid)
    assert tried[0]["refit"] is False and tried[0]["epochs"] == 2 and "best_epoch" in tried[0]
    assert model.history and "valid_ndcg@10" in model.history[0]


def test_registry_grids_and_params() -> None:
    assert set(BASELINES) == set(GRIDS) == {"popularity", "time_decayed_popularity", "item_knn", "svd", "als", "sasrec"}
    for name, grid in GRIDS.items():
        assert 1 <= len(grid) <= 24
        for params in grid:
            m = BASELINES[name](params, 0)
            assert m.name == name and params.items() <= m.params.items()
    with pytest.raises(ValueError, match="unknown params"):
        BASELINES["svd"]({"rnak": 3}, 0)
    with pytest.raises(RuntimeError, match="before fit"):
        BASELINES["svd"]({}, 0).score([np.array([1])], np.zeros(1))


# -- MovieLens sets --------------------------------------------------------------------------
def test_movielens_sets_from_a_split() -> None:
    #            user item time  (b has equal timestamps: source order decides)
    rows = [("b", "i2", 5.0), ("a", "i1", 1.0), ("a", "i3", 2.0), ("b", "i1", 5.0), ("a", "i2", 3.0),
            ("b", "i4", 5.0), ("a", "i4", 4.0), ("c", "i3", 1.0)]  # fmt: skip
    n = len(rows)
    events = Events(
        np.array([r[0] for r in rows], dtype=object), np.array([r[1] for r in rows], dtype=object), np.array([r[2] for r in rows]),
        np.array(["click"] * n, dtype=object), np.full(n, np.nan, np.float32), np.arange(n),
    )  # fmt: skip
    ids = ["i4", "i3", "i2", "i1"]  # catalog row order differs from the ids
    ds = Dataset(events, Items(ids, ids, [{} for _ in ids]))
    train, valid, full, test = movielens_sets(ds, temporal_leave_one_out(ds))
    row = {"i4": 0, "i3": 1, "i2": 2, "i1": 3}
    # users: a=0, b=1, c=2 (c has one event: training only, no request)
    assert train.n_users == 3 and train.n_items == 4 and len(valid) == len(test) == 2
    assert [h.tolist() for h in valid.histories] == [[row["i1"], row["i3"]], [row["i2"]]]
    assert valid.targets.tolist() == [row["i2"], row["i1"]] and valid.times.tolist() == [3.0, 5.0]
    assert [h.tolist() for h in test.histories] == [[row["i1"], row["i3"], row["i2"]], [row["i2"], row["i1"]]]
    assert test.targets.tolist() == [row["i4"], row["i4"]] and test.times.tolist() == [4.0, 5.0]
    assert len(train) == 4 and len(full) == 6
    assert np.all(np.diff(train.time) >= 0) and np.all(np.diff(full.time) >= 0)
    pairs = set(zip(full.user.tolist(), full.row.tolist()))
    assert (0, row["i4"]) not in pairs and (1, row["i4"]) not in pairs  # no test event is learned from
    assert (2, row["i3"]) in pairs
    assert train.sequences()[1].tolist() == [row["i2"]] and full.sequences()[1].tolist() == [row["i2"], row["i1"]]


# -- beyond-accuracy metrics -----------------------------------------------------------------
def test_coverage() -> None:
    top = np.array([[0, 1, 2], [2, 3, 1]])
    assert coverage(top, 8) == pytest.approx(4 / 8)


def test_intra_list_diversity_hand_computed() -> None:
    emb = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [-5.0, 0.0]])  # not normalised
    # list 1: items 0,1,2 -> distances 1, 1 - 1/sqrt2, 1 - 1/sqrt2 -> mean (3 - sqrt2) / 3
    # list 2: items 0,3 -> distance 2
    top1 = np.array([[0, 1, 2]])
    assert intra_list_diversity(top1, emb) == pytest.approx((3 - math.sqrt(2)) / 3)
    assert intra_list_diversity(np.array([[0, 3]]), emb) == pytest.approx(2.0)
    assert intra_list_diversity(np.array([[0, 1], [0, 3]]), emb) == pytest.approx((1.0 + 2.0) / 2)
    assert intra_list_diversity(np.array([[2, 2]]), emb) == pytest.approx(0.0)


def test_novelty_hand_computed() -> None:
    popularity = np.array([3, 1, 0])  # distinct training users per item
    n_users = 3
    # p = 4/4, 2/4, 1/4 -> -log2 p = 0, 1, 2
    assert novelty(np.array([[0, 1], [2, 2]]), popularity, n_users) == pytest.approx((0 + 1 + 2 + 2) / 4)
    assert novelty(np.array([[0]]), popularity, n_users) == 0.0
