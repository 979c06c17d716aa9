"""Open the built site in headless Chromium and check that its pages render: ``make screenshots``
(``python scripts/check_site.py build/site --screenshots docs/screenshots``).

The site is served on a local port; for the home page, a notebook page and the API reference it
checks the title, that a figure has loaded (an image with a decoded width; on the API page, a
rendered docstring), that the search box is there, that the math was typeset (the notebook page),
that no console error or uncaught exception occurred, and that every request stayed on the local
server (no CDN, no web font). It writes a screenshot of each page. Needs Playwright's Python
package (in ``pyro-vae[docs]``) and a Chromium: Debian's ``/usr/bin/chromium`` (``apt-get install
chromium``) or ``$CHROMIUM``; Playwright's own browser download is not used.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import shutil
import sys
import threading
from pathlib import Path

PAGES = {  # name -> (path in the site, what must be on it besides the title and the search box)
    "home": ("index.html", "img"),
    "notebook": ("notebooks/07_latent_space.html", "img"),
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
    and raises ``AssertionError`` naming the page and the problem."""
    from playwright.sync_api import sync_playwright

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    seen = {}
    try:
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
            browser.close()
    finally:
        server.shutdown()
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
    for name, row in check_site(args.site, args.screenshots).items():
        print(
            f"{name:9s} {row['path']}: title {row['title']!r}, {row['images']} figures, {row['math']} formulas, "
            f"{row['docstrings']} docstrings, no console errors, no request outside the site"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
