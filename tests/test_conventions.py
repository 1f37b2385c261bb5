"""The project's conventions, enforced: import layering, help texts, a flag per config field."""

from __future__ import annotations

import ast
import dataclasses
import functools
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
FOUNDATION = {
    "errors",
    "attention",
    "config",
    "files",
    "interrupts",
    "console",
    "devices",
    "distributed",
    "channel_maps",
    "resizing",
    "macs",
    "architectures",
    "checkpoint",
    "data",
    "taps",
    "matrix_file",
    "mixing",
    "cifar_binary",
}
STEPS = [
    "evaluate",
    "importer",
    "train",
    "probe",
    "matrix",
    "clusters",
    "heads",
    "connections",
    "unit_removal",
    "structured",
    "finetune",
    "prune",
    "compact",
    "export",
    "committee",
    "latency",
    "power_law",
    "sweep",
    "figures",
    "report",
]
ENTRY = {"cli", "__main__", "__init__"}
ONLY_IN = {
    "typer": {"cli"},
    "rich": {"console"},
    "onnxruntime": {"export", "latency"},
    "click": {"cli"},
    "matplotlib": {"figures"},
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@functools.cache
def _parsed() -> dict[str, frozenset[str]]:
    found = {path.stem: imported_modules(path) for path in PACKAGE.glob("*.py")}
    found["cli"] = set().union(*(imported_modules(p) for p in (PACKAGE / "cli").glob("*.py")))
    return {name: frozenset(imports) for name, imports in found.items()}


def modules() -> dict[str, frozenset[str]]:
    """Each module's imports; the modules of the `cli` package count as one, `cli`.

    The sources are parsed once per session (each test used to parse all of them again)."""
    return dict(_parsed())


def test_every_module_has_a_known_layer():
    unknown = set(modules()) - FOUNDATION - set(STEPS) - ENTRY
    assert not unknown, f"place these modules in the layering of test_conventions.py: {unknown}"


@pytest.mark.parametrize("name", sorted(FOUNDATION | set(STEPS) & set(modules())))
def test_imports_point_downward(name):
    imports = modules()[name]
    own = {i.split(".")[1] for i in imports if i.startswith("snptool.")}
    assert not own & ENTRY - {"__init__"}, f"{name} imports the CLI"
    if name in FOUNDATION:
        assert not own & set(STEPS), f"foundation module {name} imports a step: {own & set(STEPS)}"
    else:
        later = set(STEPS[STEPS.index(name) + 1 :])
        assert not own & later, f"step {name} imports a later step: {own & later}"


@pytest.mark.parametrize("package, allowed", sorted(ONLY_IN.items()))
def test_third_party_imports_stay_in_their_module(package, allowed):
    offenders = {
        name
        for name, imports in modules().items()
        if any(i.split(".")[0] == package for i in imports)
    }
    assert offenders <= allowed, f"{package} imported outside {allowed}: {offenders - allowed}"


def test_model_defs_import_nothing_from_snptool():
    for path in (ROOT / "model_defs").glob("*.py"):
        assert not any(i.startswith("snptool") for i in imported_modules(path)), path


def test_no_pickle_loading():
    for path in [*PACKAGE.glob("*.py"), *(ROOT / "model_defs").glob("*.py")]:
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


@pytest.mark.parametrize("command, config", CONFIGS)
def test_every_config_field_has_a_flag(command, config):
    options = {o for p in commands()[command].params for o in p.opts}
    for field in dataclasses.fields(config):
        flag = FLAG_OF_FIELD.get(field.name, "--" + field.name.replace("_", "-"))
        assert flag in options, f"{command} has no flag {flag} for {config.__name__}.{field.name}"


@pytest.mark.parametrize("command, config", CONFIGS)
def test_flag_defaults_come_from_the_config(command, config):
    params = {p.name: p for p in commands()[command].params}
    for field in dataclasses.fields(config):
        if field.name in LIST_FIELDS:
            continue
        flag = FLAG_OF_FIELD.get(field.name, "--" + field.name.replace("_", "-"))
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
