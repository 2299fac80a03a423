"""The meta-learning examples run end to end (shortened) and write their outputs."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

# Each runs a fresh interpreter (torch + matplotlib import): ~5 s alone, far more on a busy box.
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_example(name, *args):
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": pythonpath}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / name), *map(str, args)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    assert "WARNING" not in proc.stdout, proc.stdout
    return proc.stdout


def assert_png(path):
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_maml_sinusoid_short(tmp_path):
    out = run_example("maml_sinusoid.py", "--shots", 5, "--iters", 30, "--meta-batch", 5,
                      "--test-tasks", 20, "--test-steps", 3, "--log-every", 10,
                      "--out", tmp_path)
    assert "MSE after  1 step(s)" in out
    report = json.loads((tmp_path / "maml_sinusoid_k5.json").read_text())
    assert len(report["mse_by_step"]) == 4 and report["iters"] == 30
    assert all(v == v for v in report["mse_by_step"])  # no NaN


def test_hyperparameter_sweep_short(tmp_path):
    out = run_example("hyperparameter_sweep.py", "--n-lrs", 4, "--steps", 10, "--out", tmp_path)
    assert "one vmap" in out
    assert_png(tmp_path / "hyperparameter_sweep.png")


def test_learned_learning_rate_short(tmp_path):
    out = run_example("learned_learning_rate.py", "--steps", 20, "--out", tmp_path)
    assert "adam-HD" in out
    assert_png(tmp_path / "learned_learning_rate.png")
