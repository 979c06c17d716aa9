"""A tiny name -> component registry (one per kind of component).

Adding a component is one decorated class or function in one file::

    PRIORS = Registry("prior", config_key="model.prior")

    @PRIORS.register("standard_normal")
    class StandardNormal(nn.Module): ...

A registry made with ``config_key`` is listed in :func:`by_config_key`, which
:func:`pyro_vae.config.validate` reads to check names: the config layer never imports the
components (importing :mod:`pyro_vae` imports every component module, filling the registries).

Only the factories (:func:`pyro_vae.model.build_vae`, :func:`pyro_vae.objectives.elbos.build_elbo`,
:func:`pyro_vae.data.load_data`) turn names into objects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

T = TypeVar("T")

_BY_CONFIG_KEY: dict[str, Registry] = {}
_ORIGINS: list[str] = []  # what is registering now (a plugin being imported), innermost last


@contextmanager
def registering_as(origin: str):
    """Registrations made inside this block are recorded as coming from ``origin`` (a plugin,
    see :mod:`pyro_vae.plugins`), which clash messages and run folders name."""
    _ORIGINS.append(origin)
    try:
        yield
    finally:
        _ORIGINS.pop()


def by_config_key() -> dict[str, Registry]:
    """The registries that name the value of a config key (``"model.prior"``: the priors)."""
    return dict(_BY_CONFIG_KEY)


class Registry(Generic[T]):
    """Maps names to components of one kind (``kind`` is used in error messages)."""

    def __init__(self, kind: str, config_key: str | None = None) -> None:
        self.kind = kind
        self.config_key = config_key
        self._items: dict[str, T] = {}
        self._origins: dict[str, str] = {}  # name -> the plugin that registered it (built-ins: absent)
        if config_key is not None:
            if config_key in _BY_CONFIG_KEY:
                raise ValueError(f"config key {config_key!r} has a registry already: {_BY_CONFIG_KEY[config_key].kind}")
            _BY_CONFIG_KEY[config_key] = self

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; a name can be registered once."""

        def decorator(obj: T) -> T:
            origin = _ORIGINS[-1] if _ORIGINS else None
            if name in self._items:
                raise ValueError(
                    f"{self.kind} {name!r} is registered twice: {_describe(origin)} registers it, "
                    f"and {_describe(self.origin(name))} has already; rename one of them"
                )
            self._items[name] = obj
            if origin is not None:
                self._origins[name] = origin
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Return the component registered as ``name``; an unknown name lists the known ones."""
        try:
            return self._items[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}; registered {self.kind}s: {', '.join(self.names())}"
            ) from None

    def origin(self, name: str) -> str | None:
        """The plugin that registered ``name``, or None for a built-in."""
        return self._origins.get(name)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a plugin's registration, when importing the plugin failed)."""
        self._items.pop(name, None)
        self._origins.pop(name, None)

    def snapshot(self) -> tuple[dict, dict]:
        """The registrations as they are now, for :meth:`restore`."""
        return dict(self._items), dict(self._origins)

    def restore(self, snapshot: tuple[dict, dict]) -> None:
        self._items, self._origins = dict(snapshot[0]), dict(snapshot[1])

    def settings_class(self, name: str) -> type | None:
        """The ``Settings`` dataclass the component ``name`` declares (its ``[section.name]``
        table, see :mod:`pyro_vae.config`), or None."""
        return getattr(self.get(name), "Settings", None)

    def settings(self, name: str, settings: dict) -> object | None:
        """The component ``name``'s ``Settings`` built from a config section's ``settings``
        (defaults where it has none), or None for a component without settings."""
        cls = self.settings_class(name)
        return cls(**settings.get(name, {})) if cls is not None else None

    def build(self, name: str, settings: dict, **kwargs):
        """The component ``name`` built with ``kwargs`` and its settings (from a config section's
        ``settings``; see :meth:`settings`), as the factories build every component."""
        return self.get(name)(**kwargs, settings=self.settings(name, settings))

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def in_order(self) -> list[str]:
        """The names in the order they were registered (built-ins in their modules' order, then plugins)."""
        return list(self._items)


def _describe(origin: str | None) -> str:
    return "pyro-vae (built-in)" if origin is None else f"plugin {origin}"
