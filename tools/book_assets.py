"""Sphinx extension: every inline script of a page once; external types as plain code; no automatic figure numbers.

sphinx-togglebutton (at ``builder-inited``) and sphinx-thebe (at ``env-before-read-docs``) register
inline scripts after the HTML builder has collected its scripts; Sphinx 7.4 keeps the one added to
the builder (``filename=None``) and the copy taken from the registry (``filename=""``) as two
different assets, so every page declared ``const THEBE_JS_URL`` twice (a console error:
"Identifier 'THEBE_JS_URL' has already been declared"). This drops the second copy of any script
with the same source or the same inline body.
"""

from __future__ import annotations

import builtins
import re

from docutils import nodes


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


def plain_external_types(app, env, node, contnode):
    """Types with no target in this book (builtins, torch, numpy: no intersphinx without network) as plain code.

    Sphinx leaves such a reference as an ``xref`` without a link (and ``builtin_resolver`` does the same for
    ``str``, ``None``, ...), which reads as a broken link; only targets that ``nitpick_ignore_regex`` declares
    unresolvable on purpose, or builtins, are rendered as plain code instead. Every other missing target
    still warns.
    """
    if node.get("refdomain") != "py":
        return None
    target, reftype = node.get("reftarget", ""), f"py:{node.get('reftype', '')}"
    known = target in dir(builtins) or any(
        re.fullmatch(kind, reftype) and re.fullmatch(pattern, target) for kind, pattern in app.config.nitpick_ignore_regex)
    if not known:
        return None
    plain = contnode.deepcopy()
    if isinstance(plain, nodes.Element):
        plain["classes"] = [c for c in plain.get("classes", []) if c != "xref"]
    return plain


def no_automatic_figure_numbers(app, config) -> None:
    """Captions carry their own numbers ("Figure 2" for the paper's, "Book figure 3" for the book's).

    Jupyter Book turns Sphinx's ``numfig`` on after reading ``_config.yml``, so
    every caption was printed with a second, book-wide number ("Fig. 13 Figure 2.");
    ``_config.yml`` asks for ``numfig: false``, and this makes it hold.
    """
    config.numfig = False


def erratum_anchors(app, doctree, docname) -> None:
    """An erratum's section is addressed by its number: "E5 — ..." is ``errata.html#e5``.

    The errata page puts a label ``(e5)=`` before every entry; Sphinx renders it as an empty span next
    to the section, whose own id (the one the heading's permalink uses) is a slug of the whole title.
    This makes ``e5`` the section's first id, so that the permalink a reader copies is ``#e5``.
    """
    for section in doctree.findall(nodes.section):
        title = section[0].astext() if len(section) and isinstance(section[0], nodes.title) else ""
        m = re.match(r"E([0-9]+) —", title)
        if not m:
            continue
        anchor = f"e{m.group(1)}"
        for target in section.findall(nodes.target):
            if anchor in target["ids"]:
                target["ids"].remove(anchor)
        parent = section.parent
        if parent is not None:
            for target in parent.findall(nodes.target):
                if anchor in target["ids"]:
                    target["ids"].remove(anchor)
        if anchor in section["ids"]:
            section["ids"].remove(anchor)
        section["ids"].insert(0, anchor)


def setup(app):
    """Register the page-context hook (after the extensions that add scripts) and the plain external types."""
    app.connect("config-inited", no_automatic_figure_numbers, priority=900)
    app.connect("html-page-context", dedupe_scripts, priority=900)
    app.connect("missing-reference", plain_external_types, priority=400)
    app.connect("doctree-resolved", erratum_anchors)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
