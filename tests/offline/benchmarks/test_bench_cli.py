"""`freshrec bench <what>` (freshrec/offline/benchmarks/cli.py): the listing, every benchmark's
options, and the quick ones run through the command."""

from __future__ import annotations

from pathlib import Path

import pytest

from freshrec.cli import build_parser, main
from freshrec.offline.benchmarks.cli import BENCHMARKS, serving_options

WHAT = ("serving", "index", "stores", "explain", "rollout", "training", "capacity", "gpu", "jitter", "perf-analyzer")


def test_plain_bench_lists_the_benchmarks_and_runs_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench"]) == 2
    out = capsys.readouterr().out
    assert tuple(BENCHMARKS) == WHAT
    for what in WHAT:
        assert f"    {what}" in out, what
    assert "freshrec bench serving [options]" in out  # where the former `freshrec bench` went


@pytest.mark.parametrize("what", WHAT)
def test_every_benchmark_has_help(what: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["bench", what, "--help"])
    assert done.value.code == 0
    assert f"usage: freshrec bench {what}" in capsys.readouterr().out


def test_serving_options_from_the_command_line() -> None:
    a = build_parser().parse_args(["bench", "serving", "--smoke", "--only", "recommend,ingest_events", "--concurrency", "1,4"])
    o = serving_options(a)
    assert o.smoke and o.only == ("recommend", "ingest_events") and o.concurrency == (1, 4)
    assert o.build == Path("build") and o.out == Path("docs/benchmarks") and o.work is None and not o.keep_work
    # a catalog run benches recommend alone; a named work folder is kept
    o = serving_options(build_parser().parse_args(["bench", "serving", "--catalog-items", "100000", "--index", "sq8", "--work", "w"]))
    assert o.only == ("recommend",) and o.catalog_items == 100_000 and o.index == "sq8" and o.keep_work and o.concurrency is None
    with pytest.raises(SystemExit):  # one source of state
        build_parser().parse_args(["bench", "serving", "--state", "sqlite:///x.db", "--catalog-items", "10"])


def test_jitter_prints_the_bursts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "jitter", "--seconds", "0.5", "--interval-ms", "5"]) == 0
    out = capsys.readouterr().out
    assert " samples over " in out and "slow bursts (> 3x the median)" in out


def test_perf_analyzer_prints_the_prefix_that_runs_it(capsys: pytest.CaptureFixture[str]) -> None:
    from freshrec.offline.benchmarks.perf_analyzer import perf_analyzer_command

    assert main(["bench", "perf-analyzer"]) == 0
    first, second = capsys.readouterr().out.splitlines()[:2]
    assert first == " ".join(perf_analyzer_command()) and first.endswith("perf_analyzer")
    assert "2.60.0" in second
