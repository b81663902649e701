"""Synthetic catalogs of 100k and 1M items served from a normal build's model repository.

    from freshrec.offline.benchmarks.catalog_scale import scaled_state
    url = scaled_state(Path("build"), 100_000, Path("/tmp/state-100k.db"))
    # then: FRESHREC_STATE=<url> freshrec serve   (same repository, same models)

`scaled_state` copies the build's state (its own items with their learned id rows, and every
event) into a new SQLite file and adds generated movie-like items up to `n_items`: a title from
word lists and patterns, a year, one to three MovieLens genres and a one-line plot, in the
build's own text format (`freshrec.training.data.item_text`), deterministic by seed; ids `syn-0000000`...
Their vectors come from the build's item tower (text only, id row 0, as for any new item) over
MiniLM text embeddings.

Honest limit: the frozen MiniLM runs at a few hundred texts per second on a 2-core CPU, so at
most `minilm_limit` (default 100,000) synthetic texts are embedded by MiniLM itself (cached by
content under the freshrec cache, in chunks of 10,000, so the 100k catalog and the first 100k
of the 1M catalog share the work). Synthetic texts past that limit get a *surrogate* text
embedding: a ridge regression from the text's bag of word pieces (the same tokenizer, the same
32-token truncation) to the MiniLM embedding, fitted on the MiniLM-embedded texts, then
normalised; its held-out cosine to the real MiniLM embedding is logged and written to the
item metadata (`"text_embedding": "minilm"` or `"surrogate"`). The item tower then runs on the
surrogate embedding exactly as on a real one. So a 1M catalog built here has 1M distinct real
texts and 1M item-tower vectors, but 90% of its text embeddings are approximations of MiniLM,
not MiniLM. Upserting such an item through the server re-embeds its text for real.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

CHUNK = 10_000  # generation, embedding and cache unit: text i does not depend on n_items
SMALL = 2_000  # up to this many synthetic texts are embedded exactly, not as whole chunks
SYNTHETIC_PREFIX = "syn-"
GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
# Roughly MovieLens's genre frequencies, so the catalog leans to drama and comedy as real ones do.
GENRE_WEIGHTS = np.array([25, 13, 4, 12, 50, 11, 5, 72, 2, 2, 9, 6, 6, 25, 10, 25, 7, 3], dtype=np.float64)
ADJECTIVES = (
    "Silent", "Crimson", "Broken", "Hidden", "Last", "Endless", "Golden", "Dark", "Secret", "Lost", "Wild",
    "Frozen", "Burning", "Distant", "Forgotten", "Electric", "Hollow", "Midnight", "Savage", "Quiet",
    "Bitter", "Brave", "Final", "Fallen", "Iron", "Little", "Lonely", "Dangerous", "Perfect", "Stolen",
    "Sweet", "Scarlet", "Silver", "Velvet", "Wicked", "Restless", "Northern", "Southern", "Eternal",
    "Invisible", "Shattered", "Blue", "Black", "White", "Green", "Red", "Sacred", "Strange", "Twisted",
    "Radiant", "Empty", "Deadly", "Gentle", "Hungry", "Reckless", "Mad", "Happy", "Cold", "Burning",
    "Young", "Old", "Royal", "Paper", "Glass", "Neon", "Rusty", "Cosmic", "Haunted", "Tender", "Lucky",
)  # fmt: skip
NOUNS = (
    "Harbor", "River", "Mountain", "Kingdom", "Shadow", "Promise", "Garden", "Highway", "Empire", "Island",
    "Storm", "Mirror", "Dream", "Horizon", "Frontier", "Summer", "Winter", "Road", "City", "Heart",
    "Night", "Dawn", "Fire", "Ocean", "Secret", "Letter", "Train", "Station", "House", "Castle", "Forest",
    "Desert", "Machine", "Planet", "Star", "Moon", "Sun", "Voyage", "Game", "Heist", "Song", "Dance",
    "Wedding", "Funeral", "Circus", "Hotel", "Prison", "School", "Factory", "Bridge", "Tower", "Valley",
    "Village", "Border", "Signal", "Code", "Protocol", "Witness", "Stranger", "Detective", "Soldier",
    "Doctor", "Queen", "King", "Thief", "Ghost", "Hunter", "Angel", "Devil", "Wolf", "Tiger", "Dragon",
    "Crown", "Sword", "Gun", "Diamond", "Rose", "Lake", "Canyon", "Galaxy", "Orbit", "Harvest", "Carnival",
)  # fmt: skip
NAMES = (
    "Anna", "Marco", "Lucy", "Jack", "Elena", "Sam", "Nora", "Victor", "Grace", "Henry", "Maya", "Oscar",
    "Rosa", "Felix", "Clara", "Leo", "Ruby", "Hugo", "Iris", "Max", "Vera", "Otto", "Lena", "Theo", "Mabel",
    "Frank", "Julia", "Ivan", "Sophie", "Walter", "Billy", "Martha", "Eddie", "Greta", "Pablo", "Agnes",
)  # fmt: skip
PLACES = (
    "Paris", "Tokyo", "Chicago", "Lisbon", "Cairo", "Berlin", "Alaska", "Texas", "Mars", "the Arctic",
    "a small town", "New York", "Hong Kong", "Rome", "the Amazon", "a space station", "Vienna", "Mexico City",
    "a desert island", "Scotland", "Bombay", "Los Angeles", "the Moon", "Istanbul", "a submarine", "Havana",
    "Siberia", "Sydney", "a haunted mansion", "the suburbs", "Venice", "Kyoto", "Dublin", "Nairobi", "Oslo",
)  # fmt: skip
PEOPLE = (
    "detective", "young nurse", "retired boxer", "schoolteacher", "journalist", "con artist", "astronaut",
    "widow", "rookie cop", "jazz musician", "farmer", "hacker", "priest", "waitress", "professor", "pilot",
    "runaway teenager", "ballerina", "lawyer", "gangster", "scientist", "cowboy", "spy", "chef", "painter",
    "soldier", "single father", "princess", "robot", "vampire", "mountain guide", "taxi driver", "surgeon",
)  # fmt: skip
ACTIONS = (
    "hunts a killer", "falls in love", "plans a heist", "searches for a lost sister", "fights a corrupt mayor",
    "uncovers a conspiracy", "escapes from prison", "trains for a championship", "survives an alien invasion",
    "returns home after twenty years", "solves a locked-room murder", "starts a band", "rescues a stolen dog",
    "faces a deadly storm", "opens a restaurant", "protects a witness", "crosses the border", "wins a bet",
    "befriends a ghost", "leads a rebellion", "loses everything", "learns to dance", "builds a time machine",
    "chases a legendary treasure", "defends a village", "breaks a family curse", "rides across the country",
)  # fmt: skip
PATTERNS = (
    "The {adj} {noun}", "{adj} {noun}", "The {noun} of {place_short}", "{name}'s {noun}", "A {noun} for {name}",
    "The {noun} and the {noun2}", "{noun} {roman}", "Return to the {adj} {noun}", "{adj} {noun}s",
    "The Last {noun} of {place_short}", "{name} and the {adj} {noun}", "Beyond the {noun}",
    "Night of the {adj} {noun}", "{noun} in {place_short}", "Escape from the {noun}",
)  # fmt: skip
PLACE_SHORT = ("Paris", "Tokyo", "Chicago", "Lisbon", "Cairo", "Berlin", "Texas", "Mars", "Rome", "Vienna", "Oslo", "Havana", "Venice")
ROMAN = ("II", "III", "IV", "V")


def synthetic_items(start: int, stop: int, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """Items [start, stop) of the endless synthetic catalog -> (ids, texts, metadata JSON).

    Item i depends only on (seed, i // CHUNK), so every catalog size shares its prefix."""
    from freshrec.training.data import item_text

    ids, texts, metas = [], [], []
    for c in range(start // CHUNK, (stop - 1) // CHUNK + 1 if stop > start else start // CHUNK):
        rng = np.random.default_rng([seed, c])
        n = CHUNK
        pick = lambda seq: rng.integers(0, len(seq), n)  # noqa: E731
        pat, adj, noun, noun2, name, ps, ro = pick(PATTERNS), pick(ADJECTIVES), pick(NOUNS), pick(NOUNS), pick(NAMES), pick(PLACE_SHORT), pick(ROMAN)
        person, action, place, adj2 = pick(PEOPLE), pick(ACTIONS), pick(PLACES), pick(ADJECTIVES)
        # Years lean recent, as catalogs do: 1930..2024.
        years = np.clip(np.round(2024 - rng.exponential(22.0, n)), 1930, 2024).astype(int)
        n_genres = rng.choice([1, 2, 3], n, p=[0.45, 0.38, 0.17])
        # Weighted sampling without replacement, vectorised: the Gumbel-top-k trick.
        top3 = np.argsort(-(np.log(GENRE_WEIGHTS) + rng.gumbel(size=(n, len(GENRES)))), axis=1)[:, :3]
        with_plot = rng.random(n) < 0.85
        for j in range(max(start, c * CHUNK) - c * CHUNK, min(stop, (c + 1) * CHUNK) - c * CHUNK):
            i = c * CHUNK + j
            title = PATTERNS[pat[j]].format(
                adj=ADJECTIVES[adj[j]], noun=NOUNS[noun[j]], noun2=NOUNS[noun2[j]], name=NAMES[name[j]],
                place_short=PLACE_SHORT[ps[j]], roman=ROMAN[ro[j]],
            )  # fmt: skip
            genres = [GENRES[g] for g in sorted(top3[j, : n_genres[j]].tolist())]
            plot = None
            if with_plot[j]:
                a = ADJECTIVES[adj2[j]].lower()
                plot = f"{'An' if a[0] in 'aeiou' else 'A'} {a} {PEOPLE[person[j]]} {ACTIONS[action[j]]} in {PLACES[place[j]]}."
            ids.append(f"{SYNTHETIC_PREFIX}{i:07d}")
            texts.append(item_text(title, int(years[j]), genres, plot))
            metas.append(json.dumps({"title": title, "year": int(years[j]), "genres": genres, "synthetic": True}, sort_keys=True))
    return ids, texts, metas


def _rate(n: int, seconds: float) -> str:
    return f"{n / max(seconds, 1e-9):,.0f}/s"


def minilm_embeddings(n: int, minilm: Path, max_tokens: int, cache: Path | None, seed: int = 0, log: Callable[[str], None] = print) -> np.ndarray:
    """Real MiniLM embeddings of synthetic texts [0, n), embedded and cached CHUNK at a time
    (whole chunks, keyed by content, so larger catalogs reuse smaller ones' work)."""
    from freshrec.training.train import text_embeddings

    out, t0, done = [], time.time(), 0
    chunks = (n + CHUNK - 1) // CHUNK
    for c in range(chunks):
        # Whole chunks (so every size reuses the cache), except for tiny catalogs (tests).
        _, texts, _ = synthetic_items(c * CHUNK, (c + 1) * CHUNK if n > SMALL else n, seed)
        t1 = time.time()
        out.append(text_embeddings(texts, minilm, max_tokens, cache))
        done += len(texts)
        dt = time.time() - t1
        log(f"MiniLM chunk {c + 1}/{chunks}: {done:,}/{chunks * CHUNK if n > SMALL else n:,} texts "
            f"({'cached' if dt < 1.0 else _rate(len(texts), dt)}; {time.time() - t0:.0f}s so far)")  # fmt: skip
    return np.concatenate(out)[:n] if out else np.zeros((0, 384), np.float32)


class BagOfPiecesSurrogate:
    """Ridge regression from a text's word-piece histogram (mean over its non-padding tokens,
    as MiniLM's pooling averages) to its MiniLM embedding. A cheap stand-in, not MiniLM."""

    def __init__(self, tokenizer, ridge: float = 1e-3) -> None:
        self.tokenizer = tokenizer
        self.ridge = ridge
        self.vocab: np.ndarray | None = None  # word-piece ids seen in fitting -> feature columns
        self.W: np.ndarray | None = None

    def _features(self, texts: list[str]):
        import torch

        ids, mask = self.tokenizer(texts)
        col = np.searchsorted(self.vocab, ids)
        col = np.clip(col, 0, len(self.vocab) - 1)
        known = (self.vocab[col] == ids) & (mask > 0)
        rows = np.broadcast_to(np.arange(len(texts))[:, None], ids.shape)
        w = (known / np.maximum(known.sum(1, keepdims=True), 1)).astype(np.float32)
        idx = torch.from_numpy(np.stack([rows[known], col[known]]).astype(np.int64))
        n, V = len(texts), len(self.vocab) + 1
        idx = torch.cat([idx, torch.stack([torch.arange(n), torch.full((n,), V - 1)])], dim=1)  # + a bias column
        val = torch.cat([torch.from_numpy(w[known]), torch.ones(n)])
        return torch.sparse_coo_tensor(idx, val, (n, V), check_invariants=False).coalesce()

    def fit(self, texts: list[str], targets: np.ndarray) -> "BagOfPiecesSurrogate":
        import torch

        ids, mask = self.tokenizer(texts)
        self.vocab = np.unique(ids[mask > 0])
        V = len(self.vocab) + 1
        XtX, XtY = torch.zeros(V, V, dtype=torch.float64), torch.zeros(V, targets.shape[1], dtype=torch.float64)
        for i in range(0, len(texts), CHUNK):
            X = self._features(texts[i : i + CHUNK]).double()
            Xt = X.t().coalesce()
            XtX += torch.sparse.mm(Xt, X.to_dense())
            XtY += torch.sparse.mm(Xt, torch.from_numpy(targets[i : i + CHUNK]).double())
        XtX += self.ridge * torch.eye(V, dtype=torch.float64)
        self.W = torch.linalg.solve(XtX, XtY).float().numpy()
        return self

    def predict(self, texts: list[str]) -> np.ndarray:
        import torch

        out = torch.sparse.mm(self._features(texts), torch.from_numpy(self.W)).numpy()
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def scaled_state(
    build_dir: Path,
    n_items: int,
    dest: Path,
    log: Callable[[str], None] = print,
    *,
    seed: int = 0,
    minilm_limit: int = 100_000,
    cache: Path | None = None,
) -> str:
    """Writes a SQLite state at `dest`: the build's items and events plus synthetic items up to
    `n_items` in all, with item vectors from the build's item tower; returns its `sqlite:///` URL
    (serve it with `FRESHREC_STATE=<url>` on the build's repository).

    At most `minilm_limit` synthetic texts get real MiniLM embeddings; the rest get the
    bag-of-word-pieces surrogate (see the module docstring). `cache` defaults to the freshrec
    cache's `embeddings/` folder. An existing `dest` is replaced."""
    import torch

    from freshrec.assets import cache_root
    from freshrec.models.checkpoints import load_models
    from freshrec.models.tokenizer import Tokenizer
    from freshrec.store import Item
    from freshrec.store.sqlite import SQLiteStore, copy_sqlite

    build_dir, dest = Path(build_dir).resolve(), Path(dest).resolve()
    cache = cache if cache is not None else cache_root() / "embeddings"
    t_start = time.time()
    copy_sqlite(build_dir / "state.db", dest)
    store = SQLiteStore(dest)
    n_build = store.count_items()
    n_syn = max(0, int(n_items) - n_build)
    log(f"scaled state: {n_build:,} build items + {n_syn:,} synthetic -> {n_build + n_syn:,} items in {dest}")
    if n_syn == 0:
        store.close()
        return f"sqlite:///{dest}"

    cfg, modules, minilm = load_models(build_dir)
    tokenizer = Tokenizer(minilm, cfg.text.max_tokens)
    tower, content = modules["item_tower"].eval(), modules["text_encoder"].content.eval()
    n_real = min(n_syn, int(minilm_limit))
    real = minilm_embeddings(n_real, minilm, cfg.text.max_tokens, cache, seed, log)
    surrogate, held_out_cos, surrogate_check = None, None, None
    if n_syn > n_real:
        t0 = time.time()
        _, fit_texts, _ = synthetic_items(0, n_real, seed)
        hold = max(1, min(5000, n_real // 20))
        check = BagOfPiecesSurrogate(tokenizer).fit(fit_texts[:-hold], real[:-hold])
        guess = check.predict(fit_texts[-hold:])
        held_out_cos = float((guess * real[-hold:]).sum(1).mean())
        with torch.no_grad():  # how far the surrogate moves the item vectors and their neighbours
            zeros = torch.zeros(hold, 1, dtype=torch.long)
            a = tower(torch.from_numpy(real[-hold:]), zeros).numpy()
            b = tower(torch.from_numpy(guess.astype(np.float32)), zeros).numpy()
        sa, sb = a @ a.T, b @ b.T
        np.fill_diagonal(sa, -np.inf)
        np.fill_diagonal(sb, -np.inf)
        ta, tb = np.argsort(-sa, 1)[:, :10], np.argsort(-sb, 1)[:, :10]
        surrogate_check = {
            "held_out": hold,
            "text_embedding_cosine": round(held_out_cos, 4),
            "item_vector_cosine": round(float((a * b).sum(1).mean()), 4),
            "top10_neighbour_overlap": round(float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(ta, tb)])), 4),
            "mean_pairwise_item_cosine_minilm": round(float(sa[np.isfinite(sa)].mean()), 4),
            "mean_pairwise_item_cosine_surrogate": round(float(sb[np.isfinite(sb)].mean()), 4),
        }
        surrogate = BagOfPiecesSurrogate(tokenizer).fit(fit_texts, real)
        log(f"surrogate text embeddings for {n_syn - n_real:,} items: bag-of-word-pieces ridge fitted on {n_real:,} "
            f"MiniLM embeddings; held out: {surrogate_check} ({time.time() - t0:.0f}s)")  # fmt: skip

    # Synthetic items carry no learned id row (0 = text only), like any item added after training.
    t0 = time.time()

    def batches():
        written = 0
        for start in range(0, n_syn, CHUNK):
            stop = min(n_syn, start + CHUNK)
            ids, texts, metas = synthetic_items(start, stop, seed)
            if stop <= n_real:
                emb = real[start:stop]
                emb_kind = ["minilm"] * (stop - start)
            else:
                k = max(0, n_real - start)
                emb = np.concatenate([real[start : start + k], surrogate.predict(texts[k:])])
                emb_kind = ["minilm"] * k + ["surrogate"] * (stop - start - k)
            with torch.no_grad():
                emb = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))
                vecs = tower(emb, torch.zeros(len(ids), 1, dtype=torch.long)).numpy()
                contents = content(emb).numpy()
            yield [Item(i, t, v, m[:-1] + f', "text_embedding": "{kind}"}}', 0, c)
                   for i, t, m, kind, v, c in zip(ids, texts, metas, emb_kind, vecs, contents)]  # fmt: skip
            written += len(ids)
            if written % (10 * CHUNK) == 0 or written == n_syn:
                log(f"inserted {written:,}/{n_syn:,} synthetic items ({_rate(written, time.time() - t0)})")

    store.load_items(batches())
    store.close()
    info = {"build": str(build_dir), "n_items": n_build + n_syn, "build_items": n_build, "synthetic": n_syn,
            "minilm_embedded": n_real, "surrogate_embedded": n_syn - n_real, "surrogate_held_out_cosine": held_out_cos,
            "surrogate_check": surrogate_check, "seed": seed, "seconds": round(time.time() - t_start, 1)}  # fmt: skip
    Path(str(dest) + ".json").write_text(json.dumps(info, indent=2))
    log(f"scaled state ready in {info['seconds']}s: sqlite:///{dest}")
    return f"sqlite:///{dest}"


def content_key(build_dir: Path, n_items: int, seed: int = 0, minilm_limit: int = 100_000) -> str:
    """A short key naming a scaled state by what it holds (the build's checkpoints + size)."""
    h = hashlib.sha256()
    for name in ("item_tower.pt", "model_config.json"):
        h.update((Path(build_dir) / "checkpoints" / name).read_bytes())
    h.update(json.dumps([n_items, seed, minilm_limit]).encode())
    return h.hexdigest()[:12]
