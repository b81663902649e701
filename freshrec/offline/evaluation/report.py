"""`summary.json` of `freshrec eval` -> `report.md` and PNG plots beside it."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

# Published anchors (EVALUATION.md): (data, model, HR@10, NDCG@10, protocol note)
ANCHORS = [
    ("ML-100K, unfiltered", "GRU4Rec (RecBole demo, untuned)", 0.1103, 0.0513, "LOO, full ranking, seen masked, history 50"),
    ("ML-100K, 5-core (1,349 items)", "OpenP5-S", 0.1208, 0.0595, "LOO, full ranking, history 20"),
]

NAMES = {
    "freshrec.retrieval": "freshrec: retrieval (two towers)",
    "freshrec.two_stage": "freshrec: retrieval + reranker",
    "freshrec.rerank_on_retrieved": "freshrec: reranker on users whose target was retrieved",
    "freshrec_text_off.retrieval": "freshrec, text features off: retrieval",
    "popularity": "popularity",
    "time_decayed_popularity": "time-decayed popularity",
    "item_knn": "item-kNN (cosine)",
    "svd": "PureSVD (scipy)",
    "als": "ALS (implicit)",
    "sasrec": "SASRec, full cross-entropy, ID-only",
}


RESP_NAMES = {
    "freshrec": "freshrec (served, gRPC)",
    "popularity": "popularity (latest 10,000 events)",
    "knn": "kNN over the last 10 events (co-occurrence cosine, signed)",
}


def _pm(cell: dict, digits: int = 4) -> str:
    if len(cell["values"]) > 1:
        return f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}"
    return f"{cell['mean']:.{digits}f}"


def _ordered(rows: dict) -> dict:
    """The report's row order (freshrec first, then baselines from simple to strong)."""
    return {k: rows[k] for k in [*NAMES, *sorted(set(rows) - set(NAMES))] if k in rows}


def _loo_tables(section: dict) -> list[str]:
    rows = _ordered(section["rows"])
    lines = [
        "| model | HR@5 | NDCG@5 | MRR@5 | HR@10 | NDCG@10 | MRR@10 | HR@20 | NDCG@20 | MRR@20 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, cells in rows.items():
        lines.append(f"| {NAMES.get(key, key)} | " + " | ".join(_pm(cells[f'{m}@{k}']) for k in (5, 10, 20) for m in ("hr", "ndcg", "mrr")) + " |")
    lines += ["", "| model | coverage@10 | intra-list diversity@10 | novelty@10 (bits) | seeds |", "|---|---|---|---|---|"]
    for key, cells in rows.items():
        if "coverage@10" in cells:
            lines.append(f"| {NAMES.get(key, key)} | {_pm(cells['coverage@10'], 3)} | {_pm(cells['ild@10'], 3)} | "
                         f"{_pm(cells['novelty@10'], 2)} | {len(cells['hr@10']['values'])} |")
    return lines


def _save(fig, path: Path, made: list[str]) -> None:
    """Lays out, writes and closes one figure; notes its file name in `made`."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    made.append(path.name)


def _plots(s: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    if "loo" in s:
        rows = _ordered(s["loo"]["rows"])
        keys = [k for k in rows if k != "freshrec.rerank_on_retrieved"]
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.barh([NAMES.get(k, k) for k in keys], [rows[k]["ndcg@10"]["mean"] for k in keys], xerr=[rows[k]["ndcg@10"]["std"] for k in keys], color="#4c72b0")
        ax.set_xlabel("NDCG@10 (test, full ranking, seen masked)")
        ax.invert_yaxis()
        _save(fig, out / "loo_ndcg10.png", made)
    rp = s.get("replay")
    if rp:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for name, m in rp["models"].items():
            days = [(w["end"] - rp["t0"]) / 86400 for w in m["windows"]]
            for ax, metric in zip(axes, ("hr", "ndcg")):
                ax.plot(days, [w[metric] for w in m["windows"]], marker="o", label=name, linestyle="--" if "served" in name else "-")
        for ax, metric in zip(axes, ("HR@10", "NDCG@10")):
            ax.set_xlabel("days after T0 (end of window)")
            ax.set_ylabel(f"windowed {metric}")
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=8)
        _save(fig, out / "replay_windows.png", made)
    up = s.get("updates")
    if up:
        fig, ax = plt.subplots(figsize=(8, 4))
        colours = {"frozen_state": "#999999", "frozen_weights": "#4c72b0", "daily": "#dd8452", "weekly": "#55a868"}
        for name, colour in colours.items():
            per_seed = [up["seeds"][k]["runs"][name]["windows"] for k in up["seeds"] if name in up["seeds"][k]["runs"]]
            if not per_seed:
                continue
            days = [(w["end"] - up["t0"]) / 86400 for w in per_seed[0]]
            ax.plot(days, np.mean([[w["ndcg"] for w in ws] for ws in per_seed], axis=0), marker="o", color=colour, label=name)
        ax.set_xlabel("days after T0 (end of window)")
        ax.set_ylabel(f"windowed NDCG@10 (mean of {len(up['seeds'])} seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        _save(fig, out / "updates_windows.png", made)
    rs = s.get("responsiveness")
    if rs and any("shift" in m for m in rs["models"].values()):
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, m in rs["models"].items():
            if "shift" in m:
                ns = sorted(m["shift"]["by_n"], key=int)
                ax.plot([int(n) for n in ns], [m["shift"]["by_n"][n]["top10"] for n in ns], marker="o", label=RESP_NAMES.get(name, name))
        ax.axhline(0.40, color="grey", linestyle=":", label="target at N = 8 (0.40)")
        cat = "topic" if rs.get("categories") == "topics" else "genre"
        ax.set_xlabel(f"five-star events on a {cat} new to the user (N)")
        ax.set_ylabel(f"the {cat}'s share of the next top-10")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        _save(fig, out / "responsiveness_shift.png", made)
    tp = s.get("topics")
    if tp:
        corr = tp["correlation"]
        names = list(corr["features"])
        fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4), sharey=True)
        for ax, name in zip(np.atleast_1d(axes), names):
            b, c = corr["bins"][name], corr["features"][name]
            ax.bar(range(len(b)), [x["ndcg@10"] for x in b], color="#4c72b0")
            ax.set_xticks(range(len(b)), [f"{x['low']:.3g}-\n{x['high']:.3g}" for x in b], fontsize=7)
            ax.axhline(corr["mean_ndcg@10"], color="grey", linestyle=":")
            ax.set_title(f"{name}\nrho {c['rho']:+.2f} [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]", fontsize=9)
            ax.set_xlabel("quintile", fontsize=8)
        np.atleast_1d(axes)[0].set_ylabel("mean NDCG@10 (test users in the bin)")
        _save(fig, out / "correlation_ndcg10.png", made)
    return made


def _shown(path: str) -> str:
    """A data file's path as the report shows it: relative to the folder the evaluation ran from
    when it lies below it (the summary keeps the absolute path)."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def _topics_lines(tp: dict) -> list[str]:
    """The topics, their coherence, topic-level diversity and the correlation analysis."""
    m, co, dv, corr = tp["model"], tp["coherence"], tp["diversity"], tp["correlation"]
    lines = ["## Interest topics", "",
             f"LDA (scikit-learn, batch variational EM, seed {m['config']['seed']}) with {m['n_topics']} topics over each item's "
             f"text and categories ({m['vocabulary']} words after stop words and the document-frequency cuts), fitted at build "
             f"time in {m['fit_seconds']:.1f} s. Coherence: {co['measure']} (0 is best), mean {co['mean']:.3f}.", "",
             "| topic | top words | UMass | share of the catalog |", "|---|---|---|---|"]
    for t in sorted(tp["topics"], key=lambda t: -t["catalog_share"]):
        lines.append(f"| {t['topic']} | {', '.join(t['words'])} | {t['umass']:.3f} | {t['catalog_share']:.1%} |")
    lines += ["", f"Diversity of the recommended lists ({dv['model']}): intra-list diversity of the text embeddings "
              f"{dv['ild@10']:.4f}; of the topic mixtures {dv['topic_ild@10']:.4f} (the same mean pairwise 1 - cosine); "
              f"{dv['distinct_topics@10']:.2f} distinct dominant topics in a top-10 on average.", "",
              "### What goes with per-user quality", "",
              f"Spearman rank correlation of each test user's property with their NDCG@10 ({corr['target']}, {corr['users']} "
              f"users, mean {corr['mean_ndcg@10']:.4f}); 95% intervals from {corr['bootstrap']} bootstrap resamples of the users.", "",
              "| property | Spearman rho | 95% CI | users |", "|---|---|---|---|"]
    for name, c in corr["features"].items():
        if c["n"] < 3:  # e.g. the rating spread where the data has no ratings
            lines.append(f"| {name}: {corr['descriptions'][name]} | n/a (no values in this data) | | {c['n']} |")
            continue
        lines.append(f"| {name}: {corr['descriptions'][name]} | {c['rho']:+.3f} | [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] | {c['n']} |")
    lines += ["", "![mean NDCG@10 by quintile of each user property](correlation_ndcg10.png)", "", *_correlation_advice(corr), ""]
    return lines


def _correlation_advice(corr: dict) -> list[str]:
    """What a reader should do about the correlations: written from the signs and intervals."""
    f = corr["features"]
    clear = {n: c for n, c in f.items() if c["ci_low"] > 0 or c["ci_high"] < 0}
    if not clear:
        return ["No property's interval excludes zero: on this data quality does not follow any of them, so per-segment "
                "tuning by them is not warranted; look elsewhere (the item side) for what separates good and bad lists."]
    ordered = sorted(clear.items(), key=lambda kv: -abs(kv[1]["rho"]))
    said = "; ".join(f"{n} ({c['rho']:+.2f})" for n, c in ordered)
    out = [f"Properties whose interval excludes zero, strongest first: {said}. The correlations are small (|rho| at most "
           f"{max(abs(c['rho']) for c in clear.values()):.2f}): each explains little of one user's result, but they say where "
           "the model is weakest."]
    advice = []
    if "history_popularity" in clear and clear["history_popularity"]["rho"] > 0:
        advice.append("users with niche tastes get worse lists: weigh long-tail items up for them (e.g. a popularity-debiased "
                      "reranker or a larger share of the short-term content channel's candidates) before tuning anything for the mainstream")
    if "history_length" in clear and clear["history_length"]["rho"] < 0:
        advice.append("long histories rank worse: their latest events matter more than the old ones the 50-event window keeps, "
                      "so try a shorter window or stronger recency for heavy users")
    if "days_since_last" in clear and clear["days_since_last"]["rho"] < 0:
        advice.append("returning users after a gap are served worse: their state is stale, so blend in recent popularity for them")
    if "topic_entropy" in clear:
        sign = "broad" if clear["topic_entropy"]["rho"] < 0 else "narrow"
        advice.append(f"users with {sign} interest profiles are served worse: report metrics per entropy band and check that "
                      "changes to the content channels do not trade these users away")
    if "rating_spread" in clear:
        advice.append("rating spread goes with quality: the rating value carries signal, so keep it in the history features")
    if advice:
        out.append("What to do: " + "; ".join(advice) + ".")
    return out


def movielens(s: dict) -> bool:
    """Whether the summary is of MovieLens-100K (its published anchors and absolute targets apply)."""
    return not s.get("files")  # the evaluation key names the files of own data only


def data_label(s: dict) -> str:
    return "ML-100K" if movielens(s) else f"`{s['dataset']}`"


def _loo_lines(s: dict) -> list[str]:
    """Protocol, the leave-one-out tables, the 5-core variant and, on MovieLens-100K, the
    published anchors."""
    loo = s["loo"]
    info = loo["info"]
    if movielens(s):
        data = (f"{s['dataset']}: {info['users']} users, {info['items']} items, {info['events']} events, every rating an implicit "
                "interaction (no threshold, no k-core). Each user's events are sorted by timestamp, ties broken by the original row "
                "order (ML-100K has many equal timestamps).")  # fmt: skip
    else:
        files = {k: _shown(v) for k, v in (s.get("files") or {}).items()}
        data = (f"{s['dataset']} (`{files.get('events', '?')}`, `{files.get('items', '?')}`): {info['users']} users, {info['items']} "
                f"items, {info['events']} events, every event an implicit interaction (no threshold, no k-core). Each user's events "
                "are sorted by timestamp, ties broken by the original row order.")  # fmt: skip
    lines = [
        "## Protocol",
        "",
        data + " Leave-one-out by time: last event = test, second-last = validation, the "
        "rest = training; at test time the models see training + validation history. Full ranking over every item, the "
        "user's seen items masked, no sampled negatives. HR@K = Recall@K (one target). Coverage@10 = distinct items in all "
        "top-10 lists / catalog; intra-list diversity@10 = mean pairwise cosine distance of the listed items' MiniLM text "
        "embeddings; novelty@10 = mean -log2((users who interacted with the item in training + 1) / (users + 1)). "
        "Mean ± std over seeds (population std); deterministic baselines run once.",
        "",
        "Baselines are tuned on the validation split (grid in `freshrec/baselines.py`, best NDCG@10), then refit on "
        "training + validation events (SASRec and freshrec learn from training sequences with early stopping on validation and "
        "read the validation event as history at test time). freshrec 'text off' is the same two towers with the MiniLM text "
        "embedding replaced by zeros and no id dropout (retrieval stage only, one seed).",
        "",
        f"## Offline, leave-one-out (unfiltered {data_label(s)})",
        "",
        *_loo_tables(loo),
        "",
    ]
    tsu = info.get("two_stage_users")
    if tsu:
        lines += [f"The reranker reorders the top {s['model_config']['reranker']['num_candidates']} retrieved items; the "
                  f"third freshrec row is over the {tsu['retrieved_users']} of {tsu['users']} users (last seed) whose target was "
                  "among them.", ""]
    lines += ["Chosen baseline settings and tuning cost:", ""]
    for name, mi in info["models"].items():
        if "params" in mi:
            lines.append(f"- {NAMES.get(name, name)}: `{mi['params']}` ({len(mi['tried'])} configs tried, {mi['seconds']:.0f} s)")
        else:
            lines.append(f"- {NAMES.get(name, name)}: training {', '.join(f'{x:.0f}' for x in mi['seconds'])} s per seed")
    lines += ["", "![NDCG@10 by model](loo_ndcg10.png)", ""]

    if "five_core" in s:
        fc = s["five_core"]
        lines += [f"## 5-core variant ({fc['info']['users']} users, {fc['info']['items']} items; one seed)", "", *_loo_tables(fc)[:2 + len(fc["rows"])], ""]

    if not movielens(s):  # the anchors were published on MovieLens-100K only
        return lines
    lines += ["## Against the published anchors", "",
              "| data | model | HR@10 | NDCG@10 | protocol note |", "|---|---|---|---|---|"]
    for data, model, hr, ndcg, note in ANCHORS:
        lines.append(f"| {data} | {model} (published) | {hr:.4f} | {ndcg:.4f} | {note} |")
    two = loo["rows"]["freshrec.two_stage"]
    lines.append(f"| ML-100K, unfiltered | freshrec, retrieval + reranker (ours) | {two['hr@10']['mean']:.4f} | {two['ndcg@10']['mean']:.4f} | "
                 "LOO, full ranking, seen masked, history 50, text features |")
    if "sasrec" in loo["rows"]:
        sr = loo["rows"]["sasrec"]
        lines.append(f"| ML-100K, unfiltered | SASRec-CE (ours, same split) | {sr['hr@10']['mean']:.4f} | {sr['ndcg@10']['mean']:.4f} | same protocol as the row above |")
    if "five_core" in s:
        f2 = s["five_core"]["rows"]["freshrec.two_stage"]
        lines.append(f"| ML-100K, 5-core | freshrec, retrieval + reranker (ours) | {f2['hr@10']['mean']:.4f} | {f2['ndcg@10']['mean']:.4f} | "
                     "LOO, full ranking, seen masked, history 50 (OpenP5 uses 20) |")
    lines += ["", "Protocol differences: the anchors were run by their authors with their own code and tuning; GRU4Rec's "
              "RecBole demo is untuned; OpenP5 uses a 5-core filter and history 20. Only rows on the same data and split "
              "compare directly.", ""]

    return lines


def _f(x: float, fmt: str = ".3f") -> str:
    return "n/a" if x is None or x != x else format(x, fmt)


def _responsiveness_lines(rs: dict) -> list[str]:
    """Freshrec (served) against the context rows, each issue target beside its figure."""
    models, plans, opt = rs["models"], rs["plans"], rs["options"]
    name = lambda k: RESP_NAMES.get(k, k)  # noqa: E731
    by_topic = rs.get("categories") == "topics"
    cat, cats, items = ("topic", "topics", "items") if by_topic else ("genre", "genres", "films")
    lines = ["## Responsiveness (what the next request shows)", "",
             f"`freshrec eval --parts responsiveness`, seed {rs['seed']}, on the seed-0 build with the evaluation state "
             f"({rs['state']['users']} users, {rs['state']['items']} items, {rs['state']['events']} events; each user's test "
             "event held out). freshrec is a real tritonserver over a private copy of that state, every request through "
             "`FreshrecClient` over gRPC; the context rows run in-process over copies of the same states through the store "
             "interface (popularity: counts over the latest 10,000 events; kNN: item-item cosine of co-occurrence in the "
             "state's user x item matrix, summed over the user's last 10 events, a rating weighing (value - 3) / 2, dislike -1, "
             "skip -0.5; both frozen at the start and blind to typed queries). The users of the shift and negative scenarios "
             "are clones (`<user>~<scenario>`) of real users, their stored events copied into the state before the server "
             "starts; the scenario's own events go through `ingest`, one hour after the user's last event. Scenario groups "
             + ("each have their own" if opt.get("separate_states") else "(intent + twins; shift + negative) share one")
             + " state copy and server. Code: `freshrec/offline/evaluation/responsiveness.py`."
             + (" The items carry no genres: a category is each item's dominant topic of the build's LDA model, labelled "
                "`t<k>` and its top three words; the typed-intent scenario (film genres and years) is MovieLens's and not run."
                if by_topic else ""), ""]
    geo = rs.get("geometry")
    if geo:
        cc = rs.get("content_config") or {}
        lines += [f"### Where a {cat}'s meaning lives", "",
                  f"For each {cat}, the mean of the vectors of its {geo['seeds']} most stored {items}, and the {cat}'s share among "
                  f"the {geo['k']} nearest other {items}: in the item space (the towers', which leave-one-out rewards) and in the "
                  "content space (the text encoder's content vectors: MiniLM centred on the catalog, on its principal axes). "
                  "The collaborative space groups what was co-rated, not what is alike; the content channels bring the "
                  f"second space into the request path (short-term weight {cc.get('beta_short', '?')}, query weight "
                  f"{cc.get('beta_query', '?')}, `ModelConfig.content`).", "",
                  f"| {cat} | catalog share | item space | content space |", "|---|---|---|---|"]
        for g, r in sorted(geo["genres"].items()):
            lines.append(f"| {g} | {r['catalog']:.2f} | {r['item']:.2f} | {_f(r['content'], '.2f') if 'content' in r else '-'} |")
        m = geo["mean"]
        lines += [f"| **mean** | {m['catalog']:.2f} | {m['item']:.2f} | {_f(m['content'], '.2f') if 'content' in m else '-'} |", ""]
    if any("shift" in m for m in models.values()):
        sh = next(m["shift"] for m in models.values() if "shift" in m)
        genres = ", ".join(f"{g} {n}" for g, n in sorted(plans["shift_genres"].items(), key=lambda x: -x[1]))
        lines += [f"### Interest shift ({sh['users']} users)", "",
                  f"Per user a {cat} with >= 40 {items} that is under 3% of their history; N five-star `rate` events on unseen "
                  f"{items} drawn from the 40 most popular of it, applied one after another. The {cat}'s share of the next "
                  f"list ({'each item counts for its dominant topic' if by_topic else 'a film with several genres counts for each'}); "
                  f"the N = 0 list excludes the 8 {items}, so the seen-item "
                  f"mask alone cannot move it. {cats.capitalize()}: {genres}.", "",
                  "| model | top-10 N=0 | N=1 | N=2 | N=4 | N=8 | top-50 N=0 | top-50 N=8 | users with >= 3 of 10 at N=8 | top-50 unchanged after 8 |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for k, m in models.items():
            if "shift" in m:
                b = m["shift"]["by_n"]
                lines.append(f"| {name(k)} | " + " | ".join(_f(b[n]["top10"]) for n in ("0", "1", "2", "4", "8"))
                             + f" | {_f(b['0']['top50'])} | {_f(b['8']['top50'])} | {_f(b['8']['ge3'], '.0%')} | {_f(m['shift']['unchanged'], '.0%')} |")
        lines += ["| issue target | | | >= 0.15 | | >= 0.40 | | | >= 60% | |", "",
                  f"![the new {cat}'s top-10 share against N](responsiveness_shift.png)", ""]
    if any("negative" in m for m in models.values()):
        ng = next(m["negative"] for m in models.values() if "negative" in m)
        lines += [f"### Negative events ({ng['users']} users)", "",
                  f"Per user a {cat} that is >= 10% of their history and >= 1.5x its catalog share; 4 or 8 events of one kind "
                  f"on unseen popular {items} of it (each kind and count on its own clone); the {cat}'s share before (those "
                  f"{items} excluded) and after. Fall = 1 - after / before (issue target: >= 50%).", "",
                  "| model | events | top-10 before | top-10 after | fall (top-10) | top-50 before | top-50 after | fall (top-50) |",
                  "|---|---|---|---|---|---|---|---|"]
        for k, m in models.items():
            for v in m.get("negative", {}).get("by_kind", {}).values():
                kind = "rate 1.0" if v["kind"] == "rate" else v["kind"]
                lines.append(f"| {name(k)} | {v['events']} x {kind} | {_f(v['before10'])} | {_f(v['after10'])} | {_f(v['fall10'], '.0%')} | "
                             f"{_f(v['before50'])} | {_f(v['after50'])} | {_f(v['fall50'], '.0%')} |")
        lines.append("")
    if any("intent" in m for m in models.values()):
        lines += [f"### Typed intent ({plans['intents']} intents: genre, mood, era, \"something like <title>\")", "",
                  f"Each intent has a match predicate on the item metadata (e.g. \"80s action movies\": 1980-89 and Action). "
                  f"Top-10 match share for a user with no events (cold) and {plans['warm_users']} users with >= 20 events (warm); "
                  "kept = how many of the warm user's own top-10 (no query) stay in the top-10 with the query. The context rows "
                  "ignore the query: their figures are what a list that does not read it gives.", "",
                  "| model | cold match | warm match | kept of own 10 | warm users keeping >= 3 | catalog base rate |", "|---|---|---|---|---|---|"]
        for k, m in models.items():
            if "intent" in m:
                a = m["intent"]["mean"]
                lines.append(f"| {name(k)}{'' if m['intent'].get('query_used') else ' (query ignored)'} | {_f(a['cold'])} | {_f(a['warm'])} | "
                             f"{_f(a['kept'], '.1f')} | {_f(a['kept_ge3'], '.0%')} | {_f(a['catalog'])} |")
        lines += ["| issue target | >= 0.70 | >= 0.50 | >= 3 | | |", ""]
        fi = models.get("freshrec", {}).get("intent")
        if fi:
            lines += ["freshrec by kind of intent:", "", "| kind | cold match | warm match | kept |", "|---|---|---|---|"]
            for kd, a in fi["by_kind"].items():
                lines.append(f"| {kd} | {_f(a['cold'])} | {_f(a['warm'])} | {_f(a['kept'], '.1f')} |")
            lines.append("")
    if any("twins" in m for m in models.values()):
        lines += [f"### New-item twins ({plans['twin_items']} items, {plans['twin_users']} users)", "",
                  "Catalog items among the held-out test items get a twin `twin:<id>` (same text and metadata) through "
                  "`upsert_items`; for each user whose test event is the original (unseen in this state) the twin is ranked "
                  "with the original excluded and the original with the twin excluded (ranks from 1; not in the list = k + 1).", "",
                  "| model | users | median rank, original | median rank, twin | ratio | twin in top-50 given original there | twin within k |",
                  "|---|---|---|---|---|---|---|"]
        for k, m in models.items():
            t = m.get("twins")
            if t and t.get("users"):
                lines.append(f"| {name(k)} | {t['users']} | {_f(t['median_orig'], '.0f')} | {_f(t['median_twin'], '.0f')} | {_f(t['ratio_median'], '.2f')} | "
                             f"{_f(t['twin_in50_given_orig'], '.0%')} (of {t['orig_in50']}) | {_f(t['twin_found'], '.0%')} (k = {t['k']}) |")
        lines += ["| issue target | | | | <= 1.5 | >= 80% | |", ""]
    lines += [f"Wall time: {rs['seconds']['total']:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in rs["seconds"].items() if k != "total") + ").", ""]
    return lines


def _updates_lines(up: dict) -> list[str]:
    names = ("frozen_state", "frozen_weights", "daily", "weekly")
    seeds = list(up["seeds"])
    lines = ["## Replay with model updates (the feedback loop)", "",
             f"`freshrec eval --parts updates`: the prequential replay above ({up['events']} events over {up['days']:.1f} days "
             f"after T0), each seed from its own T0 build, four ways: frozen state (T0's), frozen weights with real-time state "
             "(events and items ingested, no retraining), and the model fine-tuned through `freshrec update` itself every "
             "simulated day and every simulated week (the events stored since the served version's cut-off, its gate on the "
             "newest 20% held out; a passed version serves from the next request, reading its own item vectors from the "
             "store). Code: `freshrec/offline/evaluation/updates.py`.", "",
             "| seed | " + " | ".join(f"{n} NDCG@10" for n in names) + " | daily / frozen weights | weekly / frozen weights |",
             "|---|" + "---|" * (len(names) + 2)]
    for k in seeds:
        runs = up["seeds"][k]["runs"]
        fw = runs["frozen_weights"]["ndcg@10"]
        lines.append(f"| {k} | " + " | ".join(f"{runs[n]['ndcg@10']:.4f}" for n in names)
                     + f" | {runs['daily']['ndcg@10'] / fw:.3f}x | {runs['weekly']['ndcg@10'] / fw:.3f}x |")
    mean = up["mean_ndcg@10"]
    lines.append("| mean | " + " | ".join(f"{mean[n]:.4f}" for n in names)
                 + f" | {mean['daily'] / mean['frozen_weights']:.3f}x | {mean['weekly'] / mean['frozen_weights']:.3f}x |")
    lines += ["", "| seed | schedule | updates | passed the gate | seconds per update (mean) | replay wall (s) |", "|---|---|---|---|---|---|"]
    for k in seeds:
        for n in ("daily", "weekly"):
            r = up["seeds"][k]["runs"][n]
            lines.append(f"| {k} | {n} | {r['updates']} | {r['passed']} | {r['update_seconds_mean']:.1f} | {r['seconds']:.0f} |")
    lines += ["", "![windowed NDCG@10 with and without model updates](updates_windows.png)", ""]
    return lines


def write_report(s: dict, out: Path) -> Path:
    out = Path(out)
    _plots(s, out)
    m = s["machine"]
    lines = [
        "# freshrec: quality and timeliness",
        "",
        f"Generated by `freshrec eval`{' (TINY smoke run: figures are not meaningful)' if s['tiny'] else ''}. Every figure "
        "below is also in `summary.json`. Runs: " + "; ".join(
            f"`{p}` {r['seconds'] / 60:.1f} min, finished {r['finished']}" for p, r in s.get("parts", {}).items()) + ".",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {m['platform']}; Python {m['python']}, torch {m['torch']}"
        f" ({m['torch_threads']} threads), numpy {m.get('numpy')}, scipy {m.get('scipy')}, scikit-learn {m.get('sklearn')}, "
        f"implicit {m.get('implicit')}, onnxruntime {m.get('onnxruntime')}. Seeds: {', '.join(map(str, s['seeds']))}.",
        "",
    ]
    if "loo" in s:
        lines += _loo_lines(s)
    else:
        lines += ["No leave-one-out part is saved for this configuration (`freshrec eval --parts loo`).", ""]

    if "served_loo" in s:
        sl = s["served_loo"]
        lines += ["## The served API on the evaluation state", "",
                  "The seed-0 model is built with `freshrec build --serve-state eval` (every user's test event held out, "
                  "validation events included) and served by a real tritonserver; one `recommend` call over gRPC per test user:", "",
                  "| | HR@10 | NDCG@10 | HR@20 |", "|---|---|---|---|",
                  f"| served (gRPC, ONNX models in Triton, content channels) | {sl['served']['hr@10']:.4f} | {sl['served']['ndcg@10']:.4f} | {sl['served']['hr@20']:.4f} |",
                  f"| offline (PyTorch, same checkpoints, models alone) | {sl['offline']['hr@10']:.4f} | {sl['offline']['ndcg@10']:.4f} | {sl['offline']['hr@20']:.4f} |",
                  "", f"{sl['users']} requests in {sl['seconds']:.0f} s. The served pipeline adds the content channels "
                  "(`ModelConfig.content`: short-term profile, new-item placement) to the models' ranking, so the two differ; "
                  "tests/server_ext/test_serving.py holds the served pipeline equal to its PyTorch reference (the same "
                  "pipeline in-process).", ""]

    rp = s.get("replay")
    if rp:
        lines += ["## Prequential replay (timeliness)", "",
                  f"T0 = the {rp['quantile']:.0%} quantile of all timestamps ({time.strftime('%Y-%m-%d %H:%M', time.gmtime(rp['t0']))} UTC). "
                  f"The models are trained on the {rp['events_before']} events before T0 ({rp['items_before']} items); the "
                  f"{rp['events']} later events are replayed in time order. Before each event its user asks for 50 "
                  "recommendations and the event's item is scored; in real time the event is then ingested (no retraining). "
                  f"{rp['new_items']} items first appear after T0 ({rp['cold_events']} events): each enters through `upsert_items`, "
                  "by its text alone, just before the request of its first event. Frozen = user state and catalog as of T0. "
                  "Periodic model updates: the next section. A frozen user's answer cannot change, so it is asked "
                  "once per user. Popularity counts every event before the request; recent popularity only the latest "
                  "10,000 (as the served fallback does).", "",
                  "| variant | HR@10 | NDCG@10 | HR@50 | recommend calls | recommend p50 (ms) | wall (s) |", "|---|---|---|---|---|---|---|"]
        for name, mm in rp["models"].items():
            lines.append(f"| {name} | {mm['hr@10']:.4f} | {mm['ndcg@10']:.4f} | {mm['hr@50']:.4f} | {mm['recommend_calls']} | "
                         f"{mm['recommend_p50_ms']:.1f} | {mm['seconds']:.0f} |")
        if "served_vs_offline" in rp:
            sv = rp["served_vs_offline"]
            lines += ["", f"The served replay (real tritonserver, gRPC) against the in-process replay of the same checkpoints: "
                      f"identical top-10 lists for {sv['same_top10']:.2%} of the requests, the same hit/miss at 10 for {sv['same_hit@10']:.2%}."]
        lines += ["", "![windowed HR@10 and NDCG@10 over the replay](replay_windows.png)", "",
                  "### Cold start", "", "| model | HR@10 | HR@50 |", "|---|---|---|"]
        for name, c in rp["cold_start"].items():
            lines.append(f"| {name} | {c['hr@10']:.4f} | {c['hr@50']:.4f} |")
        lines += ["", "The ID-only row is zero by construction: a model with only learned id rows has no vector for an item it "
                  "never trained on.", ""]
        fr = rp.get("freshness")
        if fr:
            lines += ["### Freshness latency through the served API", "",
                      "From the acknowledgement of the write to the first `recommend` response that reflects it: an event "
                      "(the item clicked leaves the user's list) and a new item (a query for its text lists it in the top-10).", "",
                      "| write | p50 (ms) | p99 (ms) | trials | first request reflects it |", "|---|---|---|---|---|"]
            for name, f in fr.items():
                lines.append(f"| {name} | {f['p50_ms']:.1f} | {f['p99_ms']:.1f} | {f['trials']} | {f['first_request_reflects']:.0%} |")
            lines.append("")

    if "responsiveness" in s:
        lines += _responsiveness_lines(s["responsiveness"])
    if "updates" in s:
        lines += _updates_lines(s["updates"])
    if "topics" in s:
        lines += _topics_lines(s["topics"])

    lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for t in s["targets"]:
        measured = f"{t['measured']:.2f}x" if " x " in t["target"] else f"{t['measured']:.4f}"
        lines.append(f"| {t['target']} | {measured} | {'yes' if t['met'] else 'NO'} |")
    missed = [t for t in s["targets"] if not t["met"]]
    if missed:
        lines += ["", "Missed: " + "; ".join(f"{t['target']}: measured {t['measured']:.4f}" for t in missed) +
                  ". What was tried is in `README.md` beside this report."]
    lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
