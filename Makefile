# functional_optim — developer tasks.
#
#   make demo    set up .venv (if needed) and run examples/quickstart.py
#   make gallery train every alias on the digits (examples/gallery.py), plot to docs/img
#   make test    set up .venv (if needed), run the whole test suite, build the docs strictly
#   make docs    build the docs into site/        make docs-serve   serve them locally
#   make bench   run benchmarks/run_all.py (when it exists)
#   make clean   remove build/test/doc outputs    make distclean    ...and the .venv too
#
# The venv is created with --system-site-packages. torch is installed ONLY if the venv cannot
# import it, and then pinned to the local CPU wheel (torch==2.13.0): an unpinned `torch` would
# pull a multi-GB CUDA build. An existing torch is always left alone. Install steps are
# recorded by stamp files inside .venv, so repeated `make test` skips them.

SHELL   := /bin/bash
# Silence mkdocs-material's end-of-life banner (it is not a build warning).
export NO_MKDOCS_2_WARNING := 1
PYTHON  ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
TORCH   ?= torch==2.13.0
EXTRAS  ?= test,docs,examples
JOBS    ?= 2
SITE    ?= site

TORCH_STAMP   := $(VENV)/.stamp-torch
INSTALL_STAMP := $(VENV)/.stamp-install

.PHONY: help venv install demo gallery test pytest docs docs-serve bench clean distclean

help:
	@sed -n '3,9p' Makefile | sed 's/^# \{0,1\}//'

venv: $(VPY)

$(VPY):
	$(PYTHON) -m venv --system-site-packages $(VENV)

$(TORCH_STAMP): | $(VPY)
	@if $(VPY) -c "import torch" >/dev/null 2>&1; then \
	    echo "torch $$($(VPY) -c 'import torch; print(torch.__version__)') already importable; leaving it alone"; \
	else \
	    echo "torch not importable in $(VENV): installing $(TORCH) (local CPU wheel)"; \
	    $(VPY) -m pip install "$(TORCH)"; \
	fi
	@touch $@

$(INSTALL_STAMP): pyproject.toml $(TORCH_STAMP)
	$(VPY) -m pip install -e ".[$(EXTRAS)]"
	@touch $@

install: $(INSTALL_STAMP)

demo: install
	$(VPY) examples/quickstart.py

gallery: install
	$(VPY) examples/gallery.py --out examples/out
	cp examples/out/gallery.png docs/img/gallery.png

# One torch thread per xdist worker: $(JOBS) workers on a 2-core machine, each also running
# torch's intra-op thread pool, oversubscribe the cores and slow small-tensor tests badly.
pytest: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(VPY) -m pytest -n $(JOBS) -q

test: pytest
	$(VPY) -m mkdocs build --strict -d $(SITE)

docs: install
	$(VPY) -m mkdocs build --strict -d $(SITE)

docs-serve: install
	$(VPY) -m mkdocs serve

bench: install
	@if [ -f benchmarks/run_all.py ]; then \
	    $(VPY) benchmarks/run_all.py; \
	else \
	    echo "benchmarks/run_all.py does not exist yet; nothing to run"; \
	fi

clean:
	rm -rf $(SITE) build dist *.egg-info .pytest_cache .hypothesis .ruff_cache examples/out benchmarks/out
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
