"""Execute chapters in place so that their stored outputs are current.

Usage: python tools/run_notebooks.py book [book/some_chapter.ipynb ...]
Execution uses the current interpreter's kernel, as `make test` (nbval) does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def run(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, path)
    print(f"executed {path}")


def main(argv: list[str]) -> None:
    targets = []
    for arg in argv or ["book"]:
        p = Path(arg)
        targets += sorted(p.glob("*.ipynb")) if p.is_dir() else [p]
    for path in targets:
        run(path)


if __name__ == "__main__":
    main(sys.argv[1:])
