"""The ``pyro-vae`` command: ``train``, ``evaluate``, ``compare``, ``plot``, ``export``, the latent-space
commands (``sample``, ``interpolate``, ``traverse``, ``encode``, ``reconstruct``) and ``config``.

Every command imports the plugins given with ``--plugin`` and those of installed packages (the
``pyro_vae.components`` entry points), never one that only a file names (:mod:`pyro_vae.plugins`).

Every rejected input ends in a one-paragraph message on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import NoReturn

from pyro_vae import cpu_kernels
from pyro_vae.config import MAX_SAMPLES, MAX_SEED, load_config, to_toml
from pyro_vae.files import check_regular, write_atomic

CHECKPOINT_HELP = "the run's best-on-valid weights (default) or those of its last epoch"


def _plugin_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--plugin",
        dest="plugins",
        action="append",
        default=[],
        metavar="FILE_OR_MODULE",
        help="import a .py file or a module that registers components (repeatable); see docs/plugins.md",
    )
    p.add_argument(
        "--trust-config-plugins",
        action="store_true",
        help="also import the plugins that the config file or run folder names (only for files you trust)",
    )


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML (or JSON) file with [data], [model], [train], [eval] tables")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set model.latent_dim=2 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyro-vae", description="A variational autoencoder in Pyro.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a VAE into a run folder")
    _config_args(p)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="DIR", help="new run folder (default runs/default)")
    where.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    p.add_argument("--device", help="cpu, cuda or cuda:N (shorthand for --set train.device=...; default auto)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")
    p.add_argument(
        "--tensorboard",
        action="store_true",
        help="log to RUN/tensorboard (shorthand for --set "
        "train.tensorboard=true; needs pip install 'pyro-vae[tensorboard]')",
    )
    _plugin_args(p)

    p = sub.add_parser("evaluate", help="test negative ELBO and importance-sampled NLL of a run or exported model")
    p.add_argument("run", metavar="RUN_OR_MODEL", help="a run folder (pyro-vae train) or an exported model folder")
    p.add_argument("--k", type=int, default=5000, help="importance samples per image (default 5000)")
    p.add_argument("--images", type=int, default=0, help="evenly spaced test images to use (default all)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help=CHECKPOINT_HELP)
    p.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _plugin_args(p)

    p = sub.add_parser(
        "compare",
        help="measure the ELBO estimators on a trained run (values, variance, gradients, encoder SNR against K)",
    )
    p.add_argument("run", metavar="RUN_DIR", help="a run folder (pyro-vae train)")
    p.add_argument("--images", type=int, default=100, help="evenly spaced test images (default 100)")
    p.add_argument("--k", default="1,10,100,1000", help="IWAE sample sizes, comma-separated (add 5000 for papers')")
    p.add_argument("--particles", default="1,4,16,64", help="particles per estimate, comma-separated")
    p.add_argument("--reps", type=int, default=32, help="P-particle estimates per image for the spread")
    p.add_argument("--grad-images", type=int, default=32, help="images in the batch whose gradient is estimated")
    p.add_argument("--grad-reps", type=int, default=50, help="gradient draws per estimator and P")
    p.add_argument(
        "--snr-k",
        default="1,4,16,64,256,1024",
        help="samples per image K of the encoder SNR panel (iwae, iwae_dreg, piwae)",
    )
    p.add_argument("--groups", type=int, default=4, help="M of miwae and piwae (M groups of K / M samples)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help=CHECKPOINT_HELP)
    p.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default auto)")
    p.add_argument("--out", metavar="DIR", help="output folder (default RUN_DIR/compare)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _plugin_args(p)

    p = sub.add_parser("plot", help="(re)draw the figures of a run or exported model")
    p.add_argument("run", metavar="RUN_OR_MODEL", help="a run folder or an exported model folder")
    p.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default auto)")
    _plugin_args(p)

    p = sub.add_parser(
        "export", help="write a run's weights as a portable model (model.safetensors, config.json, a model card)"
    )
    p.add_argument("run", metavar="RUN_DIR", help="a run folder (pyro-vae train)")
    p.add_argument("--out", metavar="DIR", required=True, help="folder for the model files")
    p.add_argument("--overwrite", action="store_true", help="replace model files already in --out")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help=CHECKPOINT_HELP)
    _plugin_args(p)

    _latent_commands(sub)

    p = sub.add_parser("config", help="print the resolved config as TOML")
    _config_args(p)
    _plugin_args(p)
    return parser


def _load_plugins(args) -> None:
    """Import the installed packages' plugins and those given with ``--plugin``, then check that
    what the config file or run folder names is among them (or import it, with
    ``--trust-config-plugins``). Nothing a file names is imported without the user's say."""
    from pyro_vae.config import read_config_file
    from pyro_vae.plugins.loader import load_entry_points, load_plugin, records_in, require
    from pyro_vae.runs.export import is_model_dir, plugin_records
    from pyro_vae.runs.folder import RunDir

    load_entry_points()
    for spec in args.plugins:
        load_plugin(spec)
    if getattr(args, "config", None):
        path = Path(args.config)
        records = records_in(read_config_file(path), f"config file {path}", path.parent)
        require(records, f"config file {path}", trust=args.trust_config_plugins)
    run = getattr(args, "resume", None) or getattr(args, "run", None)
    if run:  # (changed plugins are reported where the run is opened)
        if is_model_dir(run):
            require(plugin_records(run), f"model {run}", trust=args.trust_config_plugins)
        else:
            require(RunDir(Path(run)).plugin_records(), f"run folder {run}", trust=args.trust_config_plugins)


def _latent_commands(sub) -> None:
    def add(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("run", metavar="RUN_OR_MODEL", help="a run folder or an exported model folder")
        p.add_argument("--out", metavar="DIR", help="output folder (default RUN_OR_MODEL/latent)")
        p.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default auto)")
        p.add_argument("--seed", type=int, default=0, help="seed of the random draws (default 0)")
        _plugin_args(p)
        return p

    p = add("sample", "decode draws from the prior, at a temperature")
    p.add_argument("--n", type=int, default=64, help="how many images to draw (default 64, in a square grid)")
    p.add_argument("--temperature", type=float, default=1.0, help="scale of the prior's draws (default 1)")
    p = add("interpolate", "decode linear and spherical paths between the codes of two images")
    p.add_argument(
        "--between",
        nargs=2,
        metavar=("A", "B"),
        required=True,
        help="two test image indices, or two image files (the model's size)",
    )
    p.add_argument("--invert", action="store_true", help="image files with dark ink on white paper")
    p.add_argument(
        "--steps", type=int, default=10, help="decoded images along each path, its two ends included (default 10)"
    )
    p = add("traverse", "vary one latent dimension at a time (most active first); report the active units")
    p.add_argument(
        "--layer",
        metavar="NAME",
        help="the latent layer to vary (default the top one; z1 is the bottom layer of a hierarchical model)",
    )
    p.add_argument("--dims", type=int, nargs="*", help="dimensions to vary (default the layer's 10 most active)")
    p.add_argument(
        "--image",
        type=int,
        help="start from this test image's codes (default the top layer at 0, the "
        "layers below at their conditional means)",
    )
    p.add_argument("--span", type=float, default=3.0, help="values in [-span, span] (default 3)")
    p = add("encode", "write the latent means and scales of a split (every layer's), with labels, to an .npz file")
    p.add_argument(
        "--split",
        "--data",
        dest="split",
        choices=("train", "valid", "test"),
        default="test",
        help="the split to encode (default test)",
    )
    p.add_argument("--file", metavar="NPZ", help="output file (default OUT/codes_SPLIT.npz)")
    p = add("reconstruct", "reconstruct your own image files (the model's image size, grey or colour)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files of the model's image size (PNG, JPEG, ...)")
    p.add_argument("--invert", action="store_true", help="dark ink on white paper (MNIST stores white ink)")


# Ranges of the numeric options, checked before a model is opened (pyro_vae.config has the limits of
# the config keys, MAX_SAMPLES and MAX_SEED among them): generous, but a slip such as --n 1e9 is refused.
MAX_DRAWN = 10_000  # sample --n, interpolate --steps: images decoded at once and drawn in one figure
MAX_SPAN = 1000.0  # traverse --span, sample --temperature: far past any prior's mass, short of float32 overflow
MAX_LAB_PARTICLES = 2**14  # compare --particles: drawn at once for every gradient image
MAX_LAB_REPS = 10**5  # compare --reps, --grad-reps


def _check_int(option: str, value: int, low: int, high: int | None = None, what: str = "") -> None:
    if value < low or (high is not None and value > high):
        accepted = f"between {low:,} and {high:,}" if high is not None else f"at least {low}"
        raise ValueError(f"{option} = {value} must be {accepted}{what}")


def _check_float(option: str, value: float, high: float) -> None:
    if not (math.isfinite(value) and 0 < value <= high):
        raise ValueError(f"{option} = {value} must be a finite number above 0 and at most {high:g}")


def _latent(args) -> int:
    import io

    import numpy as np
    import torch

    from pyro_vae.evaluation import latent
    from pyro_vae.evaluation.plots import plot_images
    from pyro_vae.runs.trained import open_model

    _check_int("--seed", args.seed, 0, MAX_SEED)
    if args.command == "sample":
        _check_int("--n", args.n, 1, MAX_DRAWN, " (images drawn in one figure)")
        _check_float("--temperature", args.temperature, MAX_SPAN)
    elif args.command == "interpolate":
        _check_int("--steps", args.steps, 2, MAX_DRAWN, " (the two ends and the images between them)")
    elif args.command == "traverse":
        _check_float("--span", args.span, MAX_SPAN)
    model = open_model(args.run, device=args.device)
    cfg, vae, data = model.config, model.vae, model.data
    if args.command == "traverse":
        layers = vae.layers()  # latent site -> size, top first
        layer = args.layer if args.layer is not None else next(iter(layers))
        if layer not in layers:
            raise ValueError(
                f"--layer {layer} is not a latent layer of this model; its layers (top first): {', '.join(layers)}"
            )
        bad = [d for d in args.dims or [] if not 0 <= d < layers[layer]]
        if bad:
            where = "the latent space" if len(layers) == 1 else f"layer {layer}"
            raise ValueError(f"--dims {bad} out of range: {where} has dimensions 0..{layers[layer] - 1}")
    out = Path(args.out or Path(args.run) / "latent")
    inside = Path(args.out or args.run)  # folders below the one named are made there, never through a link
    device, shape = next(vae.parameters()).device, data.image_shape

    def test_image(i: int) -> torch.Tensor:
        if not 0 <= i < data.test.shape[0]:
            raise ValueError(f"test image {i} is out of range: the test split has images 0..{data.test.shape[0] - 1}")
        return data.test[i].to(device)

    def user_images(paths: list[str]) -> torch.Tensor:  # binarized at 0.5 for a model of binary pixels
        if data.render is not None:
            raise ValueError(
                f"{args.run} models the latent codes of another model ({data.source}), not images: it cannot "
                "read image files; give test image indices instead"
            )
        binary = cfg.model.likelihood == "bernoulli"
        x = latent.read_images(paths, shape, binarize=binary, invert=args.invert)
        hint = latent.background_hint(x, data.stored("train"))
        if hint:
            print(f"note: {hint}{'; if so, leave out --invert' if args.invert else '; if so, add --invert'}")
        return x.to(device)

    written, numbers = [], {}
    if args.command == "sample":
        images = latent.sample(vae, args.n, args.temperature, args.seed)
        title = f"Samples, temperature {args.temperature:g}"
        written.append(
            plot_images(
                *data.draw(images),
                max(1, int(args.n**0.5)),
                title,
                out / f"samples_t{args.temperature:g}_n{args.n}_seed{args.seed}.png",
                inside,
            )
        )
    elif args.command == "interpolate":
        a, b = args.between
        if a.isdigit() != b.isdigit():
            raise ValueError(f"--between takes two test image indices or two image files, not one of each ({a}, {b})")
        if a.isdigit():
            ends, name = (test_image(int(a)), test_image(int(b))), f"test images {a} to {b}"
        else:
            ends = tuple(user_images([a, b]))
            name = f"{Path(a).name} to {Path(b).name}"
        paths = latent.interpolate(vae, *ends, args.steps)
        first, last = (e.reshape(1, -1).to(paths["linear"].dtype) for e in ends)  # the inputs, at both ends
        rows = torch.cat([first, paths["linear"], last, first, paths["spherical"], last])
        stem = "_".join(Path(e).stem for e in (a, b))
        written.append(
            plot_images(
                *data.draw(rows),
                2,
                f"{name[0].upper()}{name[1:]}: the two inputs at the ends; decoded paths between their codes, "
                "linear (top), spherical (bottom)",
                out / f"interpolate_{stem}_steps{args.steps}.png",
                inside,
            )
        )
    elif args.command == "traverse":
        per_layer = latent.active_units_per_layer(vae, data.test)
        units = per_layer[layer]
        dims = args.dims if args.dims else units["order"][:10]
        if args.image is not None:
            codes = vae.point(test_image(args.image)[None])
        else:
            top = next(iter(layers))
            codes = vae.complete({top: torch.zeros(1, layers[top], device=device)})
        grid = latent.traverse(vae, {name: z[0] for name, z in codes.items()}, dims, args.span, layer=layer)
        which = "Dimensions" if len(layers) == 1 else f"Layer {layer}, dimensions"
        start = f"image{args.image}" if args.image is not None else "origin"
        picked = "dims" + "-".join(map(str, args.dims)) if args.dims else "top10"
        stem = f"traverse_{layer}_{start}_{picked}_span{args.span:g}"
        written.append(
            plot_images(
                *data.draw(grid),
                len(dims),
                f"{which} {dims} from {-args.span:g} to {args.span:g}",
                out / f"{stem}.png",
                inside,
            )
        )
        numbers = {**units, "dims": dims, "layers": {name: u["active"] for name, u in per_layer.items()}}
        counts = ", ".join(
            f"{u['active']} of {layers[name]}" if len(layers) == 1 else f"{name} {u['active']} of {layers[name]}"
            for name, u in per_layer.items()
        )
        print(f"active units (Cov_x E[z|x] > {units['threshold']:g}, {units['images']} test images): {counts}")
    elif args.command == "encode":
        x = getattr(data, args.split)
        codes = latent.encode(vae, x)
        labels = data.test_labels if args.split == "test" and data.test_labels is not None else None
        path = Path(args.file) if args.file else out / f"codes_{args.split}.npz"
        extra = {"labels": labels.numpy()} if labels is not None else {}
        buffer = io.BytesIO()
        np.savez(buffer, **codes, **extra)  # the file is the name given: nothing appended to it
        written.append(write_atomic(path, buffer.getvalue(), path.parent if args.file else inside))
    else:  # reconstruct
        x = user_images(args.images)
        rows = torch.cat([x, vae.reconstruct(x)])
        title = "Your images (top) and their reconstructions"
        more = f"_and{len(args.images) - 1}" if len(args.images) > 1 else ""
        written.append(
            plot_images(*data.draw(rows), 2, title, out / f"reconstruct_{Path(args.images[0]).stem}{more}.png", inside)
        )
    if numbers:
        written.append(write_atomic(out / f"{stem}.json", json.dumps(numbers, indent=2) + "\n", inside))
    for path in written:
        print(f"wrote {path}")
    return 0


def _engine_note(summary: dict) -> str:
    """How the steps ran, for the summary line: the engine, and a compilation's seconds (part of the
    training time)."""
    engine = summary.get("engine")
    if not engine:
        return ""
    compiled = summary.get("compile_time_s") or 0.0
    return f" ({engine} step" + (f"; {compiled:.0f} s of it compiling)" if compiled else ")")


def _print_summary(summary: dict, run_dir: Path) -> None:
    final = summary["final"]
    print(f"\nrun folder: {run_dir}")
    print(
        f"epochs: {summary['epochs_run']} (best on valid: {summary['best_epoch']}"
        + (f"; learning-rate drops: {summary['lr_drops']}" if summary.get("lr_drops") else "")
        + "), "
        f"wall time {summary['wall_time_s']:.0f} s, {summary['images_per_s']:.0f} training images/s "
        f"on {summary['environment']['device']}" + _engine_note(summary)
    )
    if summary["config"]["train"]["kl_weight"] != 1 or summary["config"]["model"]["structure"] == "semi_supervised":
        print(f"trained {summary['objective']}")
    bound = summary.get("train_bound", "-ELBO")
    if bound != "-ELBO":
        print(
            f"each epoch's train number was the training objective ({bound}); below, every split is "
            "evaluated by the ELBO at beta = 1, and the test NLL by the IWAE bound"
        )
    print(f"{'nats per image':<42}{'mean':>10}{'± s.e.':>10}")
    rows = [
        ("train negative ELBO", final["train_neg_elbo"]),
        ("valid negative ELBO", final["valid_neg_elbo"]),
        ("test negative ELBO", final["test_neg_elbo"]),
    ]
    if "test_nll" in final:
        rows.append((f"test NLL, IWAE K={final['iwae_k']} ({final['iwae_images']} images)", final["test_nll"]))
    for name, est in rows:
        print(f"{name:<42}{est['mean']:>10.2f}{est['se']:>10.2f}")
    if "test_nll_bits_per_dim" in final:
        est = final["test_nll_bits_per_dim"]
        print(f"{'test NLL in bits per dimension':<42}{est['mean']:>10.4f}{est['se']:>10.4f}")
    if summary.get("likelihood_note"):
        print(f"note: {summary['likelihood_note']}")
    units = summary.get("active_units", {})
    if units:
        counts = ", ".join(f"{layer} {u['active']} of {u['of']}" for layer, u in units.items())
        print(f"active units (Cov_x E[z|x] > {next(iter(units.values()))['threshold']:g}): {counts}")
    classification = summary.get("classification")
    if classification:
        print(f"test classification error: {classification['test_error']:.2%} ({classification['images']:,} images)")
    if "labels" in summary:
        print(f"labels: {summary['labels']['protocol']}")
    clustering = summary.get("clustering")
    if clustering:
        print(
            f"test clustering: accuracy {clustering['accuracy']:.1%}, NMI {clustering['nmi']:.3f} "
            f"({clustering['clusters_used']} of {clustering['components']} components used, "
            f"{clustering['images']:,} images)"
        )


def _train(args) -> int:
    from pyro_vae.runs.folder import RunDir
    from pyro_vae.training.loop import fit

    if args.device:
        args.overrides = [*args.overrides, f"train.device={args.device}"]
    if args.tensorboard:
        args.overrides = [*args.overrides, "train.tensorboard=true"]
    if args.resume:
        run_dir = Path(args.resume)
        if not RunDir(run_dir).config.is_file():
            raise ValueError(f"{run_dir} is not a run folder (no config.toml); nothing to resume")
        if args.config:
            raise ValueError("--resume takes the config from the run folder; use --set for allowed changes")
        cfg = load_config(RunDir(run_dir).config, args.overrides)
    else:
        run_dir = Path(args.out or "runs/default")
        cfg = load_config(args.config, args.overrides)
    summary = fit(
        cfg,
        run_dir,
        resume=bool(args.resume),
        progress=not args.no_progress,
        figures=not args.no_figures,
        overwrite=args.overwrite,
    )
    if summary:  # under torchrun, only rank 0 returns one
        _print_summary(summary, run_dir)
    return 0


def _evaluate(args) -> int:
    from pyro_vae.components.likelihoods import density_note
    from pyro_vae.data.pixels import evenly_spaced
    from pyro_vae.evaluation.metrics import as_dict, evaluate, with_bits_per_dim
    from pyro_vae.runs.trained import open_model

    if args.k < 1:
        raise ValueError(f"--k must be at least 1, got {args.k}")
    _check_int("--k", args.k, 1, MAX_SAMPLES, " (importance samples per image)")
    _check_int("--images", args.images, 0, None, " (0: the whole test split; more than it has: all of them)")
    model = open_model(args.run, args.checkpoint, args.device)
    cfg, vae, data = model.config, model.vae, model.data
    device = next(vae.parameters()).device
    x = data.test[evenly_spaced(data.test.shape[0], args.images)].to(device)
    results = evaluate(
        vae,
        x,
        k=args.k,
        batch_size=max(1, min(100, cfg.train.eval_batch_size)),
        seed=cfg.eval.seed,
        progress=not args.no_progress,
        desc=f"K={args.k}",
    )
    results = with_bits_per_dim(results, x)
    out = Path(args.run) / f"evaluation_k{args.k}.json"
    check_regular(out, "results file")  # before the work: a link there is refused, not written through
    record = {
        "checkpoint": args.checkpoint,
        "k": args.k,
        "images": x.shape[0],
        "unit": "nats per image",
        **as_dict(results),
    }
    note = density_note(vae.likelihood, cfg.model.likelihood, x)
    if note:
        record["likelihood_note"] = note
    write_atomic(out, json.dumps(record, indent=2), Path(args.run))
    if note:
        print(f"note: {note}")
    for name, est in results.items():
        unit = "bits per dimension" if name.endswith("bits_per_dim") else "nats"
        text = f"{est.mean:.4f} ± {est.se:.4f}" if unit != "nats" else str(est)
        print(f"test {name} (K={args.k}, {x.shape[0]} images): {text} {unit}")
    print(f"wrote {out}")
    return 0


def _int_list(text: str, option: str, high: int = MAX_SAMPLES) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{option} takes comma-separated integers, e.g. 1,10,100; got {text!r}") from None
    if not values:
        raise ValueError(f"{option} needs at least one value")
    bad = [v for v in values if not 1 <= v <= high]
    if bad:
        raise ValueError(f"{option} {text}: {bad[0]} is out of range; every value must be between 1 and {high:,}")
    return values


def _compare(args) -> int:
    from pyro_vae.data.pixels import decode, evenly_spaced
    from pyro_vae.lab import discrete
    from pyro_vae.lab.estimators import LabConfig, run_lab
    from pyro_vae.lab.report import format_table, write_outputs
    from pyro_vae.runs.trained import open_model

    _check_int("--images", args.images, 1, None, " (more than the test split has: all of them)")
    _check_int("--grad-images", args.grad_images, 1)
    _check_int("--reps", args.reps, 2, MAX_LAB_REPS, " (estimates per image, at least 2 for a spread)")
    _check_int("--grad-reps", args.grad_reps, 2, MAX_LAB_REPS, " (gradient draws, at least 2 for a spread)")
    _check_int("--groups", args.groups, 1, MAX_SAMPLES)
    _check_int("--seed", args.seed, 0, MAX_SEED)
    lab = LabConfig(
        images=args.images,
        ks=_int_list(args.k, "--k"),
        particles=_int_list(args.particles, "--particles", MAX_LAB_PARTICLES),
        reps=args.reps,
        grad_images=args.grad_images,
        grad_reps=args.grad_reps,
        seed=args.seed,
        snr_ks=_int_list(args.snr_k, "--snr-k"),
        groups=args.groups,
    )
    model = open_model(args.run, args.checkpoint, args.device)
    vae, data = model.vae, model.data
    device = next(vae.parameters()).device
    command = "pyro-vae compare " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["compare"] else ""
    out = Path(args.out) if args.out else Path(args.run) / "compare"
    if discrete.has_discrete_site(vae, decode(data.stored("test")[:2]).to(device)):
        return _compare_discrete(vae, data, args, lab, command, out)
    x = data.test[evenly_spaced(data.test.shape[0], lab.images)].to(device)
    result = run_lab(vae, x, lab, progress=not args.no_progress)
    print(format_table(result))
    for path in write_outputs(result, out, command, inside=args.out or args.run):
        print(f"wrote {path}")
    return 0


def _compare_discrete(vae, data, args, lab, command: str, out: Path) -> int:
    """``compare`` on a structure with a discrete guide site: the discrete-site laboratory
    (:mod:`pyro_vae.lab.discrete`), ``--grad-images`` images, ``--grad-reps`` estimates."""
    from pyro_vae.data.pixels import evenly_spaced
    from pyro_vae.lab import discrete

    cfg = discrete.DiscreteLabConfig(images=lab.grad_images, groups=lab.grad_reps, seed=lab.seed)
    device = next(vae.parameters()).device
    x = data.test[evenly_spaced(data.test.shape[0], cfg.images)].to(device)
    result = discrete.run_discrete_lab(vae, x, cfg)
    print(discrete.format_table(result))
    for path in discrete.write_outputs(result, out, command, inside=args.out or args.run):
        print(f"wrote {path}")
    return 0


def _plot(args) -> int:
    from pyro_vae.evaluation.plots import make_figures
    from pyro_vae.runs.trained import open_model

    model = open_model(args.run, device=args.device)
    for path in make_figures(args.run, model.vae, model.data):
        print(path)
    return 0


def _export(args) -> int:
    from pyro_vae.runs.export import export_model

    command = "pyro-vae " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["export"] else ""
    for path in export_model(args.run, args.out, args.checkpoint, command, overwrite=args.overwrite):
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command != "config":
        cpu_kernels.choose()  # before the command's first tensor operation (a process-wide choice)
    from pyro_vae.training.stopping import TrainingError, TrainingInterrupted

    try:
        _load_plugins(args)
        if args.command == "config":
            print(to_toml(load_config(args.config, args.overrides)), end="")
            return 0
        commands = {
            "train": _train,
            "evaluate": _evaluate,
            "compare": _compare,
            "plot": _plot,
            "export": _export,
            **dict.fromkeys(("sample", "interpolate", "traverse", "encode", "reconstruct"), _latent),
        }
        return commands[args.command](args)
    except ValueError as exc:
        print(f"pyro-vae {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(f"pyro-vae {args.command}: {exc}", file=sys.stderr)
        return 128 + exc.signal_number
    except TrainingError as exc:
        print(f"pyro-vae {args.command}: training stopped: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"pyro-vae {args.command}: interrupted; a train run keeps its last epoch's checkpoint "
            "(continue it with --resume RUN_DIR)",
            file=sys.stderr,
        )
        return 130


def run() -> NoReturn:
    """The console entry point (``pyro-vae``, ``python -m pyro_vae``): :func:`main`, then an
    immediate exit once the output is flushed. A normal exit runs the static destructors of
    torch's libraries, which touch about 120 MB of memory that the run never used (peak RSS of
    ``import torch`` alone: 0.57 GB with ``os._exit``, 0.69 GB without, by ``/usr/bin/time -v``);
    by the time ``main`` returns every file we wrote is closed. An exception that escapes
    ``main`` (or argparse's exit) leaves the normal way."""
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
