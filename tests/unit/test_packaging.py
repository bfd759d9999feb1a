"""Each service's image installs `rlmf[<extra>]`: every third-party module its entry point can
import must come from the core dependencies or that extra, or the image fails at start-up.

A clean virtual environment per extra would be the direct check, but seven `pip install`s of
torch, Feast and KServe take far too long on the two-core test machines; reading the installed
metadata and walking the imports with `ast` finds the same missing declaration in seconds.
Imports by name in strings (importlib.import_module) are not seen."""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers import REPO

pytestmark = pytest.mark.slow  # distribution metadata of every installed package is read

SERVICES = REPO / "services"
EXTRAS = ("ingest", "sentiment", "features", "policy", "market", "simulator", "trainer")


def _installed_rlmf() -> metadata.Distribution:
    """The installed distribution, not a stale rlmf.egg-info a setup tool left in the repo
    (the repository root is on sys.path under pytest, so that one would be found first)."""
    found = [
        d
        for d in metadata.distributions(name="rlmf")
        if Path(str(d.locate_file(""))).resolve() != REPO
    ]
    assert found, "rlmf is not installed: run `make install`"
    return found[0]


def _requirements() -> list[Requirement]:
    return [Requirement(r) for r in _installed_rlmf().requires or []]


def _applies(req: Requirement, extra: str) -> bool:
    return req.marker is None or req.marker.evaluate({"extra": extra})


def _for_extra(extra: str | None) -> list[Requirement]:
    """The requirements that `extra` adds to the core (None: the core itself)."""
    if extra is None:
        return [r for r in _requirements() if _applies(r, "")]
    return [r for r in _requirements() if _applies(r, extra) and not _applies(r, "")]


def _declared(extra: str | None, seen: frozenset[str] = frozenset()) -> set[str]:
    """Distributions `rlmf[extra]` names directly, nested rlmf[...] extras resolved."""
    names: set[str] = set()
    for req in _for_extra(extra):
        if canonicalize_name(req.name) == "rlmf":
            for nested in req.extras - seen:
                names |= _declared(nested, seen | {nested})
        else:
            names.add(canonicalize_name(req.name))
    return names


@cache
def _requires_of(dist: str) -> frozenset[str]:
    """What an installed distribution itself installs (its extras left out)."""
    try:
        reqs = [Requirement(r) for r in metadata.requires(dist) or []]
    except metadata.PackageNotFoundError:
        return frozenset()
    return frozenset(
        canonicalize_name(r.name) for r in reqs if r.marker is None or r.marker.evaluate()
    )


def _installed_with(extra: str) -> set[str]:
    """Every distribution pip installs for `rlmf[extra]`: the core, the extra, and theirs."""
    todo = _declared(None) | _declared(extra, frozenset({extra}))
    done: set[str] = set()
    while todo:
        dist = todo.pop()
        done.add(dist)
        todo |= _requires_of(dist) - done
    return done


# ---------------------------------------------------------------------------------------------
# The imports of a service, walked from its entry point within services/
# ---------------------------------------------------------------------------------------------


def _module_file(module: str) -> Path | None:
    """The file of a services.* module, or None when the name is not a module (an attribute)."""
    base = REPO.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(path: Path, package: str) -> set[str]:
    """Absolute names imported anywhere in a file (function bodies too: a lazy import runs in
    the image as well), except under `if TYPE_CHECKING:`, which never runs."""
    names: set[str] = set()
    todo: list[ast.AST] = [ast.parse(path.read_text(), str(path))]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this file's package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, node.module] if node.module else parts)
            else:
                base = node.module or ""
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
        todo.extend(ast.iter_child_nodes(node))
    return names


def _third_party_imports(entry: Path) -> set[str]:
    """Top-level third-party modules reachable from `entry` through services.* imports."""
    third_party: set[str] = set()
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        rel = path.relative_to(REPO).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for name in _imported_names(path, package):
            top = name.partition(".")[0]
            if top == "services":
                # A package's __init__ runs before any of its submodules.
                parts = name.split(".")
                files = [_module_file(".".join(parts[:i])) for i in range(2, len(parts) + 1)]
                todo.extend(f for f in files if f is not None)
            elif top and top not in sys.stdlib_module_names and top != "__future__":
                third_party.add(top)
    return third_party


def _entry(extra: str) -> list[Path]:
    """The service's entry point; the market library has none, so all of its modules."""
    main = SERVICES / extra / "__main__.py"
    return [main] if main.is_file() else sorted((SERVICES / extra).rglob("*.py"))


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_installed_metadata_matches_pyproject() -> None:
    """The checks below read the installed metadata; it must be that of this pyproject.toml."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for extra in EXTRAS:
        wanted = sorted(str(Requirement(r)) for r in project["optional-dependencies"][extra])
        have = sorted(str(r).split(";")[0].strip() for r in _for_extra(extra))
        assert have == wanted, f"[{extra}] installed metadata is stale: run `make install`"


@pytest.mark.parametrize("extra", EXTRAS)
def test_every_import_of_a_service_is_installed_by_its_extra(extra: str) -> None:
    providers = metadata.packages_distributions()
    installed = _installed_with(extra)
    modules: set[str] = set()
    for entry in _entry(extra):
        modules |= _third_party_imports(entry)
    assert modules, f"no third-party imports found from services/{extra}: the walk is broken"
    missing = {
        module: providers.get(module, ["(no installed distribution)"])
        for module in sorted(modules)
        if not {canonicalize_name(d) for d in providers.get(module, [])} & installed
    }
    assert not missing, f"rlmf[{extra}] does not install what services/{extra} imports: {missing}"
