"""Data-parallel training under the real torchrun (2 processes, DDP over gloo): a step on two
ranks is the step one process takes on the whole batch, and `freshrec build` runs under it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _run(cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


@pytest.mark.parametrize("negatives", [0, 20], ids=["full-softmax", "sampled-softmax"])
def test_two_processes_train_what_one_process_trains(tmp_path: Path, negatives: int) -> None:
    """Without dropout (the only randomness that differs per rank), two ranks splitting every
    batch end where one process ends: the same catalog vectors, user vectors and reranker scores
    to float rounding, and the same per-epoch losses."""
    _run([sys.executable, str(WORKER), "one.pt", str(negatives)], tmp_path, 300)
    proc = _run([*TORCHRUN, str(WORKER), "two.pt", str(negatives)], tmp_path, 300)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert (one["world"], two["world"]) == (1, 2)
    for name in ("items", "users", "scores"):
        assert torch.allclose(one[name], two[name], atol=1e-5), (name, (one[name] - two[name]).abs().max())
    assert one["losses"] == pytest.approx(two["losses"], rel=1e-6)
    # rank 0 alone logs: one line per epoch, not one per rank
    assert proc.stderr.count("towers epoch 1/2") == 1 and proc.stderr.count("reranker epoch 1/1") == 1


def test_build_under_torchrun(tmp_path: Path) -> None:
    """`freshrec build` on 2 processes: one build (rank 0 writes the checkpoints, repository, state
    and report, and prints the metrics once) that says how it was trained."""
    proc = _run([*TORCHRUN, "-m", "freshrec.cli", "build", "--tiny", "--max-users", "40",
                 "--out", "build", "--repository", "repo"], tmp_path, 900)  # fmt: skip
    printed = json.loads(proc.stdout)  # one JSON document: rank 1 prints nothing
    report = json.loads((tmp_path / "build" / "build.json").read_text())
    assert report["training"]["distributed"] == {"processes": 2, "backend": "gloo"}
    assert printed["retrieval_10"] == report["test_metrics"]["retrieval_10"]
    assert report["test_metrics"]["retrieval_10"]["hr"] > 0
    assert "training: 2 processes (torchrun, DDP over gloo)" in proc.stderr
    assert proc.stderr.count("build done in") == 1
    for card in (tmp_path / "repo").glob("*/recommend/1/model_card.json"):
        assert json.loads(card.read_text())["training"]["processes"] == 2
    assert {p.name for p in (tmp_path / "build" / "checkpoints").glob("*.pt")} >= {"item_tower.pt", "user_tower.pt", "reranker.pt"}


@pytest.mark.parametrize("argv", [["update"], ["eval", "--tiny"], ["versions"]])
def test_other_commands_refuse_to_run_under_torchrun(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Only `build` is data-parallel; N copies of an update would each write version N+1."""
    from freshrec.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(argv) == 2
    assert f"`freshrec {argv[0]}` runs in one process" in capsys.readouterr().err
