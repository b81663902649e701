"""`freshrec bench capacity` (freshrec/offline/benchmarks/capacity.py): the arithmetic on small
synthetic figures, the clear error when a figure is missing, and the committed capacity.md being
what the committed figures give."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import pytest

from freshrec.cli import main
from freshrec.offline.benchmarks import capacity as cap

ROOT = Path(__file__).resolve().parents[3]
M, K100 = 1_000_000, 100_000


def _run(n: int, infer: float, retrieval: float, rss: float, best: float) -> dict:
    """A catalog run as `freshrec bench serving` writes it into summary.json."""
    machine = {"cpu": "Test CPU", "cores": 2, "gpu": None}
    return {
        "catalog_items_served": n, "server_ready_seconds": 10.0, "date_utc": "2026-01-01 00:00", "machine": machine,
        "memory_after_warmup": {"total_rss_mib": rss},
        "results": {"recommend": {
            "1": {"concurrency": 1, "throughput": best / 2, "p50_ms": infer, "p99_ms": 2 * infer,
                  "server": {"recommend": {"compute_infer_ms": infer}}, "stages": {"recommend": {"retrieval": {"ms": retrieval}}}},
            "4": {"concurrency": 4, "throughput": best, "p99_ms": 50.0},
            "8": {"concurrency": 8, "throughput": 10 * best, "p99_ms": 61.0},  # over the bound: not the best
        }},
    }  # fmt: skip


def _raw() -> tuple[dict, dict, dict]:
    catalogs = {}
    for kind in cap.KINDS:
        catalogs[f"catalog_{K100}_{kind}"] = _run(K100, 15.0, 5.0, 3000.0, 400.0)
        catalogs[f"catalog_{M}_{kind}"] = _run(M, 20.0, 10.0, 4000.0, 100.0)
    machine = {"cpu": "Test CPU", "cores": 2, "gpu": None}
    summary = {
        "date_utc": "2026-01-01 00:00", "machine": machine, "catalogs": catalogs,
        "results": {"ingest_events": {"4": {"concurrency": 4, "throughput": 1000.0, "p99_ms": 10.0}},
                    "upsert_items": {"2": {"concurrency": 2, "throughput": 200.0, "p99_ms": 20.0}}},
    }  # fmt: skip
    rows = [{"method": "exact_torch", "n_items": M, "params": {}, "memory_bytes": 256 * M, "build_s": 1.0, "add_one_p50_ms": 0.0},
            {"method": "sq8_scan", "n_items": M, "params": {}, "memory_bytes": 64 * M, "build_s": 1.0, "add_one_p50_ms": 0.0},
            {"method": "usearch_hnsw", "n_items": M, "params": {"expansion_search": 512}, "memory_bytes": 1, "build_s": 1.0, "add_one_p50_ms": 9.0},
            {"method": "usearch_hnsw", "n_items": M, "params": {"expansion_search": 2048}, "memory_bytes": 500 * M, "build_s": 100.0,
             "add_one_p50_ms": 0.0}]  # fmt: skip
    index = {"results": rows, "machine": {"cpu": "Test CPU", "cpus": 2}, "date": "2026-01-01 00:00 UTC"}
    names = ("sqlite/recommend", "redis/recommend", "redis/ingest_events", "redis-cluster/recommend", "redis-cluster/ingest_events")
    stores = {"latency": {k: {"mean_ms": 5.0} for k in names}, "machine": {"cpu": "Test CPU", "cpus": 2}, "date": "2026-01-01"}
    return summary, index, stores


QUIET = cap.Assumptions(events_per_s=0, items_per_s=0, content_searches=0)  # recommend alone, one search per request


def test_pods_are_the_rate_over_the_scaled_per_pod_rate() -> None:
    fig = cap.figures_from(*_raw())
    # the best run within the p99 bound is concurrency 4's 100/s, not concurrency 8's 1000/s
    assert fig["recommend"]["exact"][M]["best"] == {"rps": 100.0, "concurrency": 4, "p99_ms": 50.0}
    # at the measured size the model gives back the measured rate
    assert cap.pod_rps(fig, "exact", M, QUIET) == pytest.approx(100.0)
    # exact at 10M: one scan 10 ms x 10 = 100 ms; per request 10 + 100 = 110 ms; per pod 100/s x 20 / 110
    assert cap.retrieval_ms(fig, "exact", 10 * M) == pytest.approx(100.0)
    rps = 100.0 * 20.0 / 110.0
    assert cap.pod_rps(fig, "exact", 10 * M, QUIET) == pytest.approx(rps)
    p = cap.pods(fig, "exact", 10 * M, QUIET)
    assert p["pods"] == math.ceil(10_000 / (rps * 0.7)) == 786
    assert p["pods_at_measured_rate"] == math.ceil(10_000 / rps) == 550  # 550.0000000001 in floats is 550
    # the content index's search doubles the retrieval term
    two = dataclasses.replace(QUIET, content_searches=1)
    assert cap.recommend_ms(fig, "exact", 10 * M, two) == pytest.approx(10.0 + 2 * 100.0)
    # a pod of twice the cores serves twice the rate
    assert cap.pod_rps(fig, "exact", 10 * M, dataclasses.replace(QUIET, pod_cores=4)) == pytest.approx(2 * rps)


def test_hnsw_grows_through_the_measured_points_or_with_log_n() -> None:
    fig = cap.figures_from(*_raw())
    # 5 ms at 100k, 10 ms at 1M: x2 a decade, so 20 ms at 10M; ~log n gives 10 x 7/6
    assert cap.hnsw_exponent(fig) == pytest.approx(math.log10(2))
    assert cap.retrieval_ms(fig, "hnsw", 10 * M, "power") == pytest.approx(20.0)
    assert cap.retrieval_ms(fig, "hnsw", 10 * M, "log") == pytest.approx(10.0 * 7 / 6)
    assert cap.graph_build_s(fig, 10 * M) == pytest.approx(100.0 * 10 * 7 / 6)


def test_writes_and_index_upkeep_take_cores() -> None:
    fig = cap.figures_from(*_raw())
    a = dataclasses.replace(QUIET, recommendations_per_s=0, events_per_s=5000, items_per_s=0)
    p = cap.pods(fig, "exact", M, a)
    assert p["cores"]["ingest"] == pytest.approx(5000 * 2 / 1000.0)  # 2 cores per 1000 events/s
    assert p["pods"] == math.ceil(10.0 / 1.4)
    # every instance of every pod adds each new item to 2 indexes: 100/s x 2 x 2 x 9 ms = 3.6 cores, over a pod's 1.4
    raw = _raw()
    raw[1]["results"][3]["add_one_p50_ms"] = 9.0
    p = cap.pods(cap.figures_from(*raw), "hnsw", M, dataclasses.replace(a, items_per_s=100))
    assert p["upkeep_cores_per_pod"] == pytest.approx(3.6) and p["pods"] is None


def test_memory_per_pod_is_the_measured_slope_plus_the_unmeasured_indexes() -> None:
    fig = cap.figures_from(*_raw())
    mem = cap.pod_memory(fig, "exact", 10 * M, QUIET)
    slope = 1000 * 2**20 / (M - K100)
    assert mem["slope_bytes_per_item"] == pytest.approx(slope)
    assert mem["measured_part"] == pytest.approx(4000 * 2**20 + slope * 9 * M)
    # 2 instances x (content: 64 float32 + 100 bookkeeping; topics: 20 float32 + 100 bookkeeping)
    assert mem["unmeasured_part"] == pytest.approx(2 * 10 * M * ((256 + 100) + (80 + 100)))
    hnsw = cap.pod_memory(fig, "hnsw", 10 * M, QUIET)  # the graph's 500 B per item in the content index
    assert hnsw["unmeasured_part"] - mem["unmeasured_part"] == pytest.approx(2 * 10 * M * 500)


def test_redis_shards_are_the_larger_of_memory_and_commands() -> None:
    fig = cap.figures_from(*_raw())
    a = dataclasses.replace(QUIET, users=0, events_per_s=0, items_per_s=0)
    r = cap.redis(fig, 10 * M, a, pods_served=10)
    assert r["memory"]["events"] == 0 and r["total"] == pytest.approx(10 * M * r["item_bytes"])
    assert r["by_memory"] == math.ceil(10 * M * r["item_bytes"] / (25 * 2**30))
    assert r["ops"]["recommend"] == 5 * 10_000 and r["by_ops"] == math.ceil(50_000 / 25_000) == 2
    assert r["primaries"] == max(r["by_memory"], 2) and r["nodes"] == 2 * r["primaries"]
    assert not r["catalog_fits_one_shard"] and r["hot_over_budget"] == []  # {cat} takes 10,000 commands/s
    r = cap.redis(fig, 10 * M, dataclasses.replace(a, events_per_s=20_000), pods_served=10)
    assert r["hot"]["{g}"] == 40_000 and r["hot_over_budget"] == ["{g}"]  # one reservation + WAIT per ingest on {g}
    assert r["memory"]["events"] == pytest.approx(20_000 * 86_400 * 7 * r["event_bytes"])


def test_a_missing_figure_stops_the_model_naming_it(tmp_path: Path) -> None:
    summary, index, stores = _raw()
    broken = copy.deepcopy(summary)
    del broken["catalogs"][f"catalog_{M}_sq8"]["results"]["recommend"]["1"]["stages"]
    with pytest.raises(cap.MissingFigure, match=r"catalog_1000000_sq8.*stages\.recommend\.retrieval\.ms"):
        cap.figures_from(broken, index, stores)
    broken = copy.deepcopy(summary)
    del broken["catalogs"][f"catalog_{K100}_hnsw"]
    with pytest.raises(cap.MissingFigure, match=r"catalogs\.catalog_100000_hnsw"):
        cap.figures_from(broken, index, stores)
    with pytest.raises(cap.MissingFigure, match="usearch_hnsw row at 1,000,000 items with expansion_search 2048"):
        cap.figures_from(summary, {**index, "results": index["results"][:3]}, stores)
    broken = copy.deepcopy(summary)
    for r in broken["catalogs"][f"catalog_{M}_exact"]["results"]["recommend"].values():
        r["p99_ms"] = 100.0
    with pytest.raises(cap.MissingFigure, match="with p99 <= 60 ms"):
        cap.figures_from(broken, index, stores)
    # through the command: a missing file is named with the benchmark that writes it, exit status 2
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "index.json").write_text(json.dumps(index))
    assert main(["bench", "capacity", "--figures", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert not (tmp_path / "capacity.md").exists()
    (tmp_path / "state_stores.json").write_text(json.dumps(stores))
    assert main(["bench", "capacity", "--figures", str(tmp_path), "--out", str(tmp_path), "--items", "2000000"]) == 0
    assert "# Capacity model: 2M items at 10,000 recommendations/s" in (tmp_path / "capacity.md").read_text()


def test_gpus_only_from_a_measured_gpu_figure() -> None:
    summary, index, stores = _raw()
    fig = cap.figures_from(summary, index, stores)
    text = cap.render(fig, cap.model(fig, (10 * M,), cap.Assumptions()), cap.Assumptions())
    assert "No GPU figure has been measured" in text
    gpu = {"catalog_items_served": M, "date_utc": "2026-01-02 00:00", "machine": {"cpu": "x", "cores": 16, "gpu": "NVIDIA H100"},
           "results": {"recommend": {"16": {"concurrency": 16, "throughput": 1000.0, "p99_ms": 40.0}}}}  # fmt: skip
    fig = cap.figures_from(summary, index, stores, gpu)
    text = cap.render(fig, cap.model(fig, (10 * M,), cap.Assumptions()), cap.Assumptions())
    # 1000/s at 1M, linear in n: 100/s at 10M; ceil(10000 / (100 x 0.7)) = 143
    assert "No GPU figure" not in text and "= **143**" in text and "NVIDIA H100" in text


def test_the_committed_capacity_md_is_what_the_committed_figures_give(tmp_path: Path) -> None:
    cap.run(ROOT / "docs" / "benchmarks", tmp_path)
    assert (tmp_path / "capacity.md").read_text() == (ROOT / "docs" / "benchmarks" / "capacity.md").read_text(), (
        "docs/benchmarks/capacity.md is stale: run `freshrec bench capacity`")


def test_the_pod_shape_is_the_charts() -> None:
    yaml = pytest.importorskip("yaml")
    values = yaml.safe_load((ROOT / "helm" / "freshrec" / "values.yaml").read_text())
    assert str(cap.Assumptions().pod_cores) == str(values["resourceProfiles"]["cpu"]["requests"]["cpu"])
    startup = values["probes"]["startup"]
    assert cap.STARTUP_WINDOW_S == startup["periodSeconds"] * startup["failureThreshold"]
