"""Figures of a trained run, written to ``RUN/figures``: loss curves, test reconstructions,
samples from the prior, the test set's latent means coloured by label (PCA to 2-D when
L > 2; ``latents.png`` for the top layer, ``latents_NAME.png`` for each layer below it) and, for a
model of one 2-D latent layer, the decoded manifold grid."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pyro_vae.data import Splits  # noqa: E402
from pyro_vae.data.pixels import decode, evenly_spaced, image_grid  # noqa: E402
from pyro_vae.evaluation.label_scores import WATCHED  # noqa: E402
from pyro_vae.evaluation.metrics import eval_mode, layer_means  # noqa: E402
from pyro_vae.files import figure_bytes, write_atomic  # noqa: E402
from pyro_vae.model import Structure  # noqa: E402
from pyro_vae.runs.folder import RunDir  # noqa: E402


def show_grid(ax, grid: torch.Tensor) -> None:
    """Draw an :func:`image_grid` (grey: ink dark on white, as the figures show MNIST; colour as is)."""
    if grid.dim() == 2:
        ax.imshow(grid.numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(grid.numpy(), interpolation="nearest")


def save_figure(fig, path: Path, inside: Path | None = None) -> Path:
    """Write ``fig`` to ``path`` as PNG and close it: atomically, its folders made inside ``inside``
    (default: ``path``'s folder) without following a link (:func:`pyro_vae.files.write_atomic`)."""
    try:
        data = figure_bytes(fig, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return write_atomic(path, data, inside)


def plot_curves(rows: list[dict], out: Path, inside: Path | None = None) -> Path:
    """The train / valid / test curves of a run's ``metrics.jsonl`` lines (:meth:`RunDir.read_metrics`),
    each labelled with its bound: train with the training objective (``train_bound``: an IWAE
    bound in an IWAE run), valid and test with the negative ELBO."""
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [r["epoch"] for r in rows]
    bound = rows[-1].get("train_bound")  # what training minimised (a file's text: shown only if short)
    train = f"train ({bound})" if isinstance(bound, str) and len(bound) <= 60 else "train"
    for key, label in (
        ("train_neg_elbo", train),
        ("valid_neg_elbo", "valid (-ELBO)"),
        ("test_neg_elbo", "test (-ELBO)"),
    ):
        ax.plot(epochs, [r[key] for r in rows], marker="o" if len(rows) < 30 else None, label=label)
    if len(rows) > 3:  # the first epoch's loss would flatten everything after it
        later = [r[k] for r in rows[max(1, len(rows) // 10) :] for k in ("train_neg_elbo", "valid_neg_elbo")]
        low, high = min(later), max(later)
        ax.set_ylim(low - 0.1 * (high - low), high + 0.1 * (high - low))
    ax.set(xlabel="epoch", ylabel="negative bound (nats per image)", title="Training curves")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    for key in ("test_error", "test_cluster_accuracy"):  # one on the right axis: the error, or the accuracy
        label = WATCHED[key]
        scores = [r.get(key) for r in rows]  # watched against the test labels, by the structures that can
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores):
            right = ax.twinx()
            (line,) = right.plot(epochs, [100 * v for v in scores], color="black", linestyle="--")
            right.set_ylabel(f"{label} (%)")
            handles, labels = handles + [line], labels + [f"{label} (right)"]
            break
    ax.legend(handles, labels)
    return save_figure(fig, out, inside)


Draw = Callable[[torch.Tensor], tuple[torch.Tensor, tuple]]  # rows -> pictures and their shape (Splits.draw)


def _drawn(rows: torch.Tensor, image_shape, draw: Draw | None) -> tuple[torch.Tensor, tuple]:
    return draw(rows) if draw is not None else (rows, image_shape)


def plot_images(
    images: torch.Tensor, image_shape, nrow: int, title: str, out: Path, inside: Path | None = None
) -> Path:
    grid = image_grid(images, image_shape, nrow)
    fig, ax = plt.subplots(figsize=(grid.shape[1] / 28 * 0.7, grid.shape[0] / 28 * 0.7 + 0.4))
    show_grid(ax, grid)
    ax.set_title(title)
    ax.axis("off")
    return save_figure(fig, out, inside)


def latent_means(vae: Structure, x: torch.Tensor, batch_size: int = 1000, layer: str | None = None) -> torch.Tensor:
    """Means of q(z | x) of one layer (default the top one) for every image, (N, d) on the CPU
    (:func:`layer_means`)."""
    means = layer_means(vae, x, batch_size)
    return means[layer if layer is not None else next(iter(means))]


def pca_2d(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project (N, L) onto its two leading principal axes; returns the projection and the
    fraction of variance each axis explains."""
    centred = z - z.mean(0)
    _, s, v = torch.linalg.svd(centred, full_matrices=False)
    explained = s**2 / (s**2).sum()
    return centred @ v[:2].T, explained[:2]


def plot_latents(
    z: torch.Tensor, labels: torch.Tensor | None, out: Path, inside: Path | None = None, layer: str | None = None
) -> Path:
    """The latent means ``z`` (N, d) of the test set coloured by label (PCA to 2-D when d > 2);
    ``layer`` names the layer in the title (a model of several)."""
    z = z.detach().cpu().double()
    if z.shape[1] == 2:
        xy, axes = z, ("z[0]", "z[1]")
    else:
        xy, ev = pca_2d(z)
        axes = (f"PC 1 ({ev[0]:.0%} of variance)", f"PC 2 ({ev[1]:.0%})")
    fig, ax = plt.subplots(figsize=(6, 5))
    order = torch.randperm(xy.shape[0], generator=torch.Generator().manual_seed(0))  # no class drawn on top
    colours = labels.cpu()[order].numpy() if labels is not None else None
    xy = xy[order].numpy()
    points = ax.scatter(xy[:, 0], xy[:, 1], c=colours, cmap="tab10", s=3, alpha=0.6)
    if labels is not None:
        fig.colorbar(points, ax=ax, ticks=range(10), label="digit")
    kind = "latent means" if z.shape[1] == 2 else f"PCA of the {z.shape[1]}-D latent means"
    ax.set(xlabel=axes[0], ylabel=axes[1], title=f"Test set: {kind}" + (f" of {layer}" if layer else ""))
    return save_figure(fig, out, inside)


@torch.no_grad()
def plot_manifold(
    vae: Structure, image_shape, out: Path, n: int = 20, inside: Path | None = None, draw: Draw | None = None
) -> Path:
    """Decode a grid of z at the standard-normal quantiles 0.05 .. 0.95 (a model of one 2-D latent layer);
    ``draw``: how rows are drawn (:meth:`~pyro_vae.data.splits.Splits.draw`), else in ``image_shape``."""
    device = next(vae.parameters()).device
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n))
    zz = torch.stack(torch.meshgrid(q, q.flip(0), indexing="xy"), -1).reshape(-1, 2)
    images, image_shape = _drawn(vae.decode(zz.to(device)), image_shape, draw)
    return plot_images(images, image_shape, n, "Decoded latent grid (standard-normal quantiles)", out, inside)


def make_figures(run_dir: str | Path, vae: Structure, data: Splits, n: int = 16) -> list[Path]:
    """Write every figure of a run (or model folder) into ``run_dir/figures``, the model in eval
    mode (its mode restored afterwards); returns the paths."""
    with eval_mode(vae):
        return _figures(Path(run_dir), vae, data, n)


def _figures(run_dir: Path, vae: Structure, data: Splits, n: int) -> list[Path]:
    fig_dir = run_dir / "figures"
    device = next(vae.parameters()).device
    paths = []
    rows = RunDir(run_dir).read_metrics()
    if rows:
        paths.append(plot_curves(rows, fig_dir / "curves.png", run_dir))
    test = data.stored("test").to(device)  # uint8 levels for 8-bit images: decoded a batch at a time
    x = decode(test[evenly_spaced(test.shape[0], n)])
    pairs = torch.cat([x, vae.reconstruct(x)])
    drawn = "" if data.render is None else ",\nas codes drawn by the model they came from"
    paths.append(
        plot_images(
            *data.draw(pairs),
            2,
            "Test images (top) and reconstructions (bottom)" + drawn,
            fig_dir / "reconstructions.png",
            run_dir,
        )
    )
    paths.append(
        plot_images(
            *data.draw(vae.sample(64)),
            8,
            "Samples from the prior (pixel means)" + drawn,
            fig_dir / "samples.png",
            run_dir,
        )
    )
    means = layer_means(vae, test)
    for i, (name, z) in enumerate(means.items()):
        several = len(means) > 1
        out = fig_dir / ("latents.png" if i == 0 else f"latents_{name}.png")
        paths.append(plot_latents(z, data.test_labels, out, run_dir, layer=name if several else None))
    if len(means) == 1 and next(iter(means.values())).shape[1] == 2:
        paths.append(plot_manifold(vae, data.image_shape, fig_dir / "manifold.png", inside=run_dir, draw=data.draw))
    if vae.components() > 0:
        paths.append(plot_components(vae, data.image_shape, fig_dir / "components.png", inside=run_dir, draw=data.draw))
    if vae.uses_labels:
        paths.append(plot_styles(vae, data.image_shape, fig_dir / "styles.png", inside=run_dir, draw=data.draw))
    return paths


@torch.no_grad()
def plot_styles(
    vae: Structure,
    image_shape,
    out: Path,
    n: int = 8,
    inside: Path | None = None,
    seed: int = 0,
    draw: Draw | None = None,
) -> Path:
    """Fixed style, varied class (Kingma et al.'s figure): row r decodes one draw z_r ~ p(z) with
    every class y = 0 .. K-1 in turn (at most 20 classes); ``draw`` as for :func:`plot_manifold`."""
    classes = min(vae.classes(), 20)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        z = vae.sample_latents(n)["z"]
    eye = torch.eye(vae.classes(), dtype=z.dtype, device=z.device)[:classes]
    codes = {"z": z.repeat_interleave(classes, 0), "y": eye.repeat(n, 1)}
    title = "Fixed style, varied class (row: z ~ p(z); column: y = 0, 1, ...)"
    return plot_images(*_drawn(vae.decode(codes), image_shape, draw), n, title, out, inside)


@torch.no_grad()
def plot_components(
    vae: Structure,
    image_shape,
    out: Path,
    n: int = 10,
    inside: Path | None = None,
    seed: int = 0,
    draw: Draw | None = None,
) -> Path:
    """Samples per mixture component: row c holds ``n`` draws of z ~ p(z | c), decoded (at most 20
    rows); ``draw`` as for :func:`plot_manifold`."""
    rows = min(vae.components(), 20)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        images = torch.cat([vae.decode(vae.sample_latents(n, component=c)) for c in range(rows)])
    title = "Samples per component (row c: z ~ p(z | c))"
    if rows < vae.components():
        title += f", the first {rows} of {vae.components()}"
    return plot_images(*_drawn(images, image_shape, draw), rows, title, out, inside)
