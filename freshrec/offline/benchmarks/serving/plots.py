"""The report's PNG plots: latency against throughput per concurrency sweep, and recommend at
each catalog size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from freshrec.offline.benchmarks.serving.markdown import index_label


def plot(summary: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    res = summary["results"]
    sweeps = {k: v for k, v in res.items() if len(v) > 1}
    if not sweeps:
        return files
    n = len(sweeps)
    cols = min(3, n)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(5 * cols, 3.8 * ((n + cols - 1) // cols)), squeeze=False)
    for ax, (label, by_c) in zip(axes.ravel(), sweeps.items()):
        cs = sorted(by_c, key=int)
        thr = [by_c[c]["throughput"] for c in cs]
        for key, style in (("p50_ms", "o-"), ("p90_ms", "s--"), ("p99_ms", "^-")):
            ax.plot(thr, [by_c[c][key] for c in cs], style, label=key.replace("_ms", ""))
        for c, x, y in zip(cs, thr, [by_c[c]["p99_ms"] for c in cs]):
            ax.annotate(f"c={c}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if label == "recommend":
            ax.axhline(60, color="grey", lw=0.8, ls=":")
            ax.axvline(100, color="grey", lw=0.8, ls=":")
        ax.set_title(label)
        ax.set_xlabel("throughput (requests/s)")
        ax.set_ylabel("latency (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle(f"perf_analyzer over gRPC, concurrency sweeps ({summary['machine']['cores']} cores, {summary['catalog_items_served']:,} items)")
    fig.tight_layout()
    path = out / "serving_latency_throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(path.name)
    scale = {f"{summary['catalog_items_served']:,} items ({summary['index']})": summary["results"].get("recommend", {})}
    for run in summary.get("catalogs", {}).values():
        scale[f"{run['catalog_items_served']:,} items ({index_label(run)})"] = run["results"].get("recommend", {})
    scale = {k: v for k, v in scale.items() if len(v) > 1}
    if len(scale) > 1:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, by_c in scale.items():
            cs = sorted(by_c, key=int)
            line = ax.plot([by_c[c]["throughput"] for c in cs], [by_c[c]["p99_ms"] for c in cs], "o-", label=f"{label} p99")[0]
            ax.plot([by_c[c]["throughput"] for c in cs], [by_c[c]["p50_ms"] for c in cs], "s--", color=line.get_color(), alpha=0.6, label=f"{label} p50")
            for c in cs:
                ax.annotate(f"c={c}", (by_c[c]["throughput"], by_c[c]["p99_ms"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.axhline(60, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("recommendations/s")
        ax.set_ylabel("latency (ms)")
        ax.set_title("recommend at catalog scale (perf_analyzer, gRPC)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / "serving_catalog_scale.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path.name)
    return files
