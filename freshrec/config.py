"""Hyperparameters (frozen dataclasses, passed whole) and the one deployment config.

Every model config has a `tiny()` used by tests so the CPU suite runs in minutes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

# Event types the towers know. A fixed vocabulary keeps the exported graphs static; index 0 is
# reserved for padding so a padded history position never looks like a real event.
EVENT_TYPES: tuple[str, ...] = ("<pad>", "view", "click", "rate", "like", "add_to_cart", "purchase", "dislike", "skip")
# Common names of event types in users' data and the built-in type each one means, so that files
# using them load without a mapping (e.g. RetailRocket's view/addtocart/transaction). A name that
# is neither built in nor here is refused until the build maps it (EventTypeConfig.aliases).
DEFAULT_EVENT_ALIASES: dict[str, str] = {
    "rating": "rate", "rated": "rate", "review": "rate",
    "page_view": "view", "pageview": "view", "detail_view": "view",
    "addtocart": "add_to_cart", "add-to-cart": "add_to_cart", "cart": "add_to_cart",
    "transaction": "purchase", "buy": "purchase", "order": "purchase", "checkout": "purchase",
    "favorite": "like", "favourite": "like", "thumbs_up": "like",
    "thumbs_down": "dislike", "hide": "dislike", "not_interested": "dislike",
}  # fmt: skip
EVENT_FEATURES = 2  # per-event numeric features: log time gap to the previous event, normalised value

TEXT_DIM = 384  # all-MiniLM-L6-v2 sentence embedding size
TEXT_VOCAB = 30522  # all-MiniLM-L6-v2 word pieces (BERT uncased): input ids are below this


@dataclass(frozen=True)
class TextEncoderConfig:
    max_tokens: int = 32  # item titles + year + genres fit in ~25 word pieces (a batch is padded to its longest)
    dim: int = TEXT_DIM
    # The content vector: the sentence embedding centred on the catalog mean and projected onto its
    # first principal axes (fitted at build time, folded into the text encoder's graph), unit norm.
    # It keeps the language model's meaning, which the collaborative item space loses
    # (docs/results/report.md, responsiveness), in 64 numbers per item.
    content_dim: int = 64


@dataclass(frozen=True)
class ItemTowerConfig:
    dim: int = 64  # shared retrieval space of both towers; small keeps 1M-item scans cheap
    hidden: int = 256  # projection MLP width over the frozen text embedding
    id_vocab: int = 0  # learned id rows (0 = text only); set from the training catalog at train time
    id_dropout: float = 0.25  # drop the id embedding this often in training so unseen items rank well
    dropout: float = 0.1

    @classmethod
    def tiny(cls) -> "ItemTowerConfig":
        return cls(dim=16, hidden=32)


@dataclass(frozen=True)
class SequenceConfig:
    """Shape of a causal transformer over a user's latest events (user tower and reranker)."""

    dim: int = 64  # model width; equals the item space so item vectors enter without a projection
    layers: int = 2  # two blocks match SASRec's ML-scale optimum; more overfits ML-100K
    heads: int = 2
    max_history: int = 50  # latest events read at request time
    dropout: float = 0.2  # ML-100K is small: strong dropout as in SASRec

    @classmethod
    def tiny(cls) -> "SequenceConfig":
        return cls(dim=16, layers=1, heads=2, max_history=8, dropout=0.0)


@dataclass(frozen=True)
class RerankerConfig(SequenceConfig):
    num_candidates: int = 200  # retrieved candidates scored in one forward pass
    retrieval_temperature: float = 0.2  # the towers' softmax temperature: the score starts as their logit

    @classmethod
    def tiny(cls) -> "RerankerConfig":
        return cls(dim=16, layers=1, heads=2, max_history=8, dropout=0.0, num_candidates=12)


# Event weights of the short-term content channel: how much an event says "more like this" (+)
# or "not this" (-). A rating maps 1..5 stars to -1..+1.
CONTENT_EVENT_WEIGHTS: dict[str, float] = {
    "view": 0.3, "click": 0.5, "like": 1.0, "add_to_cart": 0.8, "purchase": 1.0, "dislike": -1.0, "skip": -0.5,
}  # fmt: skip


@dataclass(frozen=True)
class ContentConfig:
    """The content channels of the pipeline (freshrec.serving.pipeline): what the user does and
    says now, scored in the language model's space beside the collaborative one.

    - short-term: s = sum_j w_j decay^age_j c_j / sum_j |w_j decay^age_j| over the latest
      `short_events` events (c: content vectors, w: CONTENT_EVENT_WEIGHTS, ratings by stars);
      explicit "no" events (dislike, skip, a 1-star rating) are then scaled up. Each candidate's
      score is the reranker's logit + `beta_short` * c_i . s, and `short_candidates` of the
      reranker's candidates come from a search of the content index by s. s is not normalised:
      a coherent burst of recent events pulls hard, a scattered session hardly at all.
    - query: the query's content vector q. A cold user gets the items nearest q (plus a small
      recent-popularity prior); a warm user's candidates gain the `query_candidates` nearest q,
      and the blend is z(personal) + `beta_query` z(c_i . q), keeping the `query_keep` best of
      the user's own top-10.
    - new items: an item without a learned id row gets, as its collaborative vector, a mix of
      its text-only item-tower vector and the similarity-weighted mean of its `new_item_neighbours`
      content-nearest items' vectors (`new_item_mix` of the latter).
    """

    # beta_short and one_star_scale trade responsiveness against leave-one-out accuracy; measured
    # on the seed-0 ML-100K build through the served API (docs/results/report.md, responsiveness):
    # 3.5 / 1.5 left the new genre at 0.39 of the top-10 after 8 events, 4.5 / 1.5 cost 5.7% of the
    # served NDCG@10, 1-star x1.0 kept a 1-starred genre's share (29-45% fall); 4.0 / 1.25 met every
    # responsiveness target at -2.6% NDCG@10 against the same checkpoints without the channels.
    beta_short: float = 4.0
    short_events: int = 10
    short_decay: float = 0.85
    short_candidates: int = 50  # of the reranker's num_candidates
    negative_scale: float = 4.0  # dislike / skip, after normalising
    one_star_scale: float = 1.25  # a 1-star rating, after normalising
    beta_query: float = 1.5
    query_candidates: int = 200
    query_keep: int = 3
    popularity_prior: float = 0.02  # cold query: c . q + this * log(1 + recent count)
    # A user with events: each candidate's score (the reranker's logit + the short-term channel)
    # gains this * log(1 + its count over everyone's latest 10,000 events). Off: measured on
    # ML-100K it lifts the replay (+6.8% NDCG@10 at 1.0) and breaks the responsiveness targets
    # (a new interest, a new item; about 0.2 for warm users already does); on popularity-led data (grocery,
    # Complete Journey: +41% replay NDCG@10 at 1.0) it is worth turning on (docs/results/README.md).
    trend_prior: float = 0.0
    new_item_neighbours: int = 10
    new_item_temperature: float = 0.05
    new_item_mix: float = 0.5

    @classmethod
    def off(cls) -> "ContentConfig":
        """The pipeline without content channels (the collaborative path alone)."""
        return cls(beta_short=0.0, short_candidates=0, beta_query=0.0, query_candidates=0, query_keep=0, new_item_mix=0.0, trend_prior=0.0)


@dataclass(frozen=True)
class TopicConfig:
    """The interest topics (freshrec.models.topics): an LDA model fitted at build time over the
    catalog's item texts and categories, a topic mixture stored with every item, and a user's
    interest profile computed at request time from the history the user tower reads. Nothing the
    towers or the reranker learn depends on it: it explains and measures, it does not rank."""

    # ML-100K has 18 genres; the category tokens dominate its short title texts, so about that
    # many topics each take one genre or a frequent pairing (docs/results/report.md, topics).
    n_topics: int = 20
    max_iter: int = 30  # batch variational EM passes over the catalog (1,682 items: seconds)
    min_df: int = 2  # a word in one item's text says nothing about a topic
    max_df: float = 0.5  # words in more than half the items (besides the stop words) carry no topic
    seed: int = 0  # LDA's random initialisation: the same catalog gives the same topics
    # A user's profile: sum over the latest events (the user tower's window) of
    # decay^age * event weight * the item's mixture, negative events (dislike, skip, 1-2 stars)
    # subtracted, clipped at 0 and normalised. 0.95 halves an event's say after ~14 newer events.
    profile_decay: float = 0.95
    top_words: int = 8  # words shown per topic in an explanation and the report
    explain_topics: int = 3  # the user's top topics in an explanation

    @classmethod
    def tiny(cls) -> "TopicConfig":
        return cls(n_topics=4, max_iter=10, min_df=1, max_df=1.0)


@dataclass(frozen=True)
class EventTypeConfig:
    """How the event type names of a dataset map onto the built-in types (EVENT_TYPES).

    The towers embed a fixed vocabulary (the exported graphs stay static), and each built-in type
    carries its meaning: positive (view, click, like, add_to_cart, purchase), negative (dislike,
    skip) or a rating whose value decides (rate: 1..5 stars, 3 neutral; CONTENT_EVENT_WEIGHTS).
    A name in the data is a built-in type, one of DEFAULT_EVENT_ALIASES, or one of `aliases`;
    anything else is refused, by the build's loader and by the served ingest, with the known names.
    Saved with the model config, so the served ingest accepts the names the build accepted; events
    are stored under the built-in name.
    """

    # (name in the data, built-in type) pairs over DEFAULT_EVENT_ALIASES: `freshrec build
    # --event-types return=dislike,stars=rate`. Mapping to a type picks its meaning.
    aliases: tuple[tuple[str, str], ...] = ()
    # (built-in type, weight) pairs over CONTENT_EVENT_WEIGHTS: what an event of the type says to
    # the content channel and the interest profile, -1 ("not this") .. +1 ("more like this"), 0
    # nothing (`--event-weights view=0.1,skip=0`). A negative weight is an explicit "no" and is
    # scaled up as dislike is; `rate` keeps its stars. Read by the pipeline only (not trained).
    weights: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        pairs = tuple((str(a), str(b)) for a, b in self.aliases)  # JSON gives lists
        object.__setattr__(self, "aliases", pairs)
        weights = tuple((str(t), float(w)) for t, w in self.weights)
        object.__setattr__(self, "weights", weights)
        for name, w in weights:
            if name not in CONTENT_EVENT_WEIGHTS:
                raise ValueError(f"event weight {name}={w}: {name!r} is not a built-in type with a weight {sorted(CONTENT_EVENT_WEIGHTS)}"
                                 + (" (a rating's stars decide its weight)" if name == "rate" else ""))  # fmt: skip
            if not -1.0 <= w <= 1.0:  # NaN fails too
                raise ValueError(f"event weight {name}={w}: weights lie in [-1, 1]")
        for name, target in pairs:
            if not name.strip() or name != name.strip():
                raise ValueError(f"event type alias {name!r}: names must be non-empty, without surrounding spaces")
            if target not in EVENT_TYPES[1:]:
                raise ValueError(f"event type alias {name}={target}: {target!r} is not a built-in type {list(EVENT_TYPES[1:])}")
            if name in EVENT_TYPES[1:] and name != target:
                raise ValueError(f"event type alias {name}={target}: {name!r} is itself a built-in type")

    @staticmethod
    def _pairs(spec: str, option: str, form: str) -> list[tuple[str, str]]:
        pairs = []
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            name, eq, target = part.partition("=")
            if not eq:
                raise ValueError(f"{option}: expected {form}, got {part!r}")
            pairs.append((name.strip(), target.strip()))
        return pairs

    @classmethod
    def parse(cls, spec: str) -> "EventTypeConfig":
        """From "name=type,name=type" (the `--event-types` option)."""
        return cls(tuple(cls._pairs(spec, "--event-types", "NAME=TYPE")))

    @classmethod
    def parse_weights(cls, spec: str) -> tuple[tuple[str, float], ...]:
        """From "type=weight,type=weight" (the `--event-weights` option)."""
        out = []
        for name, value in cls._pairs(spec, "--event-weights", "TYPE=WEIGHT"):
            try:
                out.append((name, float(value)))
            except ValueError:
                raise ValueError(f"--event-weights: {name}={value}: the weight must be a number in [-1, 1]") from None
        cls(weights=tuple(out))  # checks them
        return tuple(out)

    def extended(self, aliases: tuple[tuple[str, str], ...] = (), weights: tuple[tuple[str, float], ...] = ()) -> "EventTypeConfig":
        """This config with more aliases and weights (`--event-types`, `--event-weights` over a
        config file's); a name given again replaces its earlier entry."""
        def merge(old, new):
            names = {n for n, _ in new}
            return tuple(e for e in old if e[0] not in names) + tuple(new)

        return EventTypeConfig(merge(self.aliases, tuple(aliases)), merge(self.weights, tuple(weights)))

    @functools.cached_property
    def content_weights(self) -> dict[str, float]:
        """Every built-in type but `rate` -> its weight (CONTENT_EVENT_WEIGHTS, then `weights`)."""
        return {**CONTENT_EVENT_WEIGHTS, **dict(self.weights)}

    @functools.cached_property
    def mapping(self) -> dict[str, str]:
        """Every accepted name -> its built-in type (computed once: ingest looks up every event)."""
        return {**{t: t for t in EVENT_TYPES[1:]}, **DEFAULT_EVENT_ALIASES, **dict(self.aliases)}

    def unknown_message(self, name: str) -> str:
        return (f"unknown event_type {name[:64]!r}; known types: {', '.join(EVENT_TYPES[1:])} "
                f"(also accepted: {', '.join(sorted(set(self.mapping) - set(EVENT_TYPES)))}); "
                "map other names at build time with --event-types NAME=TYPE")  # fmt: skip

    def canonical(self, name: str) -> str:
        """The built-in type `name` means; ValueError naming the known types if none."""
        try:
            return self.mapping[name]
        except KeyError:
            raise ValueError(self.unknown_message(name)) from None


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    retrieval_epochs: int = 30
    rerank_epochs: int = 8
    batch_size: int = 128
    lr: float = 3e-3  # towers; ML-100K gives ~20 steps an epoch, so a small rate never gets far
    rerank_lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2  # cosine logits / temperature (0.05 and 0.1 trained slower and ranked worse)
    num_negatives: int = 0  # sampled-softmax negatives per batch; 0 = every catalog item (exact)
    rerank_positions: int = 4  # prefixes per user window used to train the reranker
    rerank_patience: int = 3  # the reranker peaks within a few epochs: stop after this many without a better one
    log_every: int = 1  # epochs between progress lines

    @classmethod
    def tiny(cls) -> "TrainConfig":
        return cls(retrieval_epochs=2, rerank_epochs=1, batch_size=16, rerank_positions=2)


@dataclass(frozen=True)
class ModelConfig:
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    item: ItemTowerConfig = field(default_factory=ItemTowerConfig)
    user: SequenceConfig = field(default_factory=SequenceConfig)
    reranker: RerankerConfig = field(default_factory=RerankerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    content: ContentConfig = field(default_factory=ContentConfig)
    events: EventTypeConfig = field(default_factory=EventTypeConfig)
    topics: TopicConfig = field(default_factory=TopicConfig)

    @classmethod
    def tiny(cls) -> "ModelConfig":
        return cls(
            text=TextEncoderConfig(max_tokens=16),
            item=ItemTowerConfig.tiny(),
            user=SequenceConfig.tiny(),
            reranker=RerankerConfig.tiny(),
            train=TrainConfig.tiny(),
            content=ContentConfig(short_candidates=6, query_candidates=12),
            topics=TopicConfig.tiny(),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def trained_dict(self) -> dict[str, Any]:
        """`to_dict` without what training never reads: the content channels' and event types' weights, the
        content projection's size and the topics (applied by the pipeline, fitted after training). Two configs
        equal here train the same models, so evaluation results and builds made under one are
        valid under the other."""
        d = self.to_dict()
        d.pop("content")
        d.pop("topics")  # fitted after training, read by explanations and the report only
        d["text"].pop("content_dim")
        d["events"].pop("weights")  # read by the pipeline only
        if not self.events.aliases:  # as configs from before the field: evaluation results stay comparable
            d.pop("events")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        return cls(
            text=TextEncoderConfig(**d.get("text", {})),
            item=ItemTowerConfig(**d.get("item", {})),
            user=SequenceConfig(**d.get("user", {})),
            reranker=RerankerConfig(**d.get("reranker", {})),
            train=TrainConfig(**d.get("train", {})),
            content=ContentConfig(**d.get("content", {})),
            events=EventTypeConfig(**d.get("events", {})),
            topics=TopicConfig(**d.get("topics", {})),
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: Path) -> "ModelConfig":
        return cls.from_dict(json.loads(path.read_text()))


ENGINES = ("auto", "bls", "inprocess")


@dataclass(frozen=True)
class DeployConfig:
    """Everything the exporter needs to lay out a Triton model repository. Cluster settings
    (replicas, resources) live in helm/values.yaml, not here."""

    flavour: str = "embedded"  # "embedded": Python-backend onnxruntime; "ngc": native onnxruntime/tensorrt backends
    device: str = "cpu"  # "cpu" or "gpu": instance group kind and where the pipeline keeps tensors
    tower_instances: int = 1  # instances of each ONNX model (per device on GPU)
    pipeline_instances: int = 2  # recommend/ingest instances; >1 proves state is shared, not cached
    max_batch_size: int = 64  # tower batch limit; recommend/ingest take one request each
    # Dynamic batching wait of the towers: 0 batches only what queued while an instance was busy,
    # so a lone request never waits (200 us cost 0.25 ms at concurrency 1; docs/benchmarks/serving.md)
    max_queue_delay_us: int = 0
    # The public models' queue (a dynamic_batching queue policy, which Triton 2.51 accepts with
    # max_batch_size 0): at most this many requests wait per model, one more is refused at once
    # with UNAVAILABLE ("Exceeds maximum queue size"), which the clients retry with backoff. 8 kept
    # the admitted p99 at concurrency 64 on 2 cores near 100 ms (docs/reliability.md); a long queue
    # under a storm of expiring deadlines crashed Triton 2.51 (a cancellation race fixed in 25.01-25.06).
    # 0 = no bound (Triton's default scheduler).
    queue_size: int = 8
    # A request still queued after this long is refused (UNAVAILABLE "Request timeout expired")
    # rather than computed late; a client may ask for less per request (its own deadline).
    queue_timeout_us: int = 100_000
    max_k: int = 1000  # largest k a client may ask for
    query_weight: float = 0.5  # blend of free-text intent into the user vector when the content query channel is off (ContentConfig.beta_query 0)
    ort_threads: int = 1  # onnxruntime intra-op threads per instance (2-core machines: 1)
    version: int = 1  # model version directory written by this export
    state: str = "sqlite:///state.db"  # state store URL (FRESHREC_STATE overrides): sqlite:///path or redis://host:port/db
    # Retrieval index (FRESHREC_INDEX overrides): "exact" (matrix product + top-k), "sq8" (int8 scan,
    # candidates rescored exactly), "hnsw" (usearch graph, candidates rescored exactly) or "auto"
    # (exact below 20k items, sq8 below 200k, hnsw from there; see freshrec/index.py and
    # docs/benchmarks/index.md).
    index: str = "auto"
    # How the pipeline models (recommend, upsert_items) run the towers (FRESHREC_ENGINE overrides):
    # "bls" (a Triton request per stage, dynamically batched across requests, GPU tensors passed
    # by DLPack), "inprocess" (onnxruntime inside the pipeline's own process, no hop) or "auto":
    # inprocess on the embedded flavour on CPU, where every tower is itself a Python-backend
    # process and a hop costs two process crossings (docs/benchmarks/serving.md); bls on ngc
    # (native backends) and on GPU (tensors stay on the device, Triton places the instances).
    engine: str = "auto"
    # The index cache (freshrec.index.cache): the item matrices and HNSW graphs every instance maps,
    # one copy per server, kept for restarts (FRESHREC_INDEX_CACHE overrides): "" = <freshrec
    # cache>/index, "off" = nowhere (each instance keeps its own copies).
    index_cache: str = ""
    # Intra-op threads of each pipeline instance's numpy/BLAS and torch work (FRESHREC_THREADS
    # overrides; 0 = the libraries' default, one per core). Several instances share the cores:
    # with one pool per core each, a loaded 2-core machine spent ~30 ms per recommend in small
    # ops instead of ~6 (docs/benchmarks/tuning.md).
    threads: int = 1

    def resolved_engine(self) -> str:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.engine == "auto":
            return "inprocess" if self.flavour == "embedded" and self.device == "cpu" else "bls"
        return self.engine

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DeployConfig":
        return cls(**d)

    @classmethod
    def served(cls, d: dict[str, Any], env: Mapping[str, str]) -> "DeployConfig":
        """What a server runs with: the repository's settings `d`, then the deployment's
        environment over them (DEPLOY_ENV: every FRESHREC_* variable the server reads)."""
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        over: dict[str, Any] = {}
        for name, var in DEPLOY_ENV.items():
            value = env.get(var)
            if not value:
                continue
            if types[name] in (int, "int"):
                try:
                    over[name] = int(value)
                except ValueError:
                    raise ValueError(f"{var} must be an integer, got {value!r}") from None
            else:
                over[name] = value
        return dataclasses.replace(cls.from_dict(d), **over)

    def index_cache_dir(self) -> Path | None:
        """The index cache folder (`index_cache`), or None when it is "off"."""
        if self.index_cache.lower() == "off":
            return None
        if self.index_cache:
            return Path(self.index_cache).expanduser()
        from freshrec.assets import cache_root

        return cache_root() / "index"


# Every DeployConfig field a deployment's environment overrides, and its variable: the only
# FRESHREC_* settings a server reads (FRESHREC_CACHE, the asset cache, is read by freshrec.assets).
DEPLOY_ENV = {
    "state": "FRESHREC_STATE",
    "index": "FRESHREC_INDEX",
    "engine": "FRESHREC_ENGINE",
    "index_cache": "FRESHREC_INDEX_CACHE",
    "threads": "FRESHREC_THREADS",
}


@dataclass(frozen=True)
class UpdateOptions:
    """`freshrec update` (freshrec/lifecycle/update.py): what it reads, how it fine-tunes, its gate."""

    repository: Path = Path("model_repository")  # the root (one folder per flavour) or one flavour's folder
    state: str | None = None  # state store URL; default: the one the parent version's settings name
    parent: int | None = None  # the version to fine-tune; default: the one recommend serves (its pin)
    epochs: int = 5  # tower passes over the targets
    # Reranker passes after the towers; 0 keeps the parent's reranker. Off by default: the gate
    # ranks with retrieval + reranker alone, while serving adds the content channel to the
    # reranker's scores, and a fine-tuned reranker's scale shifts that blend (measured: passed
    # gates, 0.85x replay NDCG@10; docs/results/report.md).
    rerank_epochs: int = 0
    budget_s: float | None = None  # stop fine-tuning after this many seconds (at a batch boundary)
    lr: float | None = None  # towers; default: a tenth of the build's tower learning rate
    rerank_lr: float | None = None  # default: 0.3x the build's reranker learning rate
    holdout: float = 0.2  # newest share of the new window held out for the gate
    rehearsal: float = 3.0  # older events replayed per new training target
    tolerance: float = 0.05  # the candidate may be this share below the parent's NDCG@10 and pass
    min_events: int = 20  # fewer new events than this: nothing to learn, no new version
    seed: int = 0
