"""The documentation site (scripts/build_docs.py, scripts/check_site.py): every notebook of the
learning path executed top to bottom in a Jupyter kernel in smoke mode, its numbers checked and its
figures shown; the site built strictly and offline; a broken link failing the build; the pages
rendering in headless Chromium with no console error and no request leaving the local server."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from filelock import FileLock

from tests.example_checks import CHECKS
from tests.helpers import ROOT

pytest.importorskip("mkdocs")
pytest.importorskip("nbclient")
NAMES = sorted(p.stem for p in (ROOT / "examples").glob("[0-9][0-9]_*.py"))
WIDGET = "application/vnd.jupyter.widget-view+json"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """The site, built once per test run (by whichever xdist worker gets here first; the others wait
    on the lock and reuse it): ``folder/site`` and the notebooks' run folders ``folder/runs/NAME``."""
    base = tmp_path_factory.getbasetemp()
    # Under xdist each worker has base = .../pytest-N/popen-gwK, and .../pytest-N is this run's own;
    # without xdist, base is .../pytest-N itself (its parent is shared with earlier runs: never reuse those).
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = shared / "docs-build"
    with FileLock(str(shared / "docs-build.lock")):
        if not (folder / "ok").exists():
            code = _script("build_docs").main(["--site-dir", str(folder / "site"), "--runs", str(folder / "runs")])
            assert code == 0, "mkdocs build --strict failed (its output is above)"
            (folder / "ok").write_text("built\n")
    return folder


def _pages(site):
    return {p.relative_to(site).as_posix(): p.read_text() for p in site.rglob("*.html")}


def test_the_site_builds_strictly_with_every_page_and_nothing_from_elsewhere(built):
    site = built / "site"
    pages = _pages(site)
    for page in [
        "index.html",
        "getting-started.html",
        "usage.html",
        "model.html",
        "components.html",
        "configuration.html",
        "data.html",
        "plugins.html",
        "results.html",
        "laboratory.html",
        "performance.html",
        "learning.html",
        "architecture.html",
        "api.html",
        *[f"notebooks/{n}.html" for n in NAMES],
    ]:
        assert page in pages, (page, sorted(pages))
    external = re.compile(r"<(?:script|img|iframe|source)[^>]*\ssrc=\"(?:https?:)?//|<link[^>]*href=\"(?:https?:)?//")
    for page, text in pages.items():
        assert not external.search(text), (page, external.search(text).group(0))
    for css in site.rglob("*.css"):
        assert not re.search(r"url\((['\"]?)(?:https?:)?//|@import\s+['\"]?(?:https?:)?//", css.read_text()), css
    assert "fonts.googleapis" not in "".join(pages.values())
    api = pages["api.html"]
    for name in ("pyro_vae.training.loop.fit", "pyro_vae.model.build_vae", "pyro_vae.config.load_config"):
        assert f'id="{name}"' in api, name  # a docstring rendered for each public entry point
    assert "<math" in pages["learning.html"] and "\\(" not in pages["learning.html"]  # typeset to MathML
    home = pages["index.html"]
    assert 'src="screenshots/home.png"' in home and "docs/" not in re.sub(r"<code>.*?</code>", "", home)


def test_a_broken_internal_link_fails_the_strict_build(built, tmp_path):
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    (docs / "learning.md").write_text((docs / "learning.md").read_text() + "\n[gone](missing-page.md)\n")
    config = (ROOT / "mkdocs.yml").read_text()
    config = config.replace("docs_dir: docs", f"docs_dir: {docs}").replace("- docs/hooks/", f"- {docs}/hooks/")
    config = config.replace("paths: [.]", f"paths: [{ROOT}]")
    (tmp_path / "mkdocs.yml").write_text(config)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(tmp_path / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "missing-page.md" in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("name", NAMES)
def test_each_notebook_ran_and_its_numbers_hold(built, name):
    """Executed in a kernel by the build (smoke mode): the example's checks pass on what it wrote,
    its figures are shown inline (one image output per figure file at least) and on its page, and
    it teaches in steps (markdown and code cells, not one ``main()``)."""
    import nbformat

    out = built / "runs" / name
    figures = CHECKS[f"{name}.py"](json.loads((out / "results.json").read_text()), out)
    for figure in figures:
        assert (out / figure).stat().st_size > 0, figure
    notebook = nbformat.read(ROOT / "docs" / "notebooks" / f"{name}.ipynb", as_version=4)
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    shown = sum("image/png" in o.get("data", {}) for o in outputs)
    assert shown >= len(figures), (name, shown, figures)
    kinds = [c.cell_type for c in notebook.cells]
    assert kinds[0] == "markdown" and notebook.cells[0].source.startswith(f"# {name[:2]} ")
    assert kinds.count("markdown") >= 2 and kinds.count("code") >= 3, kinds
    page = (built / "site" / "notebooks" / f"{name}.html").read_text()
    assert page.count("<img") >= len(figures) and "What the full run shows" in page


def test_the_latent_explorer_has_sliders_and_a_static_fallback(built):
    import nbformat

    notebook = nbformat.read(ROOT / "docs" / "notebooks" / "07_latent_space.ipynb", as_version=4)
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    widgets = [o for o in outputs if WIDGET in o.get("data", {})]
    assert len(widgets) == 1, [list(o.get("data", {})) for o in outputs]  # the ipywidgets sliders
    assert (built / "runs" / "07_latent_space" / "explorer_path.png").stat().st_size > 0
    assert "sliders for" in (built / "site" / "notebooks" / "07_latent_space.html").read_text()


def test_the_pages_render_in_headless_chromium(built, tmp_path):
    pytest.importorskip("playwright")
    check_site = _script("check_site")
    if check_site.chromium() is None:
        pytest.skip("no Chromium here (apt-get install chromium; .ci/run installs it)")
    seen = check_site.check_site(built / "site", tmp_path)
    assert seen["notebook"]["math"] > 0 and seen["home"]["images"] >= 2 and seen["api"]["docstrings"] > 10, seen
    for page in ("home", "notebook", "api"):
        assert (tmp_path / f"{page}.png").stat().st_size > 10_000, page
