"""`freshrec eval --parts responsiveness` end to end on the tiny build: a real tritonserver, every
request over gRPC, the context rows in-process. Tiny models on 40 users say nothing about
quality: the checks are of the protocol (sizes, ranges, what the context rows must give)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest


@pytest.mark.integration
def test_responsiveness_part_end_to_end(tiny_build: dict[str, Any], tmp_path: Path, triton_server_factory) -> None:
    from freshrec.offline.evaluation.eval import EvalOptions, run_eval
    from freshrec.offline.evaluation.responsiveness import INTENTS, NEG_KINDS, NEG_NS, SHIFT_NS

    # (triton_server_factory: the skip off Linux; the part starts its own servers.)
    # The tiny build is the seed-0 evaluation-state build run_eval would make: it is reused.
    work = tmp_path / "work"
    work.mkdir()
    (work / "loo_build").symlink_to(tiny_build["build_dir"])
    opts = EvalOptions(out=tmp_path / "out", work=work, seeds=(0,), tiny=True, max_users=40, parts=("responsiveness",),
                       resp_users=6, resp_negative_users=5, resp_warm=4, resp_twins=8)  # fmt: skip
    summary = run_eval(opts)
    saved = json.loads((tmp_path / "out" / "parts" / "responsiveness.json").read_text())["result"]
    r = summary["responsiveness"]
    assert saved["plans"] == r["plans"] and saved["options"] == json.loads(json.dumps(r["options"]))
    models = r["models"]
    assert set(models) == {"freshrec", "popularity", "knn"}

    # Sizes as requested (40 users leave enough candidates for each).
    assert len(INTENTS) >= 20 and r["plans"]["intents"] == len(INTENTS)
    for name, m in models.items():
        assert m["shift"]["users"] == 6 and sum(r["plans"]["shift_genres"].values()) == 6
        assert m["negative"]["users"] == 5
        assert m["intent"]["warm_users"] == 4 and len(m["intent"]["intents"]) == len(INTENTS)
        assert m["twins"]["items"] == 8 and m["twins"]["users"] == r["plans"]["twin_users"] >= 8
        # Every request the scenario makes, and only those: 1 + 4 lists per shift user, 2 per
        # negative clone, own list + one per intent per warm user and one per intent cold, 2 per twin user.
        assert m["shift"]["calls"] == 6 * (1 + len(SHIFT_NS))
        assert m["negative"]["calls"] == 2 * 5 * len(NEG_KINDS) * len(NEG_NS)
        assert m["intent"]["calls"] == 4 + len(INTENTS) * (1 + 4)
        assert m["twins"]["calls"] == 2 * m["twins"]["users"]

        # Shares are shares.
        for n in ("0", *map(str, SHIFT_NS)):
            assert set(m["shift"]["by_n"][n]) == {"top10", "top50", "ge3"}
            assert all(0.0 <= v <= 1.0 for v in m["shift"]["by_n"][n].values()), (name, n)
        for v in m["negative"]["by_kind"].values():
            assert all(0.0 <= v[k] <= 1.0 for k in ("before10", "after10", "before50", "after50")), (name, v)
            assert v["before10"] == 0 or v["fall10"] == pytest.approx(1 - v["after10"] / v["before10"])
        for row in m["intent"]["intents"].values():
            assert all(0.0 <= row[k] <= 1.0 for k in ("cold", "warm", "kept_ge3", "catalog")) and 0 <= row["kept"] <= 10
        t = m["twins"]
        assert len(t["ranks_orig"]) == len(t["ranks_twin"]) == t["users"]
        assert all(1 <= x <= t["k"] + 1 for x in t["ranks_orig"] + t["ranks_twin"])

    # freshrec finds every twin within k (the catalog is about the size of k here), and reads
    # the typed query; the context rows do not.
    assert models["freshrec"]["twins"]["twin_found"] == 1.0
    geo = r["geometry"]
    assert geo["genres"] and all(0.0 <= v <= 1.0 for g in geo["genres"].values() for v in g.values())
    assert set(geo["mean"]) == {"catalog", "item", "content"}  # the build's state holds content vectors
    assert models["freshrec"]["intent"]["query_used"] and not models["knn"]["intent"]["query_used"]
    for name in ("popularity", "knn"):
        assert models[name]["intent"]["mean"]["kept"] == 10.0  # a query changes nothing in their lists

    # Popularity is frozen at the start and the acted-on films are excluded before and seen after:
    # the events change none of its lists.
    pop = models["popularity"]
    assert pop["shift"]["unchanged"] == 1.0
    assert pop["shift"]["by_n"]["0"] == pop["shift"]["by_n"]["8"]
    for v in pop["negative"]["by_kind"].values():
        assert (v["before10"], v["before50"]) == (v["after10"], v["after50"])
    # A twin is new to it: no count, below every item with one.
    assert pop["twins"]["median_twin"] > pop["twins"]["median_orig"]
    # The kNN follows a user's last events: 8 five-star events on a genre move its lists.
    assert models["knn"]["shift"]["unchanged"] < 1.0

    # Targets, report and plot.
    names = [t["target"] for t in summary["targets"]]
    assert sum(n.startswith(("shift:", "negative:", "intent:", "twins:")) for n in names) == 9
    assert all(isinstance(t["met"], bool) and isinstance(t["measured"], float) for t in summary["targets"])
    assert not any(t["met"] for t in summary["targets"] if math.isnan(t["measured"]))
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Responsiveness" in report and "| issue target |" in report and "![the new genre" in report
    assert "### Where a genre's meaning lives" in report
    assert "No leave-one-out part is saved" in report
    assert (tmp_path / "out" / "responsiveness_shift.png").stat().st_size > 0


def test_eval_cli_sizes() -> None:
    from freshrec.cli import build_parser

    a = build_parser().parse_args(["eval", "--parts", "responsiveness", "--resp-users", "3", "--resp-negative-users", "2",
                                   "--resp-warm", "1", "--resp-twins", "5"])  # fmt: skip
    assert (a.parts, a.resp_users, a.resp_negative_users, a.resp_warm, a.resp_twins) == ("responsiveness", 3, 2, 1, 5)
