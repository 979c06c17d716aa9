"""The documentation site (scripts/build_docs.py, scripts/check_site.py): every notebook of the
learning path executed top to bottom in a Jupyter kernel in smoke mode, its numbers checked and its
figures shown; the site built strictly and offline; a broken link failing the build; the pages
rendering in headless Chromium with no console error and no request leaving the local server, and
with nothing in their text a reader should not see. Without a build: a page's layout (the lesson
first), its outputs tidied, the text checks failing on a bad page, and the examples' run folders
(a smoke run and a full run apart; a run of another config replaced, not an error)."""

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
from nbformat import v4

from tests.example_checks import CHECKS
from tests.helpers import ROOT

pytest.importorskip("mkdocs")
pytest.importorskip("nbclient")
NAMES = sorted(p.stem for p in (ROOT / "examples").glob("[0-9][0-9]_*.py"))
WIDGET = "application/vnd.jupyter.widget-view+json"


def _script(name: str, folder: str = "scripts"):
    spec = importlib.util.spec_from_file_location(name, ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """The site, built once per test run (by whichever xdist worker gets here first; the others wait
    on the lock and reuse it): ``folder/site`` and the notebooks' run folders ``folder/runs/smoke/NAME``."""
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

    out = built / "runs" / "smoke" / name
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
    # The lesson first: the full run's section, then the notebook executed in smoke mode.
    lesson, executed = (
        page.index('id="what-the-full-run-shows"'),
        page.index('id="the-notebook-executed-in-smoke-mode"'),
    )
    assert lesson < executed < page.index("<pre", executed), name
    assert "PosixPath(" not in page and str(built) not in page and str(ROOT) not in page, name


def test_the_latent_explorer_has_sliders_and_a_static_fallback(built):
    import nbformat

    notebook = nbformat.read(ROOT / "docs" / "notebooks" / "10_latent_space.ipynb", as_version=4)
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    widgets = [o for o in outputs if WIDGET in o.get("data", {})]
    assert len(widgets) == 1, [list(o.get("data", {})) for o in outputs]  # the ipywidgets sliders
    assert (built / "runs" / "smoke" / "10_latent_space" / "explorer_path.png").stat().st_size > 0
    assert "sliders for" in (built / "site" / "notebooks" / "10_latent_space.html").read_text()


def test_the_pages_render_in_headless_chromium(built, tmp_path):
    pytest.importorskip("playwright")
    check_site = _script("check_site")
    if check_site.chromium() is None:
        pytest.skip("no Chromium here (apt-get install chromium; .ci/run installs it)")
    seen = check_site.check_site(built / "site", tmp_path)  # and the text of every page
    assert seen["notebook"]["math"] > 0 and seen["home"]["images"] >= 2 and seen["api"]["docstrings"] > 10, seen
    for page in ("home", "notebook", "api"):
        assert (tmp_path / f"{page}.png").stat().st_size > 10_000, page
    assert len(seen["text"]["pages"]) >= 14 + len(NAMES), seen["text"]


# What a bad page shows: each problem check_site.py's text checks must name (page, text).
BAD_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>bad</title></head><body><article>
<h1>KL divergence: asymmetric, and what</h1>
<p>Returns a :class:`Foo` built by :func:`bar`.</p>
<p>For example::</p>
<p>The run folder is /tmp/pytest-of-root/pytest-9/docs-build/runs/smoke/x and ~/<code>/work/main</code>.</p>
<pre><code>wrote /home/a/build/docs-runs/smoke/x/fig.png
PosixPath('/root/x.png')</code></pre>
</article></body></html>"""
RUN_ON_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>run on</title></head><body><article>
<h1>03 — KL divergence</h1><div class="admonition"><p>Executed.</p></div>
<p>minimising it in each direction does.</p></article></body></html>"""
GOOD_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>good</title></head><body><article>
<h1>08 — Why sampling from the prior fails<a class="headerlink" href="#x">¶</a></h1>
<p>log p(x) = log E[p(x | z)], so one could average p(x | z) over the prior.</p>
<p>In code, <code>a::</code> and <code>:class:</code> are what they are; a plug-in; built-in</p>
<pre><code>ls /tmp/ # in a handwritten page's code block</code></pre>
</article></body></html>"""


def _seen(prose=(), code=(), blocks=(), h1=()):
    return {"prose": list(prose), "code": list(code), "blocks": list(blocks), "h1": list(h1)}


def test_the_text_checks_fail_on_what_they_look_for():
    """The rules of check_site.text_problems on text as the browser reads it (no browser needed)."""
    check_site = _script("check_site")
    problems = check_site.text_problems

    def heading(text, following="", starts_with_text=True):
        return {"text": text, "next": following, "next_starts_with_text": starts_with_text}

    assert problems("api.html", _seen(prose=["Returns a ", ":class:", "Foo"])), "role"
    assert problems("api.html", _seen(prose=["see :meth:`x`"]))
    assert problems("api.html", _seen(blocks=["For example::"])), "stray ::"
    assert problems("usage.html", _seen(prose=["in /home/me/runs"])), "local path in prose"
    assert problems("notebooks/x.html", _seen(code=["wrote /work/main/build/docs-runs/smoke/x.png"]))
    assert problems("notebooks/x.html", _seen(code=["PosixPath('runs/x.png')"])), "Path repr"
    for title in ("KL divergence: asymmetric, and what", "The ELBO,", "Plugins: a prior and", "A title of"):
        assert problems("x.html", _seen(h1=[heading(title)])), title
    assert problems("x.html", _seen(h1=[heading("03 — KL divergence", "minimising it in each direction does.")]))
    # what is right passes: code keeps its roles and paths off notebook pages, a formula may open a
    # paragraph, a title may end in a word that merely ends like "in" or "a"
    assert not problems("plugins.html", _seen(code=["--plugin /home/a/laplace_prior.py", ":class:`x`"]))
    assert not problems("api.html", _seen(blocks=["A paragraph."], prose=["A paragraph."]))
    for title, following in [
        ("08 — Why sampling from the prior fails", "log p(x) = log E[p(x | z)], so one could average"),
        ("15 — Plugins, built-in", "Three plugins add a prior."),
        ("The β-VAE", "pyro-vae trains it."),
        ("Data", "e.g. a folder of images."),
    ]:
        assert not problems("x.html", _seen(h1=[heading(title, following)])), title
    assert not problems("x.html", _seen(h1=[heading("The latent space", "minimising", starts_with_text=False)]))


def test_the_text_checks_fail_on_a_bad_page_in_headless_chromium(tmp_path):
    """check_site.check_text on a small synthetic site: every problem of the bad pages is named with
    its page and text; the good page (code blocks, a formula, permalink signs) passes."""
    pytest.importorskip("playwright")
    check_site = _script("check_site")
    if check_site.chromium() is None:
        pytest.skip("no Chromium here (apt-get install chromium; .ci/run installs it)")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "bad.html").write_text(BAD_PAGE)
    (tmp_path / "run_on.html").write_text(RUN_ON_PAGE)
    (tmp_path / "good.html").write_text(GOOD_PAGE)
    problems = check_site.check_text(tmp_path)
    text = "\n".join(problems)
    for expected in [
        "notebooks/bad.html: the title 'KL divergence: asymmetric, and what' ends mid-sentence",
        "notebooks/bad.html: a Sphinx role left unrendered, ':class:'",
        "notebooks/bad.html: a Sphinx role left unrendered, ':func:'",
        "notebooks/bad.html: a paragraph ends with a stray '::': 'For example::'",
        "notebooks/bad.html: a local path, '/tmp/'",
        "notebooks/bad.html: a local path, '/work/'",
        "notebooks/bad.html: a local path, '/home/'",
        "notebooks/bad.html: a local path, 'build/docs-runs'",
        "notebooks/bad.html: a Path repr, 'PosixPath('",
        "run_on.html: the title '03 — KL divergence' runs on into the next paragraph",
    ]:
        assert expected in text, (expected, problems)
    assert not [p for p in problems if p.startswith("good.html")], problems


def _notebook(*cells):
    notebook = v4.new_notebook(cells=list(cells))
    notebook.metadata["language_info"] = {"name": "python"}
    return notebook


def _executed(source, *outputs):
    cell = v4.new_code_cell(source)
    cell.outputs = list(outputs)
    return cell


def test_a_page_leads_with_the_full_run_and_shows_no_local_path(tmp_path, monkeypatch):
    """render() on an executed notebook (made here: nothing runs): the title, the note, the
    introduction, the section "What the full run shows" (its figure links made site links), then
    the notebook in smoke mode under its own heading (its headings one level down), the printed
    lines of a cell in one block, no echoed Path and no local path; the .ipynb keeps the order."""
    build_docs = _script("build_docs")
    monkeypatch.setattr(build_docs, "NOTEBOOKS", tmp_path)
    runs = tmp_path / "docs-runs"
    out = runs / "smoke" / "99_demo"
    demo = lambda: _notebook(  # noqa: E731 (render tidies the notebook it is given)
        v4.new_markdown_cell(
            "# 99 — A demo\n\nThe idea of the demo.\n\nWrites fig.png and results.json.\n\n"
            "Run it as a script, `python examples/99_demo.py`."
        ),
        _executed(
            "train()",
            v4.new_output("stream", name="stdout", text=f"resumed {out}/vae at epoch 1\n"),
            v4.new_output("stream", name="stderr", text="epoch 1: 200 nats\n"),
            v4.new_output("stream", name="stdout", text=f"wrote {ROOT}/pyro_vae/x.py and {runs}\n"),
        ),
        v4.new_markdown_cell("## A step\n\nMore."),
        _executed(
            "save_figure(fig)",
            v4.new_output("stream", name="stdout", text="wrote fig.png\n"),
            v4.new_output("execute_result", data={"text/plain": f"PosixPath('{out}/fig.png')"}, execution_count=2),
        ),
        v4.new_markdown_cell(
            "## What the full run shows\n\nThe lesson, in nats.\n\n"
            "![fig (full run)](../docs/figures/examples/99_demo_fig.png)"
        ),
    )
    build_docs.render(demo(), "99_demo", "smoke", runs)
    page = (tmp_path / "99_demo.md").read_text()
    order = [
        "# 99 — A demo { .notebook }",
        '!!! note "Executed by `make docs` (smoke mode',
        "The idea of the demo.",
        "## What the full run shows",
        "](../figures/examples/99_demo_fig.png)",
        "## The notebook, executed in smoke mode",
        "Writes fig.png",
        "Run it as a script",
        "```python\ntrain()",
        "### A step",
    ]
    places = [page.find(text) for text in order]
    assert -1 not in places and places == sorted(places), (places, page)
    assert page.count("What the full run shows") == 2  # the section, and the note's link to it
    printed = (
        "    resumed runs/examples/99_demo-smoke/vae at epoch 1\n"
        "    epoch 1: 200 nats\n"
        "    wrote pyro_vae/x.py and runs\n"
    )
    assert printed in page, page  # one block, in order, the paths short
    assert "PosixPath" not in page and str(tmp_path) not in page and str(ROOT) not in page, page
    executed = __import__("nbformat").read(tmp_path / "99_demo.ipynb", as_version=4)
    assert [c.cell_type for c in executed.cells] == ["markdown", "code", "markdown", "code", "markdown"]
    assert executed.cells[-1].source.startswith("## What the full run shows")  # the notebook keeps its order
    assert "PosixPath" not in str(executed) and str(tmp_path) not in str(executed)
    assert [o["name"] for o in executed.cells[1].outputs] == ["stdout", "stderr", "stdout"]  # streams kept apart

    build_docs.render(demo(), "99_demo", "full", runs)  # (the full run's folder: runs/full/99_demo)
    page = (tmp_path / "99_demo.md").read_text()
    assert "(full mode" in page and "## The notebook, executed in full" in page and "smoke mode" not in page


def test_a_smoke_run_and_a_full_run_of_an_example_use_different_folders(tmp_path, monkeypatch):
    common = _script("_common", "examples")
    monkeypatch.chdir(tmp_path)
    name = NAMES[0]
    monkeypatch.setattr(sys, "argv", [name, "--smoke-test", "--device", "cpu"])
    smoke = common.parse_args(name).out
    monkeypatch.setattr(sys, "argv", [name, "--device", "cpu"])
    full = common.parse_args(name).out
    assert smoke == common.default_out(name, True) and full == common.default_out(name, False)
    assert smoke != full and smoke.is_dir() and full.is_dir()
    assert full.as_posix() == f"runs/examples/{name}" and smoke.as_posix() == f"runs/examples/{name}-smoke"
    monkeypatch.setattr(sys, "argv", [name, "--smoke-test", "--out", "mine"])
    assert common.parse_args(name).out.as_posix() == "mine"


def test_train_vae_replaces_a_run_of_another_config_and_continues_its_own(tmp_path, capsys):
    """A smoke run and then a full run into the same folder (another data.subset, more epochs)
    once crashed with ConfigError (resume refused); train_vae now starts the run over, saying so.
    The same config with more epochs continues the run; fewer epochs than trained starts over."""
    common = _script("_common", "examples")
    run, tiny = tmp_path / "run", ("model.hidden=[8]", "train.batch_size=32", "eval.iwae_images=16")

    def train(epochs, subset):
        cfg, vae, data = common.train_vae(run, 2, epochs, subset, 0, "cpu", tiny)
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return cfg, [json.loads(line)["epoch"] for line in lines], capsys.readouterr().out

    cfg, epochs, out = train(1, 64)  # the "smoke" run
    assert cfg.data.subset == 64 and epochs == [1] and "replaced" not in out
    cfg, epochs, out = train(2, 96)  # the "full" run: another subset
    assert cfg.data.subset == 96 and epochs == [1, 2], epochs
    assert "holds a run of another config (data.subset: 64 -> 96)" in out, out
    cfg, epochs, out = train(3, 96)  # the same run, trained on: continued
    assert epochs == [1, 2, 3] and "replaced" not in out, (epochs, out)
    cfg, epochs, out = train(1, 96)  # fewer epochs than it has: a new run of 1 epoch
    assert epochs == [1] and "3 epochs trained, 1 asked for" in out, (epochs, out)
