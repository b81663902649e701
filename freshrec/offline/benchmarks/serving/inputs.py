"""perf_analyzer `--input-data` files drawn from the served state and the repository's own files:
real users, real history tensors (the served recipe, freshrec.models.features), retrieved
candidates, tokenised texts, and writes that are new for every request."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from freshrec.contract import ONNX_FILE
from freshrec.export.repository import read_settings, version_dir
from freshrec.offline.benchmarks.serving.plan import Spec


def _round(a: np.ndarray) -> list:
    """Floats for JSON with 7 significant digits (float32 precision) to keep the files small."""
    return [float(f"{x:.7g}") for x in np.asarray(a, dtype=np.float64).ravel()]


def _tensor(values: list, shape: list[int]) -> dict[str, Any]:
    return {"content": values, "shape": shape}


def _onnx_session(repository: Path, model: str):
    from freshrec.serving.engines import onnx_session

    return onnx_session(version_dir(repository, model) / ONNX_FILE)


@dataclass
class Dataset:
    """What the input data is drawn from: the served state and the repository's own files."""

    events: list  # freshrec.store.Event, arrival order
    items: list  # freshrec.store.Item
    users: list[str]  # users with at least one event on a catalog item, most active first
    max_history: int
    num_candidates: int
    max_tokens: int

    @classmethod
    def load(cls, state_url: str, repository: Path) -> "Dataset":
        from freshrec.store import open_store

        store = open_store(state_url)
        try:
            events = list(store.events())
            items, _ = store.items_since(0)
        finally:
            store.close()
        settings = read_settings(repository)["model"]
        known = {it.item_id for it in items}
        counts: dict[str, int] = {}
        for e in events:
            if e.item_id in known:
                counts[e.user_id] = counts.get(e.user_id, 0) + 1
        users = sorted(counts, key=lambda u: (-counts[u], u))
        if not users:
            raise ValueError(f"{state_url}: no user has an event on a catalog item; nothing to recommend")
        return cls(events, items, users, settings["user"]["max_history"], settings["reranker"]["num_candidates"], settings["text"]["max_tokens"])


def _history(ds: Dataset, user: str, rows: dict[str, int], matrix: np.ndarray) -> dict[str, np.ndarray]:
    """The user's latest events as the contract's history tensors, without the batch dim, by
    the served pipeline's recipe (freshrec.models.features)."""
    from freshrec.models.features import HISTORY_CONTEXT, event_type_index, gather_vectors, history_arrays

    evs = sorted((e for e in ds.events if e.user_id == user and e.item_id in rows), key=lambda e: e.timestamp)
    evs = evs[-(ds.max_history + HISTORY_CONTEXT) :]
    arrays = history_arrays(
        timestamps=np.array([e.timestamp for e in evs]),
        values=np.array([e.value for e in evs], np.float32),
        types=np.array([event_type_index(e.event_type) for e in evs], np.int64),
        rows=np.array([rows[e.item_id] for e in evs], np.int64),
        max_history=ds.max_history,
    )
    arrays["history_vectors"] = gather_vectors(matrix, arrays["rows"], arrays["history_mask"])
    del arrays["rows"]
    return {name: a[0] for name, a in arrays.items()}


def generate_inputs(ds: Dataset, repository: Path, specs: list[Spec], out: Path, token: str, seed: int = 0,
                    tower_users: int = 8) -> dict[str, dict[int, Path]]:  # fmt: skip
    """Writes one perf_analyzer input-data JSON per model (per model and concurrency level for the
    writes, whose steps must be new) into `out`; returns label -> concurrency -> path."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    labels = {s.label for s in specs}
    paths: dict[str, dict[int, Path]] = {}

    def dump(name: str, steps: list[dict]) -> Path:
        path = out / f"{name}.json"
        path.write_text(json.dumps({"data": steps}, separators=(",", ":")))
        return path

    users = list(ds.users[: max(64, tower_users)])
    rng.shuffle(users)
    catalog = [it for it in ds.items]
    texts = [it.text for it in catalog]
    need_vectors = labels & {"user_tower", "reranker"}
    if "recommend" in labels:
        p = dump("recommend", [{"user_id": [u], "k": [10]} for u in users])
        paths["recommend"] = {c: p for s in specs if s.label == "recommend" for c in s.concurrency}
    if "recommend_query" in labels:
        picks = rng.choice(len(texts), size=len(users), replace=True)
        # The query is a real item text, shortened to its title as a visitor would type it.
        steps = [{"user_id": [u], "k": [10], "query": [texts[j].split(". Genres")[0]]} for u, j in zip(users, picks)]
        p = dump("recommend_query", steps)
        paths["recommend_query"] = {c: p for s in specs if s.label == "recommend_query" for c in s.concurrency}
    if need_vectors:
        rows = {it.item_id: r for r, it in enumerate(catalog)}
        matrix = np.stack([it.vector for it in catalog]).astype(np.float32)
        chosen = users[:tower_users]
        hists = [_history(ds, u, rows, matrix) for u in chosen]
        names = ("history_vectors", "history_features", "history_types", "history_mask")

        def hist_step(h: dict[str, np.ndarray]) -> dict[str, Any]:
            step = {}
            for n in names:
                a = h[n]
                if a.dtype == np.bool_:
                    step[n] = _tensor([bool(x) for x in a.ravel()], list(a.shape))
                elif a.dtype == np.int64:
                    step[n] = _tensor([int(x) for x in a.ravel()], list(a.shape))
                else:
                    step[n] = _tensor(_round(a), list(a.shape))
            return step

        if "user_tower" in labels:
            p = dump("user_tower", [hist_step(h) for h in hists])
            paths["user_tower"] = {c: p for s in specs if s.label == "user_tower" for c in s.concurrency}
        if "reranker" in labels:
            sess = _onnx_session(repository, "user_tower")
            steps = []
            C = ds.num_candidates
            for u, h in zip(chosen, hists):
                feed = {n: h[n][None] for n in names}
                user_vec = sess.run(["user_vector"], feed)[0][0]
                scores = matrix @ user_vec
                seen = [rows[e.item_id] for e in ds.events if e.user_id == u and e.item_id in rows]
                scores[seen] = -np.inf
                n = min(C, int(np.isfinite(scores).sum()))
                top = np.argsort(-scores)[:n]
                cand = np.zeros((C, matrix.shape[1]), np.float32)
                cand[:n] = matrix[top]
                mask = np.zeros(C, np.bool_)
                mask[:n] = True
                cs = np.zeros(C, np.float32)
                cs[:n] = scores[top]
                step = hist_step(h)
                step["candidate_vectors"] = _tensor(_round(cand), [C, matrix.shape[1]])
                step["candidate_mask"] = _tensor([bool(x) for x in mask], [C])
                step["candidate_scores"] = _tensor(_round(cs), [C])
                steps.append(step)
            p = dump("reranker", steps)
            paths["reranker"] = {c: p for s in specs if s.label == "reranker" for c in s.concurrency}
    if labels & {"text_encoder", "item_tower"}:
        from freshrec.export.repository import version_dir
        from freshrec.models.tokenizer import Tokenizer

        picks = rng.choice(len(catalog), size=min(32, len(catalog)), replace=False)
        tok = Tokenizer(version_dir(repository, "upsert_items"), ds.max_tokens)
        ids, mask = tok([texts[j] for j in picks])
        if "text_encoder" in labels:  # one text per request, tokenised alone as upsert_items does
            steps = [{"input_ids": _tensor([int(x) for x in i[0]], [i.shape[1]]), "attention_mask": _tensor([int(x) for x in m[0]], [m.shape[1]])}
                     for i, m in (tok([texts[j]]) for j in picks)]  # fmt: skip
            p = dump("text_encoder", steps)
            paths["text_encoder"] = {c: p for s in specs if s.label == "text_encoder" for c in s.concurrency}
        if "item_tower" in labels:
            emb = _onnx_session(repository, "text_encoder").run(["text_embedding"], {"input_ids": ids, "attention_mask": mask})[0]
            steps = [{"text_embedding": _round(e), "id_index": [int(catalog[j].id_index)]} for e, j in zip(emb, picks)]
            p = dump("item_tower", steps)
            paths["item_tower"] = {c: p for s in specs if s.label == "item_tower" for c in s.concurrency}
    for s in specs:
        if s.label == "ingest_events":
            in_catalog = {it.item_id for it in catalog}
            known = [e for e in ds.events if e.item_id in in_catalog] or ds.events
            paths[s.label] = {}
            for c in s.concurrency:
                n = s.requests + s.warmup
                picks = rng.integers(0, len(known), n)
                steps = []
                for i, j in enumerate(picks):
                    e = known[int(j)]
                    steps.append({
                        "user_id": _tensor([e.user_id], [1]), "item_id": _tensor([e.item_id], [1]),
                        "event_type": _tensor([e.event_type], [1]), "timestamp": _tensor([float(e.timestamp)], [1]),
                        "value": _tensor([None if math.isnan(e.value) else float(e.value)], [1]),
                        "event_id": _tensor([f"bench-{token}-c{c}-{i}"], [1]),
                    })  # fmt: skip
                for st in steps:  # NaN (no value) is not JSON: leave the optional input out
                    if st["value"]["content"][0] is None:
                        del st["value"]
                paths[s.label][c] = dump(f"ingest_events.c{c}", steps)
        if s.label == "upsert_items":
            paths[s.label] = {}
            for c in s.concurrency:
                n = s.requests + s.warmup
                picks = rng.integers(0, len(catalog), n)
                steps = [{"item_id": _tensor([f"bench-{token}-c{c}-{i}"], [1]), "text": _tensor([catalog[int(j)].text], [1]),
                          "metadata": _tensor([catalog[int(j)].metadata or "{}"], [1])} for i, j in enumerate(picks)]  # fmt: skip
                paths[s.label][c] = dump(f"upsert_items.c{c}", steps)
    return paths
