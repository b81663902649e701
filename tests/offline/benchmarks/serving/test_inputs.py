"""perf_analyzer input data from the tiny build's served state (serving/inputs.py)."""

from __future__ import annotations

import json


def test_input_data_uses_real_users_and_contract_shapes(tiny_inputs, tiny_build) -> None:
    from freshrec.contract import BY_NAME

    ds, paths, specs, _repo = tiny_inputs
    assert set(paths) == {s.label for s in specs}
    from freshrec.store import open_store

    db = open_store(f"sqlite:///{tiny_build['build_dir'] / 'state.db'}")
    users, items = set(db.user_ids()), set(db.item_vectors_since(0)[0])
    db.close()
    rec = json.loads(paths["recommend"][1].read_text())["data"]
    assert rec and all(step["user_id"][0] in users and step["k"] == [10] for step in rec)
    for model in ("user_tower", "reranker", "text_encoder", "item_tower"):
        steps = json.loads(paths[model][1].read_text())["data"]
        contract = BY_NAME[model]
        assert steps and set(steps[0]) == set(contract.input_names), model
        for name, value in steps[0].items():
            content = value["content"] if isinstance(value, dict) else value
            shape = value["shape"] if isinstance(value, dict) else [len(value)]
            n = 1
            for d in shape:
                n *= d
            assert len(content) == n, (model, name)
    rr = json.loads(paths["reranker"][1].read_text())["data"][0]
    assert rr["candidate_vectors"]["shape"] == [ds.num_candidates, 64 if ds.max_history == 50 else rr["candidate_vectors"]["shape"][1]]
    assert rr["history_mask"]["content"][-1] is True  # left-padded: the newest event is last
    ing = json.loads(paths["ingest_events"][1].read_text())["data"]
    spec = next(s for s in specs if s.label == "ingest_events")
    ids = [s["event_id"]["content"][0] for s in ing]
    assert len(ids) >= spec.requests + spec.warmup and len(set(ids)) == len(ids)
    assert all(s["user_id"]["content"][0] in users and s["item_id"]["content"][0] in items for s in ing)
    up = json.loads(paths["upsert_items"][1].read_text())["data"]
    new = [s["item_id"]["content"][0] for s in up]
    assert len(set(new)) == len(new) and not set(new) & items and all(s["text"]["content"][0].strip() for s in up)
