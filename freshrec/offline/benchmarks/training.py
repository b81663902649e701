"""One training process and several under torchrun, side by side: `freshrec build` alone and data-parallel.

    freshrec bench training [--processes 1,2] [--work build/bench/training] [--out docs/benchmarks] [--max-users N] [--tiny]
    freshrec bench training --render    # training.md again from training.json

Each run is a whole `freshrec build` of the same data, config and seed in its own folder, one
after the other: `python -m freshrec.cli build` for 1 process (torch's own threads), `torchrun
--standalone --nproc-per-node N -m freshrec.cli build` for N (torchrun gives each process one
thread unless OMP_NUM_THREADS says otherwise). Recorded per run: the command's wall time, the
training's own seconds (build.json), threads per process and the test metrics. Beside them, the
seed noise the quality of N processes is judged against: the spread over seeds of one process in
the committed evaluation (docs/results/parts/loo.json, same data and config; full runs only).
Writes training.md / training.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from freshrec.offline.machine import machine_info

LOO = Path("docs/results/parts/loo.json")
# build metric -> the evaluation's row for the same ranking (docs/results/README.md)
ROWS = {"retrieval_10": "freshrec.retrieval", "rerank_10": "freshrec.two_stage"}


def command(processes: int, out: Path, repo: Path, tiny: bool, max_users: int | None) -> list[str]:
    build = ["-m", "freshrec.cli", "build", "--out", str(out), "--repository", str(repo)]
    build += ["--tiny"] * tiny + (["--max-users", str(max_users)] if max_users else [])
    if processes == 1:
        return [sys.executable, *build]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes), *build]


def seed_spread(loo: Path) -> dict | None:
    """{build metric: {"seeds": [...], "values": [...]}} of one process from the committed evaluation."""
    if not loo.exists():
        return None
    part = json.loads(loo.read_text())
    rows = part["result"]["offline"]["rows"]
    return {k: {"seeds": part.get("seeds"), "values": rows[row]["ndcg@10"]["values"]} for k, row in ROWS.items() if row in rows}


def run(processes: list[int], work: Path, out: Path, tiny: bool = False, max_users: int | None = None) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    runs = []
    for n in processes:
        folder = work / f"p{n}"
        cmd = command(n, folder / "build", folder / "repo", tiny, max_users)
        print(f"[freshrec] bench training: {n} process(es): {' '.join(cmd)}", file=sys.stderr, flush=True)
        env = dict(os.environ)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)  # progress lines go to stderr as they come
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"bench training: the {n}-process build exited {proc.returncode}")
        report = json.loads((folder / "build" / "build.json").read_text())
        threads = int(env.get("OMP_NUM_THREADS", "1")) if n > 1 else report["machine"]["cpus"]
        runs.append({
            "processes": n, "threads_per_process": threads, "wall_s": round(wall, 1),
            "training_s": report["training"]["seconds"], "build_s": report["seconds"],
            "distributed": report["training"].get("distributed"),
            "command": "python " + " ".join(cmd[1:]).replace(str(work), "<work>"),
            "test": {k: report["test_metrics"][k] for k in ("retrieval_10", "rerank_10")},
            "best_valid_ndcg10": {"towers": report["training"]["towers"]["best_valid_ndcg10"],
                                  "reranker": report["training"].get("reranker", {}).get("best_valid_ndcg10")},
        })  # fmt: skip
    spread = None if (tiny or max_users) else seed_spread(LOO)
    result = {"runs": runs, "seed_spread_one_process": spread, "tiny": tiny, "max_users": max_users,
              "dataset": report["dataset"], "machine": machine, "load_average_at_end": list(os.getloadavg()),
              "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    result["targets"] = targets(result)
    out.mkdir(parents=True, exist_ok=True)
    (out / "training.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    text = render(result)
    (out / "training.md").write_text(text)
    print(text)
    return result


def targets(result: dict) -> list[dict]:
    """NDCG@10 of every multi-process run inside one process's spread over seeds."""
    spread = result["seed_spread_one_process"]
    if not spread:
        return []
    out = []
    for r in result["runs"]:
        if r["processes"] == 1:
            continue
        for metric, s in spread.items():
            lo, hi = min(s["values"]), max(s["values"])
            v = r["test"][metric]["ndcg"]
            out.append({"target": f"{r['processes']} processes: {metric} NDCG@10 within one process's {len(s['values'])}-seed spread "
                                  f"[{lo:.4f}, {hi:.4f}]", "measured": v, "met": lo <= v <= hi,
                        "where": "inside" if lo <= v <= hi else "above" if v > hi else "below"})  # fmt: skip
    return out


def rerender(out: Path) -> dict:
    """training.md again from --out's training.json (targets recomputed), nothing run."""
    result = json.loads((out / "training.json").read_text())
    result["targets"] = targets(result)
    (out / "training.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    text = render(result)
    (out / "training.md").write_text(text)
    print(text)
    return result


def render(result: dict) -> str:
    m = result["machine"]
    data = result["dataset"] + (" (tiny models)" if result["tiny"] else "")
    lines = [
        "# Training: one process and several under torchrun",
        "",
        f"`freshrec bench training` on {result['date']}: {m['cores']} cores ({m['cpu']}), {m['ram_gib']} GiB, {m['os']}, "
        f"Python {m['python']}, torch {m['torch']}, load average at the start "
        f"{', '.join(f'{x:.1f}' for x in m['load_average_at_start'])}, at the end "
        f"{', '.join(f'{x:.1f}' for x in result['load_average_at_end'])}. Data: {data}; the same config and seed (0) "
        "for every run, one whole `freshrec build` each (data, MiniLM embeddings from the cache, training, test, export, "
        "state), one after the other. Several processes: PyTorch DDP over gloo, every batch split across the ranks, the "
        "loss scaled so a step is the one-process step on the whole batch (freshrec/training/distributed.py).",
        "",
        "| processes | threads each | training s | build s | wall s | test retrieval NDCG@10 | test two-stage NDCG@10 | test retrieval HR@10 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        t = r["test"]
        lines.append(f"| {r['processes']} | {r['threads_per_process']} | {r['training_s']} | {r['build_s']} | {r['wall_s']} | "
                     f"{t['retrieval_10']['ndcg']:.4f} | {t['rerank_10']['ndcg']:.4f} | {t['retrieval_10']['hr']:.4f} |")
    base = next((r for r in result["runs"] if r["processes"] == 1), None)
    if base:
        lines.append("")
        for r in result["runs"]:
            if r is not base:
                lines.append(f"- {r['processes']} processes / 1 process: training time {r['training_s'] / base['training_s']:.2f}x, "
                             f"wall {r['wall_s'] / base['wall_s']:.2f}x.")
    spread = result["seed_spread_one_process"]
    if spread:
        lines += ["", "Seed noise of one process (the committed evaluation, `docs/results/parts/loo.json`, seeds "
                  f"{next(iter(spread.values()))['seeds']}):", ""]
        for k, s in spread.items():
            lines.append(f"- {k} ({ROWS[k]}): NDCG@10 " + ", ".join(f"{v:.4f}" for v in s["values"]))
    if result["targets"]:
        lines += ["", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {t['target']} | {t['measured']:.4f} ({t['where']}) | {'yes' if t['met'] else 'no'} |" for t in result["targets"]]
    lines += ["", "Commands (from the repository root; `<work>` is `--work`, default build/bench/training): "
              + "; ".join(f"`{r['command']}`" for r in result["runs"]), ""]
    return "\n".join(lines)
