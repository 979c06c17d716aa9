from pyro_vae.cli import run

run()
