"""Helpers shared by the numbered examples: argument parsing, the output folder, saving and showing.

Each example is a Jupytext percent-format script: ``python examples/NN_name.py --smoke-test`` runs
it as a script (arguments from the command line, figures written to files), and opened as a
notebook (``jupytext --to ipynb``, or Jupyter with the jupytext extension) the same cells run in a
kernel, which has no command line: the arguments then come from ``PYRO_VAE_EXAMPLE_ARGS`` (for
example ``--smoke-test --device cpu``; unset: a full run) and every figure is also shown inline.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import matplotlib

ARGS_ENV = "PYRO_VAE_EXAMPLE_ARGS"
EXAMPLES = Path(__file__).resolve().parent  # (a notebook has no __file__ of its own)


def _kernel_shell():
    """The IPython shell of a Jupyter kernel running this code, or None (a script, a plain process)."""
    if "ipykernel" not in sys.modules:
        return None
    from IPython import get_ipython

    shell = get_ipython()
    return shell if shell is not None and "IPKernelApp" in shell.config else None


_SHELL = _kernel_shell()
IN_NOTEBOOK = _SHELL is not None
if IN_NOTEBOOK:  # figures are shown inline as well as written
    _SHELL.run_line_magic("matplotlib", "inline")
else:  # a script only writes them
    matplotlib.use("Agg")


def parse_args(name: str) -> argparse.Namespace:
    """The example's arguments: the command line of a script, ``$PYRO_VAE_EXAMPLE_ARGS`` in a notebook."""
    parser = argparse.ArgumentParser(
        prog=f"examples/{name}.py",
        description=f"{_title(name)}\n\nThe explanation is in the file's markdown cells (open it as a notebook).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--smoke-test", action="store_true", help="a few-second run with small sizes")
    parser.add_argument("--out", default=str(Path("runs") / "examples" / name), help="folder for figures and results")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default auto: CUDA when available)")
    args = parser.parse_args(shlex.split(os.environ.get(ARGS_ENV, "")) if IN_NOTEBOOK else None)
    args.device = _device(parser, args.device)
    args.out = Path(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def _device(parser: argparse.ArgumentParser, name: str):
    from pyro_vae.config import ConfigError
    from pyro_vae.runs.device import resolve_device

    try:
        return resolve_device(name)
    except ConfigError as exc:
        parser.error(f"--device: {exc}")


def _title(name: str) -> str:
    """The first markdown heading of ``examples/NAME.py`` (its notebook title)."""
    for line in (EXAMPLES / f"{name}.py").read_text().splitlines():
        if line.startswith("# # "):
            return line[4:]
    return name


def save_figure(fig, out: Path, name: str) -> Path:
    """Write ``fig`` to ``out/name`` (and show it first, in a notebook)."""
    from pyro_vae.evaluation.plots import save_figure as save

    if IN_NOTEBOOK:
        from IPython.display import display

        display(fig)
    path = save(fig, out / name)
    print(f"wrote {path}")
    return path


def show(*paths: Path) -> None:
    """Show image files that a package function wrote (in a notebook; a script just names them)."""
    for path in paths:
        if IN_NOTEBOOK:
            from IPython.display import Image, display

            display(Image(filename=str(path)))
        print(f"wrote {path}")


def nll_bars(estimates: dict[str, list[float]], k: int, title: str, out: Path, name: str = "nll.png") -> Path:
    """A horizontal bar per model of its test NLL in nats (``[mean, se]``), ± 2 standard errors."""
    import matplotlib.pyplot as plt

    names = list(estimates)
    means = [estimates[n][0] for n in names]
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.55 * len(names)))
    ax.barh(names, means, xerr=[2 * estimates[n][1] for n in names], color="tab:blue")
    for y, m in enumerate(means):
        ax.text(m, y, f" {m:.1f}", va="center", fontsize=8)
    ax.set_xlim(min(means) - 10, max(means) + 12)
    ax.invert_yaxis()
    ax.set_xlabel(f"test -log p(x), IWAE K={k} (nats; bars ± 2 s.e.)")
    ax.set_title(title, fontsize=10)
    return save_figure(fig, out, name)


def save_results(results: dict, out: Path) -> None:
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")


def train_vae(run: Path, latent_dim: int, epochs: int, subset: int, seed: int, device, overrides: tuple[str, ...] = ()):
    """Train the default VAE with ``latent_dim`` (and any further ``section.key=value``
    ``overrides``) on ``device`` into ``run`` via ``pyro_vae.fit``, continuing a run left there,
    and return ``(config, vae with the best weights on device, data)``; the data stay on the CPU
    (move what you feed the model to ``device``)."""
    from pyro_vae import fit, load_config, open_model

    overrides = [
        f"model.latent_dim={latent_dim}",
        f"train.epochs={epochs}",
        f"data.subset={subset}",
        "eval.iwae_k=10",
        f"train.seed={seed}",
        f"train.device={device}",
        *overrides,
    ]
    fit(load_config(None, overrides), run, progress=False, figures=False, resume=(run / "checkpoints/last.pt").exists())
    model = open_model(run, device=str(device))
    return model.config, model.vae, model.data
