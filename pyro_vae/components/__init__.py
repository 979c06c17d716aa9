"""The swappable parts of a VAE, each kind in one registry: networks
(:mod:`~pyro_vae.components.nets`), priors p(z) (:mod:`~pyro_vae.components.priors`), likelihoods
p(x | z) (:mod:`~pyro_vae.components.likelihoods`) and guides q(z | x)
(:mod:`~pyro_vae.components.guides`). Importing this package registers every component."""

from pyro_vae.components import guides, likelihoods, nets, priors  # noqa: F401
