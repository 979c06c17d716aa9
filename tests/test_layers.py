"""Imports run one way: every module of the package imports only modules of lower layers
(module-level and function-level imports alike), so there is no import cycle."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "pyro_vae"

# Bottom to top. A module may import modules of its own layer's predecessors only.
LAYERS = [
    {"_version", "registry", "nets", "pixels", "closed_form", "checkpoint", "distributed", "surrogates"},
    {"config"},
    {"priors", "likelihoods", "guides", "elbos"},
    {"model", "data"},
    {"compat", "fast", "evaluate", "plots", "engine"},
    {"estimators", "train"},
    {"lab_report"},
    {"cli"},
    {"__init__", "__main__"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def package_imports(path) -> set[str]:
    """The sibling modules that ``path`` imports (``from .x import``, ``from . import x``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names |= {node.module} if node.module else {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pyro_vae"):
            names.add(node.module.split(".")[1] if "." in node.module else "__init__")
    return {name.split(".")[0] for name in names}


def test_every_module_has_a_layer():
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert modules == set(LAYER), f"place new modules in LAYERS: {sorted(modules ^ set(LAYER))}"


@pytest.mark.parametrize("module", sorted(LAYER))
def test_imports_point_down(module):
    upward = {name: LAYER.get(name) for name in package_imports(PACKAGE / f"{module}.py")
              if LAYER.get(name, len(LAYERS)) >= LAYER[module]}  # fmt: skip
    assert not upward, f"pyro_vae/{module}.py (layer {LAYER[module]}) imports from its own or a higher layer: {upward}"


def test_a_cycle_would_be_caught(tmp_path):
    """The check sees function-level imports (the kind that hid the config <-> registries cycle)."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from . import data, elbos\n    from .priors import PRIORS\n")
    assert package_imports(source) == {"data", "elbos", "priors"}


def test_config_checks_every_component_name_through_the_registries():
    import pyro_vae  # noqa: F401  (fills the registries)
    from pyro_vae.registry import by_config_key

    assert set(by_config_key()) == {"data.name", "model.prior", "model.likelihood", "model.guide", "train.elbo"}
