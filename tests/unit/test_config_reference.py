"""The configuration reference and file, and the CLI's grammar: `rlmf config` lists every
setting of every settings class; docs/configuration.md and docs/cli.md are what `make docs`
writes now; the TOML file is read below the environment and `rlmf config --show` says where
each value came from; `rlmf <service> run` for every service, the old verbs hidden."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.common.settings import CONFIG_FILE_ENV, BusSettings, ConfigFileError
from services.config_cli import SETTINGS_CLASSES, markdown, sections
from tests.helpers import REPO

runner = CliRunner()
CLI_DOCS = [sys.executable, "-m", "typer", "services.cli", "utils", "docs", "--name", "rlmf"]
"""What `make docs` runs for docs/cli.md (with --title and --output)."""


@pytest.fixture(autouse=True)
def _no_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No configuration file and no RLMF_ variable unless a test sets one."""
    import os

    for name in [n for n in os.environ if n.startswith("RLMF_")]:
        monkeypatch.delenv(name)
    # `rlmf --config` sets the variable itself: monkeypatch then unsets it after the test.
    monkeypatch.setenv(CONFIG_FILE_ENV, "")
    monkeypatch.delenv(CONFIG_FILE_ENV)
    monkeypatch.chdir(tmp_path)


def _settings_classes_in_source() -> set[str]:
    """Every class in services/ that derives from BaseSettings or RlmfSettings, read from the
    source, so a settings class added anywhere is seen without importing it."""
    found = set()
    for path in (REPO / "services").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(b) for b in node.bases}
                if bases & {"BaseSettings", "RlmfSettings"} and node.name != "RlmfSettings":
                    found.add(node.name)
    return found


def test_the_reference_lists_every_settings_class() -> None:
    listed = {target.split(":")[1] for target in SETTINGS_CLASSES}
    assert listed == _settings_classes_in_source()


def test_configuration_md_is_what_make_docs_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # where `make docs` runs: defaults under it are shown relative
    current = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert current == markdown(sections()), "docs/configuration.md is stale: run `make docs`"


def test_cli_md_is_what_make_docs_writes(tmp_path: Path) -> None:
    out = tmp_path / "cli.md"
    title = (REPO / "docs" / "cli.md").read_text(encoding="utf-8").splitlines()[0][2:]
    done = subprocess.run(
        [*CLI_DOCS, "--title", title, "--output", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    current = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    assert current == out.read_text(encoding="utf-8"), "docs/cli.md is stale: run `make docs`"


def test_each_setting_has_its_env_name_type_default_and_docstring() -> None:
    rows = {s.env: s for sec in sections() for s in sec.settings}
    bootstrap = rows["RLMF_BUS_BOOTSTRAP"]
    assert (bootstrap.key, bootstrap.type, bootstrap.default) == (
        "bus.bootstrap",
        "str",
        "127.0.0.1:9092",
    )
    assert bootstrap.doc.startswith("Kafka bootstrap address")
    # A nested group's field, with the recipe's default (not PPOArgs' own 13860).
    steps = rows["RLMF_TRAINER_RECIPE__PPO__TOTAL_TIMESTEPS"]
    assert (steps.key, steps.default) == ("trainer.recipe.ppo.total_timesteps", "400")
    assert rows["RLMF_TRAINER_TRAIN_DAYS"].type == "int, >= 10"
    assert rows["RLMF_TRAINER_DATA_SOURCE"].type == "str, one of auto, csv, kafka, synthetic"
    assert rows["RLMF_TRAINER_TEACHER_DIR"].type == "Path or unset"
    assert rows["RLMF_BUS_SASL_PASSWORD"].default == "unset"
    assert rows["RLMF_MODELS_DIR"].key == "models_dir"  # RLMF_ alone: the file's top level


def test_the_deprecated_names_are_listed_with_their_dates() -> None:
    (trainer,) = [sec for sec in sections() if sec.table == "trainer"]
    old = {o.env: o for o in trainer.old_names}
    assert old["RLMF_TRAINER_PPO_STEPS"].new == "RLMF_TRAINER_RECIPE__PPO__TOTAL_TIMESTEPS"
    assert old["RLMF_TRAINER_GATE_MARGIN"].deprecated_on == "2026-11-30"
    assert old["RLMF_TRAINER_MF_EPOCHS"].deprecated_on == "2026-12-07"
    assert "RLMF_TRAINER_PPO__<FIELD>" in old
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 0, result.output
    assert "RLMF_TRAINER_PPO_STEPS  deprecated on 2026-11-30" in result.output


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_the_file_is_read_below_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from services.trainer.settings import TrainerSettings

    config = _write(
        tmp_path / "rlmf.toml",
        'models_dir = "/srv/models"\n[bus]\nbootstrap = "kafka:9092"\npartitions = 6\n'
        "[trainer]\neval_days = 61\n[trainer.recipe.ppo]\ntotal_timesteps = 800\n",
    )
    # ./rlmf.toml is read without being named.
    assert BusSettings().bootstrap == "kafka:9092"
    monkeypatch.setenv("RLMF_BUS_BOOTSTRAP", "other:9092")
    assert (BusSettings().bootstrap, BusSettings().partitions) == ("other:9092", 6)
    trainer = TrainerSettings()
    assert (trainer.eval_days, trainer.recipe.ppo.total_timesteps) == (61, 800)
    # A deprecated env name still ranks with the environment, above the file.
    monkeypatch.setenv("RLMF_TRAINER_PPO_STEPS", "40")
    assert TrainerSettings().recipe.ppo.total_timesteps == 40
    monkeypatch.chdir(REPO)  # no rlmf.toml here: named by RLMF_CONFIG_FILE instead
    monkeypatch.setenv(CONFIG_FILE_ENV, str(config))
    monkeypatch.delenv("RLMF_BUS_BOOTSTRAP")
    assert BusSettings().bootstrap == "kafka:9092"


def test_a_named_file_that_is_not_there_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_FILE_ENV, "/nonexistent/rlmf.toml")
    with pytest.raises(ConfigFileError, match="no such file"):
        BusSettings()


def test_show_says_where_each_value_came_from(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = _write(
        tmp_path / "site.toml",
        '[bus]\nbootstrap = "kafka:9092"\n[trainer.recipe.ppo]\ntotal_timesteps = 800\n',
    )
    monkeypatch.setenv("RLMF_TRAINER_EVAL_DAYS", "70")
    result = runner.invoke(app, ["--config", str(config), "config", "--show"])
    assert result.exit_code == 0, result.output
    lines = {line.split("=")[0].strip(): line for line in result.output.splitlines()}
    assert lines["RLMF_BUS_BOOTSTRAP"].endswith(f"= kafka:9092  (file {config.resolve()})")
    assert lines["RLMF_TRAINER_RECIPE__PPO__TOTAL_TIMESTEPS"].endswith(
        "= 800  (file " + f"{config.resolve()})"
    )
    assert lines["RLMF_TRAINER_EVAL_DAYS"].endswith("= 70  (env)")
    assert lines["RLMF_BUS_PARTITIONS"].endswith("= 3  (default)")


def test_show_refuses_a_key_no_setting_reads(tmp_path: Path) -> None:
    config = _write(tmp_path / "rlmf.toml", "[trainr]\neval_days = 1\n[bus]\nbootstrapp = 'a'\n")
    result = runner.invoke(app, ["config", "--show"])
    assert result.exit_code == 2
    assert f"{config.name}: no setting reads trainr, bus.bootstrapp" in result.output


def test_show_reports_a_value_that_does_not_validate(tmp_path: Path) -> None:
    _write(tmp_path / "rlmf.toml", "[bus]\npartitions = 'many'\n")
    result = runner.invoke(app, ["config", "--show"])
    assert result.exit_code == 2
    assert "partitions" in result.output and "error:" in result.output


SERVICES = (
    "ingest",
    "sentiment",
    "features",
    "policy",
    "simulator",
    "trainer",
    "promotion-watcher",
)


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_runs_with_run(service: str) -> None:
    result = runner.invoke(app, [service, "run", "--help"])
    assert result.exit_code == 0, result.output
    assert f"{service} run [OPTIONS]" in result.output


@pytest.mark.parametrize(
    "argv", [["policy", "serve"], ["trainer", "serve"], ["train", "serve"], ["train", "cycle"]]
)
def test_the_old_verbs_still_answer_deprecated(argv: list[str]) -> None:
    result = runner.invoke(app, [*argv, "--help"])
    assert result.exit_code == 0, result.output
    # A deprecated command says so in its help; a command of a deprecated group, on stderr.
    assert "(deprecated)" in result.output or "'train' is deprecated" in result.output


@pytest.mark.parametrize(("group", "old"), [("policy", "serve"), ("trainer", "serve")])
def test_the_old_verbs_are_hidden(group: str, old: str) -> None:
    listed = runner.invoke(app, [group, "--help"], terminal_width=200).output
    # Command names start a row of the commands box: "│ run   ..." (a help text may say "serve").
    names = {
        line.strip("│ ").split(" ")[0] for line in listed.splitlines() if line.startswith("│ ")
    }
    assert "run" in names and old not in names


def test_help_groups_the_commands_by_job() -> None:
    out = runner.invoke(app, ["--help"]).output
    panels = {}
    for box in out.split("╭─")[1:]:
        title, _, body = box.partition("\n")
        # A row's name starts right after the border; a wrapped description is indented.
        rows = [line for line in body.splitlines() if line.startswith("│ ") and line[2] != " "]
        names = [row.split()[1] for row in rows]
        panels[title.strip(" ─╮")] = [n for n in names if not n.startswith("-")]
    assert list(panels) == [
        "Options",
        "Run the demo",
        "Stream your own market",
        "Services: `rlmf SERVICE run` runs one in the foreground",
        "Models and evaluation",
        "Configuration",
    ]
    assert panels["Run the demo"] == ["demo"]
    assert panels["Services: `rlmf SERVICE run` runs one in the foreground"] == list(SERVICES)
    assert "train" not in [name for names in panels.values() for name in names]  # hidden
