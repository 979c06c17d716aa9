"""A portable model file: the trained weights as safetensors, what rebuilds the VAE as JSON, and a
model card. Nothing here pickles or unpickles::

    DIR/model.safetensors   the VAE's tensors (safetensors: tensors only, no code)
    DIR/config.json         the run's resolved config, the data's shape, the weights' sha256, the plugins
    DIR/README.md           the model card: what it is, its numbers, how it was made, how to load it

:func:`pyro_vae.open_model` (:mod:`pyro_vae.runs.trained`) opens either an exported folder or a run
folder, so every command that takes a model accepts both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from pyro_vae._version import __version__
from pyro_vae.config import ConfigError, ExperimentConfig, from_dict
from pyro_vae.files import UnsafePath, check_regular, write_atomic
from pyro_vae.model import Structure, build_vae, meta_vae, tensor_problems
from pyro_vae.plugins.loader import Plugin, file_sha256, require
from pyro_vae.runs.device import resolve_device
from pyro_vae.runs.folder import RunDir, _read_run

log = logging.getLogger(__name__)

FORMAT = "pyro-vae-model"
FORMAT_VERSION = 1
WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"


class ModelFileError(ValueError):
    """An exported model folder is incomplete, altered, or does not match the VAE it describes."""


def export_model(
    run_dir: str | Path, out: str | Path, which: str = "best", command: str = "", overwrite: bool = False
) -> list[Path]:
    """Write the ``best`` (or ``last``) weights of a run folder as a portable model into ``out``.
    Files already in ``out`` under the model's names are replaced only with ``overwrite``; every
    file is written atomically, inside ``out`` (never through a link)."""
    run, out = RunDir(Path(run_dir)), Path(out)
    if out.exists() and not out.is_dir():
        raise ModelFileError(f"--out {out} is a file; give a folder for the model files (it is made if missing)")
    taken = [name for name in (WEIGHTS, CONFIG, CARD) if os.path.lexists(out / name)]
    if taken and not overwrite:
        raise ModelFileError(
            f"{out} already holds {', '.join(taken)}; pass --overwrite to replace them, or choose another --out"
        )
    for name in taken:
        check_regular(out / name, "model file")
    cfg, vae, data = _read_run(run.root, which, device="cpu")
    tensors = {name: t.detach().cpu().contiguous().clone() for name, t in vae.state_dict().items()}
    weights = save(tensors, metadata={"format": FORMAT, "pyro_vae": __version__})
    write_atomic(out / WEIGHTS, weights, out)
    summary = json.loads(run.summary.read_text()) if run.summary.is_file() else {}
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "pyro_vae": __version__,
        "config": cfg.to_dict(),
        "data_dim": data.data_dim,
        "image_shape": list(data.image_shape),
        "weights": {"file": WEIGHTS, "sha256": hashlib.sha256(weights).hexdigest(), "checkpoint": which},
        "plugins": [p.to_dict() for p in run.plugin_records()],
        "final": summary.get("final", {}),
        "objective": summary.get("objective", ""),
        "likelihood_note": summary.get("likelihood_note", ""),
        "layers": _layers(vae),
    }
    write_atomic(out / CONFIG, json.dumps(record, indent=2) + "\n", out)
    write_atomic(out / CARD, model_card(record, run.root, command), out)
    return [out / WEIGHTS, out / CONFIG, out / CARD]


def is_model_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG).is_file() and not RunDir(Path(path)).config.is_file()


def plugin_records(folder: str | Path) -> list[Plugin]:
    """The plugins an exported model needs (from its ``config.json``)."""
    return [Plugin.from_dict(p) for p in _read_record(Path(folder) / CONFIG).get("plugins", [])]


def _read_export(path: str | Path, device: str = "auto") -> tuple[ExperimentConfig, Structure]:
    """Rebuild the VAE of an exported model folder for inference (the public way in is
    :func:`pyro_vae.open_model`, which sends a run folder to :func:`~pyro_vae.runs.folder._read_run`).

    :raises ModelFileError: naming the file and what differs, for a missing file, changed bytes
        (the sha256 in ``config.json``), a VAE above :data:`~pyro_vae.config.MAX_MODEL_SIZE`, a tensor
        missing, extra or of another shape (read from the file's header, before any tensor is loaded
        or the VAE built), NaN or infinite weights.
    """
    folder = Path(path)
    _inside(folder / CONFIG)
    record = _read_record(folder / CONFIG)
    for warning in require([Plugin.from_dict(p) for p in record.get("plugins", [])], f"model {folder}"):
        log.warning(warning)
    try:
        cfg = from_dict(record["config"])
    except ConfigError as exc:
        raise ModelFileError(f"{folder / CONFIG}: its config does not load: {exc}") from None
    weights = folder / record["weights"]["file"]
    _inside(weights)
    if not weights.is_file():
        raise ModelFileError(f"{weights} is missing; {folder / CONFIG} refers to it")
    actual = file_sha256(weights)
    if actual != record["weights"]["sha256"]:
        raise ModelFileError(
            f"{weights} changed since it was exported: its sha256 is {actual}, {CONFIG} records "
            f"{record['weights']['sha256']}; export the model again from its run folder"
        )
    data_dim, image_shape = _data_shape(record, folder / CONFIG)
    try:
        meta = meta_vae(cfg.model, data_dim, image_shape)
        expected = (meta or build_vae(cfg.model, data_dim, image_shape)).state_dict()  # (a plugin's, not on meta)
    except ConfigError as exc:
        raise ModelFileError(f"{folder / CONFIG}: {exc}") from None
    try:
        with safe_open(str(weights), framework="pt") as f:  # the header only: names, shapes, dtypes
            header = {name: f.get_slice(name) for name in f.keys()}
            got = {name: tuple(piece.get_shape()) for name, piece in header.items()}
            dtypes = {name: piece.get_dtype() for name, piece in header.items()}
    except (SafetensorError, OSError) as exc:
        raise ModelFileError(f"{weights} is not a readable safetensors file: {exc}") from None
    _refuse(tensor_problems({n: tuple(t.shape) for n, t in expected.items()}, got), weights)
    _refuse(
        [
            f"tensor {n} holds {dtypes[n]}, the VAE needs {t.dtype}"
            for n, t in expected.items()
            if dtypes[n] != _SAFETENSORS_DTYPES.get(t.dtype)
        ],
        weights,
    )
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ModelFileError(f"{weights} is not a readable safetensors file: {exc}") from None
    bad = tensor_problems({}, {}, tensors)
    if bad:
        raise ModelFileError(
            f"{weights}: {'; '.join(bad)}; a trained VAE has finite weights: the file is damaged, "
            "export the model again from its run folder"
        )
    vae = build_vae(cfg.model, data_dim, image_shape)
    vae.load_state_dict(tensors)
    return cfg, vae.to(resolve_device(device)).eval()


_SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.float64: "F64",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _data_shape(record: dict, path: Path) -> tuple[int, list[int] | None]:
    """``data_dim`` and ``image_shape`` of a model record, checked: positive integers, one the product of the other."""
    data_dim, shape = record["data_dim"], record.get("image_shape")

    def positive_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    if not positive_int(data_dim):
        raise ModelFileError(f"{path}: data_dim = {data_dim!r} must be a positive integer")
    if shape is not None and not (
        isinstance(shape, list)
        and len(shape) in (2, 3)
        and all(map(positive_int, shape))
        and math.prod(shape) == data_dim
    ):
        raise ModelFileError(
            f"{path}: image_shape = {shape!r} must be [H, W] or [C, H, W], positive integers whose "
            f"product is data_dim = {data_dim}"
        )
    return data_dim, shape


def _refuse(problems: list[str], weights: Path) -> None:
    if problems:
        raise ModelFileError(f"{weights} does not match the VAE its {CONFIG} describes: " + "; ".join(problems))


def model_card(record: dict, run_root: Path, command: str) -> str:
    cfg, final = record["config"], record.get("final", {})
    model, train, data = cfg["model"], cfg["train"], cfg["data"]
    rows = [
        (f"test NLL, IWAE K={final.get('iwae_k')} ({final.get('iwae_images')} images)", final.get("test_nll")),
        ("test negative ELBO", final.get("test_neg_elbo")),
        ("valid negative ELBO", final.get("valid_neg_elbo")),
        ("train negative ELBO", final.get("train_neg_elbo")),
    ]
    table = "\n".join(f"| {name} | {v['mean']:.2f} ± {v['se']:.2f} |" for name, v in rows if isinstance(v, dict))
    plugins = ", ".join(p["spec"] for p in record.get("plugins", [])) or "none"
    structure, layers = model.get("structure", "vae"), _card_layers(record)
    if structure == "vae":
        what = f"A variational autoencoder (structure `vae`) trained with pyro-vae {record['pyro_vae']}: latent size\n"
        what += f"{layers.get('z', model['latent_dim'])}"
    else:
        sizes = ", ".join(f"{name} {size}" for name, size in layers.items()) or f"{model['latent_dim']} per layer"
        what = (
            f"A variational autoencoder of structure `{structure}` trained with pyro-vae {record['pyro_vae']}: "
            f"latent layers (top first)\n{sizes}, the prior on the top layer"
        )
    return f"""# pyro-vae model: {model["prior"]} prior, {model["likelihood"]} likelihood, {model["guide"]} guide

{what}, network `{model["network"]}` (hidden {model["hidden"]}), trained with the `{train["elbo"]}`
ELBO for {train["epochs"]} epochs on `{data["name"]}` (images {record["image_shape"]}); weights of the
{record["weights"]["checkpoint"]} checkpoint of run folder `{run_root}`.
{f"Training optimised {record['objective']}." if train["kl_weight"] != 1 else ""}
{f"Note: {record['likelihood_note']}." if record.get("likelihood_note") else ""}

| nats per image | mean ± s.e. |
|---|---|
{table or "| (the run folder had no summary) | |"}

Plugins needed to load it: {plugins}.

## Load it

```python
from pyro_vae import open_model
model = open_model("{"THIS_FOLDER"}")  # checks {WEIGHTS} against its sha256 first
x = model.vae.sample(16)               # expected pixels of 16 draws from the prior
```

or use it from the command line: `pyro-vae evaluate THIS_FOLDER`, `pyro-vae sample THIS_FOLDER`.

## Files

- `{WEIGHTS}`: the tensors (safetensors; no pickle), sha256 `{record["weights"]["sha256"]}`
- `{CONFIG}`: the resolved config that rebuilds the VAE, the data's shape, the plugins, the numbers above

Made by: `{command or "pyro-vae export"}`
"""


def _layers(vae: Structure) -> dict[str, int] | None:
    try:
        return vae.layers()
    except NotImplementedError:  # (a plugin's structure that does not list them)
        return None


def _card_layers(record: dict) -> dict[str, int]:
    """The latent layers (site -> size, top first) a model record names: its ``layers``, or (a record
    written before they were kept) read from its config for the built-in structures."""
    if isinstance(record.get("layers"), dict):
        return record["layers"]
    model = record["config"]["model"]
    structure = model.get("structure", "vae")
    if structure == "vae":
        return {"z": model["latent_dim"]}
    if structure == "hierarchical":
        settings = model.get("hierarchical", {})
        dims = list(settings.get("latent_dims") or [model["latent_dim"]] * settings.get("layers", 2))
        return {f"z{i + 1}": dims[i] for i in reversed(range(len(dims)))}
    return {}


def _inside(path: Path) -> None:
    """A model folder refers to regular files inside itself only: a link (out of the folder, or not) is refused."""
    try:
        check_regular(path, "model file")
    except UnsafePath as exc:
        raise ModelFileError(str(exc)) from None


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ModelFileError(f'{path} is not a pyro-vae model file (its "format" is not {FORMAT!r})')
    if record.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has format version {record.get('format_version')}; this pyro-vae "
            f"{__version__} reads version {FORMAT_VERSION}"
        )
    missing = [k for k in ("config", "data_dim", "weights") if k not in record]
    if missing or not isinstance(record["weights"], dict) or {"file", "sha256"} - set(record["weights"]):
        raise ModelFileError(f"{path} lacks {missing or 'weights.file / weights.sha256'}")
    if Path(str(record["weights"]["file"])).name != record["weights"]["file"]:
        raise ModelFileError(f"{path}: weights.file must name a file beside it, got {record['weights']['file']!r}")
    return record
