"""Command line: ``python -m dbpaper figures | bench | reproduce``.

* ``figures [--out DIR] [--chapters NAME ...]`` executes the book's chapters
  with figures written to ``DIR`` (default ``book/figures``) and writes
  ``MANIFEST.json`` with the SHA-256 of every file; the files are
  byte-identical across runs.
* ``bench [...]`` runs the benchmarks of the *Runtimes* chapter (see
  ``python -m dbpaper bench --help``).
* ``reproduce`` = ``figures`` + ``bench`` with the defaults.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

BOOK = Path(__file__).resolve().parent.parent / "book"


def _chapters(names: list[str] | None) -> list[Path]:
    all_chapters = sorted(BOOK.glob("*.ipynb"))
    if not names:
        return all_chapters
    chosen = []
    for n in names:
        p = BOOK / (n if n.endswith(".ipynb") else f"{n}.ipynb")
        if not p.exists():
            raise SystemExit(f"unknown chapter {n!r}; available: {', '.join(c.stem for c in all_chapters)}")
        chosen.append(p)
    return chosen


def figures(out: str | None, chapters: list[str] | None) -> Path:
    """Execute chapters (without modifying them) so that their figures are written to ``out``."""
    import nbformat
    from nbclient import NotebookClient
    from tqdm import tqdm

    from .paper.figures import figure_dir, write_manifest

    folder = figure_dir(out).resolve()
    os.environ["DBPAPER_FIGURE_DIR"] = str(folder)
    for path in tqdm(_chapters(chapters), desc="chapters", unit="chapter"):
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    manifest = write_manifest(folder)
    print(f"figures written to {folder}; checksums in {manifest}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "bench":  # options belong to the bench's own parser
        from .paper.bench import main as bench_main

        return bench_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m dbpaper", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_fig = sub.add_parser("figures", help="regenerate every figure of the book into stable files")
    p_fig.add_argument("--out", default=None, help="output directory (default: book/figures)")
    p_fig.add_argument("--chapters", nargs="*", default=None, help="chapter names (default: all)")
    p_bench = sub.add_parser("bench", help="run the benchmarks of the Runtimes chapter", add_help=False)
    p_bench.add_argument("rest", nargs=argparse.REMAINDER)
    sub.add_parser("reproduce", help="figures and benchmarks with the defaults")
    args = parser.parse_args(argv)
    if args.command == "figures":
        figures(args.out, args.chapters)
    elif args.command == "bench":
        from .paper.bench import main as bench_main

        return bench_main(args.rest)
    elif args.command == "reproduce":
        figures(None, None)
        from .paper.bench import main as bench_main

        return bench_main([])
    return 0


if __name__ == "__main__":
    sys.exit(main())
