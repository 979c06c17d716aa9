"""Build the documentation site offline: ``make docs`` (``python scripts/build_docs.py``).

1. Execute every notebook of the learning path (``examples/NN_*.py``, Jupytext percent format) in one
   Jupyter kernel, reset between notebooks (:data:`PRELUDE`), in smoke mode by default (``--mode
   full`` for the full runs), and render each into ``docs/notebooks/NAME.md`` with its figures
   (``NAME_files/``) and the executed ``NAME.ipynb``.
2. ``mkdocs build --strict`` into ``build/site`` (``--site-dir``): a broken internal link, a missing
   page or a docstring mkdocstrings cannot render fails the build.

The home page, ``docs/index.md``, is the README with its links made site links. It and
``docs/notebooks/`` are written here and git-ignored. Nothing is downloaded: the theme uses the
system's fonts and the maths is MathML typeset at build time (``docs/hooks/mathml.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import re
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

    args = f"--device cpu --out {runs / path.stem}" + (" --smoke-test" if mode == "smoke" else "")
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


def tidy(notebook) -> None:
    """Outputs a static page cannot use: a widget becomes a note, and the repr of a matplotlib
    object that ended a cell (``<matplotlib.legend.Legend at 0x...>``) is dropped."""
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.outputs:
            data = output.get("data", {})
            if WIDGET in data:
                output["data"] = {"text/markdown": WIDGET_NOTE}
            elif output.get("output_type") == "execute_result" and set(data) == {"text/plain"}:
                if data["text/plain"].lstrip("[").startswith(("<matplotlib", "Text(", "<Axes")):
                    continue
            kept.append(output)
        cell.outputs = kept


def render(notebook, name: str, mode: str) -> None:
    """``docs/notebooks/NAME.md`` (+ ``NAME_files/``, ``NAME.ipynb``) from an executed notebook."""
    import nbformat
    from nbconvert import MarkdownExporter

    files = NOTEBOOKS / f"{name}_files"
    shutil.rmtree(files, ignore_errors=True)
    nbformat.write(notebook, NOTEBOOKS / f"{name}.ipynb")
    tidy(notebook)
    body, resources = MarkdownExporter().from_notebook_node(
        notebook, resources={"output_files_dir": f"{name}_files", "unique_key": name}
    )
    for relative, data in resources.get("outputs", {}).items():
        target = NOTEBOOKS / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    stamp = datetime.date.today().isoformat()
    header = (
        f'!!! note "Executed by `make docs` ({mode} mode, {stamp})"\n'
        f"    Source: `examples/{name}.py`, a script and a notebook in one file. "
        f"[Download the executed notebook]({name}.ipynb).\n"
        + (
            "    Smoke mode trains on little data for seconds: its numbers are rough; the last "
            "section gives the full run's.\n"
            if mode == "smoke"
            else ""
        )
    )
    body = body.replace("](../docs/", "](../")  # a notebook's links into docs/, from the site's notebooks/
    title, _, rest = body.partition("\n")
    (NOTEBOOKS / f"{name}.md").write_text(f"{title}\n\n{header}\n{rest}")


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
    parser.add_argument("--runs", type=Path, default=ROOT / "build" / "docs-runs", help="the notebooks' output folders")
    parser.add_argument("--only", nargs="*", help="notebook names to execute (default: all; the others must exist)")
    parser.add_argument("--no-execute", action="store_true", help="reuse the rendered notebooks of an earlier build")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds a cell may run")
    args = parser.parse_args(argv)
    NOTEBOOKS.mkdir(parents=True, exist_ok=True)
    paths = sorted(EXAMPLES.glob("[0-9][0-9]_*.py"))
    todo = [
        p
        for p in paths
        if not ((args.no_execute or (args.only and p.stem not in args.only)) and (NOTEBOOKS / f"{p.stem}.md").exists())
    ]
    start = time.perf_counter()
    for i, (path, notebook) in enumerate(execute_all(todo, args.mode, args.runs, args.timeout), 1):
        render(notebook, path.stem, args.mode)
        seconds = time.perf_counter() - start
        print(f"[{i:2d}/{len(todo)}] executed {path.name} ({args.mode}): {seconds:.0f} s", flush=True)
        start = time.perf_counter()
    write_home()
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(args.site_dir)]
    print("building the site:", " ".join(command[1:]), flush=True)
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    if done.returncode == 0:
        print(f"site written to {args.site_dir} (open {args.site_dir / 'index.html'})")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
