"""The estimator laboratory: bias, spread and gradient signal-to-noise of the ELBO estimators
measured on a trained VAE (:mod:`~pyro_vae.lab.estimators`), and its tables and figures
(:mod:`~pyro_vae.lab.report`)."""
