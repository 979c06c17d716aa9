"""07 — The latent space: what a 2-D VAE has learned, and what more dimensions buy.

Trains VAEs with latent sizes 2, 5, 10 and 20 (``pyro_vae.fit``). For the 2-D one it draws the
decoded manifold (a grid of z at standard-normal quantiles) and the test set's latent means
coloured by digit, with the package's own plotting functions. For all four it shows test images
with their reconstructions side by side and reports the reconstruction term and the negative
ELBO: a bigger latent space reconstructs more detail.

    python examples/07_latent_space.py [--smoke-test] [--out DIR] [--device cpu|cuda]

Writes manifold.png, latents.png, reconstructions.png and results.json.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from _common import parse_args, save_figure, save_results, train_vae

from pyro_vae.data.pixels import evenly_spaced
from pyro_vae.evaluation.metrics import evaluate
from pyro_vae.evaluation.plots import image_grid, latent_means, plot_latents, plot_manifold

SIZES = (2, 5, 10, 20)


def main() -> None:
    args = parse_args(__doc__, "07_latent_space")
    epochs, subset = (3, 2000) if args.smoke_test else (15, 0)
    results, recon_rows, data = {}, [], None
    for latent in SIZES:
        _, vae, data = train_vae(args.out / f"latent{latent}", latent, epochs, subset, args.seed, args.device)
        x_test = data.test.to(args.device)
        with torch.no_grad():
            codes = latent_means(vae, x_test)  # on the CPU
            recon_nats = float(-vae.likelihood(vae.decoder(codes.to(args.device))).log_prob(x_test).mean())
        neg_elbo = evaluate(vae, x_test, seed=args.seed)["neg_elbo"].mean
        results[f"latent{latent}"] = {"reconstruction_nats": recon_nats, "test_neg_elbo": neg_elbo}
        print(f"L={latent:>2}: reconstruction {recon_nats:7.2f} nats, test negative ELBO {neg_elbo:7.2f} nats")
        x = x_test[evenly_spaced(x_test.shape[0], 10)]
        recon_rows.append(vae.reconstruct(x).cpu())
        if latent == 2:
            plot_manifold(vae, data.image_shape, args.out / "manifold.png")
            plot_latents(codes, data.test_labels, args.out / "latents.png")
            print(f"wrote {args.out / 'manifold.png'} and {args.out / 'latents.png'}")
    x = data.test[evenly_spaced(data.test.shape[0], 10)]
    grid = image_grid(torch.cat([x, *recon_rows]), data.image_shape, 1 + len(SIZES))
    fig, ax = plt.subplots(figsize=(8, 4.6))
    ax.imshow(grid.numpy(), cmap="gray_r", vmin=0, vmax=1)
    ax.set_yticks([14 + 28 * i for i in range(1 + len(SIZES))], ["test image", *[f"L = {s}" for s in SIZES]])
    ax.set_xticks([])
    ax.set_title("Reconstructions by latent size")
    save_figure(fig, args.out, "reconstructions.png")
    save_results({"epochs": epochs, "sizes": list(SIZES), **results}, args.out)


if __name__ == "__main__":
    main()
