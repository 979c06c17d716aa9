"""pyro-vae: a variational autoencoder written the probabilistic-programming way, in Pyro."""

from pyro_vae import hierarchical, mixture, semi_supervised  # noqa: E402, F401  (register model.structure=...)
from pyro_vae._version import __version__  # noqa: F401
from pyro_vae.components.guides import GUIDES  # noqa: E402
from pyro_vae.components.likelihoods import LIKELIHOODS  # noqa: E402
from pyro_vae.components.nets import NETWORKS  # noqa: E402
from pyro_vae.components.priors import PRIORS  # noqa: E402
from pyro_vae.config import ConfigError, ExperimentConfig, apply_overrides, load_config  # noqa: E402
from pyro_vae.data import DATASETS, Splits, load_data  # noqa: E402
from pyro_vae.evaluation.metrics import evaluate, iwae_log_likelihood  # noqa: E402
from pyro_vae.model import STRUCTURES, VAE, Structure, build_model, build_vae  # noqa: E402
from pyro_vae.objectives.elbos import ELBOS, build_elbo  # noqa: E402
from pyro_vae.plugins import check_component, load_plugin  # noqa: E402
from pyro_vae.runs import codes  # noqa: E402, F401  (register data.name=codes: it opens a trained model)
from pyro_vae.runs.export import export_model  # noqa: E402
from pyro_vae.runs.trained import TrainedModel, open_model  # noqa: E402
from pyro_vae.training.loop import fit  # noqa: E402

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "apply_overrides",
    "load_config",
    "DATASETS",
    "Splits",
    "load_data",
    "ELBOS",
    "build_elbo",
    "evaluate",
    "iwae_log_likelihood",
    "GUIDES",
    "LIKELIHOODS",
    "VAE",
    "build_vae",
    "STRUCTURES",
    "Structure",
    "build_model",
    "PRIORS",
    "NETWORKS",
    "fit",
    "open_model",
    "TrainedModel",
    "export_model",
    "check_component",
    "load_plugin",
]
