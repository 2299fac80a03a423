"""The documentation builds strictly, and its Python examples run."""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest
import torch

from functional_optim import registry

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Pages whose ```python blocks are executed, in order, in one namespace per page.
# (Blocks fenced as ```text, ```bash, ... are not run.)
EXECUTED_PAGES = ["README.md", "docs/index.md", "docs/getting-started.md",
                  "docs/meta-learning.md", "docs/guides/composing-chains.md", "docs/algorithms.md",
                  "docs/migrating-optax.md"]
# Objects that each API page must render (the ones the docs and the quickstart use).
API_PAGES = {
    "core": ["Transform", "chain", "apply_updates", "apply_updates_", "step",
             "DonatedStateError"],
    "transforms": ["clip_by_global_norm", "scale_by_adam", "add_decayed_weights",
                   "scale_by_learning_rate"],
    "aliases": ["adamw", "huggingface_adafactor", "adam_weight_decay"],
    "compat": ["get_scheduler", "create_optimizer", "GradientAccumulator"],
    "optim": ["HuggingFaceAdafactor", "HuggingFaceAdamW"],
    "schedules": ["warmup_cosine_decay", "one_cycle_lr", "get_schedule", "swalr",
                  "cosine_warmup_with_min_lr"],
    "combinators": ["partition", "inject_hparams", "multi_steps", "reduce_on_plateau"],
    "meta": ["unroll", "train_many", "params_of", "custom_root", "cg"],
}
# Sphinx markup of the docstrings that must not reach a page as text (docs/griffe_sphinx_roles.py
# rewrites it): roles, math directives, literal-block markers.
RAW_SPHINX = re.compile(r":(?:class|func|meth|attr|mod|data|obj|exc|math):(?:`|<code>)"
                        r"|\.\. math::|::</p>")
# References that render as links: (API page, link text, href), one per way a target resolves.
LINKS = [
    ("meta", "cg", "#functional_optim.implicit.cg"),  # a short name, in the object's module
    ("aliases", "partition", "../combinators/#functional_optim.combinators.partition"),  # ~, root
    ("transforms", "functional_optim.optim.LBFGS", "../optim/#functional_optim.optim.LBFGS"),
    ("aliases", "functional_optim.transforms.lbfgs",  # a :mod:
     "../transforms/#functional_optim.transforms.lbfgs"),
    ("core", "Transform.pointwise", "#functional_optim.base.Transform"),  # a field: its class
]
needs_mkdocs = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None,
    reason="mkdocs is not installed (pip install -e '.[docs]')",
)


def _mkdocs_build(config, site):
    return subprocess.run(
        # No -q: mkdocs would then drop warnings instead of failing on them.
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # mkdocs-material's EOL banner
    )


@needs_mkdocs
def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    proc = _mkdocs_build(ROOT / "mkdocs.yml", site)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert (site / "index.html").exists()
    # The API pages really document the objects (a package without __all__ renders its
    # re-exported names as nothing at all, silently).
    for page, names in API_PAGES.items():
        html = (site / "api" / page / "index.html").read_text()
        ids = set(re.findall(r'id="functional_optim\.([\w.]+)"', html))
        missing = [n for n in names if not any(i == n or i.endswith("." + n) for i in ids)]
        assert not missing, f"api/{page}.md does not document {missing}; rendered: {sorted(ids)}"
    # Docstring cross-references are links, their math is typeset, no Sphinx markup shows.
    for page in sorted((site / "api").glob("*/index.html")):
        raw = sorted(set(RAW_SPHINX.findall(page.read_text())))
        assert not raw, f"{page.relative_to(site)} shows Sphinx markup as text: {raw}"
    for page, text, href in LINKS:
        html = (site / "api" / page / "index.html").read_text()
        assert f'href="{href}"><code>{text}</code></a>' in html, f"api/{page}: no link {text}"
    assert '<div class="arithmatex">' in (site / "api" / "aliases" / "index.html").read_text()
    # The optimizers page has a row for every registered optimizer (made from the registry).
    html = (site / "optimizers" / "index.html").read_text()
    for name in registry.names():
        assert f"<code>fo.{name}</code>" in html, f"no row for {name} on the optimizers page"
    # The benchmark charts are on the performance page, served from benchmarks/results/.
    html = (site / "performance" / "index.html").read_text()
    for chart in sorted((ROOT / "benchmarks" / "results").glob("*.png")):
        assert f'src="../img/benchmarks/{chart.name}"' in html, f"{chart.name} not shown"
        assert (site / "img" / "benchmarks" / chart.name).read_bytes() == chart.read_bytes()


# A one-module package for strict builds of one docstring: ``documented`` is on the page,
# ``undocumented`` exists but no page renders it.
TINY_MODULE = '''"""A module."""


def documented():
    """Returns nothing. See {reference}."""


def undocumented():
    """Not on any page."""
'''


@needs_mkdocs
@pytest.mark.parametrize("reference, expected", [
    (":func:`~tiny.mod.documented`", None),
    (":func:`no_such_name`",
     "tiny/mod.py:5: docstring of tiny.mod.documented: :func:`no_such_name` names nothing"),
    (":func:`undocumented`",
     "mod.py:5: (tiny.mod.documented) Could not find cross-reference target "
     "'tiny.mod.undocumented'"),
])
def test_strict_build_fails_on_a_broken_reference(tmp_path, reference, expected):
    """The docs' own configuration (docstring options, griffe extension, markdown extensions)
    on a tiny project: a good reference links; one that names nothing, or names an object no
    page renders, fails the strict build with the docstring and the reference in the message."""
    import yaml  # mkdocs' dependency

    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "__init__.py").write_text("")
    (tmp_path / "tiny" / "mod.py").write_text(TINY_MODULE.format(reference=reference))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# Tiny\n\n::: tiny.mod.documented\n")
    real = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    (mkdocstrings,) = [p["mkdocstrings"] for p in real["plugins"] if isinstance(p, dict)]
    python = mkdocstrings["handlers"]["python"]
    python["paths"] = [str(tmp_path)]
    python["options"]["extensions"] = [str(ROOT / e) for e in python["options"]["extensions"]]
    config = {"site_name": "tiny", "docs_dir": str(tmp_path / "docs"), "theme": "mkdocs",
              "markdown_extensions": real["markdown_extensions"],
              "plugins": [{"mkdocstrings": mkdocstrings}]}
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    proc = _mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    log = proc.stdout + proc.stderr
    if expected is None:
        assert proc.returncode == 0, log
        html = (tmp_path / "site" / "index.html").read_text()
        assert 'href="#tiny.mod.documented"><code>documented</code></a>' in html, html
    else:
        assert proc.returncode != 0, log
        assert expected in log, log


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


def test_migration_guide_names_every_drop_in():
    """The migration guide names functional_optim.optim's hand-written classes (the generated
    ones are listed, from the registry, on the optimizers page: test_mkdocs_build_strict)."""
    import functional_optim.optim as optim
    from functional_optim.optim.generated import _AliasOptimizer

    text = (ROOT / "docs" / "migrating.md").read_text()
    written = [n for n in optim.__all__ if not issubclass(getattr(optim, n), _AliasOptimizer)]
    missing = [name for name in written if f"`{name}`" not in text]
    assert not missing, f"docs/migrating.md does not name the drop-in classes {missing}"
