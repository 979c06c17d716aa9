"""Run folders and what is kept in them: checkpoints (:mod:`~pyro_vae.runs.checkpoint`), the
folder's layout, its metrics log and reading a trained run (:mod:`~pyro_vae.runs.folder`), the
device and machine a run records (:mod:`~pyro_vae.runs.device`), portable exported models
(:mod:`~pyro_vae.runs.export`), and the one way to open either (:mod:`~pyro_vae.runs.trained`)."""
