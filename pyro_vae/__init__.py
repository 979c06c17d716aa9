"""pyro-vae: a variational autoencoder written the probabilistic-programming way, in Pyro."""

from ._version import __version__  # noqa: F401
from .config import ConfigError, ExperimentConfig, apply_overrides, load_config  # noqa: E402
from .data import DATASETS, Splits, load_data  # noqa: E402
from .elbos import ELBOS, build_elbo  # noqa: E402
from .evaluate import evaluate, iwae_log_likelihood  # noqa: E402
from .guides import GUIDES  # noqa: E402
from .likelihoods import LIKELIHOODS  # noqa: E402
from .model import VAE, build_vae  # noqa: E402
from .priors import PRIORS  # noqa: E402
from .train import fit, load_run  # noqa: E402

__all__ = [
    "ConfigError", "ExperimentConfig", "apply_overrides", "load_config", "DATASETS", "Splits",
    "load_data", "ELBOS", "build_elbo", "evaluate", "iwae_log_likelihood", "GUIDES", "LIKELIHOODS",
    "VAE", "build_vae", "PRIORS", "fit", "load_run",
]  # fmt: skip
