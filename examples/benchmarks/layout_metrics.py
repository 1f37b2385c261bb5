"""Measure the code's floor plan with `ast`: import depth, wrong-way imports, lines, method checks.

Works on the flat layout and on the package layout alike, so one run before and one after a
renovation compare. Every module is placed in a pipeline layer by `LAYER_OF` (by package, or by
module name for the flat layout); an import from a lower layer to a higher one is a wrong-way
import. Only imports at module level count (a function-local import is deliberately lazy).

Usage: python examples/benchmarks/layout_metrics.py [REPO_ROOT] [--json]
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

# Lowest first: a module may import its own layer or any lower one; analysis and training are
# peers that must not import each other.
LAYERS = ["model_defs", "config", "core", "data", "analysis", "training", "pruning", "deploy"]
PEERS = {"analysis": "training", "training": "analysis"}
SIDE = {"report": "core", "cli": None, "entry": None}  # report sits on core; cli/entry on top
# Where each flat module of the old layout belongs (what the renovation moves it to).
FLAT_PLACE = {
    **dict.fromkeys(["errors", "config"], "config"),
    **dict.fromkeys(
        [
            "files",
            "interrupts",
            "console",
            "devices",
            "distributed",
            "checkpoint",
            "architectures",
            "attention",
            "taps",
            "matrix_file",
            "macs",
            "resizing",
            "channel_maps",
        ],
        "core",
    ),
    **dict.fromkeys(["data", "cifar_binary"], "data"),
    **dict.fromkeys(["evaluate", "importer", "train", "sweep", "power_law", "mixing"], "training"),
    **dict.fromkeys(["probe", "matrix", "clusters", "heads"], "analysis"),
    **dict.fromkeys(
        ["prune", "structured", "connections", "unit_removal", "compact", "finetune"], "pruning"
    ),
    **dict.fromkeys(["export", "committee", "latency"], "deploy"),
    **dict.fromkeys(["report", "figures"], "report"),
    **dict.fromkeys(["__init__", "__main__"], "entry"),
}
PRUNE_METHODS = {
    "afcc",
    "andc",
    "random",
    "magnitude",
    "afcc-grouped",
    "heads",
    "units",
    "magnitude-channels",
    "taylor",
    "lamp",
}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def place(module: str) -> str | None:
    """The layer of a module: its package under snptool, or FLAT_PLACE for a flat module."""
    parts = module.split(".")
    if parts[0] == "model_defs":
        return "model_defs"
    if len(parts) == 1:
        return "entry"
    if parts[1] in ("errors", "config", "lazy"):
        return "config"
    if parts[1] == "cli":
        return "cli"
    if parts[1] in LAYERS or parts[1] in SIDE:
        return parts[1]
    return FLAT_PLACE.get(parts[1], "entry")


def rank(layer: str | None) -> float:
    if layer == "training":
        return LAYERS.index("analysis")
    if layer in LAYERS:
        return LAYERS.index(layer)
    if layer == "report":
        return LAYERS.index("core") + 0.5
    return len(LAYERS)  # cli and the entry points sit on top


def top_level_imports(path: Path, module: str, known: set[str]) -> set[str]:
    """Project modules imported at module level (not inside functions, not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(sub, ast.Import):
                found |= {alias.name for alias in sub.names}
            elif isinstance(sub, ast.ImportFrom):
                base = sub.module or ""
                if sub.level:
                    anchor = package.split(".")[: len(package.split(".")) - sub.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in sub.names:  # `from pkg import module` imports pkg.module
                    full = f"{base}.{alias.name}"
                    found.add(full if full in known else base)
    resolved = set()
    for name in found:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            resolved.add(name)
    return resolved


def import_graph(root: Path) -> dict[str, set[str]]:
    files = {
        module_name(root, p): p for d in ("snptool", "model_defs") for p in (root / d).rglob("*.py")
    }
    return {m: top_level_imports(p, m, set(files)) for m, p in files.items()}


def with_parents(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Importing `a.b.c` runs `a/__init__` and `a/b/__init__` first: add those edges."""
    full = {}
    for module, targets in graph.items():
        edges = set(targets)
        for target in targets:
            parts = target.split(".")
            # the root package's __init__ is lazy (PEP 562), so it is not an edge
            edges |= {
                ".".join(parts[:i]) for i in range(2, len(parts)) if ".".join(parts[:i]) in graph
            }
        full[module] = edges - {module}
    return full


def depth(graph: dict[str, set[str]]) -> tuple[int, list[str]]:
    """Longest import chain (in modules) and one chain that long; cycles are cut where met."""
    memo: dict[str, list[str]] = {}

    def longest(module: str, stack: frozenset[str]) -> list[str]:
        if module in memo:
            return memo[module]
        best: list[str] = []
        for target in graph.get(module, ()):
            if target in stack:
                continue
            chain = longest(target, stack | {target})
            if len(chain) > len(best):
                best = chain
        memo[module] = [module, *best]
        return memo[module]

    chains = [longest(m, frozenset({m})) for m in graph]
    chain = max(chains, key=len)
    return len(chain), chain


def wrong_way(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            src, dst = place(module), place(target)
            lower_to_higher = rank(dst) > rank(src) or PEERS.get(src) == dst
            report_to_stage = src == "report" and dst not in (
                "model_defs",
                "config",
                "core",
                "report",
            )
            if lower_to_higher or report_to_stage:
                bad.append(f"{module} ({src}) -> {target} ({dst})")
    return bad


def method_checks(root: Path) -> int:
    """Comparisons of a `method` value with a prune method's name or a set of method names."""
    count = 0
    for path in (root / "snptool").rglob("*.py"):
        if "/cli/" in str(path):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            text = ast.unparse(node)
            names = {c.value for c in ast.walk(node) if isinstance(c, ast.Constant)}
            if "method" in text and (names & PRUNE_METHODS or "METHODS" in text):
                count += 1
    return count


def lines(paths) -> int:
    return sum(len(p.read_text().splitlines()) for p in paths)


def loaded_by(root: Path, module: str, heavy: tuple[str, ...]) -> list[str]:
    code = f"import sys, {module}; print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    return out.stdout.split() if out.returncode == 0 else [f"error: {out.stderr.strip()[-200:]}"]


def measure(root: Path) -> dict:
    graph = with_parents(import_graph(root))
    snp = {m: t for m, t in graph.items() if m.startswith("snptool")}
    n, chain = depth(snp)
    per_package: dict[str, int] = {}
    for path in (root / "snptool").rglob("*.py"):
        key = place(module_name(root, path)) or "entry"
        per_package[key] = per_package.get(key, 0) + len(path.read_text().splitlines())
    export_module = (
        "snptool.deploy.export" if (root / "snptool/deploy").exists() else "snptool.export"
    )
    return {
        "modules": len(snp),
        "import_depth": n,
        "deepest_chain": chain,
        "wrong_way_imports": wrong_way(graph),
        "lines_per_layer": dict(sorted(per_package.items(), key=lambda kv: rank(kv[0]))),
        "cli_lines": lines((root / "snptool/cli").rglob("*.py")),
        "prune_method_checks": method_checks(root),
        "readme_lines": len((root / "README.md").read_text().splitlines()),
        "export_loads": loaded_by(root, export_module, ("torch_pruning", "sklearn", "typer")),
    }


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--json"]
    root = Path(args[0] if args else Path(__file__).resolve().parents[2]).resolve()
    result = measure(root)
    if "--json" in sys.argv:
        print(json.dumps(result, indent=1))
        return
    print(f"modules {result['modules']}, import depth {result['import_depth']}:")
    print("  " + " -> ".join(result["deepest_chain"]))
    print(f"wrong-way imports: {len(result['wrong_way_imports'])}")
    for line in result["wrong_way_imports"]:
        print(f"  {line}")
    print("lines per layer: " + ", ".join(f"{k} {v}" for k, v in result["lines_per_layer"].items()))
    print(
        f"cli lines {result['cli_lines']}, prune method checks {result['prune_method_checks']}, "
        f"README lines {result['readme_lines']}"
    )
    print(
        "importing the export module loads: "
        + (", ".join(result["export_loads"]) or "none of torch_pruning, sklearn, typer")
    )


if __name__ == "__main__":
    main()
