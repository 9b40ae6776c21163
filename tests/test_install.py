"""The wheel installs like a user's: into a fresh venv that already holds torch and *other* numpy and
matplotlib versions than the book's pins, replacing nothing; ``import dbpaper`` loads no plotting
library; a training step with the default penalty runs; the CLI behaves outside a checkout.

One test function on purpose: the steps share one venv (about a minute to build) and must run in
order in one pytest-xdist worker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TORCH = "2.13.0"  # the wheel on this machine's disk: no download
# other minor versions than constraints.txt pins (numpy 2.4, matplotlib 3.11)
USER_PACKAGES = ["numpy==2.3.*", "matplotlib==3.10.*"]

TRAINING_STEP = """
import sys, warnings
import torch, dbpaper
from dbpaper.penalties import JacobianFrobenius

plotting = sorted(m for m in sys.modules if m.split(".")[0] in {"matplotlib", "tqdm", "sklearn", "nbformat"})
assert not plotting, f"import dbpaper loaded {plotting}"
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
with warnings.catch_warnings():
    warnings.simplefilter("error", dbpaper.FallbackWarning)
    for _ in range(3):
        opt.zero_grad()
        r = dbpaper.penalty(model, x, JacobianFrobenius())
        (torch.nn.functional.cross_entropy(model(x), y) + 0.1 * r).backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
print("trained", dbpaper.__version__, float(r) > 0)
"""


def _run(cmd, cwd=None, check=True, **kw):
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kw)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def _freeze(py: Path) -> dict[str, str]:
    out = _run([py, "-m", "pip", "list", "--format=freeze"]).stdout
    return dict(line.split("==", 1) for line in out.splitlines() if "==" in line)


def _source_copy(dest: Path) -> Path:
    """The files a user's `pip install .` sees (no venv, no build outputs of this checkout)."""
    src = dest / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "dbpaper", src / "dbpaper", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return src


def test_wheel_installs_like_a_user(tmp_path):
    # 1. the wheel, built from a copy of the sources as a user's pip builds it (isolated)
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, _source_copy(tmp_path)])
    (wheel,) = wheels.glob("dbpaper-*.whl")

    # 2. a user's environment: torch and other numpy / matplotlib versions than the book's
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv])
    py = venv / "bin" / "python"
    _run([py, "-m", "pip", "install", "-q", "--progress-bar", "off", f"torch=={TORCH}", *USER_PACKAGES])
    before = _freeze(py)

    # 3. the library alone: nothing already installed is replaced, only dbpaper is added
    _run([py, "-m", "pip", "install", "-q", "--progress-bar", "off", wheel])
    after = _freeze(py)
    assert {k: v for k, v in after.items() if k != "dbpaper"} == before
    assert "dbpaper" in after
    assert list(venv.glob("lib/python*/site-packages/dbpaper/py.typed")), "py.typed is not in the wheel"

    # 4. import pulls in no plotting library; a training step with the default penalty runs
    work = tmp_path / "work"  # outside the checkout: the installed package is imported
    work.mkdir()
    out = _run([py, "-c", TRAINING_STEP], cwd=work).stdout
    assert out.strip().endswith("True"), out

    # 5. the CLI without the extras: one line naming the extra, status 2
    bench = _run([py, "-m", "dbpaper", "bench", "--quick"], cwd=work, check=False)
    assert bench.returncode == 2 and "pip install 'dbpaper[paper]'" in bench.stderr, bench
    assert len(bench.stderr.strip().splitlines()) == 1, bench.stderr

    # 6. the paper extra keeps the user's numpy and matplotlib (ranges, not pins)
    _run([py, "-m", "pip", "install", "-q", "--progress-bar", "off", f"{wheel}[paper]"])
    with_paper = _freeze(py)
    for name in ("numpy", "matplotlib", "torch"):
        assert with_paper[name] == before[name], f"{name} {before[name]} -> {with_paper[name]}"
    _run([py, "-c", "import dbpaper.paper.figures, dbpaper.paper.bench"], cwd=work)

    # 7. the CLI outside a checkout: figures names what it needs; bench writes under the cwd
    fig = _run([py, "-m", "dbpaper", "figures"], cwd=work, check=False)
    assert fig.returncode == 2 and len(fig.stderr.strip().splitlines()) == 1, fig
    assert "'book' extra" in fig.stderr, fig.stderr
    assert _run([py, "-m", "dbpaper", "figures", "--help"], cwd=work).returncode == 0
    quick = _run([py, "-m", "dbpaper", "bench", "--quick", "--only", "mlp", "--no-progress"], cwd=work)
    assert (work / "bench-out" / "bench-cpu-quick.json").is_file(), quick.stdout
    assert (work / "bench-out" / "plots-cpu-quick").is_dir()
    site = next((venv / "lib").glob("python*/site-packages"))
    assert not (site / "bench-out").exists() and not (site / "book").exists()
