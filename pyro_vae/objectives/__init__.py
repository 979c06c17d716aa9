"""What training optimises: the hand-written closed form the Pyro losses are checked against
(:mod:`~pyro_vae.objectives.closed_form`), the gradient estimators as surrogate losses
(:mod:`~pyro_vae.objectives.surrogates`), the sites of one draw of a model and guide
(:mod:`~pyro_vae.objectives.sites`), the registered estimators, one class each
(:mod:`~pyro_vae.objectives.elbos`), and the one loss path that builds a structure's training loss
(:mod:`~pyro_vae.objectives.fast`)."""
