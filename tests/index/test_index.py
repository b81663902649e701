"""The item index: exact, int8-scan and HNSW retrieval, incremental adds, updates, exclusion;
the index benchmark's tiny run; a scaled catalog served with the HNSW index and the int8 scan."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from freshrec.index import ItemIndex
from freshrec.store.base import Item

DIM = 32


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(rng: np.random.Generator, n: int, dim: int = DIM, centres: int = 50) -> np.ndarray:
    """Unit vectors around a few centres: closer to item embeddings than isotropic noise."""
    c = unit(rng, centres, dim)
    x = c[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def items(vectors: np.ndarray, start: int = 0) -> list[Item]:
    return [Item(f"i{start + j}", f"text {start + j}", v) for j, v in enumerate(vectors)]


def exact_top(matrix: np.ndarray, q: np.ndarray, k: int, banned: set[int] = frozenset()) -> list[int]:
    s = matrix @ q
    s[list(banned)] = -np.inf
    return np.argsort(-s, kind="stable")[:k].tolist()


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return clustered(rng, 5000), clustered(rng, 30)


def test_kinds_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown index kind"):
        ItemIndex(DIM, kind="annoy")


def test_hnsw_recall_against_exact(data) -> None:
    x, queries = data
    idx = ItemIndex(DIM, kind="hnsw")
    idx.apply(items(x))
    assert idx.serving_kind == "hnsw" and len(idx.graph) == len(x)
    recalls = []
    for q in queries:
        rows, scores = idx.search(q, 50, [])
        truth = exact_top(x, q, 50)
        recalls.append(len(set(rows.tolist()) & set(truth)) / 50)
        # Scores are exact inner products of the returned rows, best first.
        np.testing.assert_allclose(scores, x[rows] @ q, rtol=1e-5, atol=1e-6)
        assert (np.diff(scores) <= 1e-6).all()
    assert np.mean(recalls) >= 0.95


def test_graph_cache_shares_one_build(data, tmp_path: Path, caplog) -> None:
    """A graph over the same vectors is built once and loaded after; other vectors get their own
    file; the newest CACHE_KEEP["hnsw"] files stay; a damaged file is rebuilt, never served."""
    from freshrec.index.cache import CACHE_KEEP

    GRAPH_CACHE_KEEP = CACHE_KEEP["hnsw"]

    x, queries = data
    cache = tmp_path / "graphs"
    first = ItemIndex(DIM, kind="hnsw", index_cache=cache)
    first.apply(items(x))
    assert first.graph.loaded_from is None and len(list(cache.glob("hnsw-*.usearch"))) == 1
    second = ItemIndex(DIM, kind="hnsw", index_cache=cache)
    second.apply(items(x))
    assert second.graph.loaded_from is not None and len(second.graph) == len(x)
    # Both map the one file (the builder too, once it has saved it).
    assert first.graph.mapped == second.graph.mapped == second.graph.loaded_from
    for q in queries[:5]:
        a, b = first.search(q, 20, [3]), second.search(q, 20, [3])
        assert a[0].tolist() == b[0].tolist()
    # Items added after the load go into the loaded graph as usual.
    extra = clustered(np.random.default_rng(9), 3)
    second.apply(items(extra, start=len(x)))
    assert second.search(extra[0], 1, [])[0].tolist() == [len(x)]
    # Other catalogs: a file each, the oldest pruned.
    for seed in range(GRAPH_CACHE_KEEP + 1):
        other = ItemIndex(DIM, kind="hnsw", index_cache=cache)
        other.apply(items(clustered(np.random.default_rng(100 + seed), 500)))
    assert len(list(cache.glob("hnsw-*.usearch"))) == GRAPH_CACHE_KEEP
    # A damaged file is rebuilt.
    newest = max(cache.glob("hnsw-*.usearch"), key=lambda p: p.stat().st_mtime)
    newest.write_bytes(b"not a graph")
    again = ItemIndex(DIM, kind="hnsw", index_cache=cache)
    again.apply(items(clustered(np.random.default_rng(100 + GRAPH_CACHE_KEEP), 500)))
    assert again.graph.loaded_from is None and len(again.graph) == 500
    assert newest.stat().st_size > 100  # saved again, whole
    # An unusable cache folder (here: a file in its place) costs a build, not the model.
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("x")
    plain = ItemIndex(DIM, kind="hnsw", index_cache=blocked / "graphs")
    plain.apply(items(x[:300]))
    assert plain.graph.loaded_from is None and plain.graph.mapped is None and len(plain.graph) == 300
    assert plain.matrix_file is None


def _maps(path: Path) -> bool:
    """Whether this process has `path` memory-mapped."""
    return any(line.rstrip().endswith(str(path)) for line in Path("/proc/self/maps").read_text().splitlines())


def test_instances_map_one_copy(data, tmp_path: Path) -> None:
    """Two indexes over one catalog map one matrix file and one graph file; what one of them is
    given after the load (a changed item, new items) is its own: found there, exactly scored,
    never seen by the other or written to the files."""
    x, queries = data
    cache = tmp_path / "index"
    a, b = ItemIndex(DIM, kind="hnsw", index_cache=cache), ItemIndex(DIM, kind="hnsw", index_cache=cache)
    a.apply(items(x))
    b.apply(items(x))
    assert a.matrix_file == b.matrix_file and a.matrix_file.parent == cache and _maps(a.matrix_file)
    assert a.graph.mapped == b.graph.mapped and _maps(a.graph.mapped)
    assert a.matrix_file.stat().st_size == 2 * len(x) * DIM * 4  # room for as many rows again
    assert a.matrix_file.stat().st_blocks * 512 < 1.5 * len(x) * DIM * 4  # the room is a hole
    files = {p: p.read_bytes() for p in cache.glob("*-*")}
    np.testing.assert_array_equal(a.matrix, x)
    q = queries[0]
    a_answers = a.search(q, 10, [])  # approximate (the graph proposes), so compared with itself below
    assert len(set(a_answers[0].tolist()) & set(exact_top(x, q, 10))) >= 8  # 9-10 of 10 over 25 builds
    # b: item 7 moved onto query 0's nearest item elsewhere, two new items (one moved again).
    far = -q / np.linalg.norm(q)
    new = clustered(np.random.default_rng(5), 2)
    b.apply([Item("i7", "moved", far), *items(new, start=len(x))])
    b.apply([Item(f"i{len(x)}", "moved again", q)])
    assert len(b) == len(b.graph) == len(x) + 2 and b.graph.overlay is not None
    rows, scores = b.search(q, 10, [])
    assert rows[0] == len(x) and len(set(rows.tolist())) == len(rows)  # found through the overlay, no row twice
    np.testing.assert_allclose(scores, b.matrix[rows] @ q, rtol=1e-5, atol=1e-6)
    assert 7 not in b.search(q, 200, [])[0].tolist()  # its old place proposes it; its new vector's score ranks it out
    assert b.search(far, 1, [])[0].tolist() == [7]
    for probe in queries[1:6]:  # elsewhere b answers what the exact scan over its own vectors answers
        np.testing.assert_array_equal(b.search(probe, 20, [3])[0], exact_top(b.matrix, probe, 20, {3}))
    # a, and the files, are as they were.
    np.testing.assert_array_equal(a.matrix, x)
    assert len(a) == len(a.graph) == len(x) and a.graph.overlay is None
    np.testing.assert_array_equal(a.search(q, 10, [])[0], a_answers[0])
    np.testing.assert_array_equal(a.search(q, 10, [])[1], a_answers[1])
    assert {p: p.read_bytes() for p in cache.glob("*-*")} == files
    # A damaged matrix file (here: zeros put in its place) is written again, never served.
    damaged = cache / "damaged"
    damaged.write_bytes(b"\0" * a.matrix_file.stat().st_size)
    damaged.replace(a.matrix_file)
    c = ItemIndex(DIM, kind="exact", index_cache=cache)
    c.apply(items(x))
    assert c.matrix_file == a.matrix_file
    np.testing.assert_array_equal(c.matrix, x)
    np.testing.assert_array_equal(a.matrix, x)  # a maps the file it had (files are replaced, never changed)


def test_exact_kind_matches_numpy(data) -> None:
    x, queries = data
    idx = ItemIndex(DIM, kind="exact")
    idx.apply(items(x))
    assert idx.serving_kind == "exact"
    rows, _ = idx.search(queries[0], 20, [3, 7])
    assert rows.tolist() == exact_top(x, queries[0], 20, {3, 7})


def test_sq8_scan_matches_exact(data) -> None:
    """The int8 scan proposes, the item matrix rescores: on these vectors the result is the
    exact top-k, with exact scores, and the codes hold a quarter of the matrix's bytes."""
    x, queries = data
    idx = ItemIndex(DIM, kind="sq8")
    idx.apply(items(x))
    assert idx.serving_kind == "sq8" and len(idx.scan) == len(x) and idx.scan.memory_bytes == len(x) * DIM
    hits = 0
    for q in queries:
        rows, scores = idx.search(q, 100, [3, 7])
        truth = exact_top(x, q, 100, {3, 7})
        hits += len(set(rows.tolist()) & set(truth))
        np.testing.assert_allclose(scores, x[rows] @ q, rtol=1e-6, atol=1e-6)
        assert (np.diff(scores) <= 0).all()
    assert hits / (100 * len(queries)) >= 0.99
    # Quantisation alone is coarse: its own ranking differs from the exact one somewhere.
    raw = [idx.scan.search(q, 100).tolist() for q in queries]
    assert any(r != exact_top(x, q, 100) for r, q in zip(raw, queries))


def test_self_check_measures_recall_and_catches_a_broken_index(data) -> None:
    """recall@k against the exact scan on probe queries: 1 for exact, high for the served
    approximate kinds, and low when the approximate structure proposes the wrong rows."""
    x, _ = data
    for kind, floor in (("exact", 1.0), ("sq8", 0.99), ("hnsw", 0.95)):
        idx = ItemIndex(DIM, kind=kind)
        idx.apply(items(x))
        assert floor <= idx.self_check(k=100) <= 1.0, kind
        assert idx.recall == idx.self_check(k=100)  # kept until the next build
    rng = np.random.default_rng(1)
    idx.graph.search = lambda q, count: rng.permutation(len(x))[:count]  # a graph gone wrong
    assert idx.self_check(k=100) < 0.2
    assert ItemIndex(DIM, kind="hnsw").self_check() == 1.0  # empty: nothing to miss


def test_a_build_clears_the_checked_recall_an_add_keeps_it(data) -> None:
    """`recall` (the last self_check) is cleared by each build or re-fit of the graph or int8
    scan, so the server checks again; adds into a built structure keep it."""
    x, _ = data
    idx = ItemIndex(DIM, kind="auto", sq8_threshold=1000, ann_threshold=3000)
    idx.apply(items(x[:500]))
    assert idx.recall is None and idx.self_check() == 1.0  # exact: nothing built, nothing to miss
    idx.apply(items(x[500:1000], start=500))
    assert idx.recall is None and idx.serving_kind == "sq8"
    idx.self_check()
    idx.apply(items(x[1000:1500], start=1000))  # appended under the fitted ranges
    assert idx.recall is not None
    idx.apply(items(x[1500:2000], start=1500))  # doubled: re-fitted
    assert idx.recall is None
    idx.self_check()
    idx.apply(items(x[2000:], start=2000))  # the graph
    assert idx.recall is None and idx.serving_kind == "hnsw"
    checked = idx.self_check()
    idx.apply([Item("i0", "moved", x[1].copy())])  # an update goes into the graph
    assert idx.recall == checked


def test_sq8_refits_its_ranges_when_the_catalog_doubles(data) -> None:
    x, queries = data
    idx = ItemIndex(DIM, kind="sq8")
    idx.apply(items(x[:10] * 0.1))  # a tiny, narrow first catalog: narrow ranges
    assert idx.scan.fitted_on == 10
    idx.apply(items(x[10:15], start=10))  # fewer than double: appended under the old ranges
    assert idx.scan.fitted_on == 10 and len(idx.scan) == 15
    idx.apply(items(x[15:], start=15))  # past double: ranges refitted on all rows, all re-encoded
    assert idx.scan.fitted_on == len(x) and len(idx.scan) == len(x)
    rows, _ = idx.search(queries[0], 50, [])
    truth = exact_top(np.concatenate([x[:10] * 0.1, x[10:]]), queries[0], 50)
    assert len(set(rows.tolist()) & set(truth)) >= 49


@pytest.mark.parametrize("kind", ["hnsw", "sq8"])
def test_incremental_add_is_visible_in_next_search(data, kind: str) -> None:
    x, queries = data
    idx = ItemIndex(DIM, kind=kind)
    idx.apply(items(x[:4000]))
    q = queries[1]
    # A new item pointing exactly at the query must come first once applied, with no rebuild.
    structure = idx.graph if kind == "hnsw" else idx.scan
    idx.apply([Item("new", "new item", q.copy())])
    assert (idx.graph if kind == "hnsw" else idx.scan) is structure and len(structure) == 4001
    rows, scores = idx.search(q, 10, [])
    assert idx.item_ids[rows[0]] == "new" and scores[0] == pytest.approx(1.0, abs=1e-5)
    idx.apply(items(x[4000:], start=4000))  # a larger batch
    rows, _ = idx.search(q, 10, [])
    assert idx.item_ids[rows[0]] == "new" and len(idx) == 5001


@pytest.mark.parametrize("kind", ["hnsw", "sq8"])
def test_update_of_existing_item_moves_it(data, kind: str) -> None:
    x, queries = data
    idx = ItemIndex(DIM, kind=kind)
    idx.apply(items(x))
    q = queries[2]
    top = idx.item_ids[idx.search(q, 1, [])[0][0]]
    far = -q  # the same id now points away from the query: it must leave the top results
    idx.apply([Item(top, "changed", far.copy())])
    assert len(idx) == len(x) and len(idx.graph if kind == "hnsw" else idx.scan) == len(x)
    rows, _ = idx.search(q, 100, [])
    assert top not in [idx.item_ids[r] for r in rows.tolist()]
    # ... and it is found where it now points, under the same row.
    rows, scores = idx.search(far, 1, [])
    assert idx.item_ids[rows[0]] == top and rows[0] == idx.rows[top] and scores[0] == pytest.approx(1.0, abs=1e-5)
    # A batch repeating an id: the last write wins.
    idx.apply([Item(top, "a", q.copy()), Item(top, "b", far.copy())])
    assert idx.item_ids[idx.search(far, 1, [])[0][0]] == top


@pytest.mark.parametrize("kind", ["exact", "sq8", "hnsw"])
def test_indexes_sharing_one_id_map(data, kind: str) -> None:
    """Indexes of the same items (item and content vectors) keep one id <-> row map: each holds
    vectors for the rows it has been given, so one that has not yet applied a batch never
    proposes its rows, and an id new to it is added (to its graph or scan), not updated."""
    from freshrec.index import ItemRows

    x, queries = data
    rows = ItemRows()
    lead, other = ItemIndex(DIM, kind=kind, rows=rows), ItemIndex(DIM // 2, kind=kind, rows=rows)
    lead.apply_vectors([f"i{j}" for j in range(4000)], x[:4000])
    assert len(lead) == 4000 and len(other) == 0 and len(rows) == 4000
    assert len(other.search(queries[0][: DIM // 2], 10, [])[0]) == 0  # nothing applied to it yet
    half = np.ascontiguousarray(x[:, : DIM // 2] / np.linalg.norm(x[:, : DIM // 2], axis=1, keepdims=True))
    other.apply_vectors([f"i{j}" for j in range(4000)], half[:4000])
    assert lead.item_ids is other.item_ids and lead.rows is other.rows and len(other) == 4000
    # A batch with an update and new items, the lead first: until the other applies it, the other
    # proposes only its own 4000 rows; then both find the new item under the same row.
    q, q2 = queries[1], np.ascontiguousarray(queries[1][: DIM // 2] / np.linalg.norm(queries[1][: DIM // 2]))
    ids = ["i7", "new", *(f"i{j}" for j in range(4000, 5000))]
    lead.apply_vectors(ids, np.concatenate([-q[None], q[None], x[4000:]]))
    assert len(lead) == 5001 and len(other) == 4000 and len(rows) == 5001
    assert other.search(q2, 50, [])[0].max() < 4000
    other.apply_vectors(ids, np.concatenate([-q2[None], q2[None], half[4000:]]))
    assert len(other) == 5001 and rows.rows["new"] == 4000
    for idx, query in ((lead, q), (other, q2)):
        if kind != "exact":
            assert len(idx.graph if kind == "hnsw" else idx.scan) == 5001
        found, scores = idx.search(query, 10, [])
        assert idx.item_ids[found[0]] == "new" and scores[0] == pytest.approx(1.0, abs=1e-5)
        assert idx.item_ids[idx.search(-query, 1, [])[0][0]] == "i7"  # updated in place, same row
        assert rows.rows["i7"] == 7


@pytest.mark.parametrize("kind", ["exact", "sq8", "hnsw"])
def test_exclusion(data, kind: str) -> None:
    x, queries = data
    idx = ItemIndex(DIM, kind=kind)
    idx.apply(items(x))
    q = queries[3]
    first = idx.search(q, 30, [])[0].tolist()
    banned = first[:20] + [4999]
    rows, _ = idx.search(q, 30, banned)
    assert len(rows) == 30 and not set(rows.tolist()) & set(banned)
    truth = exact_top(x, queries[3], 30, set(banned))
    assert len(set(rows.tolist()) & set(truth)) >= 28
    # Excluding almost everything: k shrinks to what is left, exactly.
    small = ItemIndex(DIM, kind=kind)
    small.apply(items(x[:40]))
    rows, _ = small.search(q, 10, list(range(35)))
    assert sorted(rows.tolist()) == [35, 36, 37, 38, 39]
    assert len(small.search(q, 10, list(range(40)))[0]) == 0


def test_auto_switches_by_catalog_size(data) -> None:
    x, queries = data
    idx = ItemIndex(DIM, kind="auto", sq8_threshold=1000, ann_threshold=3000)
    idx.apply(items(x[:500]))
    assert idx.serving_kind == "exact"
    idx.apply(items(x[500:2000], start=500))
    assert idx.serving_kind == "sq8" and len(idx.scan) == 2000
    idx.apply(items(x[2000:], start=2000))
    assert idx.serving_kind == "hnsw" and len(idx.graph) == len(x) and idx.scan is None
    assert ItemIndex(DIM).kind == "auto"  # the default
    # On a GPU device neither the graph nor the int8 scan is used.
    for kind in ("hnsw", "sq8", "auto"):
        assert ItemIndex(DIM, device="meta", kind=kind)._wanted_kind() == "exact"


@pytest.mark.parametrize("kind", ["hnsw", "sq8"])
def test_scaled_catalog_served(tiny_build, tmp_path: Path, triton_server_factory, kind: str) -> None:
    """A tiny build's state grown with synthetic items (real MiniLM + the build's item tower),
    served from the build's own repository with FRESHREC_INDEX=hnsw or sq8."""
    from freshrec.client import FreshrecClient, ItemIn

    from freshrec.config import DeployConfig
    from freshrec.offline.benchmarks.catalog_scale import scaled_state
    from freshrec.offline.benchmarks.serving.stats import served_index_recall
    from freshrec.serving.engines import load_reference
    from freshrec.serving.pipeline import Recommender
    from freshrec.store import open_store

    src = open_store(f"sqlite:///{tiny_build['build_dir'] / 'state.db'}")
    n = src.count_items() + 300
    src.close()
    url = scaled_state(tiny_build["build_dir"], n, tmp_path / "scaled.db", log=lambda m: None)
    db = open_store(url)
    items = {it.item_id: it for it in db.items_since(0)[0]}
    assert db.count_items() == len(items) == n
    assert any(i.startswith("syn-") and it.id_index == 0 for i, it in items.items())
    syn = items["syn-0000000"]
    assert "(" in syn.text and "Genres:" in syn.text and json.loads(syn.metadata)["text_embedding"] == "minilm"
    user = db.user_ids()[0]
    db.close()
    graphs = tmp_path / "graphs"
    env = {"FRESHREC_STATE": url, "FRESHREC_INDEX": kind, "FRESHREC_INDEX_CACHE": str(graphs)}
    server = triton_server_factory(Path(tiny_build["repositories"]["embedded"]), env=env)
    # Both recommend instances loaded the catalog at start: one wrote each matrix (item and content
    # vectors, topic mixtures) and built each graph (item and content vectors), and both map those files.
    assert len(list(graphs.glob("hnsw-*.usearch"))) == (2 if kind == "hnsw" else 0)
    cached = set(graphs.glob("matrix-*.f32")) | set(graphs.glob("hnsw-*.usearch"))
    assert len(cached) == (5 if kind == "hnsw" else 3)
    assert list(_mapped_by(server, "recommend", graphs).values()) == [cached] * 2
    log = server.log_path.read_text()
    assert f"recommend: retrieval index {kind} ('{kind}') over {n:,} items" in log and ", self-checked recall@200 " in log
    recall = served_index_recall(server.metrics_url)  # the bench's reader, on a real scrape
    assert recall is not None and 0.95 <= recall <= 1.0
    # The served approximate path returns what the exact reference returns on this small catalog.
    engine, tokenizer, cfg = load_reference(tiny_build["build_dir"])
    ref = Recommender(open_store(url), engine, tokenizer, cfg, DeployConfig())
    with FreshrecClient(server.grpc_url, timeout_s=30.0) as client:
        assert client.recommend(user, k=10).item_ids == ref.recommend(user, k=10).item_ids
        # An item added through the server enters the graph without a rebuild: a query with its
        # exact text finds it first (query-only path: retrieval order is the answer).
        text = "Starfall Protocol (1997). Genres: Action, Adventure, Sci-Fi, Thriller"
        assert client.upsert_items([ItemIn("brand-new", text)]) == 1
        assert client.recommend("nobody-yet", k=5, query=text).item_ids[0] == "brand-new"
    # The upsert_items instance that took the request read the catalog (the new item's neighbours):
    # it maps the same files, written by none of its own.
    assert [m for m in _mapped_by(server, "upsert_items", graphs).values() if m] == [cached]
    assert set(graphs.glob("matrix-*.f32")) | set(graphs.glob("hnsw-*.usearch")) == cached


def _mapped_by(server, model: str, folder: Path) -> dict[int, set[Path]]:
    """The files of `folder` that each Python-backend stub of `model` has memory-mapped."""
    from freshrec.server_ext.supervisor import stubs_of

    out = {}
    for stub in stubs_of(server.pid):
        if stub.model == model:
            paths = (line.split(maxsplit=5)[5] for line in Path(f"/proc/{stub.pid}/maps").read_text().splitlines()
                     if len(line.split(maxsplit=5)) == 6)  # fmt: skip
            out[stub.pid] = {Path(p) for p in paths if p.startswith(f"{folder}/")}
    return out


def test_synthetic_items_are_deterministic_and_size_independent() -> None:
    from freshrec.offline.benchmarks.catalog_scale import CHUNK, synthetic_items

    ids, texts, metas = synthetic_items(0, 300)
    assert ids[0] == "syn-0000000" and len(set(ids)) == 300 and len(set(texts)) > 290
    assert synthetic_items(0, 300) == (ids, texts, metas)
    assert synthetic_items(250, 300)[1] == texts[250:]  # item i does not depend on the range asked
    assert synthetic_items(CHUNK - 5, CHUNK + 5)[0] == [f"syn-{i:07d}" for i in range(CHUNK - 5, CHUNK + 5)]
    assert synthetic_items(0, 300, seed=1)[1] != texts
    meta = json.loads(metas[0])
    assert meta["synthetic"] and 1930 <= meta["year"] <= 2024 and 1 <= len(meta["genres"]) <= 3
    assert f"({meta['year']}). Genres: " in texts[0]
