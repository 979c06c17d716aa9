"""TensorBoard logging of a run (``train.tensorboard = true``, or ``pyro-vae train --tensorboard``),
into ``RUN/tensorboard``; needs the optional ``tensorboard`` package (``pip install
'pyro-vae[tensorboard]'``). Written by rank 0 only.

- every loss read (each ``train.sync_every`` steps): ``train/running_neg_elbo``, the mean training
  loss since the previous read;
- every epoch, at the epoch's last step: the ``metrics.jsonl`` line (``epoch/train_neg_elbo``,
  ``epoch/valid_neg_elbo``, ``epoch/test_neg_elbo``, ``epoch/lr``, ``epoch/kl_weight``,
  ``epoch/images_per_s``; ``epoch/test_error`` for a structure that learns from labels,
  ``epoch/test_cluster_accuracy`` and ``epoch/test_nmi`` for one that clusters) and two image
  grids, reconstructions of 8 fixed test images and 8 decoded prior samples at a fixed seed;
- at the end: the run's config and final numbers as hparams.

A resumed run continues the same curves: events at or after the checkpoint's step, written by the
interrupted process, are purged (``purge_step``), so no step appears twice.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pyro_vae.config import ConfigError, ExperimentConfig
from pyro_vae.data.pixels import decode, image_grid
from pyro_vae.evaluation.label_scores import WATCHED
from pyro_vae.evaluation.metrics import eval_mode
from pyro_vae.files import open_folder
from pyro_vae.model import VAE

FOLDER = "tensorboard"
INSTALL = "pip install 'pyro-vae[tensorboard]' (or pip install tensorboard)"


def require_tensorboard() -> None:
    """Raise :class:`ConfigError` saying how to install TensorBoard when it is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"train.tensorboard = true needs the tensorboard package ({exc}); {INSTALL}, "
            "or set train.tensorboard = false"
        ) from None


class TensorBoard:
    """The writer of one run; ``draw`` turns rows into pictures and their shape (the data's
    :meth:`~pyro_vae.data.splits.Splits.draw`); ``resume_step`` is the step of the checkpoint a
    resumed run starts from."""

    def __init__(self, run_root: Path, test_images: torch.Tensor, draw, resume_step: int | None = None) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        purge = resume_step + 1 if resume_step is not None else None
        with open_folder(Path(run_root) / FOLDER, run_root):  # made inside the run folder, not through a link
            pass
        self.writer = SummaryWriter(log_dir=str(Path(run_root) / FOLDER), purge_step=purge)
        self.x = test_images  # stored form, a fixed handful
        self.draw = draw

    def read(self, step: int, running_loss: float) -> None:
        self.writer.add_scalar("train/running_neg_elbo", running_loss, step)

    @torch.no_grad()
    def epoch(self, record: dict, vae: VAE) -> None:
        step = record["step"]
        for key in ("train_neg_elbo", "valid_neg_elbo", "test_neg_elbo", "lr", "kl_weight", "images_per_s"):
            self.writer.add_scalar(f"epoch/{key}", record[key], step)
        for key in WATCHED:  # scored against the test labels, for the structures that have them
            if key in record:
                self.writer.add_scalar(f"epoch/{key}", record[key], step)
        device = next(vae.parameters()).device
        x = decode(self.x.to(device))
        with eval_mode(vae):
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(0)
                samples = vae.sample(x.shape[0])
            grids = {"reconstructions": torch.cat([x, vae.reconstruct(x)]), "samples": samples}
        for name, images in grids.items():
            rows = 2 if name == "reconstructions" else 1
            grid = image_grid(*self.draw(images), rows)
            self.writer.add_image(f"images/{name}", grid, step, dataformats="HW" if grid.dim() == 2 else "HWC")
        self.writer.flush()

    def close(self, cfg: ExperimentConfig, final: dict) -> None:
        """Record the config and the final numbers as hparams, and close the files."""
        hparams = {
            f"{section}.{key}": value if isinstance(value, (int, float, str, bool)) else str(value)
            for section, values in cfg.to_dict().items()
            for key, value in values.items()
            if not isinstance(value, dict)
        }
        metrics = {f"final/{name}": v["mean"] for name, v in final.items() if isinstance(v, dict) and "mean" in v}
        self.writer.add_hparams(hparams, metrics, run_name="hparams")
        self.writer.close()
