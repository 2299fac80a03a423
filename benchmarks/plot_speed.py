"""Chart of ``bench_speed.py`` results: step time relative to torch fused, per workload and layout.

    python benchmarks/plot_speed.py benchmarks/results/speed_cpu_1thread.json \
        benchmarks/results/speed_cpu_1thread.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, dst: str) -> None:
    with open(src) as f:
        results = json.load(f)
    runs = results["runs"]
    algos = list(dict.fromkeys(key.split("/")[0] for key in runs))
    layouts = list(dict.fromkeys(key.split("/")[1] for key in runs))
    names = list(dict.fromkeys(n for run in runs.values() for n in run["results"]))
    fig, axes = plt.subplots(len(algos), 1, figsize=(13, 3.6 * len(algos)), squeeze=False)
    width = 0.8 / len(names)
    for ax, algo in zip(axes[:, 0], algos):
        for i, name in enumerate(names):
            xs, ys = [], []
            for j, layout in enumerate(layouts):
                run = runs.get(f"{algo}/{layout}")
                if run and "ms" in run["results"].get(name, {}):
                    xs.append(j + (i - len(names) / 2 + 0.5) * width)
                    ys.append(run["results"][name]["ms"] / run["results"]["torch fused"]["ms"])
            ax.bar(xs, ys, width, label=name, color=plt.cm.tab20(i % 20))
        for j, layout in enumerate(layouts):
            run = runs.get(f"{algo}/{layout}")
            if run:
                bound = run["bound_ms"] / run["results"]["torch fused"]["ms"]
                ax.hlines(bound, j - 0.45, j + 0.45, colors="k", linestyles="--",
                          label="bandwidth bound" if j == 0 else None)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(layouts)), layouts)
        ax.set_ylabel("step time / torch fused")
        where = ("CUDA" if results.get("device") == "cuda"
                 else f"{results['threads']} thread(s)")
        ax.set_title(f"{algo} ({where}; lower is faster)")
    axes[0, 0].legend(fontsize=7, ncol=4, loc="upper left")
    fig.suptitle(f"{results['machine']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
