"""Long recipes: test NLL (IWAE bound, K=5000, nats) on static binarized MNIST, and for a clustering
structure (``mixture``) its test clustering accuracy and NMI, for a semi-supervised one its test
classification error and the labels protocol.

    python benchmarks/nll.py --config benchmarks/configs/FILE.toml --name NAME [--threads N]
                             [--eval-threads N] [--set section.key=value ...]

Trains the config with :func:`pyro_vae.fit` into ``runs/NAME`` (resumable: rerun the command to
continue an interrupted run), then writes ``benchmarks/results/NAME.json`` with the test NLL, its
standard error, epochs, wall time, the machine and the published reference points of the
model class (:data:`REFERENCES`, chosen by the config's prior, guide and ELBO), atomically; then
draws the run's figures (a failure there is logged and leaves the JSON as written: redraw them with
``pyro-vae plot runs/NAME``).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import time
from pathlib import Path

import torch

from pyro_vae import cpu_kernels, fit, load_config
from pyro_vae.evaluation.plots import make_figures
from pyro_vae.files import write_atomic
from pyro_vae.runs.folder import RunDir
from pyro_vae.runs.trained import open_model

HERE = Path(__file__).resolve().parent
# Published test NLLs (nats, static binarized MNIST) per model class, as cited in this project's issues.
REFERENCES = {
    "standard": {"Burda et al. 2016 (VAE k=1, 784-200-200-50)": 88.71, "pythae reproduction (200 samples)": 89.78},
    "mixture_of_gaussians": {},  # none recorded here: compare with the standard row of the same recipe
    "vamp": {"Tomczak & Welling 2018 (VampPrior, one stochastic layer)": 85.57},
    "flow": {},  # none recorded here: compare with the standard row of the same recipe
    "iwae": {"Burda et al. 2016 (IWAE objective, k=50, static)": 87.10, "pythae reproduction (IWAE, k=50)": 86.82},
    # Tomczak & Welling 2018 (arXiv 1705.07120), static MNIST, two stochastic layers; as cited in issue 35
    # ("about 86.0" and "about 83.2", to be confirmed from the paper's table before they are quoted as its numbers)
    "hierarchical_standard_normal": {"issue 35's citation of Tomczak & Welling 2018, HVAE L=2, standard prior": 86.0},
    "hierarchical_vamp": {"issue 35's citation of Tomczak & Welling 2018, HVAE L=2, VampPrior": 83.2},
    "mixture": {},  # a clustering model: its target is the clustering accuracy (see CLUSTERING_REFERENCES)
    "semi_supervised": {},  # its target is the test classification error (see CLASSIFICATION_REFERENCES)
}
# Published test classification errors on MNIST with 100 labels, as cited in issue 33.
CLASSIFICATION_REFERENCES = {
    "Pyro's ss-vae tutorial (enumeration + auxiliary loss)": 0.0681,
    "Kingma et al. 2014, M2": 0.1197,
}
# Published test clustering accuracies on MNIST (10 clusters), as cited in issue 33.
CLUSTERING_REFERENCES = {"Dilokthanakul et al. 2016 (GMVAE, K = 10), mean": 0.78, "the same, best run": 0.82}


def model_class(cfg) -> str:
    """Which reference row a config belongs to."""
    if cfg.model.structure in ("mixture", "semi_supervised"):
        return cfg.model.structure
    if cfg.model.structure == "hierarchical":
        return f"hierarchical_{cfg.model.prior}"
    if cfg.model.prior != "standard_normal":
        return cfg.model.prior
    if cfg.model.guide != "diag_normal":
        return "flow"
    return "iwae" if cfg.train.elbo in ("iwae", "iwae_dreg", "miwae", "ciwae", "piwae") else "standard"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=HERE / "configs" / "standard_vae.toml", help="a TOML recipe")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--name", required=True, help="names the run folder runs/NAME and the result")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument(
        "--eval-threads", type=int, default=0, help="torch threads for the final evaluation (0 = as --threads)"
    )
    parser.add_argument("--runs", default="runs", help="folder of the run folder")
    parser.add_argument("--results", default=HERE / "results", help="folder of the result JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cpu_kernels.choose()  # before the first tensor operation: the CPU kernels `pyro-vae train` runs
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    args.out = Path(args.runs) / args.name
    args.result = Path(args.results) / f"{args.name}.json"
    t0 = time.perf_counter()
    # The figures come after the result is written: a failure drawing them cannot lose the numbers.
    summary = fit(
        cfg,
        args.out,
        resume=RunDir(Path(args.out)).last.exists(),
        progress=False,
        figures=False,
        eval_threads=args.eval_threads,
    )
    final = summary["final"]
    result = {
        "recipe": str(Path(args.config).relative_to(HERE.parent))
        if Path(args.config).is_absolute()
        else str(args.config),
        "overrides": args.overrides,
        "command": shlex.join(  # (quoted where needed: the line reruns as it is)
            ["python", "benchmarks/nll.py", "--config", str(args.config), "--name", args.name]
            + (["--threads", str(args.threads)] if args.threads else [])
            + (["--eval-threads", str(args.eval_threads)] if args.eval_threads else [])
            + [arg for o in args.overrides for arg in ("--set", o)]
        ),
        "test_nll": final["test_nll"],
        "test_neg_elbo": final["test_neg_elbo"],
        "iwae_k": final["iwae_k"],
        "iwae_images": final["iwae_images"],
        "epochs_run": summary["epochs_run"],
        "best_epoch": summary["best_epoch"],
        "train_time_s": summary["train_time_s"],
        "wall_time_s_this_invocation": time.perf_counter() - t0,
        "environment": summary["environment"],
        "model_class": model_class(cfg),
        "references_nats": REFERENCES[model_class(cfg)],
        **(
            {"clustering": summary["clustering"], "clustering_references": CLUSTERING_REFERENCES}
            if "clustering" in summary
            else {}
        ),
        **(
            {
                "classification": summary["classification"],
                "labels": summary["labels"],
                "classification_references": CLASSIFICATION_REFERENCES,
            }
            if "classification" in summary
            else {}
        ),
        "config": summary["config"],
    }
    Path(args.result).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(Path(args.result), json.dumps(result, indent=2) + "\n", Path(args.result).parent)
    print(json.dumps({k: result[k] for k in ("test_nll", "epochs_run", "best_epoch", "train_time_s")}, indent=2))
    try:
        model = open_model(args.out, device=summary["environment"]["device"])
        make_figures(args.out, model.vae, model.data)
    except Exception as exc:  # noqa: BLE001 (the result is written; the figures can be redrawn with pyro-vae plot)
        logging.warning(
            "the figures failed (%s: %s); redraw them with: pyro-vae plot %s", type(exc).__name__, exc, args.out
        )


if __name__ == "__main__":
    main()
