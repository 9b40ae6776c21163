"""Sphinx extension: every inline script of a page once.

sphinx-togglebutton (at ``builder-inited``) and sphinx-thebe (at ``env-before-read-docs``) register
inline scripts after the HTML builder has collected its scripts; Sphinx 7.4 keeps the one added to
the builder (``filename=None``) and the copy taken from the registry (``filename=""``) as two
different assets, so every page declared ``const THEBE_JS_URL`` twice (a console error:
"Identifier 'THEBE_JS_URL' has already been declared"). This drops the second copy of any script
with the same source or the same inline body.
"""

from __future__ import annotations


def _key(js) -> tuple:
    attrs = {k: v for k, v in getattr(js, "attributes", {}).items() if k != "priority"}
    return (getattr(js, "filename", js) or "", tuple(sorted((k, str(v)) for k, v in attrs.items())))


def dedupe_scripts(app, pagename, templatename, context, doctree) -> None:
    """Keep the first of every script with the same source and attributes (body included)."""
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for js in scripts:
        key = _key(js)
        if key in seen:
            continue
        seen.add(key)
        kept.append(js)
    context["script_files"] = kept


def setup(app):
    """Register the page-context hook (after the extensions that add scripts)."""
    app.connect("html-page-context", dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
