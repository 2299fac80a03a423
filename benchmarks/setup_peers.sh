#!/usr/bin/env bash
# Make benchmarks/.venv-peers: torchopt, higher, heavyball and optax (JAX CPU) for the comparison benchmarks ONLY (they are
# not dependencies of functional_optim). The venv reuses torch and the rest from ../.venv through
# a .pth file, and installs the peers with --no-deps, so pip never resolves (or downloads) a torch
# build. Then:  benchmarks/.venv-peers/bin/python benchmarks/maml_sinusoid.py
set -euo pipefail
cd "$(dirname "$0")/.."
# every site-packages directory ../.venv sees (its own, and the system's when it was made with
# --system-site-packages, as the Makefile makes it where torch is installed system-wide)
MAIN_SITE=$(.venv/bin/python -c 'import sys; print("\n".join(p for p in sys.path if p.endswith("site-packages")))')
PY=${PYTHON:-python3}
$PY -m venv benchmarks/.venv-peers
echo '*' > benchmarks/.venv-peers/.gitignore
PEER_SITE=$(benchmarks/.venv-peers/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$MAIN_SITE" > "$PEER_SITE/zz_main_venv.pth"
echo "$(pwd)" > "$PEER_SITE/zz_repo.pth"  # functional_optim itself (editable in ../.venv)
benchmarks/.venv-peers/bin/pip install --no-deps torchopt==0.7.3 higher==0.2.1 graphviz heavyball
# optax on JAX (CPU) for the step-time comparison: its own dependencies, none of them torch
benchmarks/.venv-peers/bin/pip install jax optax
benchmarks/.venv-peers/bin/python -c 'import torchopt, higher, heavyball, jax, optax; print("torchopt", torchopt.__version__, "jax", jax.__version__, "optax", optax.__version__)'
