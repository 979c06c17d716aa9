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

:func:`pyro_vae.open_model` (:mod:`pyro_vae.runs.trained`) reopens one for evaluation, plots and
the laboratory; training writes it (:func:`pyro_vae.training.loop.fit`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyro_vae.config import ConfigError, DataConfig, ExperimentConfig, from_dict, load_config, to_toml
from pyro_vae.data import Splits, load_data
from pyro_vae.files import append_line, write_atomic
from pyro_vae.model import VAE, build_vae, state_dict_problems
from pyro_vae.plugins.loader import Plugin, PluginError, require, used_by
from pyro_vae.runs.checkpoint import load_checkpoint
from pyro_vae.runs.device import resolve_device

log = logging.getLogger(__name__)

# Keys a resumed run may change; any other difference from the saved config is an error.
RESUMABLE = {
    ("train", "epochs"),
    ("train", "patience"),
    ("train", "lr_drops"),
    ("train", "lr_drop_factor"),
    ("train", "time_limit_min"),
    ("train", "device"),
    ("train", "eval_batch_size"),
    ("train", "fast_path"),
    ("train", "engine"),
    ("train", "sync_every"),
    ("train", "tensorboard"),
    ("eval", "iwae_k"),
    ("eval", "iwae_images"),
}
# What a resume restores from last.pt (format 1 and 2 alike).
RESUME_KEYS = ("model", "optim", "sched", "shuffle_rng", "epoch", "step", "best_valid")


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

    @property
    def lock(self) -> Path:
        """Held (``flock``) by the process training into the folder; its presence marks a folder that
        pyro-vae made (:mod:`pyro_vae.runs.writer`)."""
        return self.root / ".pyro-vae.lock"

    @property
    def replaced(self) -> Path:
        """Where ``--overwrite`` keeps the run it replaces until the new one has its first checkpoint."""
        return self.root / ".replaced"

    def plugin_records(self) -> list[Plugin]:
        """The plugins this run needs (from ``plugins.json``; none for a run without one)."""
        if not self.plugins.is_file():
            return []
        try:
            records = json.loads(self.plugins.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PluginError(f"{self.plugins} is not valid JSON ({exc})") from None
        if not isinstance(records, list):
            raise PluginError(f"{self.plugins} must hold a list of plugin records, got {type(records).__name__}")
        return [Plugin.from_dict(r) for r in records]

    def record_plugins(self, cfg: ExperimentConfig) -> None:
        """Write ``plugins.json`` for the loaded plugins that ``cfg`` uses (or remove a stale one)."""
        used = used_by(cfg)
        if used:
            write_atomic(self.plugins, json.dumps([p.to_dict() for p in used], indent=2) + "\n", self.root)
        else:
            self.plugins.unlink(missing_ok=True)

    def write_config(self, cfg: ExperimentConfig) -> None:
        write_atomic(self.config, to_toml(cfg), self.root)

    def write_summary(self, summary: dict) -> None:
        write_atomic(self.summary, json.dumps(summary, indent=2), self.root)

    def append_metrics(self, record: dict) -> None:
        """Append one epoch's line to ``metrics.jsonl`` and make it durable (fsync) before returning."""
        append_line(self.metrics, json.dumps(record), self.root)

    def read_metrics(self) -> list[dict]:
        """The lines of ``metrics.jsonl`` (none if it is missing). A last line cut short by a kill
        mid-append is dropped with a warning; a damaged line before it is a ``ValueError`` naming it."""
        if not self.metrics.is_file():
            return []
        text = self.metrics.read_text(errors="replace")
        lines = text.split("\n")
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
                    raise ValueError("not an object with an integer epoch")
            except ValueError as exc:
                if number == len(lines):  # no newline after it: the append was cut short
                    log.warning("%s: dropped its last line, cut short when the run stopped (%s)", self.metrics, exc)
                    break
                raise ValueError(
                    f"{self.metrics}, line {number}, is damaged ({exc}): {line[:80]!r}; fix or delete "
                    "that line (each line is one epoch's JSON record) and resume again"
                ) from None
            records.append(record)
        return records

    def truncate_metrics(self, last_epoch: int) -> None:
        """Keep the lines of epochs up to ``last_epoch`` (the checkpoint a run resumes from), atomically."""
        if self.metrics.exists():
            keep = [r for r in self.read_metrics() if r["epoch"] <= last_epoch]
            write_atomic(self.metrics, "".join(json.dumps(r) + "\n" for r in keep), self.root)

    def require_plugins(self) -> list[str]:
        """Check that the plugins this run needs are loaded (see :func:`pyro_vae.plugins.require`);
        returns warnings for plugins that changed since the run was made."""
        return require(self.plugin_records(), f"run folder {self.root}")


def config_changes(saved: ExperimentConfig, new: ExperimentConfig) -> list[str]:
    """The differences between two configs in keys a resumed run must keep (not :data:`RESUMABLE`)."""
    before = saved.to_dict()
    return [
        f"{section}.{key}: {old!r} -> {value!r}"
        for section, values in new.to_dict().items()
        for key, value in values.items()
        if (old := before[section].get(key)) != value and (section, key) not in RESUMABLE
    ]


def check_resume_config(saved: ExperimentConfig, new: ExperimentConfig) -> None:
    """Raise ``ConfigError`` if ``new`` changes a key that a resumed run must keep."""
    changed = config_changes(saved, new)
    if changed:
        allowed = ", ".join(f"{s}.{k}" for s, k in sorted(RESUMABLE))
        raise ConfigError(
            "the config does not match the run being resumed (" + "; ".join(changed) + "). "
            f"A resumed run may change only: {allowed}. Start a new run folder for other changes."
        )


def saved_device(state: dict[str, Any]) -> str:
    """The device type a checkpoint was written on (format 1 did not say: CUDA if it kept a CUDA RNG state)."""
    return state.get("device") or ("cuda" if "cuda" in state.get("rng", {}) else "cpu")


def stored_config(state: dict[str, Any], path: Path) -> ExperimentConfig:
    """The config a checkpoint was written with; ``ValueError`` naming ``path`` if it has none or a bad one."""
    if not isinstance(state.get("config"), dict):
        raise ValueError(f"{path} holds no config table: it is damaged or not a pyro-vae checkpoint")
    try:
        return from_dict(state["config"])
    except ConfigError as exc:
        raise ConfigError(f"{path} holds a config that does not load: {exc}") from None


def check_resumable(state: dict[str, Any], path: Path, vae: VAE) -> None:
    """``ValueError`` naming ``path`` when a checkpoint lacks what a resume restores, or its
    weights do not fit ``vae``."""
    missing = [key for key in RESUME_KEYS if key not in state]
    if missing or not isinstance(state["model"], dict):
        problems = [f"no {', '.join(missing) or 'model weights'}"]
    else:
        problems = state_dict_problems(vae, state["model"])
    if problems:
        raise ValueError(
            f"{path} cannot be resumed: " + "; ".join(problems) + ". It is damaged or not a pyro-vae "
            "checkpoint; start a new run folder, or restore the file"
        )


def offline(data_cfg: DataConfig) -> DataConfig:
    """``data_cfg`` with downloads off: opening a trained run or model reads the data it names and
    never fetches anything (its ``data.download`` was the training machine's choice)."""
    return dataclasses.replace(data_cfg, download=False)


CHECKPOINTS = ("best", "last")


def check_checkpoint(which: str) -> None:
    """``ValueError`` unless ``which`` names one of a run's checkpoints (:data:`CHECKPOINTS`)."""
    if which not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be 'best' or 'last', got {which!r}")


def _read_run(run_dir: str | Path, which: str = "best", device: str = "auto") -> tuple[ExperimentConfig, VAE, Splits]:
    """Rebuild a trained run: its config, the VAE with the ``best`` or ``last`` weights, its data.
    (The public way in is :func:`pyro_vae.open_model`.)"""
    run = RunDir(Path(run_dir))
    if not run.root.is_dir():
        raise ValueError(f"run folder {run.root} does not exist")
    check_checkpoint(which)
    for warning in run.require_plugins():
        log.warning(warning)
    cfg = load_config(run.config)
    state = load_checkpoint(getattr(run, which))
    # Keys added since the run was written take their defaults on both sides; a resume may have
    # changed the RESUMABLE keys in config.toml since this checkpoint was written.
    changed = config_changes(stored_config(state, getattr(run, which)), cfg)
    if changed:
        raise ConfigError(
            f"{run.config} does not match the config stored in {getattr(run, which)} ("
            + "; ".join(changed)
            + "): the run folder was altered; restore its config.toml"
        )
    checkpoint, weights = getattr(run, which), state.get("model")
    if not isinstance(weights, dict):
        other = "last" if which == "best" else "best"
        raise ValueError(
            f"{checkpoint} holds no model weights (no 'model' table): it is damaged or not a pyro-vae "
            f"checkpoint; use the other one (--checkpoint {other}) or train again"
        )
    data = load_data(offline(cfg.data))
    vae = build_vae(cfg.model, data.data_dim, data.image_shape)
    problems = state_dict_problems(vae, weights)
    if problems:
        raise ValueError(f"{checkpoint} does not match the VAE that {run.config} describes: " + "; ".join(problems))
    vae.load_state_dict(weights)
    return cfg, vae.to(resolve_device(device)).eval(), data
