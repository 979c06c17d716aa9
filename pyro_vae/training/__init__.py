"""Training: the loop (:mod:`~pyro_vae.training.loop`, start there), the step engine that runs
each step eagerly, in a CUDA graph or compiled (:mod:`~pyro_vae.training.engine`), the pre-flight
checks (:mod:`~pyro_vae.training.checks`), the stop rules (:mod:`~pyro_vae.training.stopping`)
and data parallelism (:mod:`~pyro_vae.training.distributed`)."""
