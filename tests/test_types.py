"""The public API is typed: ``pyright --verifytypes dbpaper --ignoreexternal`` reports a type completeness of at
least 95 % (parameters and returns of every public function and method, class attributes, module constants;
the book's wing ``dbpaper.paper`` included).

pyright reads the package as a user's type checker does, installed with its ``py.typed``: into a bare
virtual environment of its own (an editable install is an import hook that pyright does not follow), whose
``.pth`` file adds this interpreter's site-packages for torch, numpy and matplotlib; ``PYTHONPATH`` is
dropped, since it would put a checkout ahead of the installed copy, and the environment's ``python`` put
first on ``PATH``, where ``--verifytypes`` looks for it.

pyright is the npm package pinned in ``package.json`` (``npm ci`` puts it in ``node_modules/.bin``; CI runs
``npm ci`` before ``make test``), else a ``pyright`` on ``PATH``. Without either the test is skipped on a
developer's machine and fails in CI (``CI`` set), so that the gate cannot be skipped silently there.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_LOCAL = ROOT / "node_modules" / ".bin" / "pyright"
PYRIGHT = str(_LOCAL) if _LOCAL.is_file() and shutil.which("node") else shutil.which("pyright")
THRESHOLD = 0.95


def test_type_completeness_of_the_public_api(tmp_path: Path) -> None:
    if PYRIGHT is None:
        if os.environ.get("CI"):
            pytest.fail("pyright is not installed: run `npm ci` (package.json pins it) before the tests")
        pytest.skip("pyright is not installed (npm ci, or pip install pyright)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, env=env)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, env=env, capture_output=True, text=True,
    ).stdout.strip()
    installed = Path(purelib)
    shutil.copytree(ROOT / "dbpaper", installed / "dbpaper", ignore=shutil.ignore_patterns("__pycache__"))
    assert (installed / "dbpaper" / "py.typed").is_file()
    (installed / "dependencies.pth").write_text("".join(f"{p}\n" for p in site.getsitepackages()))
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"  # verifytypes takes the python on PATH
    run = subprocess.run(
        [PYRIGHT, "--pythonpath", str(python), "--verifytypes", "dbpaper", "--ignoreexternal", "--outputjson"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    try:
        report = json.loads(run.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"pyright gave no JSON report (exit {run.returncode}):\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
    completeness = report["typeCompleteness"]
    assert completeness["packageRootDirectory"].startswith(str(installed)), completeness["packageRootDirectory"]
    score = completeness["completenessScore"]
    unknown = [s["name"] for s in completeness["symbols"] if not s["isTypeKnown"]]
    by_module = Counter(name.rsplit(".", 1)[0] for name in unknown)
    worst = ", ".join(f"{module} ({n})" for module, n in by_module.most_common(8))
    assert score >= THRESHOLD, (
        f"type completeness {score:.1%} < {THRESHOLD:.0%}: {len(unknown)} symbols of partly unknown type, "
        f"most in {worst}"
    )
