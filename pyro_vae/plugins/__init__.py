"""Plugins: components of one's own, by name from the command line and config files
(:mod:`~pyro_vae.plugins.loader`), checked against their registries' contracts
(:mod:`~pyro_vae.plugins.contracts`)."""

from pyro_vae.plugins.contracts import ContractError, check_component
from pyro_vae.plugins.loader import Plugin, PluginError, isolated, load_entry_points, load_plugin, loaded, require

__all__ = [
    "ContractError",
    "Plugin",
    "PluginError",
    "check_component",
    "isolated",
    "load_entry_points",
    "load_plugin",
    "loaded",
    "require",
]
