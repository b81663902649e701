"""`freshrec update`: the serving version fine-tuned on the events stored since its data cut-off,
checked by a gate, and written as the next version of the model repository.

1. **Data**: the state store's events in arrival order (through its interface); those whose
   arrival number is above the parent version's `cutoff_arrival` are the new window (numbers, not
   positions: a user removed by `forget_user` shifts no cut-off, and their events are not
   learned from again). The window is split in time: its newest
   `holdout` share is held out for the gate, the rest are the fine-tuning targets (with as many
   older events replayed beside them, `rehearsal`, so the models do not forget the rest).
   Histories are the users' whole stored sequences (the same recipe serving reads).
2. **Id rows**: items with a new-window event and no learned id row get one; the item tower's id
   table grows (old rows kept, new rows start at zero like the build's).
3. **Fine-tuning**: both towers warm-started from the parent's checkpoints, full softmax over the
   catalog, `epochs` passes at a tenth of the build's rate; the parent's reranker is kept unless
   `rerank_epochs` > 0: then it is fine-tuned too, over the same targets with the new towers'
   candidates (their top C-1 and the target, as the build trains it). `budget_s` bounds both.
   (Off by default: the gate below ranks without the served content channel, whose scores are
   added to the reranker's; a fine-tuned reranker passed its gates and lost in the replay.)
4. **Gate**: parent and candidate rank the held-out events (full catalog, seen items masked,
   retrieval + reranker as served); the candidate passes when its NDCG@10 is at least the
   parent's times (1 - `tolerance`). A refused candidate's card goes to `recommend/rejected/`.
5. **Version N+1** (a passed candidate): graphs exported and checked against PyTorch (unchanged
   models hard-linked), checkpoints and card beside recommend's version folder, in every flavour;
   the new id rows assigned in the store, and the whole catalog's item vectors of the new
   version computed from the stored text embeddings (MiniLM is not re-run) by the serving
   pipeline's own code (`Recommender.fill_missing`) and stored as its vector space, so an
   instance of N+1 reads them at load while instances of N keep reading N's.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from freshrec.config import DeployConfig, ModelConfig, UpdateOptions
from freshrec.contract import ONNX_FILE
from freshrec.models.features import event_type_index
from freshrec.models.towers import ItemTower
from freshrec.training.metrics import rank_metrics
from freshrec.training.train import (
    Catalog, Sequence, all_item_vectors, clone_state, history_inputs, log, make_sequence, pad_batch, rank_users, rerank_candidates,
    reranker_epoch,
)  # fmt: skip


class NothingToLearn(Exception):
    """Too few events since the parent's cut-off."""


def flavour_dirs(repository: Path) -> list[Path]:
    """The flavour folders of a repository root (or the one folder given), embedded first."""
    repository = Path(repository)
    if (repository / "recommend").is_dir():
        return [repository]
    found = sorted((d for d in repository.iterdir() if (d / "recommend").is_dir()), key=lambda d: (d.name != "embedded", d.name))
    if not found:
        raise FileNotFoundError(f"{repository}: no freshrec model repository (run `freshrec build`)")
    return found


@dataclass
class Window:
    """The stored events as user sequences, and which positions train and which the gate holds."""

    seqs: list[Sequence]
    train: list[tuple[int, int]]  # (sequence, position) of new-window training targets
    rehearse: list[tuple[int, int]]  # older positions that may be replayed
    holdout: list[tuple[int, int]]
    new_items: set[str]  # items with a new training event
    n_new: int
    span: tuple[float, float, float]  # window start, holdout start, window end (event timestamps)
    cutoff_arrival: int  # the next update's window: events with a higher arrival number (the first held-out one's, less one)


def parent_cutoff(card: dict, store) -> int:
    """The arrival number a parent's window ends at. Cards written before arrival numbers give
    `cutoff_seq`, a count of events in arrival order: the number of the event at that position
    (exact while no event before it was removed)."""
    data = card["data"]
    if "cutoff_arrival" in data:
        return int(data["cutoff_arrival"])
    position = int(data["cutoff_seq"])
    if position <= 0:
        return 0
    for j, (number, _) in enumerate(store.numbered_events()):
        if j == position - 1:
            return number
    return store.last_arrival()


def read_window(store, row: dict[str, int], cutoff: int, holdout: float) -> Window:
    """The events with an arrival number above `cutoff` are the new window."""
    numbered = list(store.numbered_events())  # arrival order; ML-100K: 100k events, a few MB
    numbers = [n for n, _ in numbered]
    events = [e for _, e in numbered]
    new = [j for j, n in enumerate(numbers) if n > cutoff]
    if not new:
        return Window([], [], [], [], set(), 0, (0.0, 0.0, 0.0), max([cutoff] + numbers[-1:]))
    first_new = new[0]
    order = sorted(new, key=lambda j: (events[j].timestamp, j))
    n_hold = int(round(len(order) * holdout))
    held = set(order[len(order) - n_hold :]) if n_hold else set()
    by_user: dict[str, list[int]] = {}
    for j, e in enumerate(events):
        if e.item_id in row:
            by_user.setdefault(e.user_id, []).append(j)
    seqs, train, rehearse, hold, new_items = [], [], [], [], set()
    for user, idx in by_user.items():
        idx.sort(key=lambda j: (events[j].timestamp, j))
        s = len(seqs)
        seqs.append(make_sequence(
            user, [row[events[j].item_id] for j in idx], [event_type_index(events[j].event_type) for j in idx],
            [events[j].timestamp for j in idx], [events[j].value for j in idx],
        ))  # fmt: skip
        for p, j in enumerate(idx):
            if p == 0:
                continue  # a target needs a history
            if j in held:
                hold.append((s, p))
            elif j >= first_new:
                train.append((s, p))
                new_items.add(events[j].item_id)
            else:
                rehearse.append((s, p))
    ts = [events[j].timestamp for j in order]
    start_hold = events[order[len(order) - n_hold]].timestamp if n_hold else ts[-1]
    # The held-out events were not learned from: the next update's window starts with them.
    end = numbers[min(held)] - 1 if held else numbers[-1]
    return Window(seqs, train, rehearse, hold, new_items, len(new), (ts[0], start_hold, ts[-1]), end)


def grow_item_tower(tower: ItemTower, cfg: ModelConfig, id_vocab: int) -> tuple[ItemTower, ModelConfig]:
    """The parent's item tower with an id table of `id_vocab` rows (+ the zero row): old rows
    kept, new rows zero (text carries a new item until its row learns)."""
    cfg = dataclasses.replace(cfg, item=dataclasses.replace(cfg.item, id_vocab=id_vocab))
    grown = ItemTower(cfg.item)
    state = tower.state_dict()
    old = state["ids.weight"]
    new = grown.state_dict()["ids.weight"].clone()
    new[: old.shape[0]] = old
    state["ids.weight"] = new
    grown.load_state_dict(state)
    return grown, cfg


def finetune_towers(cfg, item_tower, user_tower, catalog: Catalog, seqs: list[Sequence], targets: list[tuple[int, int]],
                    epochs: int, lr: float, budget_s: float | None, rng: np.random.Generator) -> dict:  # fmt: skip
    """A few passes of the build's tower objective (full softmax) over `targets` only."""
    tc, L = cfg.train, cfg.user.max_history
    params = list(item_tower.parameters()) + list(user_tower.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=tc.weight_decay)
    text = torch.from_numpy(catalog.text_embedding)
    ids = torch.from_numpy(catalog.id_index)[:, None]
    t0, history, steps = time.time(), [], 0
    for epoch in range(1, epochs + 1):
        item_tower.train(), user_tower.train()
        total, count = 0.0, 0
        order = rng.permutation(len(targets))
        for i in range(0, len(targets), tc.batch_size):
            if budget_s is not None and time.time() - t0 > budget_s:
                break
            chunk = [targets[j] for j in order[i : i + tc.batch_size]]
            batch = pad_batch([seqs[s] for s, _ in chunk], [p for _, p in chunk], L)  # the events before each target
            goal = torch.from_numpy(np.array([seqs[s].rows[p] for s, p in chunk], np.int64))
            items = item_tower(text, ids)
            u = user_tower(**history_inputs(batch, items))
            loss = F.cross_entropy(u @ items.T / tc.temperature, goal)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, count, steps = total + loss.item() * len(chunk), count + len(chunk), steps + 1
        history.append({"epoch": epoch, "loss": total / max(count, 1)})
        log(f"update: epoch {epoch}/{epochs} loss {total / max(count, 1):.4f} over {count} targets ({time.time() - t0:.1f}s)")
        if budget_s is not None and time.time() - t0 > budget_s:
            log(f"update: time budget of {budget_s:.0f}s reached")
            break
    item_tower.eval(), user_tower.eval()
    return {"epochs": history, "steps": steps, "seconds": round(time.time() - t0, 1), "lr": lr}


def finetune_reranker(cfg, reranker, item_tower, user_tower, catalog: Catalog, seqs: list[Sequence], targets: list[tuple[int, int]],
                       epochs: int, lr: float, budget_s: float | None, rng: np.random.Generator) -> dict:  # fmt: skip
    """The build's reranker objective over `targets`, candidates from the (fine-tuned) towers."""
    opt = torch.optim.AdamW(reranker.parameters(), lr=lr, weight_decay=cfg.train.weight_decay)
    with torch.no_grad():
        items = all_item_vectors(item_tower, catalog)
    prefixes = [(seqs[s], p) for s, p in targets]
    t0, history = time.time(), []
    for epoch in range(1, epochs + 1):
        if budget_s is not None and time.time() - t0 > budget_s:
            log(f"update: time budget reached; reranker kept after {epoch - 1} passes")
            break
        cands, labels = rerank_candidates(cfg, items, user_tower, prefixes, rng)
        loss = reranker_epoch(cfg, reranker, opt, items, user_tower, prefixes, cands, labels, rng)
        history.append({"epoch": epoch, "loss": loss})
        log(f"update: reranker epoch {epoch}/{epochs} loss {loss:.4f} over {len(prefixes)} targets ({time.time() - t0:.1f}s)")
    return {"epochs": history, "seconds": round(time.time() - t0, 1), "lr": lr}


def gate_metrics(cfg, modules: dict, catalog: Catalog, seqs: list[Sequence], holdout: list[tuple[int, int]]) -> dict:
    """NDCG/HR@10 of retrieval and of retrieval + reranker on the held-out events."""
    hist = [Sequence(seqs[s].user_id, seqs[s].rows[:p], seqs[s].types[:p], seqs[s].features[:p]) for s, p in holdout]
    targets = np.array([seqs[s].rows[p] for s, p in holdout], np.int64)
    r = rank_users(cfg, modules["item_tower"], modules["user_tower"], modules["reranker"], catalog, hist, targets)
    ret, rr = rank_metrics(r.retrieval_ranks, (10,))[10], rank_metrics(r.rerank_ranks, (10,))[10]
    return {"events": len(holdout), "ndcg10": rr["ndcg"], "hr10": rr["hr"], "retrieval_ndcg10": ret["ndcg"], "retrieval_hr10": ret["hr"]}


def update(opts: UpdateOptions) -> dict:
    """Runs one update (module docstring) -> the candidate's card (`gate.passed` says whether it
    became a version). Raises NothingToLearn when the window is too small."""
    from freshrec.export.repository import read_card, read_settings, remove_version, served_versions, version_checksums, versions, write_card
    from freshrec.models.checkpoints import load_models
    from freshrec.store import open_store

    t_start = time.time()
    repos = flavour_dirs(opts.repository)
    main = repos[0]
    parent = opts.parent or served_versions(main)[-1]
    parent_card = read_card(main, parent)
    version = max(max(versions(r)) for r in repos) + 1
    settings = read_settings(main, parent)
    state = opts.state or settings["deploy"]["state"]
    cfg, modules, minilm = load_models(main / "recommend" / str(parent))
    store = open_store(state)
    try:
        items, _ = store.items_since(0)
        row = {it.item_id: j for j, it in enumerate(items)}
        cutoff = parent_cutoff(parent_card, store)
        w = read_window(store, row, cutoff, opts.holdout)
        log(f"update: version {parent} -> {version}: {w.n_new} events since the cut-off (arrival number {cutoff}), "
            f"{len(w.train)} training targets, {len(w.holdout)} held out for the gate, state {state.split('@')[-1]}")  # fmt: skip
        if w.n_new < opts.min_events or not w.train or not w.holdout:
            raise NothingToLearn(f"{w.n_new} new events since version {parent}'s cut-off; an update needs at least "
                                 f"{opts.min_events} (with training targets and held-out events)")  # fmt: skip

        id_rows, embeddings = store.item_inputs([it.item_id for it in items])
        if embeddings.shape[1] != cfg.text.dim:  # none stored at all
            embeddings = np.zeros((len(items), cfg.text.dim), np.float32)
        if (np.abs(embeddings).sum(1) == 0).any():
            n = int((np.abs(embeddings).sum(1) == 0).sum())
            raise ValueError(f"{n} items in the state store have no stored text embedding (a state written before "
                             "embeddings were kept): run `freshrec build` again to update from it")  # fmt: skip
        parent_rows = np.where(id_rows <= cfg.item.id_vocab, id_rows, 0)
        parent_catalog = Catalog([it.item_id for it in items], [it.text for it in items], [it.metadata for it in items], embeddings, parent_rows)
        # New id rows for the items the window trains, after every row already given out.
        give = sorted(i for i in w.new_items if id_rows[row[i]] == 0)
        first = max(int(cfg.item.id_vocab), int(id_rows.max(initial=0))) + 1
        assigned = {item_id: first + k for k, item_id in enumerate(give)}
        cand_rows = id_rows.copy()
        for item_id, r in assigned.items():
            cand_rows[row[item_id]] = r
        item_tower, cand_cfg = grow_item_tower(modules["item_tower"], cfg, int(cand_rows.max(initial=0)))
        cand_catalog = dataclasses.replace(parent_catalog, id_index=cand_rows)
        user_tower = type(modules["user_tower"])(cfg.user)
        user_tower.load_state_dict(clone_state(modules["user_tower"]))
        reranker = type(modules["reranker"])(cfg.reranker)
        reranker.load_state_dict(clone_state(modules["reranker"]))
        cand = {**modules, "item_tower": item_tower, "user_tower": user_tower, "reranker": reranker}

        rng = np.random.default_rng(opts.seed)
        torch.manual_seed(opts.seed)
        n_old = min(len(w.rehearse), int(round(opts.rehearsal * len(w.train))))
        old = [w.rehearse[j] for j in rng.choice(len(w.rehearse), n_old, replace=False)] if n_old else []
        lr = opts.lr if opts.lr is not None else cfg.train.lr / 10
        training = finetune_towers(cand_cfg, item_tower, user_tower, cand_catalog, w.seqs, w.train + old, opts.epochs, lr, opts.budget_s, rng)
        training.update(new_targets=len(w.train), rehearsed=len(old), new_id_rows=len(assigned))
        if opts.rerank_epochs > 0:
            left = None if opts.budget_s is None else max(0.0, opts.budget_s - training["seconds"])
            rlr = opts.rerank_lr if opts.rerank_lr is not None else cfg.train.rerank_lr * 0.3
            training["reranker"] = finetune_reranker(cand_cfg, reranker, item_tower, user_tower, cand_catalog, w.seqs, w.train + old,
                                                     opts.rerank_epochs, rlr, left, rng)  # fmt: skip
        changed = {"item_tower", "user_tower"} | ({"reranker"} if training.get("reranker", {}).get("epochs") else set())

        with torch.no_grad():
            before = gate_metrics(cfg, modules, parent_catalog, w.seqs, w.holdout)
            after = gate_metrics(cand_cfg, cand, cand_catalog, w.seqs, w.holdout)
        passed = after["ndcg10"] >= before["ndcg10"] * (1 - opts.tolerance)
        log(f"update: gate on {len(w.holdout)} held-out events: NDCG@10 {before['ndcg10']:.4f} (version {parent}) -> "
            f"{after['ndcg10']:.4f} (candidate); tolerance {opts.tolerance:.0%}: {'passed' if passed else 'REFUSED'}")  # fmt: skip
        card = {
            "version": version, "parent": parent, "created": time.time(), "kind": "update",
            "data": {"state": state.split("@")[-1], "cutoff_arrival": w.cutoff_arrival, "from_arrival": cutoff, "events": w.n_new,
                     "window": {"start": w.span[0], "holdout_start": w.span[1], "end": w.span[2]}, "until": w.span[1],
                     "train_targets": len(w.train), "holdout_events": len(w.holdout)},
            "id_rows": int(cand_cfg.item.id_vocab),
            "training": training,
            "gate": {"metric": "NDCG@10 (retrieval + reranker) on the newest held-out events", "parent": before, "candidate": after,
                     "tolerance": opts.tolerance, "tolerance_kind": "relative", "passed": bool(passed)},
        }  # fmt: skip
        if not passed:
            card["seconds"] = round(time.time() - t_start, 1)
            for r in repos:
                write_card(r, card)
            return card

        # -- version N+1 (removed again if anything below fails: no version without its card) --
        try:
            card = _write_version(store, repos, parent, version, card, cand, cand_cfg, minilm, assigned, changed)
        except BaseException:
            for r in repos:
                remove_version(r, version)
            store.drop_vectors(version)
            raise
        card["seconds"] = round(time.time() - t_start, 1)
        for r in repos:
            write_card(r, {**card, "checksums": version_checksums(r, version)})
        log(f"update: version {version} written to {', '.join(str(r) for r in repos)} in {card['seconds']}s "
            f"({len(assigned)} new id rows); `freshrec rollout` serves it")  # fmt: skip
        return card
    finally:
        store.close()


def _write_version(store, repos: list[Path], parent: int, version: int, card: dict, cand: dict, cand_cfg: ModelConfig, minilm: Path,
                   assigned: dict[str, int], changed: set[str]) -> dict:  # fmt: skip
    """Graphs, settings and checkpoints of `version` in every flavour, its id rows and vectors in the store."""
    from freshrec.contract import BY_NAME, ONNX_MODELS, TOPICS_FILE, Sizes
    from freshrec.export.onnx_export import check_parity, export_onnx
    from freshrec.export.repository import read_settings, write_version
    from freshrec.models.checkpoints import save_models

    main = repos[0]
    sizes = Sizes.of(cand_cfg)
    item_tower, user_tower = cand["item_tower"], cand["user_tower"]
    with tempfile.TemporaryDirectory(prefix="freshrec-update-") as tmp:
        files, parity = {}, {}
        for contract in ONNX_MODELS:
            if contract.name in changed:
                path = export_onnx(contract, cand[contract.name], sizes, cand_cfg, Path(tmp) / f"{contract.name}.onnx")
                parity[contract.name] = check_parity(contract, cand[contract.name], path, sizes, cand_cfg)
                files[contract.name] = path
            else:
                files[contract.name] = main / contract.name / str(parent) / ONNX_FILE
        for r in repos:
            prev = read_settings(r, parent)
            deploy = dataclasses.replace(DeployConfig.from_dict(prev["deploy"]), version=version)
            topics = r / "recommend" / str(parent) / TOPICS_FILE  # the topics are the build's: an update keeps them
            write_version(r, {m: (p if m in changed else r / m / str(parent) / ONNX_FILE) for m, p in files.items()},
                          cand_cfg, deploy, minilm, topics if topics.exists() else None)  # fmt: skip
            save_models(r / "recommend" / str(version), cand_cfg, item_tower, user_tower, cand["reranker"], cand["text_encoder"].content)
    card["export"] = {m: {"max_abs_diff": d, "tolerance": BY_NAME[m].tolerance} for m, d in parity.items()}
    store.assign_id_rows(assigned)
    card["vectors"] = store_vectors(store, cand, cand_cfg, version)
    return card


def store_vectors(store, modules: dict, cfg: ModelConfig, version: int) -> dict:
    """The whole catalog's item vectors of `version`, computed by the serving pipeline's own code
    (`Recommender.fill_missing`, PyTorch modules) and stored as the version's vector space."""
    from freshrec.serving.engines import TorchEngine
    from freshrec.serving.pipeline import Recommender

    t0 = time.time()
    store.drop_vectors(version)  # a leftover of an interrupted update of the same number
    deploy = DeployConfig(version=version, index="exact", index_cache="off")
    rec = Recommender(store, TorchEngine(modules), None, cfg, deploy)
    rec.refresh_index()
    n = len(rec.index)
    written = store.put_vectors(version, rec.index.item_ids, np.asarray(rec.index.matrix[:n], np.float32))
    log(f"update: {written} item vectors of version {version} stored ({time.time() - t0:.1f}s)")
    return {"items": written, "seconds": round(time.time() - t0, 1), "unservable": len(rec.unservable)}


def describe(card: dict) -> str:
    g = card["gate"]
    if "candidate" in g:
        gate = f"gate {'passed' if g['passed'] else 'REFUSED'}: NDCG@10 {g['parent']['ndcg10']:.4f} -> {g['candidate']['ndcg10']:.4f}"
    else:
        gate = g.get("reason", "")
    return json.dumps({"version": card["version"], "parent": card["parent"], "gate": gate}, sort_keys=True)
