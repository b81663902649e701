"""Tests for `freshrec eval` and `freshrec tune`: the replay mechanics on hand-made data, and a
tiny run of every path (training, baselines, the served checks on a real tritonserver, replay,
cold start, freshness latency, report)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from freshrec.offline.evaluation.replay import MISS, ReplayEvent, replay_stream, run_replay, windowed
from freshrec.training.data import Dataset, Events, Items


def toy(rows: list[tuple[str, str, float]]) -> Dataset:
    """(user, item, timestamp) rows, in source order."""
    items = sorted({i for _, i, _ in rows})
    ev = Events([u for u, _, _ in rows], [i for _, i, _ in rows], [t for _, _, t in rows], ["click"] * len(rows), [np.nan] * len(rows), range(len(rows)))
    return Dataset(ev, Items(items, [f"Item {i}" for i in items], [{"n": i} for i in items]), "toy")


def test_replay_stream_time_order_ties_and_new_items() -> None:
    ds = toy([("u1", "a", 5.0), ("u2", "b", 20.0), ("u1", "c", 10.0), ("u2", "a", 10.0), ("u3", "c", 30.0), ("u1", "b", 1.0)])
    stream = replay_stream(ds, t0=10.0)
    # Events at or after T0, by time; the two at t=10 in source order (rows 2 then 3).
    assert [(e.user_id, e.item_id, e.timestamp) for e in stream] == [("u1", "c", 10.0), ("u2", "a", 10.0), ("u2", "b", 20.0), ("u3", "c", 30.0)]
    # Only "c" is unseen before T0, and only its first appearance is flagged, with its text.
    assert [e.new_item for e in stream] == [True, False, False, False]
    assert stream[0].text == "Item c" and json.loads(stream[0].metadata) == {"n": "c"}
    assert stream[0].event_id == "toy:2"
    assert len(replay_stream(ds, 10.0, limit=2)) == 2


class Recorder:
    """A replay target that answers from a fixed list and records what it is told."""

    def __init__(self, answer: list[str]) -> None:
        self.answer, self.calls = answer, []

    def recommend(self, user_id: str, k: int) -> list[str]:
        self.calls.append(("recommend", user_id))
        return self.answer[:k]

    def ingest(self, ev: ReplayEvent) -> None:
        self.calls.append(("ingest", ev.item_id))

    def upsert(self, ev: ReplayEvent) -> None:
        self.calls.append(("upsert", ev.item_id))


def test_run_replay_asks_before_applying_and_frozen_applies_nothing() -> None:
    ds = toy([("u1", "a", 1.0), ("u1", "b", 10.0), ("u1", "c", 11.0), ("u2", "a", 12.0)])
    stream = replay_stream(ds, 10.0)
    rt = Recorder(["x", "c", "a"])
    res = run_replay("rt", stream, rt, k=3, log=lambda _: None)
    assert rt.calls == [  # "b" and "c" are both unseen before T0: each is upserted first
        ("upsert", "b"), ("recommend", "u1"), ("ingest", "b"),
        ("upsert", "c"), ("recommend", "u1"), ("ingest", "c"),
        ("recommend", "u2"), ("ingest", "a"),
    ]  # fmt: skip
    assert res.ranks.tolist() == [MISS, 1, 2]
    frozen = Recorder(["b"])
    res = run_replay("frozen", stream, frozen, k=3, realtime=False, log=lambda _: None)
    # Nothing applied, and a user's answer is asked once: the state never changes.
    assert frozen.calls == [("recommend", "u1"), ("recommend", "u2")]
    assert res.ranks.tolist() == [0, MISS, MISS]


def test_windowed_metrics() -> None:
    ds = toy([("u", str(i), float(i)) for i in range(10)])
    stream = replay_stream(ds, 0.0)
    ranks = np.array([0, 0, 0, 0, 0, MISS, MISS, MISS, MISS, 1])
    w = windowed(ranks, stream, 2)
    assert [x["events"] for x in w] == [5, 5]
    assert w[0]["hr"] == 1.0 and w[0]["ndcg"] == 1.0
    assert w[1]["hr"] == pytest.approx(0.2) and w[1]["ndcg"] == pytest.approx(0.2 / np.log2(3))
    assert (w[0]["start"], w[1]["end"]) == (0.0, 9.0)


def test_k_core_repeats_until_stable() -> None:
    from freshrec.offline.evaluation.eval import k_core

    # u3 has 1 event: dropping it leaves "w" with 1 event, then u4 with 1 event: three passes.
    rows = [(u, i, 0.0) for u in ("u1", "u2") for i in ("x", "y")] + [("u3", "w", 0.0), ("u4", "w", 0.0), ("u4", "x", 0.0)]
    got = k_core(toy(rows), 2)
    assert sorted(zip(got.events.user_id, got.events.item_id)) == sorted((u, i) for u in ("u1", "u2") for i in ("x", "y"))
    assert sorted(got.items.item_id) == ["x", "y"]
    assert len(k_core(toy(rows), 3).events) == 0


def test_eval_tiny_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, triton_server_factory) -> None:
    """Every path of `freshrec eval` at tiny size: the figures are checked for consistency, not
    for quality (tiny models on 40 users say nothing about quality). Relative folders, as
    `make eval` uses: the served state must still be the one the server reads."""
    from freshrec.offline.evaluation.eval import ALL_BASELINES, EvalOptions, run_eval

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results"
    s = run_eval(EvalOptions(out=Path("results"), work=Path("work"), seeds=(0, 1), tiny=True, max_users=40, replay_limit=250, freshness_trials=5))
    saved = json.loads((out / "summary.json").read_text())
    rows = saved["loo"]["rows"]
    expected = {"freshrec.retrieval", "freshrec.two_stage", "freshrec.rerank_on_retrieved", "freshrec_text_off.retrieval", *ALL_BASELINES}
    assert expected <= set(rows)
    for name in expected:
        for metric in ("hr", "ndcg", "mrr"):
            for k in (5, 10, 20):
                cell = rows[name][f"{metric}@{k}"]
                assert 0.0 <= cell["mean"] <= 1.0 and len(cell["values"]) >= 1
        assert rows[name]["hr@5"]["mean"] <= rows[name]["hr@10"]["mean"] <= rows[name]["hr@20"]["mean"]
    assert len(rows["freshrec.two_stage"]["hr@10"]["values"]) == 2  # one per seed
    assert 0.0 < rows["popularity"]["coverage@10"]["mean"] <= 1.0 and rows["popularity"]["novelty@10"]["mean"] > 0
    # The reranker-on-retrieved row is a subset: its HR can only be higher.
    assert rows["freshrec.rerank_on_retrieved"]["hr@10"]["mean"] >= rows["freshrec.two_stage"]["hr@10"]["mean"]

    # The served API on the evaluation state gives the offline figures of the same checkpoints.
    sl = saved["served_loo"]
    assert sl["users"] == saved["loo"]["info"]["users"]
    assert sl["served"]["hr@10"] == pytest.approx(sl["offline"]["hr@10"], abs=1.01 / sl["users"])
    assert sl["served"]["ndcg@10"] == pytest.approx(sl["offline"]["ndcg@10"], abs=1.01 / sl["users"])

    rp = saved["replay"]
    assert rp["events"] == 250 and rp["new_items"] > 0
    assert {"freshrec.realtime", "freshrec.frozen", "popularity.realtime", "popularity.frozen", "recent_popularity.realtime",
            "freshrec.served_realtime"} <= set(rp["models"])  # fmt: skip
    assert rp["served_vs_offline"]["same_hit@10"] >= 0.99
    assert sum(w["events"] for w in rp["models"]["freshrec.realtime"]["windows"]) == 250
    assert rp["cold_start"]["id_only"]["hr@50"] == 0.0
    assert rp["freshness"]["event"]["trials"] == 5 and rp["freshness"]["item"]["p99_ms"] >= rp["freshness"]["item"]["p50_ms"] > 0
    assert {t["target"] for t in s["targets"]} >= {"HR@10 >= 0.13 (unfiltered ML-100K)", "cold-start HR@50 >= 3 x popularity (the stronger of all-time and recent)"}

    report = (out / "report.md").read_text()
    for heading in ("## Offline, leave-one-out", "## 5-core variant", "## Against the published anchors", "## The served API",
                    "## Prequential replay", "### Cold start", "### Freshness latency", "## Targets"):  # fmt: skip
        assert heading in report
    assert (out / "loo_ndcg10.png").stat().st_size > 1000 and (out / "replay_windows.png").stat().st_size > 1000


def test_eval_tiny_on_own_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, triton_server_factory) -> None:
    """`freshrec eval --events --items` on 40 MovieLens users written out as own CSV files (their
    ratings as `rating` events, the items as text alone): the parts that apply run on the files'
    data, every build is made from them, the responsiveness scenarios act on the items' topics,
    and the report keeps its layout without the MovieLens-only anchors, targets and intents."""
    import csv

    from freshrec.offline.evaluation.eval import EvalOptions, run_eval
    from freshrec.training.build import subsample
    from freshrec.training.data import load_movielens_100k

    ds = subsample(load_movielens_100k(), 40)
    e = ds.events
    with open(tmp_path / "shop_events.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "timestamp", "event_type", "value"])
        w.writerows(zip(e.user_id, e.item_id, e.timestamp.astype(np.int64), ["rating"] * len(e), e.value.astype(int)))
    with open(tmp_path / "shop_items.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "text"])  # no genres: responsiveness falls back on the topics
        w.writerows(zip(ds.items.item_id, ds.items.text))

    monkeypatch.chdir(tmp_path)
    opts = EvalOptions(out=Path("results"), work=Path("work"), events=Path("shop_events.csv"), items=Path("shop_items.csv"), seeds=(0,),
                       tiny=True, baselines=("popularity",), parts=("loo", "served", "five_core", "replay", "responsiveness"),
                       replay_limit=150, freshness_trials=3, resp_users=6, resp_negative_users=5, resp_twins=8)  # fmt: skip
    s = run_eval(opts)
    saved = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert saved["dataset"] == "shop_events" and saved["files"]["events"] == str(tmp_path / "shop_events.csv")
    assert set(saved["parts"]) == {"loo", "served", "five_core", "replay", "responsiveness"}
    # Responsiveness on own items without genres: shift and negative act on each item's dominant
    # topic of the build's LDA (labelled t<k> + its top words); no film intents.
    rs = saved["responsiveness"]
    assert rs["categories"] == "topics" and rs["options"]["scenarios"] == ["shift", "negative", "twins"]
    assert set(rs["models"]["freshrec"]) == {"shift", "negative", "twins"}
    # (40 users: as many as have a topic of >= 40 items under 3% of their history, up to the 6 asked for)
    assert 1 <= rs["models"]["freshrec"]["shift"]["users"] == sum(rs["plans"]["shift_genres"].values()) <= 6
    assert 1 <= rs["models"]["freshrec"]["negative"]["users"] == sum(rs["plans"]["negative_genres"].values()) <= 5
    labels = set(rs["plans"]["shift_genres"]) | set(rs["geometry"]["genres"])
    assert labels and all(re.fullmatch(r"t\d+( \S+){1,3}", g) for g in labels), labels
    info = saved["loo"]["info"]
    assert (info["users"], info["items"], info["events"]) == (40, len(ds.items), len(e))
    assert saved["served_loo"]["users"] == 40
    assert saved["replay"]["events"] == 150
    build = json.loads((tmp_path / "work" / "replay_build" / "build.json").read_text())
    assert build["dataset"] == "shop_events[before 891350845]" and build["files"] == saved["files"]  # T0 build of the files
    assert {t["target"] for t in s["targets"]} >= {"replay NDCG@10 real-time >= 1.10 x frozen",
                                                    "cold-start HR@50 >= 3 x popularity (the stronger of all-time and recent)",
                                                    "shift: the new topic's top-10 share after 8 five-star events >= 0.40"}  # fmt: skip
    assert not any(t["target"].startswith("intent:") or "genre" in t["target"] for t in s["targets"])
    report = (tmp_path / "results" / "report.md").read_text()
    for heading in ("## Offline, leave-one-out (unfiltered `shop_events`)", "## 5-core variant", "## The served API",
                    "## Prequential replay", "## Targets"):  # fmt: skip
        assert heading in report
    assert "published anchors" not in report and "ML-100K" not in report
    assert "dominant topic" in report and "### Where a topic's meaning lives" in report and "Typed intent" not in report


def test_tune_tiny_writes_a_config_build_reads(tmp_path: Path) -> None:
    from freshrec.config import ModelConfig
    from freshrec.offline.evaluation.tune import TuneOptions, tune

    out = tmp_path / "tuned.json"
    result = tune(TuneOptions(out=out, trials=2, tiny=True, max_users=30))
    trials = json.loads(out.with_suffix(".trials.json").read_text())["trials"]
    assert len(trials) == 2 and all(0.0 <= t["valid_ndcg10"] <= 1.0 for t in trials)
    assert result["best_valid_ndcg10"] == max(t["valid_ndcg10"] for t in trials)
    cfg = ModelConfig.load(out)
    best = result["best_params"]
    assert (cfg.train.lr, cfg.user.layers, cfg.item.id_dropout) == (best["lr"], best["layers"], best["id_dropout"])


def test_recent_popularity_counts_only_the_window() -> None:
    from freshrec.offline.evaluation.replay import PopularityTarget

    # Before T0: "a" three times long ago, then "b" twice. A window of 2 sees only the b's.
    ds = toy([("u1", "a", 1.0), ("u2", "a", 2.0), ("u3", "a", 3.0), ("u4", "b", 4.0), ("u5", "b", 5.0), ("u9", "c", 6.0)])
    before = PopularityTarget(ds)
    recent = PopularityTarget(ds, window=2)
    assert before.recommend("new", 2) == ["a", "b"]
    assert recent.recommend("new", 2) == ["b", "c"]  # "b" 1 in the window (4.0 fell out), "c" 1; tie by id
    stream = replay_stream(toy([("u1", "a", 1.0), ("u7", "d", 10.0), ("u8", "d", 11.0)]), 10.0)
    for ev in stream:
        recent.upsert(ev) if ev.new_item else None
        recent.ingest(ev)
    assert recent.recommend("new", 1) == ["d"]  # two d's now fill the window
    assert recent.recommend("u7", 1) != ["d"]  # never an item the user has seen
