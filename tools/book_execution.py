"""Sphinx extension: ``DBPAPER_BOOK_EXECUTE=off`` renders the chapters' stored outputs instead of executing them.

``make book`` executes every chapter afresh (``execute_notebooks: force`` in
``_config.yml``). CI runs ``make test`` first, whose nbval step executes every
chapter and compares each output with the stored one; the book build that
follows (``make book BOOK_EXECUTE=off``) then renders those verified outputs
rather than executing the same chapters a second time. Any other value of the
variable, or none, leaves the configuration as it is.
"""

from __future__ import annotations

import os

MODES = ("force", "off", "auto", "cache", "inline")


def _config_inited(app, config) -> None:
    mode = os.environ.get("DBPAPER_BOOK_EXECUTE", "").strip()
    if not mode:
        return
    if mode not in MODES:
        raise ValueError(f"DBPAPER_BOOK_EXECUTE must be one of {MODES}, got {mode!r}")
    config.nb_execution_mode = mode


def setup(app):
    # before myst-nb reads its configuration (at builder-inited)
    app.connect("config-inited", _config_inited)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
