"""serving.md, summary.json and the plots, assembled from every run in `<out>/runs/`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from freshrec.offline.benchmarks.serving.markdown import render_md
from freshrec.offline.benchmarks.serving.plots import plot
from freshrec.offline.benchmarks.serving.targets import targets


def assemble(out: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """serving.md and summary.json from every run in `out/runs/`: the main run's figures at the
    top level, the catalog-scale runs under "catalogs"."""
    runs = {p.stem: json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))}
    if not runs:
        raise FileNotFoundError(f"no runs in {out / 'runs'}")
    main_name = "main" if "main" in runs else max(runs, key=lambda k: runs[k]["date_utc"])
    summary = dict(runs[main_name])
    summary["catalogs"] = {k: v for k, v in runs.items() if k != main_name and v.get("catalog")}
    write_docs(summary, out, log)
    return summary


def write_docs(summary: dict[str, Any], out: Path, log: Callable[[str], None] = print) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary["targets"] = targets(summary)
    summary["plots"] = plot(summary, out)
    # Runs that hung once and ran again (run_one) left their evidence in raw/ (cleared per run).
    summary["stalled"] = sorted(str(p.relative_to(out)) for p in (out / "raw").glob("**/*.stalled*.log"))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    (out / "serving.md").write_text(render_md(summary))
    log(f"== wrote {out / 'serving.md'}, {out / 'summary.json'}" + "".join(f", {out / p}" for p in summary["plots"]))
