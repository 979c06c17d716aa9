"""A run folder holds everything needed to inspect or continue a run::

    RUN/config.toml            the resolved configuration
    RUN/metrics.jsonl          one line per epoch (train / valid / test negative ELBO, nats; the
                               train value is the training objective: beta-weighted during KL
                               warm-up, the IWAE bound for elbo=iwae)
    RUN/checkpoints/last.pt    model, optimizer, scheduler, RNG state, epoch (atomic, every epoch)
    RUN/checkpoints/best.pt    the same at the best validation negative ELBO
    RUN/summary.json           config, versions, device, wall time, throughput, final numbers
    RUN/plugins.json           the plugins the run's components came from (files and sha256), if any
    RUN/figures/*.png          pictures (see :mod:`pyro_vae.evaluation.plots`)
    RUN/tensorboard/           TensorBoard event files, when train.tensorboard is set

:func:`load_run` reopens one for evaluation, plots and the laboratory; training writes it
(:func:`pyro_vae.training.loop.fit`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyro_vae.config import ConfigError, ExperimentConfig, from_dict, load_config
from pyro_vae.data import Splits, load_data
from pyro_vae.model import VAE, build_vae
from pyro_vae.plugins.loader import Plugin, PluginError, require, used_by
from pyro_vae.runs.checkpoint import load_checkpoint
from pyro_vae.runs.device import resolve_device

log = logging.getLogger(__name__)

# Keys a resumed run may change; any other difference from the saved config is an error.
RESUMABLE = {
    ("train", "epochs"), ("train", "patience"), ("train", "time_limit_min"), ("train", "device"),
    ("train", "eval_batch_size"), ("train", "fast_path"), ("train", "engine"), ("train", "sync_every"),
    ("train", "tensorboard"),
    ("eval", "iwae_k"), ("eval", "iwae_images"),
}  # fmt: skip


@dataclass(frozen=True)
class RunDir:
    """The paths of one run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def last(self) -> Path:
        return self.root / "checkpoints" / "last.pt"

    @property
    def best(self) -> Path:
        return self.root / "checkpoints" / "best.pt"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def plugins(self) -> Path:
        return self.root / "plugins.json"

    def plugin_records(self) -> list[Plugin]:
        """The plugins this run needs (from ``plugins.json``; none for a run without one)."""
        if not self.plugins.is_file():
            return []
        try:
            records = json.loads(self.plugins.read_text())
        except json.JSONDecodeError as exc:
            raise PluginError(f"{self.plugins} is not valid JSON ({exc})") from None
        if not isinstance(records, list):
            raise PluginError(f"{self.plugins} must hold a list of plugin records, got {type(records).__name__}")
        return [Plugin.from_dict(r) for r in records]

    def record_plugins(self, cfg: ExperimentConfig) -> None:
        """Write ``plugins.json`` for the loaded plugins that ``cfg`` uses (or remove a stale one)."""
        used = used_by(cfg)
        if used:
            self.plugins.write_text(json.dumps([p.to_dict() for p in used], indent=2) + "\n")
        else:
            self.plugins.unlink(missing_ok=True)

    def require_plugins(self) -> list[str]:
        """Check that the plugins this run needs are loaded (see :func:`pyro_vae.plugins.require`);
        returns warnings for plugins that changed since the run was made."""
        return require(self.plugin_records(), f"run folder {self.root}")


def check_resume_config(saved: ExperimentConfig, new: ExperimentConfig) -> None:
    """Raise ``ConfigError`` if ``new`` changes a key that a resumed run must keep."""
    before = saved.to_dict()
    changed = [
        f"{section}.{key}: {old!r} -> {value!r}"
        for section, values in new.to_dict().items()
        for key, value in values.items()
        if (old := before[section][key]) != value and (section, key) not in RESUMABLE
    ]
    if changed:
        allowed = ", ".join(f"{s}.{k}" for s, k in sorted(RESUMABLE))
        raise ConfigError(
            "the config does not match the run being resumed (" + "; ".join(changed) + "). "
            f"A resumed run may change only: {allowed}. Start a new run folder for other changes."
        )


def saved_device(state: dict[str, Any]) -> str:
    """The device type a checkpoint was written on (format 1 did not say: CUDA if it kept a CUDA RNG state)."""
    return state.get("device") or ("cuda" if "cuda" in state.get("rng", {}) else "cpu")


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line and make it durable (fsync) before returning."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def truncate_metrics(path: Path, last_epoch: int) -> None:
    """Drop metric lines written after the checkpoint we resume from."""
    if path.exists():
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        keep = [ln for ln in lines if json.loads(ln)["epoch"] <= last_epoch]
        path.write_text("".join(ln + "\n" for ln in keep))


def load_run(run_dir: str | Path, which: str = "best", device: str = "auto") -> tuple[ExperimentConfig, VAE, Splits]:
    """Rebuild a trained run: its config, the VAE with the ``best`` or ``last`` weights, its data."""
    run = RunDir(Path(run_dir))
    if not run.root.is_dir():
        raise ValueError(f"run folder {run.root} does not exist")
    if which not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {which!r}")
    for warning in run.require_plugins():
        log.warning(warning)
    cfg = load_config(run.config)
    state = load_checkpoint(getattr(run, which))
    if from_dict(state["config"]) != cfg:  # keys added since the run was written take their defaults on both sides
        raise ConfigError(f"{run.config} does not match the config stored in {getattr(run, which)}")
    data = load_data(cfg.data)
    vae = build_vae(cfg.model, data.data_dim, data.image_shape)
    vae.load_state_dict(state["model"])
    return cfg, vae.to(resolve_device(device)).eval(), data
