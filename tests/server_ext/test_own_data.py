"""`freshrec build` on own files with event types of its own, served: the names the build mapped
reach the served ingest, and any other name is refused there with the known types."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.triton_calls import ingest, recommend

GENRES = ["Drama", "Comedy", "Horror", "Western"]


def _own_files(root: Path) -> tuple[Path, Path]:
    """30 users x 8 events over 40 titled items; types `view`, `rating` (a common name) and
    `return` (a name of this shop's own, mapped at build time)."""
    rng = np.random.default_rng(0)
    items = root / "items.csv"
    items.write_text("item_id,title,genres\n" + "".join(f"p{j},Product {j},{GENRES[j % 4]}\n" for j in range(40)))
    rows, t = [], 1_700_000_000
    for u in range(30):
        for j in range(8):
            kind = ["view", "rating", "return"][int(rng.integers(0, 3))]
            value = str(int(rng.integers(1, 6))) if kind == "rating" else ""
            rows.append(f"c{u},p{int(rng.integers(0, 40))},{t},{kind},{value}\n")
            t += 60
    events = root / "events.csv"
    events.write_text("user_id,item_id,timestamp,event_type,value\n" + "".join(rows))
    return events, items


def test_a_build_on_own_event_types_serves_them(tmp_path: Path, triton_server_factory) -> None:
    from freshrec.cli import main
    from freshrec.config import ModelConfig
    from freshrec.store import open_store

    events, items = _own_files(tmp_path)
    out, repo = tmp_path / "build", tmp_path / "repo"
    args = ["build", "--tiny", "--events", str(events), "--items", str(items), "--out", str(out), "--repository", str(repo)]
    assert main(args) == 2  # `return` is no built-in type nor a common name: refused before any training
    assert main([*args, "--event-types", "return=dislike"]) == 0
    assert ModelConfig.load(out / "checkpoints" / "model_config.json").events.aliases == (("return", "dislike"),)
    store = open_store(f"sqlite:///{out / 'state.db'}")
    try:
        assert set(store.user_history("c0", 100).event_types) <= {"view", "rate", "dislike"}  # stored as the built-in types
    finally:
        store.close()

    server = triton_server_factory(repo / "embedded", env={"FRESHREC_STATE": f"sqlite:///{out / 'state.db'}"})
    c = grpcclient.InferenceServerClient(server.grpc_url)
    now = time.time()
    assert ingest(c, ["c0", "c0"], ["p1", "p2"], [now, now + 1], types=["return", "rating"], values=[float("nan"), 5.0]) == 2
    with pytest.raises(InferenceServerException) as info:
        ingest(c, ["c0"], ["p3"], [now + 2], types=["refund"])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "unknown event_type 'refund'; known types: view, click, rate" in info.value.message()
    assert "return" in info.value.message() and "--event-types" in info.value.message()
    ids, _ = recommend(c, "c0", k=5)
    assert len(ids) == 5 and not {"p1", "p2"} & set(ids)  # the new events count: their items are seen
