"""Imports run one way. The package is a stack of layers, bottom to top; a layer is a top-level
module or a sub-package (a folder). A module may import from the layers below its own and, inside
a sub-package, from the modules listed before it there. Module-level and function-level imports
alike are checked, so there is no import cycle and the folder tree is the architecture."""

from __future__ import annotations

import ast

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "pyro_vae"

# Bottom to top: (layer, its modules bottom to top). A top-level module is a layer of its own.
LAYERS = [
    ("_version", ["_version"]),
    ("registry", ["registry"]),
    ("seeding", ["seeding"]),
    ("compiling", ["compiling"]),
    ("files", ["files"]),
    ("cpu_kernels", ["cpu_kernels"]),
    ("config", ["config"]),
    ("data", ["pixels", "download", "splits", "labels", "binarized_mnist", "sets", "images", "load", "__init__"]),
    ("components", ["nets", "priors", "likelihoods", "guides", "__init__"]),
    ("model", ["model"]),
    ("hierarchical", ["hierarchical"]),
    ("mixture", ["mixture"]),
    ("semi_supervised", ["semi_supervised"]),
    ("objectives", ["closed_form", "surrogates", "sites", "elbos", "fast", "__init__"]),
    ("plugins", ["contracts", "loader", "__init__"]),
    ("runs", ["checkpoint", "device", "folder", "writer", "export", "trained", "codes", "__init__"]),
    ("evaluation", ["metrics", "clustering", "label_scores", "plots", "latent", "__init__"]),
    (
        "training",
        [
            "distributed",
            "stopping",
            "checks",
            "capture",
            "whole_step",
            "engine",
            "labelled",
            "tensorboard",
            "loop",
            "__init__",
        ],
    ),
    ("lab", ["estimators", "discrete", "report", "__init__"]),
    ("cli", ["cli"]),
    ("__init__", ["__init__", "__main__"]),
]
RANK = {}  # dotted module name (relative to the package) -> (layer index, index inside the layer)
for layer_index, (layer, modules) in enumerate(LAYERS):
    for module_index, module in enumerate(modules):
        top_level = layer == module or layer == "__init__"
        RANK[module if top_level else f"{layer}.{module}"] = (layer_index, module_index)


def module_name(path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts)


def imported(path) -> set[str]:
    """The package modules that ``path`` imports, as dotted names relative to the package
    (``from pyro_vae.x.y import z`` gives ``x.y``, or ``x.y.z`` when that is a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import at line {node.lineno}; the package imports absolutely")
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pyro_vae":
            base = node.module.split(".")[1:]
            for alias in node.names:
                candidate = ".".join([*base, alias.name])
                names.add(candidate if candidate in RANK or f"{candidate}.__init__" in RANK else ".".join(base))
        elif isinstance(node, ast.Import):
            names |= {".".join(a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == "pyro_vae"}
    return {name if name in RANK else f"{name}.__init__" if name else "__init__" for name in names}


MODULES = sorted(module_name(p) for p in PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    assert set(MODULES) == set(RANK), f"place new modules in LAYERS: {sorted(set(MODULES) ^ set(RANK))}"


def test_the_layers_are_the_folders():
    """Every sub-package is one layer, and every layer of several modules is a folder."""
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == {layer for layer, modules in LAYERS if len(modules) > 1 and layer != "__init__"}


@pytest.mark.parametrize("module", MODULES)
def test_imports_point_down(module):
    path = PACKAGE / (module.replace(".", "/") + ".py")
    upward = {name: RANK[name] for name in imported(path) if RANK[name] >= RANK[module]}
    where = f"pyro_vae/{path.relative_to(PACKAGE)} (layer, place {RANK[module]})"
    assert not upward, f"{where} imports from its own or a higher place: {upward}"


def test_a_cycle_would_be_caught(tmp_path):
    """The check sees function-level imports (the kind that hid the config <-> registries cycle)."""
    source = tmp_path / "m.py"
    source.write_text(
        "def f():\n    from pyro_vae import data\n    from pyro_vae.objectives.elbos import ELBOS\n"
        "    from pyro_vae.components import priors\n    import pyro_vae.model\n"
    )
    assert imported(source) == {"data.__init__", "objectives.elbos", "components.priors", "model"}
    assert RANK["config"] < RANK["data.__init__"] and RANK["objectives.elbos"] < RANK["training.loop"]


def test_config_checks_every_component_name_through_the_registries():
    import pyro_vae  # noqa: F401  (fills the registries)
    from pyro_vae.registry import by_config_key

    assert set(by_config_key()) == {
        "data.name",
        "model.prior",
        "model.likelihood",
        "model.guide",
        "model.network",
        "model.structure",
        "train.elbo",
    }


def test_every_sub_package_is_installed():
    """A wheel holds what pyproject's package list finds: every folder with an __init__.py must be
    found, or a non-editable install imports pyro_vae and fails on its first sub-package."""
    import sys

    from setuptools import find_packages

    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    include = options["packages"]["find"]["include"]
    found = set(find_packages(where=str(ROOT), include=include))
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")}
    assert on_disk <= found, f"sub-packages a wheel would leave out: {sorted(on_disk - found)}"


def test_the_package_and_its_command_line_import_no_plotting_library():
    """Every process that starts pyro-vae (each CLI command, each rank of a distributed run) pays
    for what ``import pyro_vae`` loads: matplotlib (0.3 s here) is imported only where a figure is
    drawn, TensorBoard only when a run asks for it."""
    import subprocess
    import sys

    probe = (
        "import sys, pyro_vae, pyro_vae.cli; "
        "print(sorted(m for m in ('matplotlib', 'torch.utils.tensorboard') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", f"imported by `import pyro_vae` and its CLI: {result.stdout}"
