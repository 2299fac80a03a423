"""MkDocs hook: the benchmark charts committed in ``benchmarks/results/`` become site files.

Each ``benchmarks/results/*.png`` is served as ``img/benchmarks/<name>.png`` (the performance
page shows them), read from where the benchmarks write it: no copy in ``docs/`` to go stale.
"""

from __future__ import annotations

import pathlib

from mkdocs.structure.files import File, Files

RESULTS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def on_files(files: Files, config) -> Files:
    """Adds every chart of ``RESULTS`` to the site's files."""
    for chart in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"img/benchmarks/{chart.name}",
                                    abs_src_path=str(chart)))
    return files
