"""The report's topic and correlation helpers on small inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from freshrec.offline.evaluation.analysis import ndcg_at, spearman_ci, topic_diversity, umass_coherence
from freshrec.offline.evaluation.report import _correlation_advice, _topics_lines


def test_ndcg_of_one_held_out_item():
    np.testing.assert_allclose(ndcg_at(np.array([0, 1, 9, 10, 500])), [1.0, 1 / np.log2(3), 1 / np.log2(11), 0.0, 0.0])


def test_umass_coherence_known_values():
    docs = [{0, 1}, {0, 1}, {0}, {2}]
    # pair (w1 after w0): log((D(0,1) + 1) / D(0)) = log(3 / 3) = 0: 1 always comes with 0
    assert umass_coherence(docs, [[0, 1]]) == [pytest.approx(0.0)]
    # (2 after 0): log((0 + 1) / 3): never together
    assert umass_coherence(docs, [[0, 2]]) == [pytest.approx(np.log(1 / 3))]
    # three words: mean of the three pairs (1|0) 0, (2|0) log(1/3), (2|1) log(1/2)
    assert umass_coherence(docs, [[0, 1, 2]]) == [pytest.approx((0 + np.log(1 / 3) + np.log(1 / 2)) / 3)]


def test_spearman_with_bootstrap_interval():
    x = np.arange(50, dtype=float)
    perfect = spearman_ci(x, x**3)
    assert perfect["rho"] == pytest.approx(1.0) and perfect["ci_low"] == pytest.approx(1.0) and perfect["n"] == 50
    assert spearman_ci(x, -x)["rho"] == pytest.approx(-1.0)
    rng = np.random.default_rng(1)
    noise = spearman_ci(rng.standard_normal(400), rng.standard_normal(400))
    assert noise["ci_low"] < 0 < noise["ci_high"] and abs(noise["rho"]) < 0.15
    with_nan = spearman_ci(np.array([1.0, 2.0, np.nan, 4.0, 5.0]), np.array([2.0, 4.0, 1.0, 8.0, 10.0]), n_boot=50)
    assert with_nan["n"] == 4 and with_nan["rho"] == pytest.approx(1.0)
    # a property the data never has (the rating spread of purchases only): no correlation, no error
    empty = spearman_ci(np.full(5, np.nan), np.arange(5.0))
    assert empty["n"] == 0 and all(np.isnan(empty[k]) for k in ("rho", "ci_low", "ci_high"))


def test_topic_diversity_of_lists():
    mixtures = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    same = topic_diversity(np.array([[0, 1]]), mixtures)
    assert same == {"topic_ild": pytest.approx(0.0), "distinct_topics": 1.0}
    mixed = topic_diversity(np.array([[0, 2], [1, 3]]), mixtures)
    assert mixed == {"topic_ild": pytest.approx(1.0), "distinct_topics": 2.0}


def test_report_section_and_advice_follow_the_intervals():
    c = lambda rho, lo, hi: {"rho": rho, "ci_low": lo, "ci_high": hi, "n": 100}  # noqa: E731
    corr = {"features": {"history_popularity": c(0.2, 0.1, 0.3), "history_length": c(-0.02, -0.1, 0.06)},
            "target": "t", "users": 100, "mean_ndcg@10": 0.1, "bootstrap": 10, "bins": {},
            "descriptions": {"history_popularity": "pop", "history_length": "len"}}  # fmt: skip
    advice = " ".join(_correlation_advice(corr))
    assert "history_popularity (+0.20)" in advice and "niche" in advice and "history_length (" not in advice
    none = {**corr, "features": {"history_length": c(-0.02, -0.1, 0.06)}}
    assert "No property's interval excludes zero" in _correlation_advice(none)[0]
    tp = {"model": {"config": {"seed": 0}, "n_topics": 2, "vocabulary": 10, "fit_seconds": 1.0},
          "coherence": {"measure": "UMass", "mean": -1.0}, "topics": [{"topic": 0, "words": ["a", "b"], "umass": -1.0, "catalog_share": 0.6}],
          "diversity": {"model": "m", "ild@10": 0.5, "topic_ild@10": 0.4, "distinct_topics@10": 3.0}, "correlation": corr}  # fmt: skip
    text = "\n".join(_topics_lines(tp))
    assert "| 0 | a, b | -1.000 | 60.0% |" in text and "correlation_ndcg10.png" in text
    nan = float("nan")
    corr["features"]["rating_spread"] = {"rho": nan, "ci_low": nan, "ci_high": nan, "n": 0}
    corr["descriptions"]["rating_spread"] = "spread"
    text = "\n".join(_topics_lines(tp))
    assert "| rating_spread: spread | n/a (no values in this data) | | 0 |" in text
    assert "rating_spread" not in " ".join(_correlation_advice(corr))


def test_topics_part_on_the_tiny_build_and_its_report(tiny_build, tmp_path):
    """The part runs on a real (tiny) build: its topics, diversity and one correlation per
    property, and the report writer draws the plot and writes the section."""
    from freshrec.config import ModelConfig
    from freshrec.offline.evaluation.analysis import FEATURES, topics_section
    from freshrec.offline.evaluation.report import _plots
    from freshrec.training.build import subsample
    from freshrec.training.data import load_movielens_100k
    from tests.conftest import TINY_USERS

    result = topics_section(subsample(load_movielens_100k(), TINY_USERS), ModelConfig.tiny(), tiny_build["build_dir"])
    assert result["model"]["from_build"] and len(result["topics"]) == result["model"]["n_topics"] == 4
    assert all(t["umass"] <= 0 and len(t["words"]) == 8 for t in result["topics"])
    assert 0 <= result["diversity"]["topic_ild@10"] <= 1 and 1 <= result["diversity"]["distinct_topics@10"] <= 4
    corr = result["correlation"]
    assert set(corr["features"]) == set(FEATURES) and corr["users"] == TINY_USERS
    assert all(-1 <= c["ci_low"] <= c["ci_high"] <= 1 for c in corr["features"].values() if c["n"] > 3)
    assert _plots({"topics": result}, tmp_path) == ["correlation_ndcg10.png"]
    assert "### What goes with per-user quality" in "\n".join(_topics_lines(result))
