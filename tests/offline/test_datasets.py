"""The Complete Journey converter, on a small table of the wheel's own schema (the real files are
fetched and verified by freshrec.assets; docs/results/complete_journey is the run on them)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _write_source(folder: Path) -> None:
    day = dt.datetime(2017, 1, 1)
    rows = [  # household, product, hours after day 0
        (1, 10, 5), (1, 10, 1), (1, 20, 2),  # 1 bought 10 twice: its first purchase (hour 1) is the event
        (2, 10, 3), (2, 20, 4), (2, 30, 6),
        (3, 20, 7), (3, 40, 8),  # 30 and 40: one buyer each
        (4, 50, 9), (5, 50, 10),  # 50 has no product row with a type: left out
    ]
    pq.write_table(pa.table({
        "household_id": pa.array([r[0] for r in rows], pa.int64()),
        "product_id": pa.array([r[1] for r in rows], pa.int64()),
        "transaction_timestamp": pa.array([day + dt.timedelta(hours=r[2]) for r in rows], pa.timestamp("ns")),
        "quantity": pa.array([1] * len(rows), pa.int64()),
    }), folder / "transactions.parquet")  # fmt: skip
    pq.write_table(pa.table({
        "product_id": [10, 20, 30, 40, 50],
        "department": ["GROCERY", "PRODUCE", "GROCERY", "DELI", "MISCELLANEOUS"],
        "brand": ["National", "Private", "National", "National", "National"],
        "product_category": ["PASTA SAUCE", "BERRIES", "SOUP", "CHEESES", None],
        "product_type": ["MAINSTREAM", "BLUEBERRIES", "CONDENSED SOUP", "CHEESE: NATURAL", None],
        "package_size": ["26 OZ", None, "10.5 OZ", "8 OZ", None],
    }), folder / "products.parquet")  # fmt: skip


def test_first_purchases_of_products_with_enough_buyers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import freshrec.assets
    from freshrec.offline.datasets import complete_journey
    from freshrec.training.data import load_dataset

    src = tmp_path / "src"
    src.mkdir()
    _write_source(src)
    monkeypatch.setattr(freshrec.assets, "extract", lambda asset: src)
    counts = complete_journey(tmp_path / "out", min_buyers=2)
    assert counts["items"] == 2 and counts["events"] == 5 and counts["users"] == 3
    assert counts["first_purchases"] == 9  # 10 lines, one a repeat

    ds = load_dataset(tmp_path / "out" / "events.csv", tmp_path / "out" / "items.csv")
    ev = ds.events
    pairs = list(zip(ev.user_id.tolist(), ev.item_id.tolist(), ev.timestamp.tolist()))
    t0 = dt.datetime(2017, 1, 1, tzinfo=dt.timezone.utc).timestamp()
    assert pairs == [("1", "10", t0 + 3600), ("1", "20", t0 + 7200), ("2", "10", t0 + 3 * 3600), ("2", "20", t0 + 4 * 3600),
                     ("3", "20", t0 + 7 * 3600)]  # fmt: skip
    assert set(ev.event_type.tolist()) == {"purchase"}
    assert np.all(np.diff(ev.timestamp) >= 0)
    text = dict(zip(ds.items.item_id, ds.items.text))
    assert text["10"] == "Mainstream. Genres: Grocery, Pasta Sauce. National brand, 26 oz"
    assert text["20"] == "Blueberries. Genres: Produce, Berries. Private brand"
    meta = dict(zip(ds.items.item_id, ds.items.metadata))
    assert meta["20"]["genres"] == ["Produce", "Berries"]


def test_min_buyers_must_be_positive(tmp_path: Path) -> None:
    from freshrec.offline.datasets import complete_journey

    with pytest.raises(ValueError, match="min_buyers"):
        complete_journey(tmp_path, min_buyers=0)
