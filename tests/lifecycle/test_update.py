"""`freshrec update` on the tiny build: a new version with its card, graphs, checkpoints, id rows
and item vectors; the gate refuses a candidate; nothing to learn without new events."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from freshrec.export.repository import read_card, read_settings, served_versions, versions
from freshrec.lifecycle.update import NothingToLearn, UpdateOptions, parent_cutoff, read_window, update
from freshrec.models.checkpoints import load_models
from freshrec.store import Event, open_store
from tests.lifecycle.conftest import NEW_ITEM


def test_update_writes_the_next_version_with_its_card(updated):
    repo, card = updated["repo"], updated["card"]
    assert card["version"] == 2 and card["parent"] == 1 and card["gate"]["passed"]
    assert versions(repo) == [1, 2] and served_versions(repo) == [1]  # written, not yet served
    assert read_card(repo, 2)["checksums"] and read_card(repo, 2)["data"]["from_arrival"] == read_card(repo, 1)["data"]["cutoff_arrival"]
    data = card["data"]
    assert data["events"] == updated["events"] and data["train_targets"] + data["holdout_events"] <= data["events"]
    assert data["holdout_events"] > 0 and data["window"]["holdout_start"] >= data["window"]["start"]
    for model in ("item_tower", "user_tower", "reranker", "text_encoder"):
        assert (repo / model / "2" / "model.onnx").exists()
    assert read_settings(repo, 2)["deploy"]["version"] == 2
    for model in ("recommend", "upsert_items"):  # the build's topic model, kept by the update
        assert (repo / model / "2" / "topics.safetensors").read_bytes() == (repo / model / "1" / "topics.safetensors").read_bytes()
        assert f"{model}/2/topics.safetensors" in read_card(repo, 2)["checksums"]
    # the unchanged graphs are their parent's files (hard links), the fine-tuned ones new
    same = lambda m: (repo / m / "2" / "model.onnx").stat().st_ino == (repo / m / "1" / "model.onnx").stat().st_ino  # noqa: E731
    assert same("text_encoder") and not same("reranker") and not same("user_tower") and not same("item_tower")
    assert set(card["export"]) == {"item_tower", "user_tower", "reranker"}
    assert [e["epoch"] for e in card["training"]["reranker"]["epochs"]] == [1, 2]  # after the towers


def test_an_item_added_after_the_build_gets_a_learned_row(updated):
    store = open_store(updated["url"])
    try:
        row = store.item_id_indices([NEW_ITEM])[NEW_ITEM]
    finally:
        store.close()
    cfg1, _, _ = load_models(updated["repo"] / "recommend" / "1")
    cfg2, modules2, _ = load_models(updated["repo"] / "recommend" / "2")
    assert row > cfg1.item.id_vocab and row <= cfg2.item.id_vocab == updated["card"]["id_rows"]
    learned = modules2["item_tower"].ids.weight[row].detach().numpy()
    assert np.abs(learned).sum() > 0  # trained from zero by the new week's clicks


def test_the_new_version_has_its_own_item_vectors(updated):
    store = open_store(updated["url"])
    try:
        spaces = store.vector_spaces()
        one, two = store.catalog_since(0, space=1), store.catalog_since(0, space=2)
    finally:
        store.close()
    assert spaces[2] == spaces[1] == len(one.item_ids)
    assert not two.missing.any() and two.item_ids == one.item_ids
    assert not np.allclose(one.vectors, two.vectors, atol=1e-3)  # another item tower, another space
    np.testing.assert_allclose(np.linalg.norm(two.vectors, axis=1), 1.0, atol=1e-4)


def test_the_gate_refuses_a_candidate_that_is_not_better(lifecycle_root, copy_of):
    own = copy_of(lifecycle_root)
    card = update(UpdateOptions(repository=own["repo"], state=own["url"], tolerance=-1.0, epochs=1))
    assert not card["gate"]["passed"]
    assert versions(own["repo"]) == [1]  # no version folder for a refused candidate
    rejected = list((own["repo"] / "recommend" / "rejected").glob("*.json"))
    assert len(rejected) == 1 and json.loads(rejected[0].read_text())["gate"]["candidate"]["events"] > 0
    store = open_store(own["url"])
    try:
        assert 2 not in store.vector_spaces() and store.item_id_indices([NEW_ITEM])[NEW_ITEM] == 0
    finally:
        store.close()


def test_nothing_to_learn_without_new_events(tiny_build, tmp_path):
    from freshrec.store.sqlite import copy_sqlite
    from tests.faults.conftest import private_repository

    repo = private_repository(Path(tiny_build["repositories"]["embedded"]), tmp_path / "repo")
    copy_sqlite(tiny_build["build_dir"] / "state.db", tmp_path / "state.db")
    with pytest.raises(NothingToLearn, match="0 new events"):
        update(UpdateOptions(repository=repo, state=f"sqlite:///{tmp_path / 'state.db'}"))
    assert versions(repo) == [1]


def test_update_command_pins_a_passed_version(lifecycle_root, copy_of, capsys):
    from freshrec.cli import main

    own = copy_of(lifecycle_root)
    rc = main(["update", "--repository", str(own["repo"]), "--state", own["url"], "--tolerance", "1", "--epochs", "1", "--pin"])
    assert rc == 0
    assert versions(own["repo"]) == [1, 2] and served_versions(own["repo"]) == [2]
    reranker = [own["repo"] / "reranker" / v / "model.onnx" for v in ("1", "2")]
    assert reranker[0].stat().st_ino == reranker[1].stat().st_ino  # by default the served reranker is kept (hard-linked)
    assert all(served_versions(own["repo"], m) == [2] for m in ("ingest_events", "upsert_items", "user_tower", "item_tower"))
    assert '"version": 2' in capsys.readouterr().out
    # a refused candidate: exit code 3, nothing pinned
    own2 = copy_of(lifecycle_root)
    assert main(["update", "--repository", str(own2["repo"]), "--state", own2["url"], "--tolerance", "-1", "--epochs", "1", "--pin"]) == 3
    assert served_versions(own2["repo"]) == [1]


def test_export_refuses_to_delete_later_versions(tiny_build, updated, tmp_path, capsys):
    """`freshrec export` writes version 1 alone: over a repository holding updated versions it stops
    before any work and says so, leaving them as they are."""
    from freshrec.cli import main
    from tests.faults.conftest import private_repository

    root = tmp_path / "repository"
    private_repository(updated["repo"], root / "embedded")
    rc = main(["export", "--build", str(tiny_build["build_dir"]), "--repository", str(root)])
    err = capsys.readouterr().err
    assert rc == 2 and "freshrec update" in err and "embedded: 2" in err and "--replace-versions" in err
    assert versions(root / "embedded") == [1, 2] and served_versions(root / "embedded") == [1]


def _targets(w, pairs):
    return sorted((w.seqs[s].user_id, int(w.seqs[s].rows[p])) for s, p in pairs)


def test_forgetting_a_user_moves_no_update_cut_off(tmp_path):
    """The window is cut by arrival numbers: removing a user's events from before the cut-off
    leaves the same new events in the window (positions in `events()` would shift by two)."""
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    row = {x: j for j, x in enumerate("abcdef")}
    store.add_events([Event("u1", "a", "click", 1.0), Event("gone", "b", "click", 2.0), Event("u1", "c", "click", 3.0),
                      Event("gone", "d", "click", 4.0)])  # fmt: skip
    cutoff = store.last_arrival()
    assert parent_cutoff({"data": {"cutoff_seq": 4}}, store) == cutoff  # a card from before arrival numbers
    store.add_events([Event(u, i, "click", t) for u, i, t in (("u1", "d", 5.0), ("u2", "a", 6.0), ("u2", "b", 7.0), ("u1", "e", 8.0),
                                                               ("gone", "f", 8.5), ("u2", "f", 9.0))])  # fmt: skip
    before = read_window(store, row, cutoff, holdout=0.25)
    assert store.forget_user("gone") == 3
    after = read_window(store, row, cutoff, holdout=0.25)
    assert parent_cutoff({"data": {"cutoff_arrival": cutoff}}, store) == cutoff
    assert after.n_new == before.n_new - 1 == 5  # only the forgotten user's own new event left the window
    assert _targets(after, after.train) == _targets(before, [(s, p) for s, p in before.train if before.seqs[s].user_id != "gone"])
    assert _targets(after, after.holdout) == [("u2", row["f"])]
    assert after.cutoff_arrival == store.last_arrival() - 1  # the held-out event starts the next window
    assert "gone" not in {q.user_id for q in after.seqs}
    nothing = read_window(store, row, store.last_arrival(), holdout=0.25)
    assert nothing.n_new == 0 and nothing.cutoff_arrival == store.last_arrival()
