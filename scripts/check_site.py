"""Open the built site in headless Chromium and check that its pages render: ``make screenshots``
(``python scripts/check_site.py build/site --screenshots docs/screenshots``).

The site is served on a local port; for the home page, a notebook page and the API reference it
checks the title, that a figure has loaded (an image with a decoded width; on the API page, a
rendered docstring), that the search box is there, that the math was typeset (the notebook page),
that no console error or uncaught exception occurred, and that every request stayed on the local
server (no CDN, no web font). It writes a screenshot of each page.

Then it reads the text of every page of the site as the browser rendered it (:func:`text_problems`)
and fails, naming the page and the text, on what a reader should never see there: a Sphinx role
left unrendered (``:class:``, ``:func:``, ``:mod:``, ``:meth:``, ``:attr:``) or a paragraph ending
in a stray ``::`` (reStructuredText's literal-block marker), in prose, outside ``<pre>`` and
``<code>``; a path of the machine that built the site (``/work/``, ``/home/``, ``/tmp/``,
``/root/``, ``build/docs-runs``) or a ``PosixPath(...)`` repr, in prose and, on a notebook page,
in the executed cells' output too; and a page title (``h1``) cut off mid-sentence: ending with a
comma, colon or semicolon or with a word such as *and*, *of* or *what*, or followed by a paragraph
that carries on in lower case.

Needs Playwright's Python package (in ``pyro-vae[docs]``) and a Chromium: Debian's
``/usr/bin/chromium`` (``apt-get install chromium``) or ``$CHROMIUM``; Playwright's own browser
download is not used.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import os
import re
import shutil
import sys
import threading
from pathlib import Path

PAGES = {  # name -> (path in the site, what must be on it besides the title and the search box)
    "home": ("index.html", "img"),
    "notebook": ("notebooks/10_latent_space.html", "img"),
    "api": ("api.html", "doc"),
}
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# What each page's text is checked for (text_problems).
ROLE = re.compile(r":(?:class|func|mod|meth|attr):")
LOCAL = re.compile(r"/work/|/home/|/tmp/|/root/|build/docs-runs")
PATH_REPR = re.compile(r"\b(?:Posix|Windows)Path\(")
CUT_OFF = re.compile(
    r"(?:[,:;]|(?<![\w-])(?:and|or|of|the|a|an|to|with|what|that|which|for|in|on|by|from|as|but|than|into))\s*$",
    re.I,
)
LOWER_START = re.compile(r"[a-z]+\s")  # a plain word in lower case (not "pyro-vae", "e.g.")
FORMULA = re.compile(r"[=()_^|\\]")  # a paragraph may open with a formula such as "log p(x) = ..."

# The text of the page's article as the reader sees it: prose (text outside pre, code, math and
# the headings' permalink signs), code (each pre, each code outside pre), the blocks (paragraphs,
# list items, table cells, their prose) and each h1 with the paragraph that follows it.
TEXT_JS = """() => {
  const root = document.querySelector("article") || document.body;
  const hidden = "script, style, .headerlink, .md-clipboard";
  const prose = (el) => {
    const parts = [], walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
      const parent = n.parentElement;
      if (!parent.closest(hidden) && !parent.closest("pre, code, math")) parts.push(n.textContent);
    }
    return parts;
  };
  const code = [...root.querySelectorAll("pre, code")].filter((e) => !e.parentElement.closest("pre"))
    .map((e) => e.textContent);
  const blocks = [...root.querySelectorAll("p, li, dd, dt, td, th")].map((e) => prose(e).join("").trim());
  const h1 = [...root.querySelectorAll("h1")].map((h) => {
    let next = h.nextElementSibling;
    while (next && next.tagName !== "P") next = next.nextElementSibling;
    const first = next ? [...next.childNodes].find((n) => n.nodeType !== 3 || n.textContent.trim()) : null;
    return {
      text: prose(h).join("").trim(),
      next: next ? next.textContent.trim().slice(0, 100) : "",
      next_starts_with_text: !!first && first.nodeType === 3,
    };
  });
  return {prose: prose(root), code, blocks, h1};
}"""


def text_problems(path: str, seen: dict) -> list[str]:
    """What is wrong with the text of the page at ``path`` (in the site), from what :data:`TEXT_JS`
    read of it: one line per problem, naming the page and the text."""
    problems = []

    def around(text: str, match: re.Match) -> str:
        return repr(text[max(0, match.start() - 40) : match.end() + 40].strip())

    prose = " ".join(seen["prose"])
    for match in ROLE.finditer(prose):
        problems.append(f"{path}: a Sphinx role left unrendered, {match.group(0)!r}, in {around(prose, match)}")
    for block in seen["blocks"]:
        if block.endswith("::"):
            problems.append(f"{path}: a paragraph ends with a stray '::': {block[-80:]!r}")
    scanned = [prose, *(seen["code"] if path.startswith("notebooks/") else [])]
    for text in scanned:
        for pattern, what in ((LOCAL, "a local path"), (PATH_REPR, "a Path repr")):
            for match in pattern.finditer(text):
                problems.append(f"{path}: {what}, {match.group(0)!r}, in {around(text, match)}")
    for heading in seen["h1"]:
        title, following = heading["text"], heading["next"]
        if CUT_OFF.search(title):
            problems.append(f"{path}: the title {title!r} ends mid-sentence")
        elif (
            heading["next_starts_with_text"]
            and LOWER_START.match(following)
            and not FORMULA.search(re.split(r"[.,;:!?]", following)[0])
        ):
            problems.append(f"{path}: the title {title!r} runs on into the next paragraph: {following[:60]!r}")
    return problems


def scan_pages(browser, base: str, paths: list[str]) -> list[str]:
    """:func:`text_problems` of each page (``base`` + path) opened in ``browser``."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = []
    try:
        for path in paths:
            response = page.goto(base + path, wait_until="load")
            if response is None or not response.ok:
                problems.append(f"{path}: answered {response and response.status}")
                continue
            problems += text_problems(path, page.evaluate(TEXT_JS))
    finally:
        page.close()
    return problems


@contextlib.contextmanager
def served(site: Path):
    """The base URL of a local server of the folder ``site``, stopped on leaving."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def html_pages(site: Path) -> list[str]:
    """The site's HTML pages, as paths in it."""
    return sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html"))


def check_text(site: Path, paths: list[str] | None = None) -> list[str]:
    """The problems :func:`text_problems` finds on the pages ``paths`` of ``site`` (default: all)."""
    from playwright.sync_api import sync_playwright

    with served(site) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=FLAGS)
        try:
            return scan_pages(browser, base, html_pages(site) if paths is None else paths)
        finally:
            browser.close()


def chromium() -> str | None:
    """The Chromium to drive: ``$CHROMIUM``, else the first of chromium / chromium-browser on PATH."""
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no line per request
        pass


def _failed(response, errors: list[str]) -> None:
    if response.status >= 400:
        errors.append(f"{response.status} {response.url}")


def check_site(site: Path, screenshots: Path | None = None) -> dict:
    """Check the pages of the site in ``site`` (see the module text); returns what was seen per page
    (and under ``"text"`` the pages whose text was read) and raises ``AssertionError`` naming the
    page and the problem."""
    from playwright.sync_api import sync_playwright

    seen = {}
    with served(site) as base:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=FLAGS)
            for name, (path, must) in PAGES.items():
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                errors, outside = [], []
                page.on("console", lambda m, errors=errors: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
                page.on("response", lambda r, errors=errors: _failed(r, errors))
                page.on("request", lambda r, outside=outside: None if r.url.startswith(base) else outside.append(r.url))
                response = page.goto(base + path, wait_until="networkidle")
                assert response is not None and response.ok, f"{name}: {path} answered {response and response.status}"
                if name == "notebook":
                    page.wait_for_selector(".arithmatex math", timeout=20_000)
                title = page.title()
                images = page.eval_on_selector_all("article img", "els => els.filter(e => e.naturalWidth > 0).length")
                docs = page.eval_on_selector_all(".doc-heading", "els => els.length")
                search = page.eval_on_selector_all("input[type=search], .md-search__input", "els => els.length")
                math = page.eval_on_selector_all(".arithmatex math", "els => els.length")
                seen[name] = {
                    "path": path,
                    "title": title,
                    "images": images,
                    "docstrings": docs,
                    "search": search,
                    "math": math,
                    "console_errors": errors,
                    "outside_requests": outside,
                }
                assert "pyro-vae" in title, f"{name}: title {title!r}"
                assert search, f"{name}: no search box"
                what = "figure" if must == "img" else "docstring"
                assert (images if must == "img" else docs) > 0, f"{name}: no {what}"
                assert not errors, f"{name}: console errors {errors}"
                assert not outside, f"{name}: requests that left the local server {outside}"
                if screenshots is not None:
                    screenshots.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(screenshots / f"{name}.png"))
                page.close()
            pages = html_pages(site)
            problems = scan_pages(browser, base, pages)
            browser.close()
    assert not problems, f"{len(problems)} problems in the pages' text:\n" + "\n".join(problems)
    seen["text"] = {"pages": pages}
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("site", type=Path, nargs="?", default=Path("build/site"))
    parser.add_argument("--screenshots", type=Path, help="folder for home.png, notebook.png and api.png")
    args = parser.parse_args(argv)
    if chromium() is None:
        parser.error("no Chromium found: install Debian's (apt-get install chromium) or set CHROMIUM=/path/to/chrome")
    if not (args.site / "index.html").exists():
        parser.error(f"{args.site} holds no built site: run `make docs` first")
    seen = check_site(args.site, args.screenshots)
    pages = seen.pop("text")["pages"]
    for name, row in seen.items():
        print(
            f"{name:9s} {row['path']}: title {row['title']!r}, {row['images']} figures, {row['math']} formulas, "
            f"{row['docstrings']} docstrings, no console errors, no request outside the site"
        )
    print(
        f"text     {len(pages)} pages: no unrendered role or stray '::', no local path or Path repr, "
        "no title cut off mid-sentence"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
