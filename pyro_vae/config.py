"""Typed experiment configuration: defaults, TOML files and ``section.key=value`` overrides.

One path from the command line to the model::

    cfg = load_config("examples/configs/latent2.toml", overrides=["model.latent_dim=2"])

A component's own settings live with it: a component class may declare a ``Settings`` dataclass
(defaults, and checks in ``__post_init__``), set in a sub-table named after the component::

    [model]
    prior = "student_t"

    [model.student_t]
    df = 3.0                      # or --set model.student_t.df=3

The resolved config carries the full settings of every chosen component (defaults filled in), so
a run folder records them; settings of components that are not chosen are checked and kept.
Adding a component with a setting edits no file but the component's own. The flat keys of
earlier versions (``model.prior_df``, ...) are still read, as their new spelling (:data:`LEGACY_KEYS`).

Unknown sections or keys, values of the wrong type and impossible values raise
:class:`ConfigError` (a ``ValueError``) before anything runs, naming what is accepted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyro_vae.registry import by_config_key

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration value, file or override is invalid."""


# Limits of the sizes a config sets, checked before anything is allocated (:func:`validate`, and the
# loaders and :func:`pyro_vae.model.build_vae` where the size depends on the data). Far above what
# these models and data sets call for, low enough that a slip (1e9 for 128) is refused instead of
# exhausting memory; docs/configuration.md lists them.
MAX_LATENT_DIM = 2**16  # model.latent_dim
MAX_WIDTH = 2**16  # every width of model.hidden
MAX_BATCH_SIZE = 2**20  # train.batch_size, train.eval_batch_size (images)
MAX_SAMPLES = 10**6  # train.num_particles, train.iw_groups, their product, eval.iwae_k (samples of z per image)
MAX_IMAGE_SIZE = 1024  # data.image_folder.image_size (pixels a side)
MAX_SEED = 2**32 - 1  # train.seed, data.seed, eval.seed: NumPy's seeds are 32-bit
MAX_MODEL_SIZE = 2**29  # parameters and buffers of the VAE (2 GiB as float32), counted before it is built
MAX_DATA_BYTES = 2**36  # a data set as float32 while it is loaded (64 GiB): image folders, arrays


@dataclass(frozen=True)
class DataConfig:
    name: str = "binarized_mnist"  # a data set from pyro_vae.data.DATASETS
    root: str = ""  # folder holding the files; "" = the copy embedded in the package (binarized_mnist only)
    download: bool = False  # fetch missing files into `root` (needs network)
    binarize: str = "none"  # mnist, fashion_mnist only: none | static (once, seeded) | dynamic (every batch)
    valid_size: int = 10000  # images held out of the training split when a set has no validation split
    subset: int = 0  # use N evenly spaced images of every split (0 = all); for quick runs and tests
    labels: int = 0  # keep N training labels, balanced and seeded, hide the rest (0 = no labels); pyro_vae.data.labels
    seed: int = 0  # seed of static binarization, of random splits and of the labels data.labels keeps
    settings: dict = field(default_factory=dict)  # data set name -> its settings ([data.NAME] tables)


@dataclass(frozen=True)
class ModelConfig:
    latent_dim: int = 50  # L, size of z (of every layer, unless [model.hierarchical] latent_dims says otherwise)
    structure: str = "vae"  # the model and guide, from pyro_vae.model.STRUCTURES: vae | hierarchical
    network: str = "mlp"  # encoder trunk and decoder, from pyro_vae.components.nets.NETWORKS
    hidden: tuple[int, ...] = (400,)  # hidden widths of the encoder; the decoder mirrors them
    activation: str = "softplus"  # relu | softplus | tanh | elu | gelu
    prior: str = "standard_normal"  # from pyro_vae.components.priors.PRIORS
    likelihood: str = "bernoulli"  # from pyro_vae.components.likelihoods.LIKELIHOODS
    guide: str = "diag_normal"  # from pyro_vae.components.guides.GUIDES
    init: str = "torch"  # initial weights of every dense layer: torch (PyTorch's default) | he (N(0, 2 / fan_in))
    settings: dict = field(default_factory=dict)  # component name -> its settings ([model.NAME] tables)


@dataclass(frozen=True)
class TrainConfig:
    elbo: str = "trace"  # from pyro_vae.objectives.elbos.ELBOS: trace | mean_field | jit_trace | jit_mean_field | iwae
    num_particles: int = 1  # samples of z per image in the training ELBO (K of iwae, at least 2)
    iw_groups: int = 1  # M of miwae / piwae: M groups of num_particles (K) samples, M * K drawn per image
    vectorize_particles: bool = True  # particles as a tensor dimension (false: a Python loop, Pyro's stock ELBO)
    kl_fallback: bool = True  # mean_field: Monte-Carlo KL where no closed form exists (false = reject up front)
    kl_warmup_epochs: float = 0.0  # KL warm-up: weight beta rises linearly to kl_weight over this many epochs (0 = off)
    kl_weight: float = 1.0  # beta of a beta-VAE: the KL term's weight after warm-up (1 = the ELBO itself)
    fast_path: bool = True  # same ELBO without Pyro's per-step tracing, once the structure is verified
    epochs: int = 30  # passes over the training split
    batch_size: int = 128
    lr: float = 1e-3  # Adam learning rate
    normalize_grads: bool = False  # each gradient / its L2 norm before Adam (Tomczak & Welling's AdamNormGrad)
    lr_decay: float = 1.0  # learning rate multiplier applied after every epoch (1 = constant)
    seed: int = 0  # seeds pyro, torch, numpy and the batch order
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    eval_batch_size: int = 1000  # images per batch when evaluating
    patience: int = 0  # stop after this many epochs without a better valid ELBO (0 = never)
    lr_drops: int = 0  # at patience, back to the best weights with lr x lr_drop_factor (this many times)
    lr_drop_factor: float = 0.1  # the learning rate's multiplier at each of those drops (Adam's moments restart)
    time_limit_min: float = 0.0  # stop after the epoch that takes training past this many minutes (0 = none)
    engine: str = "auto"  # auto (CUDA: graph; CPU: compiled for long runs, else eager) | eager | graph | compiled
    sync_every: int = 0  # steps between host reads of the loss (progress, signals); 0 = 1 on the CPU, 100 on CUDA
    tensorboard: bool = False  # log curves, images and hparams to RUN/tensorboard (pip install 'pyro-vae[tensorboard]')
    matmul_precision: str = "highest"  # highest (fp32 matrix products) | high (TF32 on GPUs that have it)
    settings: dict = field(default_factory=dict)  # component name -> its settings ([train.NAME] tables)


@dataclass(frozen=True)
class EvalConfig:
    iwae_k: int = 1000  # importance samples per test image for log p(x); papers use 5000
    iwae_images: int = 0  # evenly spaced test images used for log p(x) (0 = auto: all, fewer after a short run)
    seed: int = 1234  # seed of every evaluation (common random numbers across epochs)


@dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{section: {key: value, component: {setting: value}}}``, as the TOML file has it."""
        out = {}
        for f in dataclasses.fields(self):
            values = dataclasses.asdict(getattr(self, f.name))
            settings = values.pop("settings", {})
            out[f.name] = {**values, **{name: dict(s) for name, s in sorted(settings.items())}}
        return out


# Flat keys of earlier versions -> the (component, setting) pairs they now spell. Run folders and
# TOML files that use them still load; the resolved config writes the new spelling.
LEGACY_KEYS = {
    ("model", "prior_components"): (("mixture_of_gaussians", "components"), ("vamp", "components")),
    ("model", "prior_df"): (("student_t", "df"),),
    ("model", "likelihood_scale"): (("gaussian", "scale"),),
    ("model", "flow_steps"): (("iaf", "steps"),),
    ("train", "ciwae_beta"): (("ciwae", "beta"),),
}


TRAIN_ENGINES = ("auto", "eager", "graph", "compiled")  # pyro_vae.training.engine
_SECTIONS = {f.name: f.type for f in dataclasses.fields(ExperimentConfig)}
_CHOICES = {
    ("data", "binarize"): ("none", "static", "dynamic"),
    ("model", "activation"): ("relu", "softplus", "tanh", "elu", "gelu"),
    ("train", "engine"): TRAIN_ENGINES,
    ("train", "matmul_precision"): ("highest", "high"),
}


def _section_class(section: str) -> type:
    hints = typing.get_type_hints(ExperimentConfig)
    if section not in hints:
        raise ConfigError(f"unknown config section {section!r}; sections are: {', '.join(_SECTIONS)}")
    return hints[section]


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (from TOML, JSON or a command-line string) to the annotated type."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if isinstance(value, str):
            text = value.strip().strip("[]()")
            value = [v for v in text.replace(",", " ").split()] if text else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list of {item_tp.__name__}, got {value!r}")
        return tuple(_coerce(v, item_tp, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{where}: unsupported annotation {tp}")  # pragma: no cover
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported annotation {tp}")  # pragma: no cover


def _replace_section(section_obj: Any, section: str, updates: dict[str, Any]) -> Any:
    cls = type(section_obj)
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.name != "settings"]
    values = {}
    settings = {name: dict(s) for name, s in getattr(section_obj, "settings", {}).items()}
    for key, raw in updates.items():
        if (section, key) in LEGACY_KEYS:
            for component, setting in LEGACY_KEYS[section, key]:
                settings.setdefault(component, {})[setting] = raw
        elif isinstance(raw, dict) and "settings" in hints:  # a [section.component] table
            settings.setdefault(key, {}).update(raw)
        elif "." in key and "settings" in hints:  # --set section.component.setting=value
            component, setting = key.split(".", 1)
            settings.setdefault(component, {})[setting] = raw
        elif key in hints and key != "settings":
            values[key] = _coerce(raw, hints[key], f"{section}.{key}")
        else:
            raise ConfigError(
                f"unknown key {section}.{key}; keys of [{section}] are: {', '.join(known)}"
                + (f", and a [{section}.NAME] table of settings for a component" if "settings" in hints else "")
            )
    if "settings" in hints:
        values["settings"] = settings
    return dataclasses.replace(section_obj, **values)


def from_dict(data: dict[str, Any], base: ExperimentConfig | None = None) -> ExperimentConfig:
    """Build a config from nested ``{section: {key: value}}``, starting from ``base`` (defaults)."""
    cfg = base or ExperimentConfig()
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a table of sections, got {type(data).__name__}")
    sections = {}
    for section, updates in data.items():
        _section_class(section)
        if not isinstance(updates, dict):
            raise ConfigError(f"[{section}] must be a table of key = value, got {updates!r}")
        sections[section] = _replace_section(getattr(cfg, section), section, updates)
    return validate(dataclasses.replace(cfg, **sections))


def parse_override(text: str) -> tuple[str, str, str]:
    """Split ``"section.key=value"`` into its three parts."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(
            f"override {text!r} is not of the form section.key=value "
            f"(for example model.latent_dim=2); sections are: {', '.join(_SECTIONS)}"
        )
    path, value = text.split("=", 1)
    section, key = path.strip().split(".", 1)
    return section, key, value.strip()


def apply_overrides(cfg: ExperimentConfig, overrides: list[str] | tuple[str, ...]) -> ExperimentConfig:
    """Apply ``section.key=value`` strings (as given to ``--set``) and validate the result."""
    nested: dict[str, dict[str, str]] = {}
    for text in overrides:
        section, key, value = parse_override(text)
        nested.setdefault(section, {})[key] = value
    return from_dict(nested, cfg)


def read_config_file(path: str | Path) -> dict:
    """The tables of a TOML (or JSON) config file, unvalidated. A file that is missing, a folder,
    unreadable, not UTF-8, not valid TOML / JSON or not a table raises :class:`ConfigError` naming it."""
    path = Path(path)
    where = f"config file {str(path)!r}"
    if path.is_dir():
        raise ConfigError(f"{where} is a folder; give the path of a .toml (or .json) file")
    if not path.is_file():
        raise ConfigError(f"{where} does not exist")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read ({exc.strerror or exc}); check its permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{where} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); TOML and "
            "JSON files are UTF-8: save it as UTF-8"
        ) from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where} is not valid {path.suffix[1:] or 'TOML'}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f'{where} must hold a table of sections (a JSON object such as {{"model": '
            f'{{"latent_dim": 2}}}}), not a JSON {type(data).__name__}'
        )
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Defaults, updated by a TOML or JSON file (if given), then by ``overrides``.

    A file's ``[plugins]`` table is not part of the experiment: it asks for code to be imported,
    which only :mod:`pyro_vae.plugins` does, with the user's consent; it is skipped here.
    """
    cfg = ExperimentConfig()
    if path is not None:
        data = read_config_file(path)
        plugins = data.pop("plugins", None)
        try:
            cfg = from_dict(data, cfg)
        except ConfigError as exc:
            hint = (
                f"; the file's [plugins] table names {plugins.get('modules')}: import them first (--plugin on the "
                "command line, pyro_vae.load_plugin from Python)"
                if isinstance(plugins, dict)
                else ""
            )
            raise ConfigError(f"in {str(path)!r}: {exc}{hint}") from None
    return apply_overrides(cfg, overrides)


def to_toml(cfg: ExperimentConfig) -> str:
    """Serialise to TOML (readable back by :func:`load_config`)."""

    def table(name: str, values: dict) -> list[str]:
        return [
            f"[{name}]",
            *(
                f"{key} = {json.dumps(list(value) if isinstance(value, tuple) else value)}"
                for key, value in values.items()
            ),
            "",
        ]

    lines = []
    for section, values in cfg.to_dict().items():
        lines += table(section, {k: v for k, v in values.items() if not isinstance(v, dict)})
        for component, settings in values.items():
            if isinstance(settings, dict):
                lines += table(f"{section}.{component}", settings)
    return "\n".join(lines)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _resolve_settings(cfg: ExperimentConfig, section: str) -> dict[str, dict]:
    """The ``[section.NAME]`` settings checked by their components' ``Settings`` classes, with the
    chosen components' defaults filled in."""
    registries = {key: r for key, r in by_config_key().items() if key.split(".")[0] == section}
    owner = {name: r for r in registries.values() for name in r}
    section_cfg = getattr(cfg, section)
    chosen = {getattr(section_cfg, key.split(".")[1]) for key in registries}
    given = section_cfg.settings
    with_settings = sorted(n for n, r in owner.items() if r.settings_class(n) is not None)
    out = {}
    for name in sorted(set(given) | chosen):
        registry = owner.get(name)
        settings_cls = registry.settings_class(name) if registry is not None else None
        if settings_cls is None:
            if name not in given:
                continue
            described = ", ".join(
                f"{n} ({', '.join(f.name for f in dataclasses.fields(owner[n].settings_class(n)))})"
                for n in with_settings
            )
            raise ConfigError(
                f"[{section}.{name}]: {name!r} is no {section} component with settings; those with "
                f"settings are: {described}"
            )
        out[name] = dataclasses.asdict(settings_of(settings_cls, given.get(name, {}), f"{section}.{name}"))
    return out


def settings_of(settings_cls: type, given: dict[str, Any], where: str) -> Any:
    """``settings_cls`` (a component's ``Settings`` dataclass) from the ``given`` values, coerced to
    its annotated types; a ``ValueError`` from its checks becomes a :class:`ConfigError`."""
    hints = typing.get_type_hints(settings_cls)
    unknown = sorted(set(given) - set(hints))
    if unknown:
        raise ConfigError(f"unknown setting {where}.{unknown[0]}; settings of {where} are: {', '.join(hints)}")
    values = {key: _coerce(value, hints[key], f"{where}.{key}") for key, value in given.items()}
    try:
        return settings_cls(**values)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """Reject impossible values, naming what is accepted. Returns ``cfg`` with the chosen
    components' settings filled in."""
    for (section, key), choices in _CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        _require(value in choices, f"{section}.{key} = {value!r} is not one of: {', '.join(choices)}")
    for config_key, registry in by_config_key().items():  # component names (pyro_vae.registry)
        section, key = config_key.split(".")
        value = getattr(getattr(cfg, section), key)
        _require(value in registry, f"{config_key} = {value!r} is not one of: {', '.join(registry.names())}")
    positive = [
        ("model", "latent_dim"),
        ("train", "num_particles"),
        ("train", "epochs"),
        ("train", "batch_size"),
        ("train", "eval_batch_size"),
        ("eval", "iwae_k"),
        ("train", "iw_groups"),
    ]
    for section, key in positive:
        value = getattr(getattr(cfg, section), key)
        _require(value >= 1, f"{section}.{key} = {value} must be at least 1")
    for section, key in [
        ("data", "valid_size"),
        ("data", "subset"),
        ("data", "labels"),
        ("eval", "iwae_images"),
        ("train", "patience"),
        ("train", "sync_every"),
    ]:
        value = getattr(getattr(cfg, section), key)
        _require(value >= 0, f"{section}.{key} = {value} must be 0 or more")
    _require(
        all(h >= 1 for h in cfg.model.hidden), f"model.hidden = {list(cfg.model.hidden)}: widths must be at least 1"
    )
    limits = {
        ("model", "latent_dim"): "MAX_LATENT_DIM",
        ("train", "batch_size"): "MAX_BATCH_SIZE",
        ("train", "eval_batch_size"): "MAX_BATCH_SIZE",
        ("train", "num_particles"): "MAX_SAMPLES",
        ("train", "iw_groups"): "MAX_SAMPLES",
        ("eval", "iwae_k"): "MAX_SAMPLES",
    }
    for (section, key), name in limits.items():
        value, limit = getattr(getattr(cfg, section), key), globals()[name]
        _require(
            value <= limit,
            f"{section}.{key} = {value} is above the limit of {limit:,} "
            f"(pyro_vae.config.{name}); choose a smaller value",
        )
    wide = [h for h in cfg.model.hidden if h > MAX_WIDTH]
    _require(
        not wide,
        f"model.hidden = {list(cfg.model.hidden)}: width {wide[0] if wide else 0} is above the "
        f"limit of {MAX_WIDTH:,} (pyro_vae.config.MAX_WIDTH); choose smaller widths",
    )
    samples = cfg.train.num_particles * cfg.train.iw_groups
    _require(
        samples <= MAX_SAMPLES,
        f"train.num_particles x train.iw_groups = {cfg.train.num_particles} x "
        f"{cfg.train.iw_groups} = {samples:,} samples of z per image, above the limit of {MAX_SAMPLES:,} "
        "(pyro_vae.config.MAX_SAMPLES); choose fewer",
    )
    for section in ("train", "data", "eval"):
        seed = getattr(cfg, section).seed
        _require(
            0 <= seed <= MAX_SEED,
            f"{section}.seed = {seed} must be in [0, {MAX_SEED}] (2**32 - 1: NumPy takes 32-bit seeds)",
        )
    for section, key in [("train", "kl_warmup_epochs"), ("train", "lr"), ("train", "kl_weight")]:
        value = getattr(getattr(cfg, section), key)
        _require(math.isfinite(value), f"{section}.{key} = {value} must be a finite number")
    _require(
        cfg.train.kl_warmup_epochs >= 0, f"train.kl_warmup_epochs = {cfg.train.kl_warmup_epochs} must be 0 or more"
    )
    _require(cfg.train.time_limit_min >= 0, f"train.time_limit_min = {cfg.train.time_limit_min} must be 0 or more")
    _require(cfg.train.lr > 0, f"train.lr = {cfg.train.lr} must be positive")
    _require(
        cfg.train.kl_weight > 0,
        f"train.kl_weight = {cfg.train.kl_weight} must be positive (beta of a beta-VAE; "
        "1 trains the ELBO; a zero weight would drop the KL term and its gradient)",
    )
    _require(0 < cfg.train.lr_decay <= 1, f"train.lr_decay = {cfg.train.lr_decay} must be in (0, 1]")
    _require(cfg.train.lr_drops >= 0, f"train.lr_drops = {cfg.train.lr_drops} must be 0 or more")
    _require(
        not cfg.train.lr_drops or cfg.train.patience > 0,
        f"train.lr_drops = {cfg.train.lr_drops} needs train.patience > 0: a drop happens when patience runs out "
        "(set train.patience, e.g. train.patience=20)",
    )
    _require(0 < cfg.train.lr_drop_factor < 1, f"train.lr_drop_factor = {cfg.train.lr_drop_factor} must be in (0, 1)")
    _require(cfg.model.init in INITS, f"model.init = {cfg.model.init!r} is not one of: {', '.join(INITS)}")
    _require(is_device_name(cfg.train.device), f"train.device = {cfg.train.device!r} is not one of: {DEVICE_NAMES}")
    resolved = {
        s: dataclasses.replace(getattr(cfg, s), settings=_resolve_settings(cfg, s)) for s in ("data", "model", "train")
    }
    return dataclasses.replace(cfg, **resolved)


DEVICE_NAMES = "auto, cpu, cuda, cuda:N"
INITS = ("torch", "he")  # model.init


def is_device_name(name: str) -> bool:
    """Whether ``name`` is one of :data:`DEVICE_NAMES` (``train.device``, and every ``--device``)."""
    return name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())
