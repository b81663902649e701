"""The topic model: the served numpy inference equals scikit-learn's, the artefact round-trips,
and the profile and explanation helpers give known answers on small inputs."""

from __future__ import annotations

import numpy as np
import pytest

from freshrec.config import TopicConfig
from freshrec.models.topics import (TopicModel, category_token, digamma, document, entropy, explain, interest_profile,
                                    label)  # fmt: skip

DOCS = [
    document("Star Wars (1977). Genres: Action, Sci-Fi", {"genres": ["Action", "Sci-Fi"]}),
    document("Alien (1979). Genres: Horror, Sci-Fi", {"genres": ["Horror", "Sci-Fi"]}),
    document("Star Trek: Generations (1994). Genres: Action, Sci-Fi, space", '{"genres": ["Action", "Sci-Fi"]}'),
    document("Toy Story (1995). Genres: Animation, Children's, Comedy", {"genres": ["Animation", "Children's", "Comedy"]}),
    document("Aladdin (1992). Genres: Animation, Children's, Musical", {"genres": ["Animation", "Children's", "Musical"]}),
    document("The Lion King (1994). Genres: Animation, Children's, Musical", {"genres": "Animation|Children's|Musical"}),
    document("Scream (1996). Genres: Horror, Thriller", {"genres": ["Horror", "Thriller"]}),
    document("Halloween (1978). Genres: Horror", {"genres": ["Horror"]}),
]
CFG = TopicConfig(n_topics=3, max_iter=20, min_df=1, max_df=1.0)


@pytest.fixture(scope="module")
def model() -> TopicModel:
    return TopicModel.fit(DOCS, CFG)


def test_documents_carry_categories_as_single_tokens():
    assert category_token("Sci-Fi") == "cat_sci_fi" and category_token("Children's") == "cat_childrens"
    assert label("cat_film_noir") == "film-noir" and label("space") == "space"
    assert document("A (1990)", {"genres": ["Film-Noir"]}) == "A (1990) cat_film_noir"
    assert document("A", "not json") == "A" and document("A", {"categories": "x|y"}) == "A cat_x cat_y"


def test_digamma_matches_scipy():
    from scipy.special import psi

    x = np.array([1e-3, 0.05, 0.5, 1.0, 3.7, 5.99, 6.0, 42.0, 1e5])
    np.testing.assert_allclose(digamma(x), psi(x), rtol=0, atol=1e-9)


def test_served_transform_equals_scikit_learn(model):
    """The server's numpy E-step gives scikit-learn's transform of the fitted model, and the fit
    is deterministic (fixed seed); stop words and numbers are not in the vocabulary."""
    from sklearn.decomposition import LatentDirichletAllocation
    from sklearn.feature_extraction.text import CountVectorizer

    from freshrec.models.topics import TOKEN_PATTERN

    assert "the" not in model.vocabulary and "genres" not in model.vocabulary and not any(w[0].isdigit() for w in model.vocabulary)
    counts = CountVectorizer(vocabulary=model.vocabulary, token_pattern=TOKEN_PATTERN).transform(DOCS + ["nothing known here"])
    lda = LatentDirichletAllocation(n_components=CFG.n_topics, learning_method="batch", max_iter=CFG.max_iter, random_state=CFG.seed)
    lda.fit(counts[: len(DOCS)])
    np.testing.assert_allclose(lda.components_, model.components, rtol=1e-10)
    ours = model.transform(DOCS + ["nothing known here"])
    np.testing.assert_allclose(ours, lda.transform(counts), atol=1e-6)
    np.testing.assert_allclose(ours.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(ours[-1], np.full(CFG.n_topics, 1 / CFG.n_topics), atol=1e-7)  # no known word: uniform


def test_saved_model_loads_to_the_same_mixtures(model, tmp_path):
    loaded = TopicModel.load(model.save(tmp_path / "topics.safetensors"))
    assert loaded.vocabulary == model.vocabulary and loaded.doc_topic_prior == model.doc_topic_prior
    np.testing.assert_array_equal(loaded.transform(DOCS), model.transform(DOCS))


def test_top_words_show_a_category_once(model):
    for t in range(model.n_topics):
        words = model.top_words(t, 6)
        assert len(words) == len(set(words)) == 6
        if "sci-fi" in words:
            assert "sci" not in words[words.index("sci-fi") :] and "fi" not in words[words.index("sci-fi") :]


def test_interest_profile_subtracts_negative_events_and_entropy():
    mix = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    np.testing.assert_allclose(interest_profile(mix, np.array([1.0, 1.0, 0.0])), [0.5, 0.5, 0.0])
    # a disliked item's topic falls; clipped at zero, renormalised
    np.testing.assert_allclose(interest_profile(mix, np.array([1.0, 0.5, -1.0])), [1.0, 0.0, 0.0])
    assert interest_profile(mix, np.array([0.0, -1.0, 0.0])) is None and interest_profile(mix[:0], np.zeros(0)) is None
    assert entropy(np.array([1.0, 0.0])) == 0.0
    assert entropy(np.full(4, 0.25)) == pytest.approx(np.log(4))


def test_explain_names_the_shared_topic_and_the_newest_history_item_carrying_it(model):
    cfg = TopicConfig(n_topics=3, explain_topics=2, top_words=4)
    hist = np.array([[0.9, 0.1, 0.0], [0.1, 0.8, 0.1], [0.85, 0.1, 0.05], [0.0, 0.1, 0.9]])
    weights = np.array([1.0, 1.0, 1.0, -1.0])  # the newest event is negative: never a source
    profile = interest_profile(hist, weights)
    items = np.array([[0.2, 0.8, 0.0], [0.7, 0.2, 0.1]])
    asked = []

    def texts(ids):
        asked.append(ids)
        return {i: f"Film {i} (1990). Genres: X" for i in ids}

    out = explain(model, profile, ["x", "y"], items, ["h0", "h1", "h2", "h3"], hist, weights, texts, cfg)
    assert [t["topic"] for t in out["user"]["topics"]] == [0, 1] and out["user"]["events"] == 4
    x, y = out["items"]
    assert x["topic"] == 1 and x["because"]["item_id"] == "h1"
    assert y["topic"] == 0 and y["because"]["item_id"] == "h2"  # the newest positive event whose main topic is 0
    assert y["reason"].startswith("because you watched Film h2 (1990) / you like ")
    assert asked == [["h1", "h2"]]  # texts read once, for the named items only
    bare = explain(model, profile, ["z"], np.zeros((1, 3)), ["h0", "h1", "h2", "h3"], hist, weights, texts, cfg)
    assert bare["items"] == [{"item_id": "z"}]
    cold = explain(model, None, ["x"], items[:1], [], np.zeros((0, 3)), np.zeros(0), texts, cfg)
    assert cold == {"user": {"topics": [], "events": 0}, "items": [{"item_id": "x"}]}


def test_small_or_wordless_catalogs_still_get_a_model():
    """The document-frequency cuts of the default config would remove every word of three
    distinct titles: they are counted without the cuts. Texts without a word give a placeholder
    model whose mixtures are uniform."""
    few = TopicModel.fit(["Alien (1979)", "Heat (1995)", "Fargo (1996)"], TopicConfig(n_topics=2))
    assert sorted(few.vocabulary) == ["alien", "fargo", "heat"]
    none = TopicModel.fit(["1979", "1995"], TopicConfig(n_topics=2))
    assert none.vocabulary == ["<none>"] and none.empty and not few.empty
    np.testing.assert_allclose(none.transform(["1979", "anything"]), 0.5)
    out = explain(none, np.full(2, 0.5, np.float32), ["x"], np.full((1, 2), 0.5), ["h"], np.full((1, 2), 0.5), np.ones(1), dict, CFG)
    assert out["items"] == [{"item_id": "x"}] and out["user"]["topics"] == []
