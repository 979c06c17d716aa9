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
from typing import Generic, TypeVar

T = TypeVar("T")

_BY_CONFIG_KEY: dict[str, Registry] = {}


def by_config_key() -> dict[str, Registry]:
    """The registries that name the value of a config key (``"model.prior"``: the priors)."""
    return dict(_BY_CONFIG_KEY)


class Registry(Generic[T]):
    """Maps names to components of one kind (``kind`` is used in error messages)."""

    def __init__(self, kind: str, config_key: str | None = None) -> None:
        self.kind = kind
        self.config_key = config_key
        self._items: dict[str, T] = {}
        if config_key is not None:
            if config_key in _BY_CONFIG_KEY:
                raise ValueError(f"config key {config_key!r} has a registry already: {_BY_CONFIG_KEY[config_key].kind}")
            _BY_CONFIG_KEY[config_key] = self

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; a name can be registered once."""

        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
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
