"""The documentation builds strictly, and its Python examples run."""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Pages whose ```python blocks are executed, in order, in one namespace per page.
# (Blocks fenced as ```text, ```bash, ... are not run.)
EXECUTED_PAGES = ["README.md", "docs/index.md", "docs/getting-started.md",
                  "docs/meta-learning.md"]
# Objects that each API page must render (the ones the docs and the quickstart use).
API_PAGES = {
    "core": ["Transform", "chain", "apply_updates", "apply_updates_"],
    "transforms": ["clip_by_global_norm", "scale_by_adam", "add_decayed_weights",
                   "scale_by_learning_rate"],
    "aliases": ["adamw"],
    "schedules": ["warmup_cosine_decay", "one_cycle_lr", "get_schedule"],
    "combinators": ["partition", "inject_hparams", "multi_steps", "reduce_on_plateau"],
    "meta": ["unroll", "train_many", "params_of", "custom_root", "cg"],
}


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None,
    reason="mkdocs is not installed (pip install -e '.[docs]')",
)
def test_mkdocs_build_strict(tmp_path):
    proc = subprocess.run(
        # No -q: mkdocs would then drop warnings instead of failing on them.
        [sys.executable, "-m", "mkdocs", "build", "--strict",
         "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # mkdocs-material's EOL banner
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    site = tmp_path / "site"
    assert (site / "index.html").exists()
    # The API pages really document the objects (a package without __all__ renders its
    # re-exported names as nothing at all, silently).
    for page, names in API_PAGES.items():
        html = (site / "api" / page / "index.html").read_text()
        ids = set(re.findall(r'id="functional_optim\.([\w.]+)"', html))
        missing = [n for n in names if not any(i == n or i.endswith("." + n) for i in ids)]
        assert not missing, f"api/{page}.md does not document {missing}; rendered: {sorted(ids)}"


@pytest.mark.parametrize("page", EXECUTED_PAGES)
def test_doc_examples_run(page):
    text = (ROOT / page).read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    assert blocks, f"no ```python blocks found in {page}"
    with torch.random.fork_rng():  # the examples seed torch; keep that out of other tests
        _run_blocks(page, blocks)


def _run_blocks(page, blocks):
    namespace = {"__name__": "__doc_example__"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"{page} [python block {i}]", "exec"), namespace)
        except Exception as e:  # pragma: no cover - message for the failure report
            raise AssertionError(f"{page}, python block {i} failed:\n{block}") from e
