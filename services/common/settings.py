"""Settings read from the environment (prefix RLMF_) and the optional configuration file,
shared by every service."""

from __future__ import annotations

import os
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_FILE_ENV = "RLMF_CONFIG_FILE"
"""The variable naming the configuration file (`rlmf --config FILE` sets it for the command
and every process it starts)."""
DEFAULT_CONFIG_FILE = Path("rlmf.toml")
"""Read from the working directory when RLMF_CONFIG_FILE is unset, if it is there."""


class ConfigFileError(ValueError):
    pass


def config_file() -> Path | None:
    """The configuration file in force: RLMF_CONFIG_FILE (which must exist), else ./rlmf.toml
    where there is one, else none."""
    named = os.environ.get(CONFIG_FILE_ENV)
    if named:
        path = Path(named)
        if not path.is_file():
            raise ConfigFileError(f"{CONFIG_FILE_ENV}={named}: no such file")
        return path
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def config_table(settings_cls: type[BaseSettings]) -> tuple[str, ...]:
    """Where a settings class reads its values in the file: the table its env prefix names
    (RLMF_BUS_BOOTSTRAP is `bootstrap` in [bus]); RLMF_ alone: the file's top level."""
    prefix = str(settings_cls.model_config.get("env_prefix", "")).lower()
    name = prefix.removeprefix("rlmf_").strip("_")
    return (name,) if name else ()


class ConfigFileSource(TomlConfigSettingsSource):
    """pydantic-settings' TOML source, giving a class its own table of the file (an absent
    table gives nothing, where the source's toml_table_header would refuse the file)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        self.table = config_table(settings_cls)
        super().__init__(settings_cls, toml_file=path)

    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        data: Any = super()._read_file(file_path)
        for key in self.table:
            data = data.get(key, {})
            if not isinstance(data, dict):
                raise ConfigFileError(f"{file_path}: `{key}` is not a table")
        return dict(data)


class RlmfSettings(BaseSettings):
    """Every RLMF settings class: values from the init arguments, then the environment, then
    the configuration file (config_file), then the defaults."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        file_settings = ConfigFileSource(settings_cls, config_file())
        return init_settings, env_settings, dotenv_settings, file_settings, file_secret_settings


class BusSettings(RlmfSettings):
    """How a service talks to Kafka. Env: RLMF_BUS_BOOTSTRAP, RLMF_BUS_..."""

    model_config = SettingsConfigDict(env_prefix="RLMF_BUS_", extra="ignore")

    bootstrap: str = "127.0.0.1:9092"
    """Kafka bootstrap address(es), comma separated."""
    partitions: int = 3
    """Partitions per topic when the bus creates topics."""
    replication_factor: int = 1
    """Replicas per topic when the bus creates topics (1 on the embedded broker)."""
    group_protocol: str = Field(default="group", pattern="^(group|manual)$")
    """`group`: join a consumer group (cluster, scalable); `manual`: assign every partition
    of the topics to this one consumer and commit to the group without joining it (embedded:
    no rebalance wait, one consumer per service)."""
    max_poll_interval_ms: int = 10_000
    """Also the group's rebalance timeout; a join waits this long on the embedded broker, so
    keep it short there, and longer than the slowest handler batch."""
    session_timeout_ms: int = 10_000
    """How long the group waits for a consumer's heartbeat before dropping it and rebalancing;
    heartbeats go every quarter of it (at least 100 ms)."""
    poll_timeout_ms: int = 200
    """How long one poll waits for records; doubles as a micro-batch's max wait."""
    max_records: int = 100
    """Most records handed to a handler in one batch."""
    dedup_window: int = 100_000
    """How many recent envelope ids a consumer remembers to drop re-deliveries."""
    retry_attempts: int = 8
    """Attempts for a transient broker error before the service stops (never drops)."""
    retry_max_wait_s: float = 5.0
    """Longest wait, in seconds, between retries of a transient broker error; the waits grow
    exponentially from 0.1 s up to it."""
    auto_offset_reset: str = "earliest"
    """Where a consumer group with no committed offset starts: `earliest` (the oldest record
    kept) or `latest` (only records produced after it joins); kafka-python's option."""
    producer_batch_bytes: int = 262_144
    """Most bytes per produce batch and partition. kafka-python's default (16 KiB) holds fewer
    than a hundred enveloped messages, and each batch is a broker round trip: measured in
    bench/bus.py, 256 KiB nearly doubles producer throughput. linger_ms bounds the latency."""
    producer_linger_ms: int = 5
    """How long the producer waits to fill a batch before sending it."""
    # -- TLS and SASL (a cluster's Kafka); the defaults speak plaintext to the embedded broker
    security_protocol: str = Field(
        default="PLAINTEXT", pattern="^(PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL)$"
    )
    """kafka-python's security_protocol: SSL for TLS, SASL_SSL for SCRAM over TLS."""
    sasl_mechanism: str | None = Field(
        default=None, pattern="^(PLAIN|SCRAM-SHA-256|SCRAM-SHA-512)$"
    )
    """With a SASL_* protocol: PLAIN or SCRAM-SHA-256/512 (Strimzi's `scram-sha-512`)."""
    sasl_username: str | None = None
    """SASL user name; needed with a SASL_* security_protocol."""
    sasl_password: SecretStr | None = None
    """SASL password; needed with a SASL_* security_protocol."""
    ssl_cafile: Path | None = None
    """CA bundle that signed the brokers' certificates (Strimzi's <cluster>-cluster-ca-cert);
    unset: the system's trust store."""

    @model_validator(mode="after")
    def _sasl_complete(self) -> BusSettings:
        if not self.security_protocol.startswith("SASL_"):
            return self
        missing = [
            f"RLMF_BUS_{name.upper()}"
            for name in ("sasl_mechanism", "sasl_username", "sasl_password")
            if not getattr(self, name)
        ]
        if missing:
            raise ValueError(
                f"security_protocol {self.security_protocol} needs {', '.join(missing)}"
            )
        return self

    def client_security(self) -> dict[str, Any]:
        """The TLS/SASL keyword arguments of kafka-python's producer, consumer and admin."""
        kwargs: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL_"):
            assert self.sasl_password is not None  # _sasl_complete
            kwargs |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.sasl_password.get_secret_value(),
            }
        if self.security_protocol.endswith("SSL") and self.ssl_cafile is not None:
            kwargs["ssl_cafile"] = str(self.ssl_cafile)
        return kwargs


class HttpSettings(RlmfSettings):
    """The health/metrics HTTP server. Env: RLMF_HTTP_HOST, RLMF_HTTP_PORT."""

    model_config = SettingsConfigDict(env_prefix="RLMF_HTTP_", extra="ignore")

    host: str = "127.0.0.1"
    """Address the health/metrics server binds to (0.0.0.0 to be reached beyond this
    machine)."""
    port: int = 0
    """0 picks the service's default port."""


class LogSettings(RlmfSettings):
    """How a service logs. Env: RLMF_LOG_LEVEL, RLMF_LOG_JSON_FORMAT."""

    model_config = SettingsConfigDict(env_prefix="RLMF_LOG_", extra="ignore")

    level: str = "INFO"
    """Root logger level, a Python logging level name: DEBUG, INFO, WARNING, ERROR or
    CRITICAL."""
    json_format: bool = True
    """Log one JSON object per line on stdout; false: plain text lines."""


# Default HTTP ports, one per service, so `rlmf up` and the chart agree.
DEFAULT_PORTS: dict[str, int] = {
    "ingest": 8001,
    "sentiment": 8002,
    "features": 8003,
    "simulator": 8004,
    "trainer": 8005,
    "promotion-watcher": 8006,
    "policy": 8080,
}
