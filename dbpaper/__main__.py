"""Command line: ``python -m dbpaper figures | bench | reproduce``.

* ``figures [--book DIR] [--out DIR] [--chapters NAME ...]`` executes the book's
  chapters with their figures written to ``DIR`` and writes ``MANIFEST.json``
  with the SHA-256 of every file; the files are byte-identical across runs.
  The chapters are not part of the installed package: ``--book`` defaults to
  ``./book`` (the root of a checkout), then to the checkout the package was
  installed from in editable mode. Needs the ``book`` extra.
* ``bench [...]`` runs the benchmarks of the *Runtimes* chapter (see
  ``python -m dbpaper bench --help``). Needs the ``paper`` extra.
* ``reproduce`` = ``figures`` + ``bench`` with the defaults.

Every output goes under the current directory unless ``--out`` says otherwise.
A command whose extras or chapters are missing says so in one line and exits
with status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
from pathlib import Path

REPOSITORY = "https://github.com/dbpaper/dbpaper"  # the URL of _config.yml (a test keeps them equal)
_EXTRAS = {
    "paper": ("numpy", "matplotlib", "tqdm"),
    "book": ("numpy", "matplotlib", "tqdm", "nbformat", "nbclient", "ipykernel", "sklearn"),
}


def plain(text: str) -> str:
    """reST markup (``code``, *emphasis*) as plain text, for ``--help``."""
    return re.sub(r"\*([^*\s][^*]*)\*", r"\1", text.replace("``", "").replace("`", ""))


def _version() -> str:
    from . import __version__

    return f"dbpaper {__version__}"


class UsageError(Exception):
    """A command cannot run here (missing extras or chapters): one line for the user, exit status 2."""


def require_extra(extra: str, command: str) -> None:
    """Raise :class:`UsageError` naming ``pip install 'dbpaper[extra]'`` if a module of ``extra`` is missing."""
    missing = [m for m in _EXTRAS[extra] if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(
            f"`python -m dbpaper {command}` needs the {extra!r} extra ({', '.join(missing)} not installed): "
            f"pip install 'dbpaper[{extra}]'"
        )


def find_book(book: str | os.PathLike[str] | None) -> Path:
    """The folder of the book's chapters: ``book``, ``./book``, or the editable checkout's ``book/``."""
    if book is not None:
        candidates = [Path(book)]
    else:
        candidates = [Path.cwd() / "book", Path(__file__).resolve().parent.parent / "book"]
    for c in candidates:
        if c.is_dir() and any(c.glob("*.ipynb")):
            return c.resolve()
    where = str(candidates[0]) if book is not None else "./book"
    raise UsageError(
        f"no chapters (*.ipynb) in {where}: the chapters are not installed with the package; run this in a "
        f"checkout of {REPOSITORY} (or pass --book DIR)"
    )


def _chapters(book: Path, names: list[str] | None) -> list[Path]:
    all_chapters = sorted(book.glob("*.ipynb"))
    if not names:
        return all_chapters
    chosen = []
    for n in names:
        p = book / (n if n.endswith(".ipynb") else f"{n}.ipynb")
        if not p.exists():
            raise UsageError(f"unknown chapter {n!r}; available: {', '.join(c.stem for c in all_chapters)}")
        chosen.append(p)
    return chosen


def default_figure_dir(book: Path) -> Path:
    """``./book/figures`` when the book is ``./book``, else ``./figures``: always under the current directory."""
    cwd = Path.cwd().resolve()
    return book / "figures" if book == (cwd / "book").resolve() else cwd / "figures"


def figures(out: str | None, chapters: list[str] | None, book: str | None = None) -> Path:
    """Execute chapters (without modifying them) so that their figures are written to ``out``."""
    require_extra("book", "figures")
    folder_book = find_book(book)
    paths = _chapters(folder_book, chapters)
    import nbformat
    from nbclient import NotebookClient
    from tqdm import tqdm

    from .paper.figures import figure_dir, write_manifest

    folder = figure_dir(out if out is not None else default_figure_dir(folder_book)).resolve()
    os.environ["DBPAPER_FIGURE_DIR"] = str(folder)
    for path in tqdm(paths, desc="chapters", unit="chapter"):
        nb = nbformat.read(path, as_version=4)
        NotebookClient(
            nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        ).execute()
    manifest = write_manifest(folder)
    print(f"figures written to {folder}; checksums in {manifest}")
    return manifest


def _bench(argv: list[str]) -> int:
    if not any(a in ("-h", "--help") for a in argv):
        require_extra("paper", "bench")
    from .paper.bench import main as bench_main

    return bench_main(argv)


def _run(argv: list[str]) -> int:
    if argv and argv[0] == "bench":  # options belong to the bench's own parser
        return _bench(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m dbpaper",
        description="The book's figures and benchmarks from the command line: figures, bench, reproduce.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    p_fig = sub.add_parser(
        "figures",
        help="regenerate every figure of the book into stable files (needs a checkout and the 'book' extra)",
        description="Execute the book's chapters (from a checkout of the repository) and write their figures, "
        "byte-identical across runs, with a MANIFEST.json of SHA-256 checksums. Needs: pip install 'dbpaper[book]'.",
    )
    p_fig.add_argument(
        "--book", default=None, help="folder of the chapters (default: ./book, else the editable checkout's)"
    )
    p_fig.add_argument("--out", default=None, help="output folder (default: ./book/figures for ./book, else ./figures)")
    p_fig.add_argument("--chapters", nargs="*", default=None, help="chapter names (default: all)")
    sub.add_parser("bench", help="run the benchmarks of the Runtimes chapter (needs the 'paper' extra)", add_help=False)
    sub.add_parser("reproduce", help="figures and benchmarks with the defaults")
    args = parser.parse_args(argv)
    if args.command == "figures":
        figures(args.out, args.chapters, args.book)
    elif args.command == "reproduce":
        require_extra("book", "reproduce")
        figures(None, None)
        return _bench([])
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; a :class:`UsageError` is printed as one line and exits with status 2."""
    try:
        return _run(sys.argv[1:] if argv is None else list(argv))
    except UsageError as exc:
        print(f"dbpaper: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
