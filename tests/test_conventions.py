"""The project's conventions, enforced: import layering, help texts, a flag per config field."""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import typer.main

import snptool
from snptool.cli import app
from snptool.config import (
    ClustersConfig,
    CommitteeConfig,
    EvaluateConfig,
    HeadsConfig,
    LatencyConfig,
    MatrixConfig,
    ProbeConfig,
    PruneConfig,
    SweepConfig,
    TrainConfig,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "snptool"
# The pipeline's layers, lowest first: a module imports its own layer or lower ones only.
# `analysis` and `training` are peers that do not import each other; `report` sits on `core`.
LAYERS = ["config", "core", "data", ("analysis", "training"), "pruning", "deploy", "cli"]
CONFIG_MODULES = {"errors", "config", "lazy"}  # top-level, torch-free
ENTRY = {"__init__", "__main__"}
REPORT_MAY_IMPORT = {"config", "core", "report"}
ONLY_IN = {  # third-party packages and the only modules (or packages) that import them
    "typer": {"cli"},
    "click": set(),  # typer vendors it: `import click` fails where only typer is installed
    "rich": {"core.console"},
    "onnxruntime": {"deploy"},
    "matplotlib": {"report.figures"},
    "torch_pruning": {"pruning", "core.channel_maps"},
    "sklearn": {"data.datasets", "pruning"},
}


def imported_modules(path: Path) -> set[str]:
    """Every absolute import of a file, function-level (lazy) imports included."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def dotted(path: Path) -> str:
    """`core.checkpoint` for snptool/core/checkpoint.py, `deploy` for its __init__."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


@functools.cache
def _parsed() -> dict[str, frozenset[str]]:
    return {dotted(p): frozenset(imported_modules(p)) for p in PACKAGE.rglob("*.py")}


def modules() -> dict[str, frozenset[str]]:
    """Each module's imports, by its name inside snptool; parsed once per session."""
    return dict(_parsed())


def layer_of(module: str) -> str | None:
    """The layer a module (`core.taps`) or an import of it (`snptool.core.taps.Tap`) is in."""
    parts = module.removeprefix("snptool.").split(".")
    if parts[0] in CONFIG_MODULES:
        return "config"
    if parts[0] == "report" or parts[0] in ENTRY:
        return parts[0]
    flat = [name for layer in LAYERS for name in ([layer] if isinstance(layer, str) else layer)]
    return parts[0] if parts[0] in flat else None


def rank(layer: str) -> int:
    return next(i for i, level in enumerate(LAYERS) if layer == level or layer in level)


def own_imports(name: str) -> set[str]:
    """The snptool modules `name` imports (`from snptool.core import console` names both)."""
    imports = {i for i in modules()[name] if i.startswith("snptool.")}
    known = {f"snptool.{m}" for m in modules()}
    return {i for i in imports if i in known or i.rpartition(".")[0] in known}


def test_every_module_has_a_known_layer():
    unknown = {name for name in modules() if layer_of(name) is None}
    assert not unknown, f"place these modules in a package of test_conventions.LAYERS: {unknown}"


@pytest.mark.parametrize("name", sorted(modules()))
def test_imports_point_downward(name):
    layer = layer_of(name)
    if layer in ENTRY:
        return
    for target in own_imports(name):
        target_layer = layer_of(target)
        if target_layer in ENTRY:
            assert target == "snptool.__version__" or layer == "cli", f"{name} imports {target}"
            continue
        if layer == "report":
            assert target_layer in REPORT_MAY_IMPORT, f"report module {name} imports {target}"
        elif target_layer == "report":
            assert layer == "cli", f"{name} imports the report package ({target})"
        else:
            assert rank(target_layer) <= rank(layer), f"{name} ({layer}) imports {target}"
            peers = next(level for level in LAYERS if layer == level or layer in level)
            assert not (
                isinstance(peers, tuple)
                and target_layer != layer
                and rank(target_layer) == rank(layer)
            ), f"{name} imports its peer {target}"


@pytest.mark.parametrize("package, allowed", sorted(ONLY_IN.items()))
def test_third_party_imports_stay_in_their_module(package, allowed):
    def is_allowed(name: str) -> bool:
        return any(name == a or name.startswith(a + ".") for a in allowed)

    offenders = {
        name
        for name, imports in modules().items()
        if any(i.split(".")[0] == package for i in imports) and not is_allowed(name)
    }
    assert not offenders, f"{package} imported outside {allowed}: {offenders}"


def test_package_init_files_import_nothing_eagerly():
    """A package's public surface is lazy, so `import snptool.deploy.export` loads only what
    export needs."""
    for path in PACKAGE.glob("*/__init__.py"):
        if path.parent.name == "cli":
            continue
        imports = imported_modules(path)
        assert imports <= {"snptool.lazy", "snptool.lazy.lazy_exports"}, path


@pytest.mark.parametrize(
    "module, absent",
    [
        ("snptool.deploy.export", ("torch_pruning", "sklearn", "typer", "matplotlib")),
        ("snptool.deploy.latency", ("torch", "torch_pruning", "sklearn")),
        ("snptool.analysis.probe", ("torch_pruning", "onnxruntime", "sklearn")),
        ("snptool.cli", ("torch", "onnxruntime", "torch_pruning")),
    ],
)
def test_importing_a_stage_loads_only_what_it_needs(module, absent):
    code = f"import sys, {module}; print(' '.join(m for m in {absent!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [], f"import {module} loads {done.stdout.strip()}"


def test_every_run_function_is_in_its_package_surface():
    """`snptool.<package>` exposes each `run_*` of the Python API that lives in it."""
    for name in snptool.__all__:
        if not name.startswith("run_"):
            continue
        module = getattr(snptool, name).__module__
        package = importlib.import_module(module.rpartition(".")[0])
        assert name in package.__all__, f"{package.__name__} does not expose {name}"
        assert getattr(package, name) is getattr(snptool, name)


def test_model_defs_import_nothing_from_snptool():
    for path in (ROOT / "model_defs").glob("*.py"):
        assert not any(i.startswith("snptool") for i in imported_modules(path)), path


def test_no_pickle_loading():
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "model_defs").glob("*.py")]:
        text = path.read_text()
        assert "import pickle\n" not in text or "pickle.load" not in text, path
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}: {line.strip()}"


def commands():
    return typer.main.get_command(app).commands


def test_every_command_has_help_with_an_example():
    for name, command in commands().items():
        assert command.help and "Example: snptool " + name in command.help, name


def test_every_command_takes_json():
    for name, command in commands().items():
        assert "--json" in {o for p in command.params for o in p.opts}, name


FLAG_OF_FIELD = {"learning_rate": "--lr", "batch_sizes": "--batch"}
LIST_FIELDS = {"train_layers", "batch_sizes", "ranking"}  # comma-separated on the command line


CONFIGS = [
    ("train", TrainConfig),
    ("evaluate", EvaluateConfig),
    ("probe", ProbeConfig),
    ("matrix", MatrixConfig),
    ("clusters", ClustersConfig),
    ("heads", HeadsConfig),
    ("prune", PruneConfig),
    ("committee", CommitteeConfig),
    ("latency", LatencyConfig),
]


def leaf_fields(config: type) -> list[dataclasses.Field]:
    """A config's fields, nested configs' fields in their place."""
    hints = typing.get_type_hints(config)
    found = []
    for field in dataclasses.fields(config):
        nested = hints[field.name]
        found += leaf_fields(nested) if dataclasses.is_dataclass(nested) else [field]
    return found


def flag_of(field: dataclasses.Field) -> str:
    """The option a field is set by: its `flag` metadata, else `--field-name`."""
    declared = field.metadata.get("flag", "").split("/")[0]
    return declared or FLAG_OF_FIELD.get(field.name, "--" + field.name.replace("_", "-"))


@pytest.mark.parametrize("command, config", CONFIGS)
def test_every_config_field_has_a_flag(command, config):
    options = {o for p in commands()[command].params for o in p.opts}
    for field in leaf_fields(config):
        flag = flag_of(field)
        assert flag in options, f"{command} has no flag {flag} for {config.__name__}.{field.name}"


@pytest.mark.parametrize("command, config", CONFIGS)
def test_flag_defaults_come_from_the_config(command, config):
    params = {p.name: p for p in commands()[command].params}
    for field in leaf_fields(config):
        if field.name in LIST_FIELDS:
            continue
        flag = flag_of(field)
        param = next(p for p in params.values() if flag in p.opts)
        assert param.default == field.default, f"{command} {flag}"


SWEEP_LIST_FIELDS = {"d1", "seeds", "fc_widths"}  # comma-separated on the command line


def test_sweep_has_a_flag_per_field_of_its_config_and_recipe():
    """SweepConfig holds a TrainConfig; each run's seed comes from --seeds."""
    params = {o: p for p in commands()["sweep"].params for o in p.opts}
    fields = [f for f in dataclasses.fields(SweepConfig) if f.name != "train"]
    fields += [f for f in dataclasses.fields(TrainConfig) if f.name != "seed"]
    for field in fields:
        flag = FLAG_OF_FIELD.get(field.name, "--" + field.name.replace("_", "-"))
        assert flag in params, f"sweep has no flag {flag} for {field.name}"
        if field.name in SWEEP_LIST_FIELDS:
            assert params[flag].default == ",".join(map(str, field.default)), flag
        else:
            assert params[flag].default == field.default, f"sweep {flag}"


def test_public_api_resolves():
    for name in snptool.__all__:
        assert getattr(snptool, name) is not None
