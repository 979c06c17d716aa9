"""How a trained VAE is scored and shown: negative ELBO and importance-sampled log-likelihood in
nats (:mod:`~pyro_vae.evaluation.metrics`) and the run's figures (:mod:`~pyro_vae.evaluation.plots`)."""
