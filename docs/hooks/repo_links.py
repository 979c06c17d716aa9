"""MkDocs hook: links written for the repository's web view, made links of the site.

The Markdown under ``docs/`` is read in two places: on the repository's web view (GitHub), where a
link resolves among the repository's files, and on this site. So ``docs/*.md`` link only what the
repository holds (``tests/test_doc_links.py`` checks it), and this hook maps, before MkDocs
validates the links (``on_page_markdown``):

- a learning-path notebook linked as its source, ``../examples/NN_name.py`` (``#anchor`` kept),
  to its page ``notebooks/NN_name.md``, which ``make docs`` writes and git ignores;
- the README, ``../README.md``, to the home page ``index.md``, which ``make docs`` writes from it;
- a link to any other file outside ``docs/`` (``../benchmarks/README.md``, ``../pyro_vae/config.py``),
  which the site does not serve, to its text followed by the file's path in the repository, as
  ``scripts/build_docs.py`` does with the README's links for the home page; an image outside
  ``docs/`` fails the build (the site could not show it);
- on a notebook page (written from ``examples/NN_name.py``), a link to another notebook's source
  ``NN_other.py`` to that notebook's page ``NN_other.md``: a link that works in ``examples/`` on the
  repository's web view works on the site too.

Links inside ``docs/`` are the site's own and stay as they are; code spans and fenced code are
left alone.
"""

from __future__ import annotations

import logging
import posixpath
import re

log = logging.getLogger("mkdocs.plugins.repo_links")

NOTEBOOK = re.compile(r"examples/(?P<name>\d\d_\w+)\.py")
FENCE = re.compile(r"^(?P<fence>[ \t]*(?:`{3,}|~{3,})).*?^(?P=fence)[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
LINK = re.compile(
    r"(?P<bang>!?)\[(?P<label>(?:[^\[\]]|\[(?:[^\[\]]|\[[^\[\]]*\])*\])*)\]"
    r"\(\s*(?P<target><[^>]*>|[^()\s]+)(?P<title>\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)"
)
REFERENCE = re.compile(r"^(?P<lead> {0,3}\[[^\]]+\]:[ \t]*)(?P<target><[^>]*>|\S+)", re.M)
EXTERNAL = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//|#|/)")  # a URL, an anchor on the page, a site-absolute path


def site_target(target: str, page: str) -> tuple[str, str | None]:
    """``(kind, value)`` for a relative ``target`` on the page ``page`` (its path in ``docs/``):
    ``("site", target)`` for a target the site has as it is, ``("page", url)`` for a notebook's
    page, ``("repo", path)`` for another file of the repository (its path from the root)."""
    path, hash_, anchor = target.partition("#")
    folder = posixpath.dirname(page)
    if folder.startswith("notebooks") and (match := re.fullmatch(r"(?:\./)?(\d\d_\w+)\.py", path)):
        return "page", f"{match[1]}.md{hash_}{anchor}"
    in_repo = posixpath.normpath(posixpath.join("docs", folder, path))
    if in_repo == "docs" or in_repo.startswith("docs/"):
        return "site", target
    if match := NOTEBOOK.fullmatch(in_repo):
        return "page", posixpath.relpath(f"notebooks/{match['name']}.md", folder or ".") + hash_ + anchor
    if in_repo == "README.md":  # the home page is the README (scripts/build_docs.py writes index.md from it)
        return "page", posixpath.relpath("index.md", folder or ".") + hash_ + anchor
    return "repo", in_repo


def rewrite(markdown: str, page: str) -> str:
    """``markdown``, the page ``page`` (its path in ``docs/``), with its links made site links."""
    spans: list[str] = []  # the code spans, held out of the prose while its links are rewritten

    def restore(text: str) -> str:
        return re.sub(r"\x00(\d+)\x00", lambda m: spans[int(m[1])], text)

    def link(match: re.Match) -> str:
        bang, label, title = match["bang"], match["label"], match["title"] or ""
        label = LINK.sub(link, label) if "](" in label else label  # an image inside a link
        raw = match["target"]
        target = raw[1:-1] if raw.startswith("<") else raw
        if EXTERNAL.match(target):
            return f"{bang}[{label}]({raw}{title})"
        kind, value = site_target(target, page)
        if kind == "site":
            return f"{bang}[{label}]({raw}{title})"
        if kind == "page":
            return f"{bang}[{label}]({value}{title})"
        if bang:
            log.warning(f"{page}: the image {target!r} is outside docs/, and the site cannot show it")
            return match.group(0)
        return label if f"`{value}`" in restore(label) else f"{label} (`{value}`)"

    def reference(match: re.Match) -> str:
        raw = match["target"]
        target = raw[1:-1] if raw.startswith("<") else raw
        if EXTERNAL.match(target):
            return match.group(0)
        kind, value = site_target(target, page)
        if kind == "repo":
            log.warning(f"{page}: the reference to {target!r} is outside docs/; write it as an inline link")
            return match.group(0)
        return match["lead"] + (value if kind == "page" else raw)

    def hold(match: re.Match) -> str:
        spans.append(match.group(0))
        return f"\x00{len(spans) - 1}\x00"

    def prose(text: str) -> str:
        return restore(REFERENCE.sub(reference, LINK.sub(link, CODE_SPAN.sub(hold, text))))

    out, last = [], 0
    for fence in FENCE.finditer(markdown):
        out += [prose(markdown[last : fence.start()]), fence.group(0)]
        last = fence.end()
    out.append(prose(markdown[last:]))
    return "".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    return rewrite(markdown, page.file.src_uri)
