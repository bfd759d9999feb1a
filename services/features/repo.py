"""Applying the checked-in Feast repo into a working folder (settings.data_dir).

The checked-in feature_repo/ holds only definitions and two config templates; `apply_repo`
renders the chosen template with the settings, copies the definitions next to it, creates the
empty Parquet files the offline store appends to, and registers everything. Tests and the demo
point data_dir at a temporary folder, so nothing is ever written into the checkout.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import string
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from feast import Entity, FeatureService, FeatureStore, FeatureView
from feast.data_source import DataSource, PushSource
from feast.infra.offline_stores.file_source import FileSource
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.types import Float64, Int64, String

from services.features.settings import REDIS_PASSWORD_ENV, FeaturesSettings

log = logging.getLogger(__name__)

DEFINITIONS = "feature_definitions.py"
CONFIG = "feature_store.yaml"
TEMPLATES = {"local": "feature_store.yaml", "cluster": "feature_store.cluster.yaml"}
_ARROW_TYPES: dict[object, pa.DataType] = {
    Float64: pa.float64(),
    Int64: pa.int64(),
    String: pa.string(),
}

# Feast says ODFVs are "experimental" on every apply and read; we know, and the noise hides
# real warnings in the service's logs.
warnings.filterwarnings("ignore", message="On demand feature view is an experimental feature")


class RepoNotApplied(RuntimeError):
    """The working folder has no applied repo yet."""


def template_values(settings: FeaturesSettings) -> dict[str, str]:
    """The placeholders of the store configs, from the settings."""
    return {
        "RLMF_FEATURES_PROJECT": settings.project,
        "RLMF_FEATURES_REGISTRY_PATH": str(settings.registry),
        "RLMF_FEATURES_ONLINE_PATH": str(settings.online),
        "RLMF_FEATURES_REDIS_ADDRESS": settings.redis_connection_string,
    }


def render_config(settings: FeaturesSettings) -> str:
    """The chosen feature_store YAML with every placeholder filled in, except the Redis
    password's, which stays `${RLMF_FEATURES_REDIS_PASSWORD}` for Feast to expand on load."""
    template = (settings.repo_dir / TEMPLATES[settings.store]).read_text()
    return string.Template(template).substitute(template_values(settings))


def write_config(settings: FeaturesSettings) -> Path:
    """Render the store config into settings.data_dir; returns the file (no secret in it)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    config = settings.data_dir / CONFIG
    config.write_text(render_config(settings))
    return config


def _export_redis_password(settings: FeaturesSettings) -> None:
    # Feast expands ${RLMF_FEATURES_REDIS_PASSWORD} from this process' environment when it loads
    # the config. A password read from that variable is already there; one given in code (tests,
    # the CLI) is put there so that Feast connects with the same password the settings hold.
    if settings.redis_password is not None:
        os.environ[REDIS_PASSWORD_ENV] = settings.redis_password.get_secret_value()


def _require_password_env(config: Path) -> None:
    # Unset, the placeholder would reach Redis verbatim as the password; say what is missing.
    if f"${{{REDIS_PASSWORD_ENV}}}" in config.read_text() and REDIS_PASSWORD_ENV not in os.environ:
        raise RuntimeError(
            f"{config} takes the Redis password from ${REDIS_PASSWORD_ENV}, which is not set"
        )


def feature_store(settings: FeaturesSettings) -> FeatureStore:
    """Feast's store on settings.data_dir, loaded with the Redis password in the environment."""
    _export_redis_password(settings)
    _require_password_env(settings.data_dir / CONFIG)
    return FeatureStore(repo_path=str(settings.data_dir))


def load_definitions(path: Path) -> ModuleType:
    """Import a definitions file under a private module name (not via sys.path)."""
    spec = importlib.util.spec_from_file_location("rlmf_feature_definitions", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"cannot import Feast definitions from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def feast_objects(module: ModuleType) -> list[Any]:
    """Every Feast object a definitions module declares, as `feast apply` would collect them."""
    kinds = (Entity, DataSource, FeatureView, OnDemandFeatureView, FeatureService)
    return [value for value in vars(module).values() if isinstance(value, kinds)]


def offline_schema(view: FeatureView) -> pa.Schema:
    """The Parquet schema of a pushed view: join key, event timestamp, then its fields."""
    columns = [("ticker", pa.string()), ("event_timestamp", pa.timestamp("us", tz="UTC"))]
    for f in view.schema:
        if f.name == "ticker":
            continue
        if f.dtype not in _ARROW_TYPES:
            raise TypeError(f"{view.name}.{f.name}: no Parquet type for {f.dtype}")
        columns.append((f.name, _ARROW_TYPES[f.dtype]))
    return pa.schema(columns)


def _create_offline_files(objects: list[Any], data_dir: Path) -> None:
    # The file offline store appends by reading the existing file, so each must exist first.
    for view in objects:
        if not isinstance(view, FeatureView) or not isinstance(view.stream_source, PushSource):
            continue
        batch = view.stream_source.batch_source
        assert isinstance(batch, FileSource)
        path = data_dir / batch.path
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist([], schema=offline_schema(view)), path)


def apply_repo(settings: FeaturesSettings) -> Path:
    """Render, copy and register the repo in settings.data_dir; returns that folder."""
    data_dir = settings.data_dir
    write_config(settings)
    shutil.copyfile(settings.repo_dir / DEFINITIONS, data_dir / DEFINITIONS)
    objects = feast_objects(load_definitions(data_dir / DEFINITIONS))
    _create_offline_files(objects, data_dir)
    store = feature_store(settings)
    store.apply(objects)
    log.info("applied %d Feast objects to %s (%s store)", len(objects), data_dir, settings.store)
    return data_dir


def open_store(settings: FeaturesSettings) -> FeatureStore:
    """The applied store in settings.data_dir; raises RepoNotApplied with the fix if missing."""
    config = settings.data_dir / CONFIG
    if not config.exists() or not settings.registry.exists():
        raise RepoNotApplied(
            f"no applied Feast repo in {settings.data_dir}: run `rlmf features apply` "
            "(with the same RLMF_FEATURES_* settings) first"
        )
    return feature_store(settings)
