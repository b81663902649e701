"""`freshrec demo` / `make demo`: build if needed, serve on the embedded default, and show the
real-time behaviour through the gRPC client: clicks move the next top-10, a brand-new item is
recommended by its text alone. Then measure latencies and stop the server."""

from __future__ import annotations

import json
import random
import shutil
import statistics
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

# The demo lives on MovieLens's clock (events up to April 1998): a new release of that world.
# A release year far outside the training data (say 2026) is out of distribution for the
# item tower and ranks such an item much lower.
NEW_MOVIE = ("starfall-protocol-1997", "Starfall Protocol (1997). Genres: Action, Adventure, Sci-Fi, Thriller")
NEW_GENRES = ["Action", "Adventure", "Sci-Fi", "Thriller"]


def _catalog(store) -> dict[str, dict]:
    out = {}
    for item in store.items_since(0)[0]:
        m = json.loads(item.metadata or "{}")
        out[item.item_id] = {"title": m.get("title") or item.text.split(". Genres")[0], "genres": m.get("genres") or []}
    return out


def _show(title: str, rec, catalog: dict[str, dict], mark: str | None = None) -> None:
    print(f"\n{title}  ({rec.latency_ms:.1f} ms)")
    for rank, (item, score) in enumerate(zip(rec.item_ids, rec.scores), 1):
        info = catalog.get(item, {"title": item, "genres": []})
        star = "  <- new" if item == mark else ""
        print(f"  {rank:2d}. {info['title'][:44]:44s} {', '.join(info['genres'])[:34]:34s} {score:7.3f}{star}")


def _show_explanation(user: str, rec, catalog: dict[str, dict]) -> None:
    """The explanation output: the user's interest topics and why each of the top items."""
    ex = rec.explanation or {}
    print(f"\n== why (recommend with the explanation output, {rec.latency_ms:.1f} ms): user {user}'s interest topics")
    for t in ex.get("user", {}).get("topics", []):
        print(f"   topic {t['topic']:2d} ({t['weight']:.0%}): {', '.join(t['words'])}")
    for rank, e in enumerate(ex.get("items", []), 1):
        title = catalog.get(e["item_id"], {}).get("title", e["item_id"])
        print(f"  {rank:2d}. {title[:40]:40s}  {e.get('reason', '(no shared topic)')}")


def _nearest(store, item_id: str, n: int) -> list[str]:
    """Catalog items nearest to `item_id` by item-tower vector (read back from the store)."""
    import numpy as np

    ids, matrix, _ = store.item_vectors_since(0)
    sims = matrix @ matrix[ids.index(item_id)]
    return [ids[j] for j in np.argsort(-sims) if ids[j] != item_id][:n]


def _genre_share(items: list[str], catalog: dict[str, dict], genre: str) -> float:
    return sum(genre in catalog.get(i, {}).get("genres", []) for i in items) / max(1, len(items))


RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results" / "summary.json"


def _benchmark(what: str, label: str) -> None:
    """The measured figure of a behaviour from the committed responsiveness benchmark (when this
    is a checkout that has it)."""
    try:
        r = json.loads(RESULTS.read_text())["responsiveness"]["models"]["freshrec"]
    except (OSError, KeyError, ValueError):
        return
    figure = {
        "shift": lambda: f"{r['shift']['by_n']['0']['top10']:.2f} -> {r['shift']['by_n']['8']['top10']:.2f}",
        "negative": lambda: f"{r['negative']['by_kind']['dislikex8']['fall10']:.0%}",
        "intent": lambda: f"{r['intent']['mean']['warm']:.2f}, keeping {r['intent']['mean']['kept']:.1f} of their own",
        "intent_cold": lambda: f"{r['intent']['mean']['cold']:.2f}",
        "twins": lambda: f"{r['twins']['ratio_median']:.2f}x",
    }
    try:
        print(f"   benchmark (docs/results/report.md, responsiveness), {label}: {figure[what]()}")
    except (KeyError, IndexError, TypeError):
        return


def _percentiles(ms: list[float]) -> dict[str, float]:
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {"p50_ms": round(statistics.median(ms), 2), "p99_ms": round(q[98], 2), "calls": len(ms)}


def run_demo(build_dir: Path, repo_root: Path, calls: int = 200) -> int:
    from freshrec.client import EventIn, FreshrecClient, ItemIn
    from freshrec.server_ext.launcher import start_on_free_ports
    from freshrec.store.sqlite import SQLiteStore, copy_sqlite
    from freshrec.training.build import BuildOptions, build

    from freshrec.contract import TOPICS_FILE
    from freshrec.models.checkpoints import CHECKPOINTS

    repo = repo_root / "embedded"
    if not (build_dir / "build.json").exists() or not (repo / "recommend" / "config.pbtxt").exists():
        print("== no build yet: building (data -> train -> export -> state); a few minutes on 2 cores")
        build(BuildOptions(out=build_dir, repository=repo_root))
    elif not (build_dir / CHECKPOINTS / TOPICS_FILE).exists() or "explain" not in (repo / "recommend" / "config.pbtxt").read_text():
        print("== the build predates interest topics and the explain input: building again")
        build(BuildOptions(out=build_dir, repository=repo_root))
    report = json.loads((build_dir / "build.json").read_text())
    m = report["test_metrics"]
    print(f"== offline test metrics of this build ({report['dataset']}, full ranking, seen items masked): "
          f"retrieval HR@10 {m['retrieval_10']['hr']:.4f} NDCG@10 {m['retrieval_10']['ndcg']:.4f}; "
          f"+ reranker HR@10 {m['rerank_10']['hr']:.4f} NDCG@10 {m['rerank_10']['ndcg']:.4f}")

    # The session writes events and items: it works on a copy so the build's state stays as built.
    work = Path(tempfile.mkdtemp(prefix="freshrec-demo-"))
    state = work / "state.db"
    copy_sqlite(build_dir / "state.db", state)
    store = SQLiteStore(state)  # the demo's own view of the served state (another process's writes included)
    catalog = _catalog(store)

    print(f"\n== starting tritonserver on {repo}")
    t0 = time.time()
    server = start_on_free_ports(repo, env={"FRESHREC_STATE": f"sqlite:///{state}"}, work_dir=work, ready_timeout=180)
    try:
        print(f"   ready in {time.time() - t0:.1f}s (gRPC {server.grpc_url})")
        client = FreshrecClient(server.grpc_url, timeout_s=10.0)
        user = "1"
        before = client.recommend(user, k=10)
        before_50 = client.recommend(user, k=50).item_ids
        _show(f"== top-10 for user {user}", before, catalog)
        _show_explanation(user, client.recommend(user, k=5, explain=True), catalog)

        # A new interest: the genre least present in the user's history.
        hist = sorted(store.user_history(user, 0).seen)
        counts = Counter(g for i in hist for g in catalog.get(i, {}).get("genres", []))
        all_genres = Counter(g for info in catalog.values() for g in info["genres"])
        genre = min((g for g, n in all_genres.items() if n >= 100), key=lambda g: counts.get(g, 0) / max(1, len(hist)))
        popular = [i for i, _ in store.popular_items(len(catalog), window=store.count_events())]
        seen = set(hist)
        # Films of that genre not already among the user's top-50, so the shift is the model's doing
        # and not the seen-item filter removing what was there.
        clicks = [i for i in popular if genre in catalog.get(i, {}).get("genres", []) and i not in seen and i not in before_50][:8]
        clock = max(e.timestamp for e in store.events())  # the session goes on where the data ends
        n = client.ingest([EventIn(user, item, "rate", clock + 3600 + 60 * j, 5.0) for j, item in enumerate(clicks)])
        print(f"\n== user {user} rates {n} {genre} films 5 stars: " + "; ".join(catalog[i]["title"] for i in clicks))
        after = client.recommend(user, k=10)
        after_50 = client.recommend(user, k=50).item_ids
        _show(f"== top-10 for user {user} on the very next request", after, catalog)
        _show_explanation(user, client.recommend(user, k=5, explain=True), catalog)
        print(f"   {genre} share of the top-10: {_genre_share(before.item_ids, catalog, genre):.0%} -> "
              f"{_genre_share(after.item_ids, catalog, genre):.0%} (top-50: {_genre_share(before_50, catalog, genre):.0%} -> "
              f"{_genre_share(after_50, catalog, genre):.0%}); {len(set(after.item_ids) - set(before.item_ids))} new titles in the top-10")
        _benchmark("shift", "over 150 users, 8 five-star events: the new genre's top-10 share")

        # Not this: dislikes on the genre the user's list holds most of.
        shown = Counter(g for i in after.item_ids for g in catalog.get(i, {}).get("genres", []))
        liked = max((g for g in shown if g != genre), key=lambda g: shown[g])
        no = [i for i in popular if liked in catalog.get(i, {}).get("genres", []) and i not in seen and i not in clicks][:8]
        client.ingest([EventIn(user, item, "dislike", clock + 7200 + 60 * j) for j, item in enumerate(no)])
        disliked = client.recommend(user, k=10)
        print(f"\n== user {user} dislikes {len(no)} {liked} films; {liked} share of the top-10: "
              f"{_genre_share(after.item_ids, catalog, liked):.0%} -> {_genre_share(disliked.item_ids, catalog, liked):.0%}")
        _benchmark("negative", "over 120 users, 8 dislikes on a liked genre: the fall of its top-10 share")

        # A typed intent from the same user: the list follows it and keeps some of the user's own picks.
        intent = "a western with cowboys"
        asked = client.recommend(user, k=10, query=intent)
        _show(f"== user {user} types {intent!r}", asked, catalog)
        print(f"   Western share {_genre_share(asked.item_ids, catalog, 'Western'):.0%}; "
              f"{len(set(asked.item_ids) & set(disliked.item_ids))} of the user's own top-10 kept")
        _benchmark("intent", "26 intents typed by 40 warm users: top-10 match share")

        # A brand-new item, known only by its text, for the user whose recent history fits it:
        # the one whose latest 20 events hold most of the new item's 20 nearest catalog items.
        item_id, text = NEW_MOVIE
        t = time.perf_counter()
        client.upsert_items([ItemIn(item_id, text, {"title": text.split(" (")[0], "genres": NEW_GENRES})])
        print(f"\n== added a new movie by its text in {(time.perf_counter() - t) * 1000:.1f} ms: {text!r}")
        catalog[item_id] = {"title": text.split(". Genres")[0], "genres": NEW_GENRES}
        neighbours = _nearest(store, item_id, 20)
        print("   its nearest catalog items (item vectors): " + "; ".join(catalog[i]["title"] for i in neighbours[:5]))
        scifi_user = max(store.user_ids(), key=lambda u: sum(i in neighbours for i in store.user_history(u, 20).item_ids))
        rec = client.recommend(scifi_user, k=10)
        deep = client.recommend(scifi_user, k=200)
        rank = deep.item_ids.index(item_id) + 1 if item_id in deep.item_ids else None
        _show(f"== top-10 for user {scifi_user} (recent history closest to the new movie)", rec, catalog, mark=item_id)
        print(f"   the new movie ranks {rank if rank else '>200'} for user {scifi_user}")
        _benchmark("twins", "120 catalog items re-added under a new id: twin's median rank / original's")
        intent = "a sci-fi action thriller"
        visitor = client.recommend("demo-visitor", k=5, query=intent)
        _show(f"== a first-time visitor asking for {intent!r}", visitor, catalog, mark=item_id)
        _benchmark("intent_cold", "26 intents typed by a first-time visitor: top-10 match share")

        # Latencies through the served gRPC API, one call at a time.
        print(f"\n== latency over {calls} sequential calls each (client-side, gRPC round trip)")
        rng = random.Random(0)
        users = store.user_ids()
        items = list(catalog)
        lat = {"recommend": [], "ingest_events": [], "upsert_items": []}
        for _ in range(calls):
            lat["recommend"].append(client.recommend(rng.choice(users), k=10).latency_ms)
        for _ in range(calls):
            t = time.perf_counter()
            client.ingest([EventIn(rng.choice(users), rng.choice(items), "click", clock + 7200, None, uuid.uuid4().hex)])
            lat["ingest_events"].append((time.perf_counter() - t) * 1000)
        for j in range(calls):
            t = time.perf_counter()
            client.upsert_items([ItemIn(f"demo-item-{j}", f"Demo Picture {j} ({2000 + j % 26}). Genres: {rng.choice(list(all_genres))}")])
            lat["upsert_items"].append((time.perf_counter() - t) * 1000)
        table = {name: _percentiles(ms) for name, ms in lat.items()}
        for name, row in table.items():
            print(f"   {name:14s} p50 {row['p50_ms']:7.2f} ms   p99 {row['p99_ms']:7.2f} ms")
        (build_dir / "demo.json").write_text(json.dumps({"latency": table, "machine": report.get("machine")}, indent=2))
        client.close()
    finally:
        server.stop()
        store.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n== server stopped. The build stays in place: `freshrec serve` serves {repo}")
    return 0
