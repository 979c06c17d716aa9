"""Importing plugins: modules of one's own whose registrations count like the built-ins.

A plugin is a Python file (``./my_priors.py``) or an importable module (``my_package.vae_parts``)
that registers components with the usual decorators (``@PRIORS.register("laplace")``). Importing
it runs its code, so pyro-vae imports only what the user names on the command line
(``--plugin``), what an installed package declares in the ``pyro_vae.components`` entry-point
group, and, with the user's consent (:func:`require`), what a config file or a run folder names.

Each registration is checked against its registry's contract (:mod:`pyro_vae.plugins.contracts`)
as it is imported; a plugin that fails to import, clashes with a registered name or breaks a
contract leaves no registration behind and raises :class:`PluginError` naming it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import site
import sys
import sysconfig
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pyro_vae.registry import by_config_key, registering_as

ENTRY_POINT_GROUP = "pyro_vae.components"
TRUST_FLAG = "--trust-config-plugins"


class PluginError(ValueError):
    """A plugin could not be imported, clashes with a registered name or breaks a contract, or a
    run folder or config file needs a plugin that is missing or not allowed."""


@dataclass(frozen=True)
class Plugin:
    """One imported plugin, as a run folder records it (``plugins.json``)."""

    spec: str  # as given: a file path or a module name
    module: str  # the name it was imported under
    path: str | None  # the file that was run (resolved), if any
    sha256: str | None  # of that file, when it was imported
    registered: dict[str, list[str]] = field(default_factory=dict)  # config key -> names

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> Plugin:
        try:
            registered = {str(k): [str(n) for n in v] for k, v in dict(record.get("registered", {})).items()}
            return cls(
                spec=str(record["spec"]),
                module=str(record["module"]),
                path=record.get("path"),
                sha256=record.get("sha256"),
                registered=registered,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PluginError(
                f"a plugin record {record!r} is malformed ({exc}); expected the keys spec, module, "
                "path, sha256, registered"
            ) from None

    def describe(self) -> str:
        names = ", ".join(f"{key}={name}" for key, names in self.registered.items() for name in names)
        return f"{self.spec} ({names})" if names else self.spec


_LOADED: dict[str, Plugin] = {}  # identity (resolved path or module name) -> plugin


def loaded() -> list[Plugin]:
    """The plugins imported so far in this process, in import order."""
    return list(_LOADED.values())


@contextmanager
def isolated(fresh: bool = False):
    """Undo, on leaving the block, the plugins loaded and the registrations made or removed inside it (for
    tests, a plugin author's included, and notebooks that load a plugin again after editing it).

    :param fresh: start the block as a new process would, with no plugin loaded.
    """
    registries = by_config_key()
    before, loaded_before = {key: r.snapshot() for key, r in registries.items()}, dict(_LOADED)
    try:
        if fresh:
            _LOADED.clear()
            for registry in registries.values():
                for name in [n for n in registry.names() if registry.origin(n) is not None]:
                    registry.unregister(name)
        yield
    finally:
        for key, registry in registries.items():
            registry.restore(before[key])
        _LOADED.clear()
        _LOADED.update(loaded_before)


def is_path(spec: str) -> bool:
    """A spec names a file when it ends in ``.py`` or contains a path separator."""
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_plugin(spec: str, base: str | Path | None = None) -> Plugin:
    """Import the plugin ``spec`` (a ``.py`` file, relative to ``base`` or the working folder, or a
    module name) once; its registrations are checked against their registries' contracts.

    :raises PluginError: naming the plugin, when it is missing, fails to import, registers a
        name that is taken, or registers a component that breaks its registry's contract.
    """
    spec = str(spec)
    if is_path(spec):
        path = (Path(base or ".") / spec).expanduser().resolve()
        if not path.is_file():
            raise PluginError(
                f"plugin {spec}: no such file ({path}); give the path of a .py file or an importable module name"
            )
        identity = str(path)
    else:
        path, identity = None, spec
    if identity in _LOADED:
        return _LOADED[identity]
    registries = by_config_key()
    before = {key: r.snapshot() for key, r in registries.items()}
    try:
        with registering_as(spec):
            module = _import_file(path) if path is not None else _import_module(spec)
        registered = {key: sorted(set(r.names()) - set(before[key][0])) for key, r in registries.items()}
        file = str(path) if path else _module_file(module)
        plugin = Plugin(
            spec=spec,
            module=module.__name__,
            path=file,
            sha256=file_sha256(file) if file else None,
            registered={key: names for key, names in registered.items() if names},
        )
        from pyro_vae.plugins.contracts import ContractError, check_component

        for key, names in plugin.registered.items():
            for name in names:
                try:
                    check_component(key, name)
                except ContractError as exc:
                    raise PluginError(
                        f"plugin {spec}: {key}={name} breaks the contract of its registry: {exc}"
                    ) from None
    except BaseException:
        for key, registry in registries.items():  # nothing of a refused plugin stays registered
            registry.restore(before[key])
        raise
    _LOADED[identity] = plugin
    return plugin


def site_folders() -> list[str]:
    """The folders this Python installs distributions into (its site-packages, the user's own):
    the only places whose distributions' entry points pyro-vae reads."""
    folders = [*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    if site.ENABLE_USER_SITE:
        folders.append(site.getusersitepackages())
    unique = dict.fromkeys(str(Path(f).resolve()) for f in folders if Path(f).is_dir())
    return list(unique)


def installed_entry_points() -> list[importlib.metadata.EntryPoint]:
    """The ``pyro_vae.components`` entry points of the distributions installed in :func:`site_folders`,
    never of a ``*.dist-info`` found on the working folder, ``PYTHONPATH`` or a data folder (the
    first distribution of a name wins, as in ``importlib.metadata``)."""
    seen, points = set(), []
    for dist in importlib.metadata.distributions(path=site_folders()):
        name = (dist.metadata["Name"] or "").lower()
        if name in seen:
            continue
        seen.add(name)
        points.extend(ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP)
    return points


def load_entry_points() -> list[Plugin]:
    """Import the modules that installed packages declare in the ``pyro_vae.components``
    entry-point group (installing a package is consent to run it; :func:`installed_entry_points`)."""
    return [load_plugin(entry_point.value.split(":")[0].strip()) for entry_point in installed_entry_points()]


def used_by(cfg) -> list[Plugin]:
    """The loaded plugins that registered a name the experiment config ``cfg`` uses."""
    sections = cfg.to_dict()
    used = []
    for plugin in loaded():
        for key, names in plugin.registered.items():
            section, option = key.split(".")
            if sections.get(section, {}).get(option) in names:
                used.append(plugin)
                break
    return used


def matching(record: Plugin) -> Plugin | None:
    """The loaded plugin that is ``record`` (the same file, a file with the same bytes, or the same
    module name), or None."""
    for plugin in loaded():
        same_file = record.path is not None and plugin.path == record.path
        same_bytes = record.sha256 is not None and plugin.sha256 == record.sha256
        if same_file or same_bytes or (not is_path(record.spec) and plugin.module == record.module):
            return plugin
    return None


def require(records: list[Plugin], where: str, trust: bool = False) -> list[str]:
    """Make sure the plugins ``records`` (named by a run folder or a config file, ``where``) are
    imported: those the user also gave (:func:`matching`) are; the others are imported only when
    ``trust`` is set (the user's ``--trust-config-plugins``). Returns warnings for plugins whose
    file changed since it was recorded.

    :raises PluginError: listing the plugins that were not given, and how to allow them.
    """
    missing, warnings = [], []
    for record in records:
        plugin = matching(record)
        if plugin is None and trust:
            plugin = load_plugin(record.path if record.path and Path(record.path).is_file() else record.spec)
        if plugin is None:
            missing.append(record)
        elif record.sha256 is not None and plugin.sha256 != record.sha256:
            warnings.append(
                f"plugin {plugin.spec} changed since {where} recorded it (sha256 {record.sha256[:12]} "
                f"then, {str(plugin.sha256)[:12]} now); results may differ"
            )
    if missing:
        listed = "; ".join(record.describe() for record in missing)
        given = " ".join(f"--plugin {record.spec}" for record in missing)
        raise PluginError(
            f"{where} needs plugins that were not given: {listed}. Importing a plugin runs its code, "
            f"so pyro-vae imports only plugins named on the command line: add {given} (the same "
            f"file or module), or pass {TRUST_FLAG} if you trust {where}"
        )
    return warnings


def records_in(config_data: dict, where: str, base: str | Path) -> list[Plugin]:
    """The plugins a config file's ``[plugins]`` table asks for (``modules = [...]``; files relative
    to ``base``, the file's folder), as records for :func:`require`. Nothing is imported."""
    table = config_data.get("plugins", {})
    if not isinstance(table, dict) or set(table) - {"modules"}:
        raise PluginError(
            f'{where}: the [plugins] table takes one key, modules = ["my_priors", "./my_nets.py"]; got {table!r}'
        )
    modules = table.get("modules", [])
    if not isinstance(modules, list) or not all(isinstance(m, str) and m for m in modules):
        raise PluginError(f"{where}: plugins.modules must be a list of module names or .py paths, got {modules!r}")
    records = []
    for spec in modules:
        path = str((Path(base) / spec).expanduser().resolve()) if is_path(spec) else None
        records.append(Plugin(spec=path or spec, module=spec, path=path, sha256=None))
    return records


def _import_file(path: Path):
    name = f"pyro_vae_plugin_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin {path}: not a Python file that can be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except PluginError:
        raise
    except Exception as exc:
        del sys.modules[name]
        raise PluginError(f"plugin {path} failed to import: {type(exc).__name__}: {exc}") from exc
    return module


def _import_module(name: str):
    if name in sys.modules:
        raise PluginError(
            f"plugin {name}: the module was imported before pyro-vae could record what it registers; "
            "load plugins before importing them yourself"
        )
    try:
        return importlib.import_module(name)
    except PluginError:
        raise
    except Exception as exc:
        sys.modules.pop(name, None)
        raise PluginError(f"plugin {name} failed to import: {type(exc).__name__}: {exc}") from exc


def _module_file(module) -> str | None:
    path = getattr(module, "__file__", None)
    return str(Path(path).resolve()) if path else None
