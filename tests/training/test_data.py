"""Tests for freshrec.training.data: MovieLens-100K facts, file loading, and the temporal splits.

The ML-100K checks read the recbole wheel through the normal cache (`$FRESHREC_CACHE` or
~/.cache/freshrec), fetched with pip on first use.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from freshrec.training import data
from freshrec.training.data import Dataset, Events, Items

# --- MovieLens-100K ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ml100k() -> Dataset:
    return data.load_movielens_100k()


@pytest.fixture(scope="module")
def ml100k_split(ml100k: Dataset) -> data.Split:
    return data.temporal_leave_one_out(ml100k)


def test_ml100k_counts(ml100k: Dataset) -> None:
    ev = ml100k.events
    assert len(ev) == 100_000
    assert len(np.unique(ev.user_id)) == 943
    assert len(np.unique(ev.item_id)) == 1_682
    assert len(ml100k.items) == 1_682
    assert set(ev.item_id) == set(ml100k.items.item_id)


def test_ml100k_columns(ml100k: Dataset) -> None:
    ev = ml100k.events
    assert ev.user_id.dtype == object and isinstance(ev.user_id[0], str)
    assert ev.timestamp.dtype == np.float64 and ev.value.dtype == np.float32
    assert np.array_equal(ev.order, np.arange(100_000))
    assert set(ev.event_type) == {"rate"}
    assert set(np.unique(ev.value)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    # First row of the file: 196 242 3 881250949.
    assert (ev.user_id[0], ev.item_id[0], ev.value[0], ev.timestamp[0]) == ("196", "242", 3.0, 881250949.0)


def test_ml100k_item_text(ml100k: Dataset) -> None:
    ix = ml100k.items.index()
    toy = ix["1"]
    assert ml100k.items.text[toy] == "Toy Story (1995). Genres: Animation, Children's, Comedy"
    assert ml100k.items.metadata[toy] == {"title": "Toy Story", "year": 1995, "genres": ["Animation", "Children's", "Comedy"]}
    # Item 267 has no title, year or genre; item 1412 has its year inside the title.
    assert ml100k.items.text[ix["267"]] == "Unknown title"
    assert ml100k.items.metadata[ix["267"]]["year"] is None
    assert ml100k.items.metadata[ix["1412"]]["year"] == 1995
    assert ml100k.items.text[ix["1412"]].startswith("Land Before Time III: The Time of the Great Giving (1995). Genres:")
    assert all(t and "unkonwn" not in t for t in ml100k.items.text)


def test_ml100k_split(ml100k: Dataset, ml100k_split: data.Split) -> None:
    s, ev = ml100k_split, ml100k.events
    assert s.short_users == []  # every ML-100K user has >= 20 ratings
    assert len(s.valid) == len(s.test) == 943
    assert s.n_train == 100_000 - 2 * 943
    assert len(s.train_indices()) == s.n_train
    # Train, valid and test partition the events.
    everything = np.concatenate([s.train_indices(), list(s.valid.values()), list(s.test.values())])
    assert np.array_equal(np.sort(everything), np.arange(100_000))
    for user, rows in s.train.items():
        seq = rows + [s.valid[user], s.test[user]]
        key = list(zip(ev.timestamp[seq], ev.order[seq]))
        assert key == sorted(key)  # by time, ties by original order
        assert set(ev.user_id[seq]) == {user}
        assert s.history(user, "valid") == rows
        assert s.history(user, "test") == rows + [s.valid[user]]


def test_ml100k_global_time_split(ml100k: Dataset) -> None:
    t0 = data.global_time_split(ml100k, 0.8)
    assert t0 in set(ml100k.events.timestamp)
    before = float(np.mean(ml100k.events.timestamp < t0))
    assert 0.79 < before <= 0.8


def test_describe(ml100k: Dataset) -> None:
    line = data.describe(ml100k)
    assert line.startswith("ml-100k: 943 users, 1,682 items, 100,000 events, 1997-09-20")
    assert "\n" not in line


def test_parse_movielens_small() -> None:
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t4\t100\n1\t11\t2\t90\n"
    item = (
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tHeat\t1995\tAction Crime Thriller\n"
        "11\tunkonwn\tunkonwn\tunknown\n"
    )
    ds = data.parse_movielens_100k(inter, item)
    assert list(ds.events.timestamp) == [100.0, 90.0]
    assert ds.items.text == ["Heat (1995). Genres: Action, Crime, Thriller", "Unknown title"]
    assert ds.items.metadata[1] == {"title": "Unknown title", "year": None, "genres": []}


# --- splits on tiny synthetic data ------------------------------------------------------------


def make_events(rows: list[tuple[str, str, float]], order: list[int] | None = None) -> Events:
    n = len(rows)
    return Events(
        user_id=np.array([r[0] for r in rows], dtype=object),
        item_id=np.array([r[1] for r in rows], dtype=object),
        timestamp=np.array([r[2] for r in rows]),
        event_type=np.array(["click"] * n, dtype=object),
        value=np.full(n, np.nan, dtype=np.float32),
        order=np.arange(n) if order is None else np.array(order),
    )


def tiny(rows: list[tuple[str, str, float]], order: list[int] | None = None) -> Dataset:
    items = sorted({r[1] for r in rows})
    return Dataset(make_events(rows, order), Items(items, items, [{} for _ in items]))


def test_split_ties_broken_by_original_order() -> None:
    # All of u's events share one timestamp: the original order alone decides.
    ds = tiny([("u", "a", 5.0), ("u", "b", 5.0), ("u", "c", 5.0), ("u", "d", 5.0)])
    s = data.temporal_leave_one_out(ds)
    assert (s.train["u"], s.valid["u"], s.test["u"]) == ([0, 1], 2, 3)


def test_split_uses_order_column_not_row_position() -> None:
    # Rows were reordered after loading; `order` still holds the source position.
    rows = [("u", "d", 5.0), ("u", "c", 5.0), ("u", "a", 1.0), ("u", "b", 5.0)]
    ds = tiny(rows, order=[3, 2, 0, 1])
    s = data.temporal_leave_one_out(ds)
    items = [ds.events.item_id[i] for i in s.history("u", "test") + [s.test["u"]]]
    assert items == ["a", "b", "c", "d"]


def test_split_by_time_then_short_users() -> None:
    ds = tiny([("u", "x", 3.0), ("v", "x", 1.0), ("u", "y", 1.0), ("u", "z", 2.0), ("v", "y", 0.5)])
    s = data.temporal_leave_one_out(ds)
    assert (s.train["u"], s.valid["u"], s.test["u"]) == ([2], 3, 0)
    assert s.short_users == ["v"] and s.train["v"] == [4, 1]
    assert "v" not in s.valid and "v" not in s.test
    assert s.history("v", "test") == [4, 1]
    assert s.history("nobody") == []
    with pytest.raises(ValueError, match="upto"):
        s.history("u", "train")  # type: ignore[arg-type]


def test_global_time_split_bounds() -> None:
    ds = tiny([("u", "a", float(t)) for t in range(10)])
    assert data.global_time_split(ds, 0.8) == 8.0
    with pytest.raises(ValueError):
        data.global_time_split(ds, 1.0)


def test_events_length_check() -> None:
    with pytest.raises(ValueError, match="item_id"):
        Events(np.array(["u"], dtype=object), np.array([], dtype=object), [1.0], ["x"], [1.0], [0])


# --- user files ---------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_events_csv(tmp_path: Path) -> None:
    p = write(
        tmp_path / "events.csv",
        "user_id,item_id,timestamp,event_type,value,event_id\n"
        "u1,i1,1700000000,purchase,9.5,e1\n"
        "u1,i2,2023-11-14T22:13:20Z,,,e2\n"
        "u2,i1,2023-11-15T00:13:20+02:00,view,,\n"
        "u2,i3,2023-11-14 22:13:20,like,1,e4\n"
        "u3,i1,2023-11-14,click,,e5\n",
    )
    ev = data.load_events_file(p)
    assert len(ev) == 5
    assert list(ev.user_id) == ["u1", "u1", "u2", "u2", "u3"]
    # The Z, +02:00 and naive (taken as UTC) forms all name the same instant.
    assert list(ev.timestamp[:4]) == [1_700_000_000.0] * 4
    assert ev.timestamp[4] == datetime(2023, 11, 14, tzinfo=timezone.utc).timestamp()
    assert list(ev.event_type) == ["purchase", "click", "view", "like", "click"]
    assert ev.value[0] == np.float32(9.5) and np.isnan(ev.value[1]) and ev.value[3] == 1.0
    assert list(ev.event_id) == ["e1", "e2", "", "e4", "e5"]
    assert np.array_equal(ev.order, np.arange(5))


def test_events_csv_minimal_columns(tmp_path: Path) -> None:
    ev = data.load_events_file(write(tmp_path / "e.csv", "item_id,user_id,timestamp\ni,u,1.5\n"))
    assert ev.event_type[0] == "click" and np.isnan(ev.value[0]) and ev.event_id is None
    assert ev.timestamp[0] == 1.5


def test_events_csv_missing_column(tmp_path: Path) -> None:
    p = write(tmp_path / "events.csv", "user_id,item_id\nu,i\n")
    with pytest.raises(ValueError, match=r"events\.csv.*'timestamp'"):
        data.load_events_file(p)


@pytest.mark.parametrize(
    ("row", "column"),
    [("u,i,yesterday", "timestamp"), ("u,i,", "timestamp"), (",i,1", "user_id"), ("u,i,nan", "timestamp")],
)
def test_events_csv_bad_cell(tmp_path: Path, row: str, column: str) -> None:
    p = write(tmp_path / "events.csv", f"user_id,item_id,timestamp\nu,i,1\n{row}\n")
    with pytest.raises(ValueError, match=rf"events\.csv: row 2, column '{column}'"):
        data.load_events_file(p)


def test_events_csv_bad_value(tmp_path: Path) -> None:
    p = write(tmp_path / "events.csv", "user_id,item_id,timestamp,value\nu,i,1,five\n")
    with pytest.raises(ValueError, match=r"row 1, column 'value'.*'five'"):
        data.load_events_file(p)


def test_items_csv_text_and_metadata(tmp_path: Path) -> None:
    p = write(
        tmp_path / "items.csv",
        'item_id,text,metadata\ni1,A red shoe,"{""brand"": ""acme""}"\ni2,A blue hat,\n',
    )
    items = data.load_items_file(p)
    assert items.item_id == ["i1", "i2"]
    assert items.text == ["A red shoe", "A blue hat"]
    assert items.metadata == [{"brand": "acme"}, {}]


def test_items_csv_title_form(tmp_path: Path) -> None:
    p = write(
        tmp_path / "items.csv",
        "item_id,title,description,genres\n"
        "m1,Heat,A heist goes wrong.,Action|Crime\n"
        "m2,Dr. No,,\n"
        'm3,Up,,"[""Animation""]"\n',
    )
    items = data.load_items_file(p)
    assert items.text == ["Heat. Genres: Action, Crime. A heist goes wrong.", "Dr. No", "Up. Genres: Animation"]
    assert items.metadata[0] == {"title": "Heat", "genres": ["Action", "Crime"], "description": "A heist goes wrong."}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("item_id,name\ni,x\n", "'text' column or a 'title'"),
        ("text\nx\n", "'item_id'"),
        ("item_id,text\ni,x\ni,y\n", "row 2, column 'item_id': duplicate"),
        ("item_id,text\ni,\n", "row 1, column 'text': empty"),
        ("item_id,text,metadata\ni,x,[1]\n", "row 1, column 'metadata'"),
        ("item_id,text,metadata\ni,x,{bad\n", "row 1, column 'metadata'"),
    ],
)
def test_items_csv_errors(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        data.load_items_file(write(tmp_path / "items.csv", text))


def test_load_dataset(tmp_path: Path) -> None:
    ev = write(tmp_path / "events.csv", "user_id,item_id,timestamp\nu,a,1\nu,b,2\nu,c,3\n")
    it = write(tmp_path / "items.csv", "item_id,text\na,A\nb,B\n")
    with pytest.raises(ValueError, match=r"1 item id\(s\) not in .*\['c'\]"):
        data.load_dataset(ev, it)
    ds = data.load_dataset(ev, it, allow_unknown_items=True)
    assert ds.name == "events" and len(ds.events) == 3 and len(ds.items) == 2
    assert data.describe(ds) == (
        "events: 1 users, 2 items (3 with events), 3 events, 1970-01-01 00:00:01 .. 1970-01-01 00:00:03 UTC"
    )
    s = data.temporal_leave_one_out(ds)
    assert (s.train["u"], s.valid["u"], s.test["u"]) == ([0], 1, 2)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        data.load_events_file(tmp_path / "nope.csv")


def test_parquet_without_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "events.parquet"
    p.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow...` fail
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"events\.parquet.*pyarrow"):
        data.load_events_file(p)


def test_parquet_roundtrip(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    when = datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc)
    pq.write_table(
        pa.table({"user_id": ["u"], "item_id": ["i"], "timestamp": pa.array([when], pa.timestamp("s", tz="UTC"))}),
        tmp_path / "e.parquet",
    )
    ev = data.load_events_file(tmp_path / "e.parquet")
    assert ev.timestamp[0] == 1_700_000_000.0


# --- own data: validated in full before any model work, CSV and Parquet alike --------------


def _events_csv(path: Path, n: int, bad_row: int | None = None, bad_type: str = "stars") -> Path:
    """n generated events (u<k>, i<k>, increasing unix seconds, view/click/rating types); the
    event_type cell of data row `bad_row` (1-based) set to `bad_type`."""
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 2_000, n), rng.integers(0, 500, n)
    kinds = np.array(["view", "click", "rating"])[rng.integers(0, 3, n)]
    if bad_row is not None:
        kinds[bad_row - 1] = bad_type
    stamps = 1_600_000_000 + np.arange(n)
    lines = [f"u{u},i{i},{t},{k},{'4' if k == 'rating' else ''}" for u, i, t, k in zip(users, items, stamps, kinds)]
    path.write_text("user_id,item_id,timestamp,event_type,value\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_bad_cell_in_a_large_file_is_refused_before_any_embedding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from freshrec.config import ModelConfig
    from freshrec.training import build as build_module

    events = _events_csv(tmp_path / "events.csv", 200_000, bad_row=199_990)
    items = write(tmp_path / "items.csv", "item_id,title\n" + "".join(f"i{j},Item {j}\n" for j in range(500)))
    calls = []
    monkeypatch.setattr(build_module, "text_embeddings", lambda *a, **k: calls.append(a))
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"events\.csv: row 199990, column 'event_type': unknown event_type 'stars'; known types: view,"):
        build_module.build(build_module.BuildOptions(out=tmp_path / "b", repository=tmp_path / "r", events=events, items=items),
                           ModelConfig.tiny())  # fmt: skip
    assert calls == []  # refused before the text encoder ran
    assert time.perf_counter() - t0 < 10  # 200k rows: about 1 s on 2 cores


def test_too_few_events_per_user_is_refused_before_any_embedding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from freshrec.config import ModelConfig
    from freshrec.training import build as build_module

    calls = []
    monkeypatch.setattr(build_module, "text_embeddings", lambda *a, **k: calls.append(a))
    ds = data.load_dataset(
        write(tmp_path / "events.csv", "user_id,item_id,timestamp\nu,a,1\nu,a,2\nv,a,3\n"),
        write(tmp_path / "items.csv", "item_id,text\na,A\n"),
    )
    with pytest.raises(ValueError, match="no user has 3 or more events"):
        build_module.prepare(ds, ModelConfig.tiny())
    assert calls == []


def test_event_type_names_map_onto_the_built_in_types(tmp_path: Path) -> None:
    from freshrec.config import EventTypeConfig

    p = write(
        tmp_path / "events.csv",
        "user_id,item_id,timestamp,event_type\nu,i,1,rating\nu,i,2,transaction\nu,i,3,addtocart\nu,i,4,return\nu,i,5,\n",
    )
    with pytest.raises(ValueError, match=r"row 4, column 'event_type': unknown event_type 'return'.*--event-types NAME=TYPE"):
        data.load_events_file(p)
    ev = data.load_events_file(p, EventTypeConfig.parse("return=dislike"))
    assert list(ev.event_type) == ["rate", "purchase", "add_to_cart", "dislike", "click"]


def test_event_type_config() -> None:
    import json

    from freshrec.config import EventTypeConfig, ModelConfig

    cfg = ModelConfig(events=EventTypeConfig.parse(" return=dislike, stars = rate ,"))
    assert cfg.events.aliases == (("return", "dislike"), ("stars", "rate"))
    back = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))  # saved with checkpoints and served settings
    assert back == cfg and back.events.canonical("stars") == "rate" and back.events.canonical("rating") == "rate"
    assert "events" in cfg.trained_dict() and "events" not in ModelConfig().trained_dict()
    assert ModelConfig.from_dict({}).events == EventTypeConfig()  # configs saved before the field
    for spec, match in [("return", "NAME=TYPE"), ("return=refund", "not a built-in type"), ("like=dislike", "itself a built-in")]:
        with pytest.raises(ValueError, match=match):
            EventTypeConfig.parse(spec)


def test_build_option_event_types_adds_to_the_config() -> None:
    from freshrec.cli import _model_config, build_parser
    from freshrec.config import EventTypeConfig

    args = build_parser().parse_args(["build", "--tiny", "--event-types", "return=dislike,stars=rate"])
    assert _model_config(args).events == EventTypeConfig((("return", "dislike"), ("stars", "rate")))


def test_event_weights_are_configured_per_built_in_type() -> None:
    import json

    from freshrec.cli import _model_config, build_parser
    from freshrec.config import CONTENT_EVENT_WEIGHTS, EventTypeConfig, ModelConfig

    args = build_parser().parse_args(["build", "--tiny", "--event-types", "return=dislike", "--event-weights", "view=0.1, skip=0"])
    cfg = _model_config(args)
    assert cfg.events.weights == (("view", 0.1), ("skip", 0.0)) and cfg.events.aliases == (("return", "dislike"),)
    assert cfg.events.content_weights == {**CONTENT_EVENT_WEIGHTS, "view": 0.1, "skip": 0.0}
    again = cfg.events.extended((("return", "skip"),), (("view", 0.2),))  # eval's options over a config's: a name again replaces it
    assert again.aliases == (("return", "skip"),) and again.weights == (("skip", 0.0), ("view", 0.2))
    back = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))  # saved with checkpoints and served settings
    assert back == cfg and back.events.content_weights["view"] == 0.1
    # not trained: a build made under other weights serves these after a re-export
    assert "weights" not in cfg.trained_dict()["events"]
    assert ModelConfig(events=EventTypeConfig(weights=(("view", 0.1),))).trained_dict() == ModelConfig().trained_dict()
    for spec, match in [("view", "TYPE=WEIGHT"), ("view=lots", "a number in"), ("view=2", r"in \[-1, 1\]"), ("view=nan", r"in \[-1, 1\]"),
                        ("rate=1", "stars decide"), ("return=-1", "not a built-in type")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            EventTypeConfig.parse_weights(spec)


def test_csv_rows_with_too_many_cells_are_refused(tmp_path: Path) -> None:
    p = write(tmp_path / "events.csv", "user_id,item_id,timestamp\nu,i,1\nu,i,2,oops\n")
    with pytest.raises(ValueError, match=r"events\.csv: row 2: 4 cells but the header has 3"):
        data.load_events_file(p)


def test_csv_and_parquet_load_the_same_dataset(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    n = 300
    rng = np.random.default_rng(1)
    users = [f"u{k}" for k in rng.integers(0, 20, n)]
    item_ids = [f"i{k}" for k in rng.integers(0, 30, n)]
    stamps = (1_700_000_000 + np.arange(n) * 37).tolist()
    kinds = [["view", "rating", "purchase", ""][k] for k in rng.integers(0, 4, n)]
    values = [float(v) if k == "rating" else None for v, k in zip(rng.integers(1, 6, n), kinds)]
    ids = [f"e{r}" for r in range(n)]
    ev_csv = write(
        tmp_path / "events.csv",
        "user_id,item_id,timestamp,event_type,value,event_id\n"
        + "".join(f"{u},{i},{datetime.fromtimestamp(t, timezone.utc).isoformat()},{k},{'' if v is None else v},{e}\n"
                  for u, i, t, k, v, e in zip(users, item_ids, stamps, kinds, values, ids)),
    )  # fmt: skip
    # Parquet with native types: a timestamp column, floats with nulls, nulls for blank types.
    pq.write_table(
        pa.table({
            "user_id": users, "item_id": item_ids, "timestamp": pa.array(stamps, pa.timestamp("s", tz="UTC")),
            "event_type": [k or None for k in kinds], "value": pa.array(values, pa.float64()), "event_id": ids,
        }),
        tmp_path / "events.parquet",
    )  # fmt: skip
    titles = [f"Item {j}" for j in range(30)]
    genres = [["Drama", "Comedy"][: j % 3] for j in range(30)]
    it_csv = write(
        tmp_path / "items.csv",
        "item_id,title,genres,metadata\n" + "".join(f'i{j},{t},{"|".join(g)},"{{""rank"": {j}}}"\n' for j, (t, g) in enumerate(zip(titles, genres))),
    )
    pq.write_table(
        pa.table({"item_id": [f"i{j}" for j in range(30)], "title": titles, "genres": genres,
                  "metadata": [json.dumps({"rank": j}) for j in range(30)]}),
        tmp_path / "items.parquet",
    )  # fmt: skip
    a = data.load_dataset(ev_csv, it_csv)
    b = data.load_dataset(tmp_path / "events.parquet", tmp_path / "items.parquet")
    for name in ("user_id", "item_id", "timestamp", "event_type", "order", "event_id"):
        assert np.array_equal(getattr(a.events, name), getattr(b.events, name)), name
    assert np.array_equal(a.events.value, b.events.value, equal_nan=True)
    assert set(a.events.event_type) == {"view", "rate", "purchase", "click"}
    assert (a.items.item_id, a.items.text, a.items.metadata) == (b.items.item_id, b.items.text, b.items.metadata)
