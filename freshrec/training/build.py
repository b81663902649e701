"""`freshrec build`: data -> train -> export -> model repository -> filled state store."""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from freshrec.config import EventTypeConfig, ModelConfig
from freshrec.contract import TOPICS_FILE
from freshrec.models.checkpoints import CHECKPOINTS, save_models
from freshrec.models.features import event_type_index
from freshrec.models.text_encoder import ContentProjection
from freshrec.training.data import Dataset, Split, temporal_leave_one_out
from freshrec.training.distributed import Ranks, from_env
from freshrec.training.train import (
    Catalog,
    Sequence,
    all_item_vectors,
    evaluate,
    log,
    make_sequence,
    seed_everything,
    text_embeddings,
    train_reranker,
    train_towers,
)  # fmt: skip


@dataclass(frozen=True)
class BuildOptions:
    out: Path = Path("build")  # checkpoints, ONNX files, state.db, build.json
    repository: Path = Path("model_repository")  # one sub-folder per flavour
    events: Path | None = None  # own data (CSV/Parquet); MovieLens-100K when None
    items: Path | None = None
    max_users: int | None = None  # keep the first N users (tests, quick looks)
    serve_state: str = "eval"  # "eval": each user's test event held out; "all": every event
    device: str = "cpu"  # instance kind of the generated repository
    until: float | None = None  # keep only events before this unix time and the items they touch (replay's T0)


def load_data(opts: BuildOptions, event_types: EventTypeConfig | None = None) -> Dataset:
    """The build's dataset, every cell of own files checked (event types by `event_types`):
    a bad file is refused here, before any model or embedding work."""
    from freshrec.training.data import load_dataset, load_movielens_100k

    if opts.events is not None:
        if opts.items is None:
            raise ValueError("--events needs --items: items need text to be embedded")
        return load_dataset(opts.events, opts.items, event_types=event_types)
    return load_movielens_100k()


def files(opts: BuildOptions) -> dict[str, str] | None:
    """The own data files of a build (resolved paths), None for MovieLens-100K."""
    if opts.events is None:
        return None
    return {"events": str(Path(opts.events).resolve()), "items": str(Path(opts.items).resolve()) if opts.items else ""}


def subsample(ds: Dataset, max_users: int) -> Dataset:
    users = sorted(set(ds.events.user_id.tolist()), key=lambda u: (len(u), u))[:max_users]
    return restrict(ds, np.isin(ds.events.user_id, users), f"{ds.name}[{max_users} users]")


def restrict(ds: Dataset, keep: np.ndarray, name: str) -> Dataset:
    """The events where `keep` holds and only the items they touch."""
    events = ds.events.take(np.flatnonzero(keep))
    used = set(events.item_id.tolist())
    idx = [i for i, item in enumerate(ds.items.item_id) if item in used]
    items = type(ds.items)([ds.items.item_id[i] for i in idx], [ds.items.text[i] for i in idx], [ds.items.metadata[i] for i in idx])
    return Dataset(events, items, name)


def before(ds: Dataset, t0: float) -> Dataset:
    """The world as of T0: events strictly before it, and the catalog they reveal."""
    return restrict(ds, ds.events.timestamp < t0, f"{ds.name}[before {t0:.0f}]")


def user_sequences(ds: Dataset, split: Split, row: dict[str, int], upto: str) -> tuple[list[Sequence], np.ndarray]:
    """Histories seen when predicting `upto` ("valid"/"test") and the target rows."""
    e = ds.events
    target_of = split.valid if upto == "valid" else split.test
    seqs, targets = [], []
    for user in sorted(target_of):
        idx = split.history(user, upto)
        seqs.append(make_sequence(
            user, [row[i] for i in e.item_id[idx]], [event_type_index(t) for t in e.event_type[idx]],
            e.timestamp[idx], e.value[idx],
        ))  # fmt: skip
        targets.append(row[e.item_id[target_of[user]]])
    return seqs, np.asarray(targets, np.int64)


@dataclass
class Prepared:
    """A dataset ready for training: the catalog with text embeddings and learned-id rows, the
    leave-one-out split and the three sets of user sequences."""

    ds: Dataset
    split: Split
    catalog: Catalog
    row: dict[str, int]  # item id -> catalog row
    cfg: ModelConfig  # with item.id_vocab set from the training catalog
    train: list[Sequence]
    valid: tuple[list[Sequence], np.ndarray]
    test: tuple[list[Sequence], np.ndarray]


def prepare(ds: Dataset, cfg: ModelConfig, ranks: Ranks | None = None) -> Prepared:
    from freshrec.assets import cache_root, minilm_dir

    split = temporal_leave_one_out(ds)
    if not split.test:  # checked before the text embeddings: nothing to train or test on
        raise ValueError(f"{ds.name or 'data'}: no user has 3 or more events; the leave-one-out split needs them "
                         "(each such user's last event tests, the one before validates)")
    log(f"data: {len(set(ds.events.user_id.tolist()))} users, {len(ds.items)} items, {len(ds.events)} events; "
        f"train {split.n_train}, valid {len(split.valid)}, test {len(split.test)}")
    with (ranks or Ranks()).main_first():  # one process embeds the catalog, the others read its cache
        emb = text_embeddings(list(ds.items.text), minilm_dir(), cfg.text.max_tokens, cache_root() / "embeddings")
    row = ds.items.index()
    train_items = sorted({row[i] for i in ds.events.item_id[split.train_indices()]})
    id_index = np.zeros(len(ds.items), np.int64)
    id_index[train_items] = np.arange(1, len(train_items) + 1)
    cfg = dataclasses.replace(cfg, item=dataclasses.replace(cfg.item, id_vocab=len(train_items)))
    catalog = Catalog(list(ds.items.item_id), list(ds.items.text), [json.dumps(m, sort_keys=True) for m in ds.items.metadata], emb, id_index)
    e = ds.events
    train = [
        make_sequence(u, [row[i] for i in e.item_id[idx]], [event_type_index(t) for t in e.event_type[idx]], e.timestamp[idx], e.value[idx])
        for u, idx in sorted(split.train.items())
    ]
    return Prepared(ds, split, catalog, row, cfg, train, user_sequences(ds, split, row, "valid"), user_sequences(ds, split, row, "test"))


def fit(p: Prepared, cfg: ModelConfig | None = None, catalog: Catalog | None = None, rerank: bool = True,
        ranks: Ranks | None = None) -> tuple[dict, dict]:  # fmt: skip
    """Trains the towers (and the reranker) on `p` -> (modules by contract name, training log).
    `cfg` and `catalog` default to `p`'s; a variant (another seed, text off) passes its own.
    With `ranks` of several processes (torchrun), each trains on its share of every batch."""
    cfg, catalog, ranks = cfg or p.cfg, catalog or p.catalog, ranks or Ranks()
    rng = seed_everything(cfg.train.seed)
    t0 = time.time()
    item_tower, user_tower, tower_log = train_towers(cfg, catalog, p.train, p.valid, rng, ranks)
    modules, logs = {"item_tower": item_tower, "user_tower": user_tower}, {"towers": tower_log}
    if rerank:
        modules["reranker"], logs["reranker"] = train_reranker(cfg, item_tower, user_tower, catalog, p.train, p.valid, rng, ranks)
    logs["seconds"] = round(time.time() - t0, 1)
    logs["distributed"] = ranks.describe()
    return modules, logs


def fit_topics(catalog: Catalog, cfg: ModelConfig):
    """The catalog's topic model (LDA over each item's text and categories), every item's
    mixture by the served recipe (`TopicModel.transform`), and what the build reports of them."""
    from freshrec.models.topics import TopicModel, document

    docs = [document(t, m) for t, m in zip(catalog.texts, catalog.metadata)]
    topics = TopicModel.fit(docs, cfg.topics)
    t0 = time.perf_counter()
    mixtures = topics.transform(docs)
    report = {"n_topics": topics.n_topics, "vocabulary": len(topics.vocabulary), "fit_seconds": topics.fit_seconds,
              "transform_seconds": round(time.perf_counter() - t0, 3), "items": len(docs),
              "top_words": [topics.top_words(t, cfg.topics.top_words) for t in range(topics.n_topics)]}  # fmt: skip
    log(f"topics: LDA with {topics.n_topics} topics over {len(docs)} items, {len(topics.vocabulary)} words, "
        f"fitted in {topics.fit_seconds:.1f}s, mixtures in {report['transform_seconds']:.1f}s")
    return topics, mixtures, report


def build(opts: BuildOptions, cfg: ModelConfig | None = None) -> dict:
    """The whole build. Under `torchrun` (WORLD_SIZE > 1) the training is data-parallel
    (freshrec/training/distributed.py); rank 0 alone goes on to test, export and fill the state
    store, and the others return `{"rank": r}` once the models are trained."""
    from freshrec.export.pipeline import export_build
    from freshrec.export.repository import version_checksums, write_card
    from freshrec.store import Item, open_store
    from freshrec.store.base import Event

    t_start = time.time()
    out = Path(opts.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    cfg = cfg or ModelConfig()
    ranks = from_env()
    ds = load_data(opts, cfg.events)
    if opts.max_users:
        ds = subsample(ds, opts.max_users)
    if opts.until is not None:
        ds = before(ds, opts.until)
    try:
        p = prepare(ds, cfg, ranks)
        cfg, catalog, split, e = p.cfg, p.catalog, p.split, ds.events
        if ranks.world > 1:
            log(f"training: {ranks.world} processes (torchrun, DDP over {ranks.backend}), each on its share of every batch")
        modules, logs = fit(p, ranks=ranks)
    finally:
        ranks.close()
    if not ranks.main:
        return {"rank": ranks.rank}
    item_tower, user_tower, reranker = modules["item_tower"], modules["user_tower"], modules["reranker"]
    metrics = evaluate(cfg, item_tower, user_tower, reranker, catalog, *p.test)
    log(f"test: retrieval HR@10 {metrics['retrieval_10']['hr']:.4f} NDCG@10 {metrics['retrieval_10']['ndcg']:.4f}; "
        f"+ reranker HR@10 {metrics['rerank_10']['hr']:.4f} NDCG@10 {metrics['rerank_10']['ndcg']:.4f}")
    content = ContentProjection(catalog.text_embedding.shape[1], cfg.text.content_dim).fit(catalog.text_embedding)
    save_models(out, cfg, item_tower, user_tower, reranker, content)
    topics, mixtures, topic_report = fit_topics(catalog, cfg)
    topics.save(out / CHECKPOINTS / TOPICS_FILE)

    state_path = out / "state.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(state_path) + suffix).unlink(missing_ok=True)
    state_url = f"sqlite:///{state_path}"
    exported = export_build(out, opts.repository, opts.device, state_url, log=log, replace_versions=True)  # a build starts over

    store = open_store(state_url)
    with torch.no_grad():
        vectors = all_item_vectors(item_tower.eval(), catalog).numpy()
        contents = content(torch.from_numpy(catalog.text_embedding)).numpy()
    store.upsert_items([Item(i, t, v, m, int(x), c, emb, k) for i, t, v, m, x, c, emb, k in
                        zip(catalog.item_ids, catalog.texts, vectors, catalog.metadata, catalog.id_index, contents,
                            catalog.text_embedding, mixtures)])  # fmt: skip
    if opts.serve_state == "eval":
        keep = np.sort(np.asarray([j for u in split.train for j in split.history(u, "test")], np.int64))
    elif opts.serve_state == "all":
        keep = np.arange(len(e))
    else:
        raise ValueError(f"serve_state must be 'eval' or 'all', got {opts.serve_state!r}")
    ids = e.event_id if e.event_id is not None else np.array([f"{ds.name or 'data'}:{o}" for o in e.order], dtype=object)
    store.add_events([Event(e.user_id[j], e.item_id[j], e.event_type[j], float(e.timestamp[j]), float(e.value[j]), str(ids[j])) for j in keep])
    n_events, cutoff = store.count_events(), store.last_arrival()
    log(f"state: {len(catalog.item_ids)} items, {n_events} events in {state_path} ({opts.serve_state})")
    store.close()
    # Version 1's card: the events a later `freshrec update` starts after are those stored now.
    card = {
        "version": 1, "parent": None, "created": time.time(), "kind": "build",
        "data": {"dataset": ds.name, "cutoff_arrival": cutoff, "until": float(e.timestamp[keep].max()) if len(keep) else None,
                 "events": int(len(keep)), "train_events": int(split.n_train), "items": len(catalog.item_ids)},
        "id_rows": int(cfg.item.id_vocab),
        "metrics": {"test": metrics},
        "gate": {"passed": True, "reason": "the build (leave-one-out test metrics above)"},
        "training": {"seconds": logs.get("seconds"), "processes": ranks.world},
    }  # fmt: skip
    for repo in exported["repositories"].values():
        write_card(Path(repo), {**card, "checksums": version_checksums(Path(repo), 1)})

    report = {
        "dataset": ds.name,
        "files": files(opts),
        "users": len(set(e.user_id.tolist())),
        "items": len(ds.items),
        "events": len(e),
        "serve_state": opts.serve_state,
        "until": opts.until,
        "max_users": opts.max_users,
        "test_metrics": metrics,
        "training": logs,
        "topics": topic_report,
        "export": exported["models"],
        "repositories": exported["repositories"],
        "state": state_url,
        "model_config": cfg.to_dict(),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__, "cpus": torch.get_num_threads()},
        "seconds": round(time.time() - t_start, 1),
    }
    (out / "build.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    log(f"build done in {report['seconds']}s -> {out / 'build.json'}")
    return report
