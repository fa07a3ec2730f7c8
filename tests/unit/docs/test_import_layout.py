"""The package's imports point downward (docs/architecture.md): every `fpa_ray` import, those inside
functions included, read from the source; no module reaches itself through others, and the top
layers (the CLI, the pipelines, the evaluation, the run directory and pool stages they share) are
imported only from above."""

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[3] / "fpa_ray"
# Higher imports lower; every room not named here is below all of them.
TOP = {"main": 4, "pipelines": 3, "evaluation": 2, "pool_stages": 1, "run_directory": 0.5}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    return modules


def _arrows(modules: dict[str, Path]) -> set[tuple[str, str]]:
    arrows = set()
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fpa_ray"):
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            arrows |= {(name, target) for target in targets if target in modules and target != name}
    return arrows


def _room(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def _circles(arrows: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    graph = defaultdict(set)
    for a, b in arrows:
        graph[a].add(b)
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                groups.append(group)

    for node in list(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_module_reaches_itself_through_others():
    arrows = _arrows(_modules())
    assert len(arrows) > 100  # the reader found the package's imports
    assert _circles(arrows) == []


def test_the_top_layers_are_imported_only_from_above():
    upward = [(a, b) for a, b in _arrows(_modules())
              if _room(a) != _room(b) and TOP.get(_room(a), -1) < TOP.get(_room(b), -1)]
    assert upward == []


def test_the_checks_catch_a_circle_and_an_import_running_back_up():
    assert [sorted(group) for group in _circles({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")})] == [["a", "b", "c"]]
    assert TOP.get(_room("fpa_ray.evaluation.harness"), -1) < TOP.get(_room("fpa_ray.pipelines.offline"), -1)
    assert TOP.get(_room("fpa_ray.sampler.stage"), -1) < TOP.get(_room("fpa_ray.run_directory"), -1)
