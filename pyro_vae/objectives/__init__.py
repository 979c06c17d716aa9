"""What training optimises: the hand-written closed form the Pyro losses are checked against
(:mod:`~pyro_vae.objectives.closed_form`), the gradient estimators as surrogate losses
(:mod:`~pyro_vae.objectives.surrogates`), the registered Pyro ELBOs
(:mod:`~pyro_vae.objectives.elbos`) and the same losses without Pyro's per-step tracing
(:mod:`~pyro_vae.objectives.fast`)."""
