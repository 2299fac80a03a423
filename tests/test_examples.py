"""The examples run end to end (shortened) and write their outputs."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_quickstart_runs(tmp_path):
    # Import the package from this checkout even if it is not pip-installed.
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": pythonpath}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"),
         "--steps", "30", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"quickstart.py failed:\n{proc.stdout}\n{proc.stderr}"
    png = tmp_path / "quickstart.png"
    assert png.exists() and png.stat().st_size > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = proc.stdout
    for name in ("fo.adamw", "torch.optim.AdamW", "final loss", "vs torch", "donated"):
        assert name in out
    # fo.adamw and torch.optim.AdamW run the same algorithm: the example says so only if the
    # parameters agree to rounding.
    assert "WARNING" not in out, out


def test_finetune_adafactor_runs(tmp_path):
    """The compat.transformers example: Adafactor + AdafactorSchedule fine-tune a tiny
    transformer (shortened); the loss falls and the plot is written."""
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": pythonpath}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "finetune_adafactor.py"),
         "--steps", "60", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"finetune_adafactor.py failed:\n{proc.stdout}\n{proc.stderr}"
    png = tmp_path / "finetune_adafactor.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = next(line for line in proc.stdout.splitlines() if line.startswith("initial loss"))
    initial, final = float(first.split()[2]), float(first.split("final loss ")[1].split()[0])
    assert final < 0.8 * initial, proc.stdout
    assert "AdafactorSchedule" in proc.stdout


def test_gallery_runs(tmp_path):
    """The optimizer gallery (--quick: 3 steps per alias): every registered alias appears in
    the table, the plot is written; the only aliases not run are those this dense problem
    cannot suit (sparse gradients only, 2-D parameters only)."""
    pytest.importorskip("sklearn", reason="the examples extra (make install) brings it")
    from functional_optim import registry

    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": pythonpath}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "gallery.py"), "--quick", "--out",
         str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"gallery.py failed:\n{proc.stdout}\n{proc.stderr}"
    assert (tmp_path / "gallery.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "gallery.md").read_text()
    for name in registry.names():
        assert f"| `{name}` |" in table
    not_run = [line for line in table.splitlines() if "not run" in line]
    assert all("sparse" in line.lower() or "2-D" in line for line in not_run), not_run
