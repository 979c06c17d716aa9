"""Build the documentation site offline: ``make docs`` (``python scripts/build_docs.py``).

1. Execute every notebook of the learning path (``examples/NN_*.py``, Jupytext percent format) in one
   Jupyter kernel, reset between notebooks (:data:`PRELUDE`), in smoke mode by default (``--mode
   full`` for the full runs; each mode in its own run folders, ``--runs``/MODE/NAME), and render
   each into ``docs/notebooks/NAME.md`` with its figures (``NAME_files/``) and the executed
   ``NAME.ipynb``. A page leads with the lesson: its title, the notebook's introduction and its
   section ``## What the full run shows`` (the full run's numbers and committed figures), then
   the notebook executed (in smoke mode, seconds on a little data: proof that it runs). Outputs
   are tidied for a static page: no local paths, no echoed ``Path`` reprs, one block per cell for
   its printed lines.
2. ``mkdocs build --strict`` into ``build/site`` (``--site-dir``): a broken internal link, a missing
   page or a docstring mkdocstrings cannot render fails the build.

The home page, ``docs/index.md``, is the README with its links made site links. It and
``docs/notebooks/`` are written here and git-ignored. Nothing is downloaded: the theme uses the
system's fonts and the maths is MathML typeset at build time (``docs/hooks/mathml.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
NOTEBOOKS = ROOT / "docs" / "notebooks"
WIDGET = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = (
    "*(In a live notebook, sliders for $z_1$ and $z_2$ appear here and redraw the decoded image; "
    "the figure below is the static fallback.)*"
)
FULL_RUN = "What the full run shows"  # the section of a notebook that a page moves to its top
FENCE = re.compile(r"\s*(```|~~~)")
HEADING = re.compile(r"(#{1,6})\s+(.*?)\s*#*\s*$")


# Run in the kernel before each notebook: the state a new kernel starts with (no names, no Pyro
# params, no figures, no plugins loaded or registered) and this notebook's arguments. It undoes the
# previous notebook; what stays is only the modules imported (once, as in one Python session).
PRELUDE = """\
import os as _os, sys as _sys
import matplotlib.pyplot as _plt, pyro as _pyro
from pyro_vae.plugins import isolated as _isolated
if hasattr(_sys, "_pyro_vae_docs_isolation"):  # restore the registries of before the last notebook
    _sys._pyro_vae_docs_isolation.__exit__(None, None, None)
_plt.close("all"); _pyro.clear_param_store()
_os.environ["PYRO_VAE_EXAMPLE_ARGS"] = {args!r}
_sys._pyro_vae_docs_isolation = _isolated(fresh=True)
_sys._pyro_vae_docs_isolation.__enter__()
get_ipython().run_line_magic("reset", "-f")
"""


@contextlib.contextmanager
def kernel(sockets: Path):
    """A started Jupyter kernel (cwd: examples/) and its client, shut down on leaving. The kernel
    talks over local sockets in the private folder ``sockets``, not over TCP on localhost."""
    from jupyter_client.manager import KernelManager

    manager = KernelManager(kernel_name="python3", transport="ipc", ip=str(sockets / "kernel"))
    manager.start_kernel(cwd=str(EXAMPLES))
    client = manager.client()
    try:
        client.start_channels()
        client.wait_for_ready(timeout=120)
        yield manager, client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def execute(path: Path, mode: str, runs: Path, timeout: int, manager, client):
    """``path`` as an executed notebook (cells run top to bottom in the given kernel, after
    :data:`PRELUDE`; a cell that raises raises here)."""
    import jupytext
    import nbclient

    out = shlex.quote(str(runs / mode / path.stem))  # a smoke run never resumes a full run's models
    args = f"--device cpu --out {out}" + (" --smoke-test" if mode == "smoke" else "")
    reply = client.execute_interactive(PRELUDE.format(args=args), timeout=timeout, store_history=False)
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"the kernel's prelude failed: {reply['content'].get('evalue')}")
    notebook = jupytext.read(path)
    runner = nbclient.NotebookClient(
        notebook, km=manager, timeout=timeout, resources={"metadata": {"path": str(EXAMPLES)}}
    )
    runner.kc = client  # the kernel is ours: nbclient neither starts nor stops it
    runner.execute()
    return notebook


def execute_all(paths: list[Path], mode: str, runs: Path, timeout: int):
    """Yield ``(path, executed notebook)``, all in one kernel that :data:`PRELUDE` resets between
    them (torch is imported once, not once per notebook: 2 to 3 s each)."""
    if not paths:
        return
    with tempfile.TemporaryDirectory(prefix="pyro-vae-kernel-") as sockets, kernel(Path(sockets)) as (manager, client):
        for path in paths:
            yield path, execute(path, mode, runs, timeout, manager, client)


def local_paths(runs: Path, mode: str, name: str) -> dict[str, str]:
    """What the printed text of notebook ``name`` may hold of this machine's paths, each mapped to
    the short form a page shows: its run folder as the folder a reader's own run of the script
    writes (``runs/examples/NAME-smoke``, or ``runs/examples/NAME`` in full), the repository root
    as relative paths, the home folder as ``~``. Most specific first."""
    shown = f"runs/examples/{name}-smoke" if mode == "smoke" else f"runs/examples/{name}"
    pairs = [
        (runs / mode / name, shown),
        (runs / mode, "runs/examples"),
        (runs, "runs"),
        (ROOT, "."),
        (Path.home(), "~"),
    ]
    mapping = {}
    for path, short in pairs:
        for form in (str(path), str(path.resolve())):
            if form not in mapping and form not in ("/", "."):
                mapping[form] = short
    return mapping


def _shorten(text: str, paths: dict[str, str]) -> str:
    """``text`` with each path of ``paths`` (a whole path: not the start of a longer name) replaced;
    the repository root followed by ``/`` goes altogether (``ROOT/pyro_vae/x.py``: ``pyro_vae/x.py``)."""
    for path, short in paths.items():
        pattern = re.escape(path) + r"(?![\w.-])"
        if short == ".":
            text = re.sub(pattern + "/", "", text)
        text = re.sub(pattern, short.replace("\\", r"\\"), text)
    return text


def _coalesce(outputs: list, any_stream: bool) -> list:
    """Consecutive stream outputs merged into one (each ``print`` of a cell is otherwise its own
    output, and a page its own block): those of one stream (stdout, stderr), or with
    ``any_stream`` all of them, in order, as one stdout. A line that a carriage return rewrote
    keeps its last text."""
    merged = []
    for output in outputs:
        previous = merged[-1] if merged else None
        if (
            output.get("output_type") == "stream"
            and previous is not None
            and previous.get("output_type") == "stream"
            and (any_stream or previous.get("name") == output.get("name"))
        ):
            previous["text"] += output["text"]
            if previous.get("name") != output.get("name"):
                previous["name"] = "stdout"
        else:
            merged.append(output)
    for output in merged:
        if output.get("output_type") == "stream":
            output["text"] = re.sub(r"[^\n]*\r(?!\n)", "", output["text"])
    return merged


def _is_path_repr(text: str) -> bool:
    return text.lstrip("[(").startswith(("PosixPath(", "WindowsPath(", "PurePosixPath(", "PureWindowsPath("))


def tidy(notebook, paths: dict[str, str] | None = None, page: bool = True) -> None:
    """Outputs that show what they should not: this machine's paths in printed text (``paths``,
    see :func:`local_paths`) in their short form, a ``Path`` that ended a cell (its repr, a local
    path) dropped, and consecutive printed outputs of one stream merged. For a static ``page``
    also: a widget becomes a note, the repr of a matplotlib object that ended a cell
    (``<matplotlib.legend.Legend at 0x...>``) is dropped, and each cell's printed outputs are one
    block (stdout and stderr together)."""
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.outputs:
            if paths:
                _shorten_output(output, paths)
            data = output.get("data", {})
            if output.get("output_type") == "execute_result" and set(data) == {"text/plain"}:
                text = data["text/plain"]
                if _is_path_repr(text):
                    continue
                if page and text.lstrip("[").startswith(("<matplotlib", "Text(", "<Axes")):
                    continue
            if page and WIDGET in data:
                output["data"] = {"text/markdown": WIDGET_NOTE}
            kept.append(output)
        cell.outputs = _coalesce(kept, any_stream=page)


def _shorten_output(output, paths: dict[str, str]) -> None:
    if "text" in output:
        output["text"] = _shorten(output["text"], paths)
    for mime, value in output.get("data", {}).items():
        if mime.startswith("text/") and isinstance(value, str):
            output["data"][mime] = _shorten(value, paths)
    if "traceback" in output:
        output["traceback"] = [_shorten(line, paths) for line in output["traceback"]]


def _outside_fences(source: str):
    """``(line, is a heading's match or None)`` for each line of markdown ``source``; a line inside a
    fenced code block is never a heading."""
    fenced = False
    for line in source.split("\n"):
        if FENCE.match(line):
            fenced = not fenced
            yield line, None
        else:
            yield line, None if fenced else HEADING.match(line)


def take_section(cells: list, title: str = FULL_RUN) -> tuple[list, str]:
    """``(cells without it, its text)`` for the markdown section ``## title``: from its heading up to
    the next heading of level 1 or 2, or a code cell, or the end (``""`` if there is none)."""
    state, taken, kept_cells = "before", [], []
    for cell in cells:
        if cell.cell_type != "markdown" or state == "after":
            state = "after" if state == "inside" else state
            kept_cells.append(cell)
            continue
        kept = []
        for line, heading in _outside_fences(cell.source):
            if heading and state == "before" and len(heading.group(1)) == 2 and heading.group(2) == title:
                state = "inside"
            elif heading and state == "inside" and len(heading.group(1)) <= 2:
                state = "after"
            (taken if state == "inside" else kept).append(line)
        if any(line.strip() for line in kept):
            cell = copy.deepcopy(cell)
            cell.source = "\n".join(kept).strip("\n")
            kept_cells.append(cell)
    return kept_cells, "\n".join(taken).strip()


def demote(source: str) -> str:
    """Markdown ``source`` with each heading one level lower (``##`` becomes ``###``), fences kept."""
    return "\n".join(
        "#" + line if heading and len(heading.group(1)) < 6 else line for line, heading in _outside_fences(source)
    )


def split_intro(source: str) -> tuple[str, str, str]:
    """The first markdown cell as ``(title line, introduction, about the notebook)``: the last part
    starts at the paragraph ``Writes ...`` or ``Run it as a script ...`` (what the notebook writes
    and how to run it), which a page puts with the executed notebook."""
    title, _, rest = source.strip().partition("\n")
    match = re.search(r"(?:^|\n[ \t]*\n)(?=(?:Writes |Run it as a script))", rest)
    if match is None:
        return title, rest.strip(), ""
    return title, rest[: match.start()].strip(), rest[match.start() :].strip()


def page_notebook(notebook, name: str, mode: str):
    """``(title, notebook of the page)``: the lesson first (the introduction and the section
    :data:`FULL_RUN`), then a heading for the executed notebook, what it is, and the cells (their
    headings one level down, under it)."""
    import nbformat

    page = copy.deepcopy(notebook)
    cells, section = take_section(page.cells[1:])
    title, intro, about = split_intro(page.cells[0].source) if page.cells[0].cell_type == "markdown" else ("", "", "")
    if page.cells[0].cell_type != "markdown":
        cells = [page.cells[0], *cells]
    if mode == "smoke":
        executed = (
            "## The notebook, executed in smoke mode\n\n"
            "The numbers and figures below come from a run of a few seconds on a little data "
            "(`--smoke-test`): they prove that the page runs, and are rough; "
            + ("the section above gives the full run's." if section else "a full run's are larger.")
        )
    else:
        executed = (
            "## The notebook, executed in full\n\n"
            "The numbers and figures below come from a full run of the notebook (`make docs` with "
            "`--mode full`)" + (", the kind of run the section above reports." if section else ".")
        )
    lead = [nbformat.v4.new_markdown_cell(text) for text in (intro, section) if text]
    for cell in cells:
        if cell.cell_type == "markdown":
            cell.source = demote(cell.source)
    opening = nbformat.v4.new_markdown_cell(executed + ("\n\n" + about if about else ""))
    page.cells = [*lead, opening, *cells]
    return title, page


def render(notebook, name: str, mode: str, runs: Path | None = None) -> None:
    """``docs/notebooks/NAME.md`` (+ ``NAME_files/``, ``NAME.ipynb``) from an executed notebook whose
    run folder was ``runs/MODE/NAME`` (its local paths are shortened on the page and in the
    ``.ipynb``). The page's layout: :func:`page_notebook`."""
    import nbformat
    from nbconvert import MarkdownExporter

    paths = local_paths(runs, mode, name) if runs is not None else None
    files = NOTEBOOKS / f"{name}_files"
    shutil.rmtree(files, ignore_errors=True)
    tidy(notebook, paths, page=False)
    nbformat.write(notebook, NOTEBOOKS / f"{name}.ipynb")
    title, page = page_notebook(notebook, name, mode)
    tidy(page, paths)
    body, resources = MarkdownExporter().from_notebook_node(
        page, resources={"output_files_dir": f"{name}_files", "unique_key": name}
    )
    for relative, data in resources.get("outputs", {}).items():
        target = NOTEBOOKS / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    stamp = datetime.date.today().isoformat()
    lesson = "[What the full run shows](#what-the-full-run-shows)"
    has_section = f"## {FULL_RUN}" in body
    if mode == "smoke":
        note = (
            f"    The lesson, with the full run's numbers and figures, is in {lesson}; the cells after "
            "it ran in smoke mode (seconds, on a little data) to prove that the notebook runs.\n"
            if has_section
            else "    The cells ran in smoke mode, for seconds on a little data: their numbers are rough.\n"
        )
    else:
        note = "    The cells ran in full (`--mode full`).\n"
    header = (
        f'!!! note "Executed by `make docs` ({mode} mode, {stamp})"\n'
        f"    Source: `examples/{name}.py`, a script and a notebook in one file. "
        f"[Download the executed notebook]({name}.ipynb).\n" + note
    )
    body = body.replace("](../docs/", "](../")  # a notebook's links into docs/, from the site's notebooks/
    heading = (title or f"# {name}") + " { .notebook }"  # (the class: docs/stylesheets/extra.css)
    (NOTEBOOKS / f"{name}.md").write_text(f"{heading}\n\n{header}\n{body.strip()}\n")


def drop_stale(names: set[str]) -> None:
    """Remove the rendered pages in ``docs/notebooks/`` of notebooks that are gone (renamed or
    renumbered): the strict build would fail on a page that no nav entry names."""
    for path in NOTEBOOKS.glob("[0-9][0-9]_*"):
        stem = path.name.removesuffix("_files") if path.is_dir() else path.stem
        if stem not in names and (path.suffix in (".md", ".ipynb") or path.name.endswith("_files")):
            print(f"removing {path.relative_to(ROOT)}: no examples/{stem}.py")
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def write_home() -> None:
    """``docs/index.md`` from the README (one source): links into ``docs/`` become site links, a
    link to another file of the repository becomes its path, and the paragraph about building the
    site (which the reader is looking at) is left out."""

    def link(match: re.Match) -> str:
        bang, label, target = match.groups()
        if re.match(r"https?://|#", target):
            return match.group(0)
        if target.startswith("docs/"):
            return f"{bang}[{label}]({target[5:] or 'index.md'})"
        return label if f"`{target}`" in label else f"{label} (`{target}`)"

    text = (ROOT / "README.md").read_text()
    shots = [ROOT / "docs" / "screenshots" / f"{page}.png" for page in ("home", "notebook", "api")]
    if not all(shot.exists() for shot in shots):  # the first build, before check_site.py took them
        text = re.sub(r"\| home \| a notebook \| API reference \|\n.*?\n.*?\n", "", text, count=1)
        print("docs/screenshots/ is empty: the home page leaves them out (make screenshots takes them)")
    text = re.sub(r"\n\*\*Documentation\*\*:.*?\n\n", "\n", text, count=1, flags=re.S)
    text = re.sub(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)", link, text)
    (ROOT / "docs" / "index.md").write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--mode",
        choices=("smoke", "full"),
        default=os.environ.get("DOCS_MODE", "smoke"),
        help="run the notebooks with --smoke-test (default) or in full",
    )
    parser.add_argument("--site-dir", type=Path, default=ROOT / "build" / "site")
    parser.add_argument(
        "--runs", type=Path, default=ROOT / "build" / "docs-runs", help="the notebooks' output folders (RUNS/MODE/NAME)"
    )
    parser.add_argument("--config", type=Path, default=ROOT / "mkdocs.yml", help="the mkdocs configuration")
    parser.add_argument("--only", nargs="*", help="notebook names to execute (default: all; the others must exist)")
    parser.add_argument("--no-execute", action="store_true", help="reuse the rendered notebooks of an earlier build")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds a cell may run")
    args = parser.parse_args(argv)
    args.runs = args.runs.resolve()  # (the kernel runs in examples/)
    NOTEBOOKS.mkdir(parents=True, exist_ok=True)
    paths = sorted(EXAMPLES.glob("[0-9][0-9]_*.py"))
    drop_stale({p.stem for p in paths})
    todo = [
        p
        for p in paths
        if not ((args.no_execute or (args.only and p.stem not in args.only)) and (NOTEBOOKS / f"{p.stem}.md").exists())
    ]
    start = time.perf_counter()
    for i, (path, notebook) in enumerate(execute_all(todo, args.mode, args.runs, args.timeout), 1):
        render(notebook, path.stem, args.mode, args.runs)
        seconds = time.perf_counter() - start
        print(f"[{i:2d}/{len(todo)}] executed {path.name} ({args.mode}): {seconds:.0f} s", flush=True)
        start = time.perf_counter()
    write_home()
    site = ["--site-dir", str(args.site_dir)]
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(args.config), *site]
    print("building the site:", " ".join(command[1:]), flush=True)
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    if done.returncode == 0:
        print(f"site written to {args.site_dir} (open {args.site_dir / 'index.html'})")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
