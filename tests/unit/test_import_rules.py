"""The layout's import rules, read from the source (no module is imported):

- the market library and `common/` import no service;
- a service imports its own folder, `common/`, `market/` and, of another service, only what
  that service offers to others (the policy's model code, the features service's store reader);
- the simulator does not import the policy at all (it asks the policy server over HTTP);
- nothing imports a `__main__`;
- there are no import cycles between modules (lazy imports inside functions count too: they
  are cycles a newcomer still has to untangle; only `if TYPE_CHECKING:` imports are left out).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "services"

# Packages that are not services: everyone may import them.
SHARED = {"common", "market"}
# The composition roots wire services together, so they may import any of them.
# `rlmf report` reads what the simulator, the trainer and the demo's plots each keep;
# `rlmf config` reads every service's settings.
COMPOSITION_ROOTS = {
    "services.cli",
    "services.backtest_cli",
    "services.config_cli",
    "services.up.status",
    "services.up.cli",
    "services.up.report",
}
# What a service offers to the others; everything else in its folder is internal.
PUBLIC = {
    # approval and artifact_signing: the artifact format's signatures and approvals, which the
    # trainer writes and checks as the policy server does.
    "policy": {
        "actor_critic",
        "artifacts",
        "approval",
        "artifact_signing",
        "prompt",
        "client",
        "folder_policy",
        "day_cache",
    },
    "features": {"store"},
    # warm_up: the warm-up cycle's windows, which the demo plans and reports as the trainer
    # will apply them (`rlmf trainer cycle --warm-up`).
    "trainer": {"warm_up"},
}
# Pairs that may not talk in-process at all, whatever is public.
FORBIDDEN = {("simulator", "policy")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path) -> set[str]:
    """Every `services...` module `path` imports, at module level or inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else None
    found: set[str] = set()
    skip: set[int] = set()
    for node in ast.walk(tree):
        if _is_type_checking_block(node):
            skip.update(id(child) for child in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("services"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level and package:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            if not base.startswith("services"):
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if _module_path(candidate) else base)
    return found


def _module_path(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _graph() -> dict[str, set[str]]:
    modules = {
        _module_name(p): p
        for p in SERVICES.rglob("*.py")
        if "pb" not in p.relative_to(SERVICES).parts
    }
    return {name: {i for i in _imports(path) if _module_path(i)} for name, path in modules.items()}


GRAPH = _graph()


def _owner(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _violation(importer: str, imported: str) -> str | None:
    if importer in COMPOSITION_ROOTS:
        return None
    if imported.split(".")[-1] == "__main__":
        return "imports a __main__"
    src, dst = _owner(importer), _owner(imported)
    if src == dst or dst in SHARED:
        return None
    if src in SHARED:
        return f"services.{src} is shared and may not import a service"
    if (src, dst) in FORBIDDEN:
        return f"{src} may not import {dst} in-process"
    module = imported.split(".")[2] if imported.count(".") >= 2 else ""
    if module not in PUBLIC.get(dst, set()):
        return f"{imported} is internal to the {dst} service"
    return None


def test_the_graph_sees_the_whole_tree() -> None:
    # A guard for the check itself: a parser that found nothing would pass every rule.
    assert "services.market.envs" in GRAPH
    assert "services.market.accounting" in GRAPH["services.market.envs"]
    assert len(GRAPH) > 80


@pytest.mark.parametrize("importer", sorted(GRAPH))
def test_imports_follow_the_layout(importer: str) -> None:
    bad = {imp: why for imp in GRAPH[importer] if (why := _violation(importer, imp))}
    assert not bad, f"{importer}: {bad}"


def test_no_import_cycles() -> None:
    # Depth-first search over the graph; a back edge is a cycle.
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH.get(node, ())):
            if nxt not in GRAPH or nxt == node:
                continue
            # A package's __init__ re-exporting its own submodules is not a cycle to untangle.
            if nxt.startswith(node + ".") or node.startswith(nxt + ".") and nxt == _package(node):
                continue
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _package(module: str) -> str:
    return module.rsplit(".", 1)[0]
