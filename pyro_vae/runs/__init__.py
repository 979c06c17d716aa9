"""Run folders and what is kept in them: checkpoints (:mod:`~pyro_vae.runs.checkpoint`), the
folder's layout, its metrics log and reopening a trained run (:mod:`~pyro_vae.runs.folder`), and
the device and machine a run records (:mod:`~pyro_vae.runs.device`)."""
