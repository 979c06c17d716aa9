"""A portable model file: the trained weights as safetensors, what rebuilds the VAE as JSON, and a
model card. Nothing here pickles or unpickles::

    DIR/model.safetensors   the VAE's tensors (safetensors: tensors only, no code)
    DIR/config.json         the run's resolved config, the data's shape, the weights' sha256, the plugins
    DIR/README.md           the model card: what it is, its numbers, how it was made, how to load it

:func:`open_model` opens either an exported folder or a run folder, so every command that takes a
model accepts both.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pyro_vae._version import __version__
from pyro_vae.config import ConfigError, ExperimentConfig, from_dict
from pyro_vae.data import Splits, load_data
from pyro_vae.model import VAE, build_vae
from pyro_vae.plugins.loader import Plugin, file_sha256, require
from pyro_vae.runs.device import resolve_device
from pyro_vae.runs.folder import RunDir, load_run

log = logging.getLogger(__name__)

FORMAT = "pyro-vae-model"
FORMAT_VERSION = 1
WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"


class ModelFileError(ValueError):
    """An exported model folder is incomplete, altered, or does not match the VAE it describes."""


def export_model(run_dir: str | Path, out: str | Path, which: str = "best", command: str = "") -> list[Path]:
    """Write the ``best`` (or ``last``) weights of a run folder as a portable model into ``out``."""
    run = RunDir(Path(run_dir))
    cfg, vae, data = load_run(run.root, which, device="cpu")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous().clone() for name, t in vae.state_dict().items()}
    save_file(tensors, str(out / WEIGHTS), metadata={"format": FORMAT, "pyro_vae": __version__})
    summary = json.loads(run.summary.read_text()) if run.summary.is_file() else {}
    record = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "pyro_vae": __version__,
        "config": cfg.to_dict(), "data_dim": data.data_dim, "image_shape": list(data.image_shape),
        "weights": {"file": WEIGHTS, "sha256": file_sha256(out / WEIGHTS), "checkpoint": which},
        "plugins": [p.to_dict() for p in run.plugin_records()],
        "final": summary.get("final", {}), "objective": summary.get("objective", ""),
    }  # fmt: skip
    (out / CONFIG).write_text(json.dumps(record, indent=2) + "\n")
    (out / CARD).write_text(model_card(record, run.root, command))
    return [out / WEIGHTS, out / CONFIG, out / CARD]


def is_model_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG).is_file() and not RunDir(Path(path)).config.is_file()


def open_model(path: str | Path, which: str = "best", device: str = "auto") -> tuple[ExperimentConfig, VAE, Splits]:
    """``(config, VAE, data)`` of a run folder (its ``which`` checkpoint) or of an exported model
    folder (its weights; ``which`` does not apply), on ``device``."""
    if is_model_dir(path):
        cfg, vae = load_model(path, device)
        return cfg, vae, load_data(cfg.data)
    return load_run(path, which, device)


def plugin_records(folder: str | Path) -> list[Plugin]:
    """The plugins an exported model needs (from its ``config.json``)."""
    return [Plugin.from_dict(p) for p in _read_record(Path(folder) / CONFIG).get("plugins", [])]


def load_model(path: str | Path, device: str = "auto") -> tuple[ExperimentConfig, VAE]:
    """Rebuild the VAE of an exported model folder (or a run folder's best weights) for inference.

    :raises ModelFileError: naming the file and what differs, for a missing file, changed bytes
        (the sha256 in ``config.json``), a tensor missing, extra or of another shape.
    """
    folder = Path(path)
    if not is_model_dir(folder):
        if RunDir(folder).config.is_file():
            cfg, vae, _ = load_run(folder, "best", device)
            return cfg, vae
        raise ModelFileError(f"{folder} is neither an exported model ({CONFIG}, {WEIGHTS}) nor a run folder "
                             "(config.toml); make one with pyro-vae export RUN --out DIR")  # fmt: skip
    record = _read_record(folder / CONFIG)
    for warning in require([Plugin.from_dict(p) for p in record.get("plugins", [])], f"model {folder}"):
        log.warning(warning)
    try:
        cfg = from_dict(record["config"])
    except ConfigError as exc:
        raise ModelFileError(f"{folder / CONFIG}: its config does not load: {exc}") from None
    weights = folder / record["weights"]["file"]
    if not weights.is_file():
        raise ModelFileError(f"{weights} is missing; {folder / CONFIG} refers to it")
    actual = file_sha256(weights)
    if actual != record["weights"]["sha256"]:
        raise ModelFileError(f"{weights} changed since it was exported: its sha256 is {actual}, {CONFIG} records "
                             f"{record['weights']['sha256']}; export the model again from its run folder")  # fmt: skip
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ModelFileError(f"{weights} is not a readable safetensors file: {exc}") from None
    vae = build_vae(cfg.model, int(record["data_dim"]), record.get("image_shape"))
    _check_tensors(vae, tensors, weights)
    vae.load_state_dict(tensors)
    return cfg, vae.to(resolve_device(device)).eval()


def model_card(record: dict, run_root: Path, command: str) -> str:
    cfg, final = record["config"], record.get("final", {})
    model, train, data = cfg["model"], cfg["train"], cfg["data"]
    rows = [(f"test NLL, IWAE K={final.get('iwae_k')} ({final.get('iwae_images')} images)", final.get("test_nll")),
            ("test negative ELBO", final.get("test_neg_elbo")), ("valid negative ELBO", final.get("valid_neg_elbo")),
            ("train negative ELBO", final.get("train_neg_elbo"))]  # fmt: skip
    table = "\n".join(f"| {name} | {v['mean']:.2f} ± {v['se']:.2f} |" for name, v in rows if isinstance(v, dict))
    plugins = ", ".join(p["spec"] for p in record.get("plugins", [])) or "none"
    return f"""# pyro-vae model: {model['prior']} prior, {model['likelihood']} likelihood, {model['guide']} guide

A variational autoencoder trained with pyro-vae {record['pyro_vae']}: latent size
{model['latent_dim']}, network `{model['network']}` (hidden {model['hidden']}), trained with the `{train['elbo']}`
ELBO for {train['epochs']} epochs on `{data['name']}` (images {record['image_shape']}); weights of the
{record['weights']['checkpoint']} checkpoint of run folder `{run_root}`.
{f"Training optimised {record['objective']}." if train['kl_weight'] != 1 else ''}

| nats per image | mean ± s.e. |
|---|---|
{table or '| (the run folder had no summary) | |'}

Plugins needed to load it: {plugins}.

## Load it

```python
from pyro_vae import load_model
cfg, vae = load_model("{'THIS_FOLDER'}")   # checks {WEIGHTS} against its sha256 first
x = vae.sample(16)                         # expected pixels of 16 draws from the prior
```

or use it from the command line: `pyro-vae evaluate THIS_FOLDER`, `pyro-vae sample THIS_FOLDER`.

## Files

- `{WEIGHTS}`: the tensors (safetensors; no pickle), sha256 `{record['weights']['sha256']}`
- `{CONFIG}`: the resolved config that rebuilds the VAE, the data's shape, the plugins, the numbers above

Made by: `{command or 'pyro-vae export'}`
"""


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a pyro-vae model file (its \"format\" is not {FORMAT!r})")
    if record.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{path} has format version {record.get('format_version')}; this pyro-vae "
                             f"{__version__} reads version {FORMAT_VERSION}")  # fmt: skip
    missing = [k for k in ("config", "data_dim", "weights") if k not in record]
    if missing or not isinstance(record["weights"], dict) or {"file", "sha256"} - set(record["weights"]):
        raise ModelFileError(f"{path} lacks {missing or 'weights.file / weights.sha256'}")
    if Path(str(record["weights"]["file"])).name != record["weights"]["file"]:
        raise ModelFileError(f"{path}: weights.file must name a file beside it, got {record['weights']['file']!r}")
    return record


def _check_tensors(vae: VAE, tensors: dict[str, torch.Tensor], weights: Path) -> None:
    expected = {name: tuple(t.shape) for name, t in vae.state_dict().items()}
    got = {name: tuple(t.shape) for name, t in tensors.items()}
    problems = [f"missing tensor {n} {expected[n]}" for n in sorted(set(expected) - set(got))]
    problems += [f"extra tensor {n} {got[n]}" for n in sorted(set(got) - set(expected))]
    problems += [f"tensor {n} has shape {got[n]}, the VAE needs {expected[n]}"
                 for n in sorted(set(got) & set(expected)) if got[n] != expected[n]]  # fmt: skip
    if problems:
        raise ModelFileError(f"{weights} does not match the VAE its {CONFIG} describes: " + "; ".join(problems))


