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

from pyro_vae import cpu_kernels

# On import, before the example's first tensor operation: the CPU kernels the pyro-vae command runs.
cpu_kernels.choose()

ARGS_ENV = "PYRO_VAE_EXAMPLE_ARGS"
EXAMPLES = Path(__file__).resolve().parent  # (a notebook has no __file__ of its own)
_OUT: Path | None = None  # the output folder parse_args made: messages name files relative to it


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
    parser.add_argument(
        "--out",
        type=Path,
        help=f"folder for figures and results (default {default_out(name, False)}, or "
        f"{default_out(name, True)} with --smoke-test: a smoke run and a full run do not share their trained models)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default auto: CUDA when available)")
    args = parser.parse_args(shlex.split(os.environ.get(ARGS_ENV, "")) if IN_NOTEBOOK else None)
    args.device = _device(parser, args.device)
    args.out = Path(args.out) if args.out is not None else default_out(name, args.smoke_test)
    args.out.mkdir(parents=True, exist_ok=True)
    global _OUT
    _OUT = args.out
    if not IN_NOTEBOOK:  # (a notebook's reader set the folder; a script's is told where its files go)
        print(f"output folder: {args.out}")
    return args


def default_out(name: str, smoke_test: bool) -> Path:
    """The output folder of a run given no ``--out``: ``runs/examples/NAME``, and for a smoke run
    ``runs/examples/NAME-smoke`` (its small models are not continued by a full run, nor the reverse)."""
    return Path("runs") / "examples" / (f"{name}-smoke" if smoke_test else name)


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


class _Written(type(Path())):
    """The path of a file an example wrote: a ``Path`` that a notebook does not echo when a cell
    ends with the call that returned it (the cell has already said ``wrote NAME``)."""

    def _ipython_display_(self) -> None:  # IPython shows nothing for the cell's result
        pass

    def __repr__(self) -> str:  # elsewhere (a plain Python prompt) it looks like any path
        return repr(Path(self))


def _named(path: Path) -> str:
    """``path`` as the messages name it: relative to the output folder (``--out``) when inside it,
    so no machine's absolute path is printed, else as given."""
    path = Path(path)
    if _OUT is not None:
        for base in (_OUT, _OUT.resolve()):
            for candidate in (path, path.resolve()):
                try:
                    return candidate.relative_to(base).as_posix()
                except ValueError:
                    continue
    return str(path)


def save_figure(fig, out: Path, name: str) -> Path:
    """Write ``fig`` to ``out/name`` (and show it first, in a notebook); returns the file's path."""
    from pyro_vae.evaluation.plots import save_figure as save

    if IN_NOTEBOOK:
        from IPython.display import display

        display(fig)
    path = _Written(save(fig, out / name))
    print(f"wrote {_named(path)}")
    return path


def show(*paths: Path) -> None:
    """Show image files that a package function wrote (in a notebook; a script just names them)."""
    for path in paths:
        if IN_NOTEBOOK:
            from IPython.display import Image, display

            display(Image(filename=str(path)))
        print(f"wrote {_named(path)}")


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
    print(f"wrote {_named(path)}")


def _shown(arg: str) -> str:
    """A command-line word as a page shows it: a path (or a ``key=path`` setting) inside the output
    folder relative to it, one below the working folder relative to that (no machine's paths)."""
    key, sep, value = arg.rpartition("=")
    if not value.startswith("/"):
        return arg
    named = _named(Path(value))
    if named == value and Path(value).is_relative_to(Path.cwd()):
        named = Path(value).relative_to(Path.cwd()).as_posix()
    return key + sep + named


def train_by_cli(run: Path, sets: list[str], plugins: tuple[Path, ...] = ()) -> None:
    """Train into ``run`` as ``pyro-vae train`` on the command line would (the same entry point,
    in this process): the command is printed, so it can be run from a shell as it stands."""
    from pyro_vae.cli import main

    argv = ["train", "--out", str(run), "--overwrite", "--no-progress", "--no-figures"]
    argv += [a for f in plugins for a in ("--plugin", str(f))] + [a for s in sets for a in ("--set", s)]
    print("pyro-vae " + shlex.join(_shown(a) for a in argv))
    assert main(argv) == 0, argv


def train_vae(run: Path, latent_dim: int, epochs: int, subset: int, seed: int, device, overrides: tuple[str, ...] = ()):
    """Train the default VAE with ``latent_dim`` (and any further ``section.key=value``
    ``overrides``) on ``device`` into ``run`` via ``pyro_vae.fit``, continuing a run left there,
    and return ``(config, vae with the best weights on device, data)``; the data stay on the CPU
    (move what you feed the model to ``device``).

    A run left in ``run`` is continued only if it is this one, stopped early or trained for fewer
    epochs (``fit`` may resume it: same config but for the epochs); one of another config (a smoke
    run's data subset, say) or trained for more epochs is replaced, with a note, and trained anew."""
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
    cfg = load_config(None, overrides)
    resume = (run / "checkpoints" / "last.pt").exists()
    changes = _changes(run, cfg) if resume else []
    if changes:
        print(f"{_named(run)} holds a run of another config ({'; '.join(changes)}): it is replaced by a new run")
    fit(cfg, run, progress=False, figures=False, resume=resume and not changes, overwrite=bool(changes))
    model = open_model(run, device=str(device))
    return model.config, model.vae, model.data


def _changes(run: Path, cfg) -> list[str]:
    """Why the run left in ``run`` cannot be continued as ``cfg``: the config keys a resumed run must
    keep that differ (``pyro_vae.fit`` would refuse to resume it), more epochs trained than ``cfg``
    asks for, or a checkpoint that does not load; ``[]`` when it can."""
    from pyro_vae.config import ConfigError
    from pyro_vae.runs.checkpoint import load_checkpoint
    from pyro_vae.runs.folder import config_changes, stored_config

    last = run / "checkpoints" / "last.pt"
    try:
        state = load_checkpoint(last)
        saved = stored_config(state, last)
    except (ValueError, ConfigError) as exc:
        return [f"its checkpoint does not load: {exc}"]
    changes = config_changes(saved, cfg)
    if state.get("epoch", 0) > cfg.train.epochs:
        changes.append(f"{state['epoch']} epochs trained, {cfg.train.epochs} asked for")
    return changes
