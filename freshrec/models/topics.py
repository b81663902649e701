"""Interest topics: an LDA model of the catalog, the topic mixture of an item and the interest
profile of a user.

One recipe on both sides. The build fits scikit-learn's LatentDirichletAllocation over each
item's document (`document`: its text plus one token per category), counted by a CountVectorizer
with a stop-word list; what it keeps (the vocabulary and the topic-word matrix) is saved without
pickles (`save`, safetensors). The server never imports scikit-learn: `TopicModel.transform`
is the same variational E-step in numpy (checked against scikit-learn's `transform` in
tests/models/test_topics.py), so an item added by `upsert_items` gets its mixture without a refit.

A user's profile (`interest_profile`) is the recency-weighted mixture of the mixtures of their
latest events; `explain` turns a profile and a recommended list into the served explanation.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from freshrec.config import TopicConfig

# Letters first: years ("1995") and numbers name no topic. \w keeps category tokens whole.
TOKEN_PATTERN = r"(?u)\b[^\W\d_]\w+\b"
_TOKEN = re.compile(TOKEN_PATTERN)
CATEGORY_PREFIX = "cat_"  # a category is one token ("cat_sci_fi"), apart from the words of the text
# Beyond scikit-learn's English list: the words of the item-text template (freshrec.training.data.item_text),
# sequel numerals and the articles of foreign titles.
EXTRA_STOP_WORDS = ("genres", "genre", "unknown", "title", "ii", "iii", "la", "le", "les", "il", "der", "das", "el", "des", "du")
_EPS = np.finfo(np.float64).eps
PLACEHOLDER = "<none>"  # the one word of a model fitted on texts without words (TopicModel.fit)


def category_token(name: str) -> str:
    """"Sci-Fi" -> "cat_sci_fi", "Children's" -> "cat_childrens": one token whatever the punctuation."""
    return CATEGORY_PREFIX + re.sub(r"\W+", "_", name.strip().lower().replace("'", "")).strip("_")


def categories_of(metadata: dict[str, Any] | str | None) -> list[str]:
    """An item's categories: its metadata's "genres" or "categories" (a list, or "a|b")."""
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except ValueError:
            return []
    if not isinstance(metadata, dict):
        return []
    for key in ("genres", "categories"):
        value = metadata.get(key)
        if isinstance(value, str):
            value = [v for v in value.split("|")]
        if isinstance(value, list):
            return [str(v) for v in value if str(v).strip()]
    return []


def document(text: str, metadata: dict[str, Any] | str | None = None) -> str:
    """The words LDA counts for one item: its text and one token per category."""
    cats = [category_token(c) for c in categories_of(metadata)]
    return " ".join([text, *[c for c in cats if c != CATEGORY_PREFIX]])


def digamma(x: np.ndarray) -> np.ndarray:
    """psi(x) for x > 0 in numpy (recurrence up to 6, then the asymptotic series; error < 1e-10):
    the E-step's one special function, so the server needs no scipy."""
    x = np.array(x, dtype=np.float64)
    out = np.zeros_like(x)
    small = x < 6.0
    while small.any():
        out[small] -= 1.0 / x[small]
        x[small] += 1.0
        small = x < 6.0
    inv = 1.0 / x
    inv2 = inv * inv
    series = inv2 * (1 / 12 - inv2 * (1 / 120 - inv2 * (1 / 252 - inv2 * (1 / 240 - inv2 / 132))))
    return out + np.log(x) - 0.5 * inv - series


@dataclass
class TopicModel:
    """A fitted LDA model: `components` (K, V) topic-word pseudo-counts over `vocabulary`, and the
    inference settings scikit-learn's transform uses."""

    vocabulary: list[str]
    components: np.ndarray  # (K, V) float64
    doc_topic_prior: float
    max_doc_update_iter: int = 100
    mean_change_tol: float = 1e-3
    fit_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.components = np.asarray(self.components, np.float64)
        self.word_index = {w: j for j, w in enumerate(self.vocabulary)}
        # E[log beta] of each topic's word distribution, exponentiated (scikit-learn's exp_dirichlet_component_)
        self.exp_topic_word = np.exp(digamma(self.components) - digamma(self.components.sum(1))[:, None])
        self._top: dict[tuple[int, int], list[str]] = {}

    @property
    def empty(self) -> bool:
        """Fitted on texts without a word: its topics mean nothing and explain nothing."""
        return self.vocabulary == [PLACEHOLDER]

    @property
    def n_topics(self) -> int:
        return self.components.shape[0]

    @property
    def topic_word(self) -> np.ndarray:
        """(K, V) each topic's word distribution (rows sum to 1)."""
        return self.components / self.components.sum(1, keepdims=True)

    # -- fit (build time, scikit-learn) ------------------------------------------------------
    @classmethod
    def fit(cls, documents: Sequence[str], cfg: TopicConfig) -> "TopicModel":
        """CountVectorizer (English stop words + the template's) and batch LDA with a fixed seed.
        A small catalog whose words the document-frequency cuts would all remove is counted
        without the cuts; one without any word (texts of numbers alone) gets a single
        placeholder word, so every item's mixture is uniform and no topic is ever shared."""
        from sklearn.decomposition import LatentDirichletAllocation
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

        t0 = time.perf_counter()
        n = len(documents)
        stop = sorted(ENGLISH_STOP_WORDS | set(EXTRA_STOP_WORDS))
        counts = vocabulary = None
        for min_df, max_df in ((min(cfg.min_df, n), cfg.max_df if n * cfg.max_df >= 1 else 1.0), (1, 1.0)):
            vectorizer = CountVectorizer(stop_words=stop, token_pattern=TOKEN_PATTERN, min_df=min_df, max_df=max_df)
            try:
                counts = vectorizer.fit_transform(documents)
            except ValueError:  # "no terms remain" / "empty vocabulary"
                continue
            vocabulary = list(vectorizer.get_feature_names_out())
            break
        if counts is None:
            return cls([PLACEHOLDER], np.ones((cfg.n_topics, 1)), 1.0 / cfg.n_topics, fit_seconds=round(time.perf_counter() - t0, 3))
        lda = LatentDirichletAllocation(n_components=cfg.n_topics, learning_method="batch", max_iter=cfg.max_iter,
                                        random_state=cfg.seed)  # fmt: skip
        lda.fit(counts)
        return cls(vocabulary, lda.components_, float(lda.doc_topic_prior_), lda.max_doc_update_iter, lda.mean_change_tol,
                   round(time.perf_counter() - t0, 3))  # fmt: skip

    # -- inference (build and server, numpy) -------------------------------------------------
    def counts(self, documents: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each document's (word ids, counts) over the vocabulary: the CountVectorizer's analyzer
        (lowercase, TOKEN_PATTERN); stop words and dropped words are not in the vocabulary."""
        out = []
        for doc in documents:
            ids: dict[int, int] = {}
            for token in _TOKEN.findall(doc.lower()):
                j = self.word_index.get(token)
                if j is not None:
                    ids[j] = ids.get(j, 0) + 1
            keys = np.fromiter(sorted(ids), np.int64, count=len(ids))
            out.append((keys, np.array([ids[j] for j in keys.tolist()], np.float64)))
        return out

    def transform(self, documents: Sequence[str]) -> np.ndarray:
        """(N, K) float32 topic mixtures (rows sum to 1), scikit-learn's `transform`: variational
        E-step from a flat start; a document without a known word gets the uniform mixture."""
        K = self.n_topics
        out = np.ones((len(documents), K), np.float64)
        start = np.exp(digamma(np.ones(K)) - digamma(np.float64(K)))
        for d, (ids, cnts) in enumerate(self.counts(documents)):
            if not len(ids):
                continue
            gamma, exp_gamma = out[d], start.copy()
            beta = self.exp_topic_word[:, ids]  # (K, n_words)
            for _ in range(self.max_doc_update_iter):
                last = gamma
                norm = exp_gamma @ beta + _EPS
                gamma = exp_gamma * ((cnts / norm) @ beta.T) + self.doc_topic_prior
                exp_gamma = np.exp(digamma(gamma) - digamma(gamma.sum()))
                if np.mean(np.abs(last - gamma)) < self.mean_change_tol:
                    break
            out[d] = gamma
        return (out / out.sum(1, keepdims=True)).astype(np.float32)

    def top_words(self, topic: int, n: int) -> list[str]:
        """`_top_words`, computed once per (topic, n): an explanation names the same few topics."""
        key = (topic, n)
        if key not in self._top:
            self._top[key] = self._top_words(topic, n)
        return list(self._top[key])

    def _top_words(self, topic: int, n: int) -> list[str]:
        """A topic's `n` most probable words; a category token reads as the category ("sci-fi"),
        and the text words its name is made of ("sci", "fi", "childrens" -> "children") are not
        shown again after it (the template's "Genres: Sci-Fi" repeats them)."""
        out: list[str] = []
        covered: set[str] = set()
        for j in np.argsort(-self.components[topic], kind="stable").tolist():
            token = self.vocabulary[j]
            word = label(token)
            if word in covered or word in out:
                continue
            if token.startswith(CATEGORY_PREFIX):
                covered.update(word.split("-"))
                covered.update(w[:-1] for w in word.split("-") if w.endswith("s"))
            out.append(word)
            if len(out) == n:
                break
        return out

    # -- artefact ----------------------------------------------------------------------------
    def save(self, path: Path) -> Path:
        from safetensors.numpy import save_file

        meta = {"vocabulary": json.dumps(self.vocabulary), "doc_topic_prior": repr(self.doc_topic_prior),
                "max_doc_update_iter": str(self.max_doc_update_iter), "mean_change_tol": repr(self.mean_change_tol),
                "fit_seconds": repr(self.fit_seconds)}  # fmt: skip
        save_file({"components": np.ascontiguousarray(self.components)}, str(path), metadata=meta)
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> "TopicModel":
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata()
            components = f.get_tensor("components")
        return cls(json.loads(meta["vocabulary"]), components, float(meta["doc_topic_prior"]), int(meta["max_doc_update_iter"]),
                   float(meta["mean_change_tol"]), float(meta.get("fit_seconds", 0.0)))  # fmt: skip


def label(token: str) -> str:
    return token[len(CATEGORY_PREFIX) :].replace("_", "-") if token.startswith(CATEGORY_PREFIX) else token


def interest_profile(mixtures: np.ndarray, weights: np.ndarray) -> np.ndarray | None:
    """A user's interest profile from the (n, K) mixtures of their latest events' items and each
    event's (n,) signed weight (recency x what the event says): the positive events' weighted
    mixtures minus the negative ones', clipped at 0 and normalised; None when nothing is left
    (no events, or only neutral and negative ones)."""
    if not len(weights):
        return None
    p = np.clip(np.asarray(weights, np.float64) @ np.asarray(mixtures, np.float64), 0.0, None)
    total = p.sum()
    return (p / total).astype(np.float32) if total > 0 else None


def entropy(p: np.ndarray) -> float:
    """Shannon entropy (nats) of a distribution: 0 for one topic, log K for all alike."""
    p = np.asarray(p, np.float64)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def explain(model: TopicModel, profile: np.ndarray | None, item_ids: Sequence[str], item_mixtures: np.ndarray,
            history_ids: Sequence[str], history_mixtures: np.ndarray, history_weights: np.ndarray,
            texts: Callable[[list[str]], dict[str, str]], cfg: TopicConfig) -> dict[str, Any]:  # fmt: skip
    """The served explanation of one recommended list.

    Args:
        profile: (K,) the user's interest profile (None: no profile, e.g. a new user).
        item_ids, item_mixtures: the recommended items, best first, and their (k, K) mixtures.
        history_ids, history_mixtures, history_weights: the events the profile was made of,
            oldest first, their items' (n, K) mixtures and signed weights.
        texts: item ids -> their texts, asked once for the history items the explanation names.

    Each item's shared topic is argmax_t profile_t * item_t (the topic it shares most with the
    user; none when that product is 0 everywhere, e.g. an item stored without a mixture); its source is the newest positive event whose item's own strongest topic is that one,
    else the positive event with the largest share of it.
    """
    user_topics = []
    if model.empty:
        profile = None
    if profile is not None:
        for t in np.argsort(-profile, kind="stable")[: cfg.explain_topics].tolist():
            user_topics.append({"topic": t, "weight": round(float(profile[t]), 4), "words": model.top_words(t, cfg.top_words)})
    items, sources = [], []
    positive = np.flatnonzero(np.asarray(history_weights) > 0)
    main = np.asarray(history_mixtures).argmax(1) if len(history_ids) else np.zeros(0, np.int64)  # each history item's own topic
    for j, item_id in enumerate(item_ids):
        entry: dict[str, Any] = {"item_id": item_id}
        src = None
        shared = profile * item_mixtures[j] if profile is not None else None
        if shared is not None and shared.max() > 0:  # an item without a mixture shares nothing
            t = int(np.argmax(shared))
            entry.update(topic=t, words=model.top_words(t, cfg.top_words), item_share=round(float(item_mixtures[j][t]), 4),
                         user_share=round(float(profile[t]), 4))  # fmt: skip
            if len(positive):
                own = positive[main[positive] == t]
                src = int(own[-1]) if len(own) else int(positive[int(np.argmax(history_mixtures[positive, t]))])
                entry["because"] = {"item_id": history_ids[src], "share": round(float(history_mixtures[src][t]), 4)}
        items.append(entry)
        sources.append(src)
    names = texts(sorted({history_ids[i] for i in sources if i is not None})) if any(i is not None for i in sources) else {}
    for entry in items:
        if "topic" not in entry:
            continue
        reason = f"you like {', '.join(entry['words'][:3])}"
        if "because" in entry:
            b = entry["because"]
            b["text"] = names.get(b["item_id"], "")
            reason = f"because you watched {short_name(b['text']) or b['item_id']} / {reason}"
        entry["reason"] = reason
    return {"user": {"topics": user_topics, "events": int(len(history_ids))}, "items": items}


def short_name(text: str) -> str:
    """An item's name in a sentence: its text up to the template's genres ("Toy Story (1995)")."""
    return text.split(". Genres:")[0].strip()[:80]
