"""Sphinx extension: the package version and the commit of the build on every page.

A page of the book is cited by its URL; this puts under every page the version of ``dbpaper`` that
computed it (``dbpaper.__version__``, the same as ``CITATION.cff``) and the commit the book was built
from, linked to the repository. The commit comes from ``git rev-parse`` in the checkout, or, outside a
git checkout (a source archive), from the environment (``DBPAPER_COMMIT``, else CI's ``GITHUB_SHA``);
without either the footer says the commit is unknown instead of failing the build. A build from a
checkout with uncommitted changes says so.
"""

from __future__ import annotations

import html
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_version() -> str:
    try:
        import dbpaper
    except ImportError:  # the book cannot be executed without it, but the footer should not be the error
        return "unknown"
    return str(dbpaper.__version__)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def build_commit() -> tuple[str | None, bool]:
    """The full hash of the commit the book is built from (or None), and whether the checkout has changes."""
    sha = _git("rev-parse", "--verify", "HEAD")
    if sha:
        status = _git("status", "--porcelain", "--untracked-files=no")
        return sha, bool(status)
    sha = os.environ.get("DBPAPER_COMMIT") or os.environ.get("GITHUB_SHA")
    return (sha.strip() if sha else None), False


def footer(version: str, sha: str | None, dirty: bool, repository_url: str | None) -> str:
    """The line under every page (HTML)."""
    if sha:
        short = html.escape(sha[:12])
        commit = f'<a href="{html.escape(repository_url.rstrip("/"))}/commit/{html.escape(sha)}">{short}</a>' if repository_url else short
        commit = f"commit <code>{commit}</code>" + (" with uncommitted changes" if dirty else "")
    else:
        commit = "commit unknown (built outside a git checkout)"
    return (f'<p class="dbpaper-version" id="dbpaper-version">This page: dbpaper {html.escape(version)}, '
            f"built from {commit}.</p>")


def add_version(app, config) -> None:
    version = package_version()
    sha, dirty = build_commit()
    config.version = config.release = version
    options = dict(config.html_theme_options or {})
    line = footer(version, sha, dirty, options.get("repository_url"))
    options["extra_footer"] = ((options.get("extra_footer") or "") + line).strip()
    config.html_theme_options = options
    config.html_context = {**(config.html_context or {}), "dbpaper_version": version, "dbpaper_commit": sha or ""}


def setup(app):
    app.connect("config-inited", add_version, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
