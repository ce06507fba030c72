"""The import graph of toolchain/ follows the declared layer order and has no cycle.

Rule: a module may import only modules of its own layer or of a layer below it (LAYERS, bottom first); inside
`toolchain.quantize` the steps are layered the same way (QUANTIZE_STEPS). Imports inside functions count as
imports. A cycle fails even inside one layer. The graph is read with `ast` from the source, nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "toolchain"

# Bottom first. Each entry: the module prefixes of one layer. Declared here, once; docs/architecture.md explains it.
LAYERS: list[tuple[str, ...]] = [
    ("toolchain", "toolchain.errors", "toolchain.core"),  # the package face (__version__), exceptions, utilities
    ("toolchain.onnxio",),  # model files, external data, validation, sessions, graph views, passes
    ("toolchain.executor",),  # ONNX graphs run as torch modules
    ("toolchain.data",),  # images and calibration sets
    ("toolchain.runtimes",),  # onnxruntime / OpenVINO / QNN adapters and what they run on integers
    ("toolchain.export",),  # stage 1
    ("toolchain.generate",),  # stage 2
    ("toolchain.quantize",),  # stage 3
    ("toolchain.evaluate",),  # stage 4
    ("toolchain.pipeline",),  # `toolchain run`: calls the stages
    ("toolchain.api",),  # the Python entry points (paths in, results out)
    ("toolchain.cli",),  # the command line; nothing imports it
]
# Inside toolchain.quantize, bottom first: the shared vocabulary, then the steps in the order they run.
QUANTIZE_STEPS: list[tuple[str, ...]] = [
    # settings, number formats and the report's types: every step reads them
    ("toolchain.quantize.qparams", "toolchain.quantize.targets", "toolchain.quantize.reconstruct.config",
     "toolchain.quantize.config", "toolchain.quantize.report_sections", "toolchain.quantize.report_types"),
    ("toolchain.quantize.fold",),
    ("toolchain.quantize.annotate",),
    ("toolchain.quantize.calibrate",),
    ("toolchain.quantize.mixed_precision",),
    # materialize runs last but sits below reconstruct: reconstruction computes each unit's successor inputs through
    # the QDQ graph as it will be written (docs/architecture.md, "Why materialize sits below reconstruct").
    ("toolchain.quantize.materialize",),
    ("toolchain.quantize.reconstruct",),
    ("toolchain.quantize.report", "toolchain.quantize.target_check"),
    ("toolchain.quantize.driver", "toolchain.quantize"),
]


def _modules() -> dict[str, tuple[Path, bool]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def import_graph() -> dict[str, set[str]]:
    """module -> the toolchain modules it imports (module level and inside functions alike)."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, (path, is_package) in modules.items():
        package = module.split(".") if is_package else module.split(".")[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join([*package[: len(package) - node.level + 1], node.module or ""]) if node.level \
                    else node.module or ""
                names = [base.rstrip("."), *(f"{base.rstrip('.')}.{alias.name}" for alias in node.names)]
            else:
                continue
            targets.update(resolve(name) for name in names if name.split(".")[0] == "toolchain")
        graph[module] = {target for target in targets if target and target != module}
    return graph


def _rank(module: str, layers: list[tuple[str, ...]]) -> int | None:
    best, rank = -1, None
    for index, prefixes in enumerate(layers):
        for prefix in prefixes:
            # "toolchain" names the package face only, not everything below it
            covers = module == prefix or (prefix != "toolchain" and module.startswith(prefix + "."))
            if covers and len(prefix) > best:
                best, rank = len(prefix), index
    return rank


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b' for every import of a higher layer (or a later quantize step) than the importer's."""
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            low, high = _rank(module, LAYERS), _rank(target, LAYERS)
            if module.startswith("toolchain.quantize") and target.startswith("toolchain.quantize"):
                low, high = _rank(module, QUANTIZE_STEPS), _rank(target, QUANTIZE_STEPS)
            if low is None or high is None:
                found.append(f"{module} -> {target} (not in any declared layer)")
            elif high > low:
                found.append(f"{module} -> {target}")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module. A package face (__init__) re-exporting its own
    children is not a cycle as long as none of the children imports the face."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan, iterative depth would not help: the graph is a few hundred modules
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_in_the_package():
    assert cycles(import_graph()) == []


def test_no_module_imports_a_later_layer():
    assert layer_violations(import_graph()) == []


def test_every_module_belongs_to_a_declared_layer():
    unplaced = [module for module in import_graph() if _rank(module, LAYERS) is None]
    assert unplaced == []


def test_the_checks_catch_a_cycle_and_an_upward_import():
    """The rules above fail on the faults they exist for (an edge into the CLI, a two-module cycle)."""
    graph = {"toolchain.core.atomic": {"toolchain.cli.commands"}, "toolchain.cli.commands": {"toolchain.core.atomic"}}
    assert layer_violations(graph) == ["toolchain.core.atomic -> toolchain.cli.commands"]
    assert cycles(graph) == [["toolchain.cli.commands", "toolchain.core.atomic"]]
    steps = {"toolchain.quantize.annotate.placement": {"toolchain.quantize.calibrate.ranges"},
             "toolchain.quantize.calibrate.ranges": set()}
    assert layer_violations(steps) == ["toolchain.quantize.annotate.placement -> toolchain.quantize.calibrate.ranges"]


def test_at_most_six_loose_modules():
    """The package's top level holds folders; loose modules there stay few (today: __init__, api, errors)."""
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(loose) <= 6, loose
