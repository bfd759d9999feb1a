"""TLS and SASL/SCRAM for a cluster's Kafka: BusSettings from RLMF_BUS_* and what bus.py hands
kafka-python's producer, consumer and admin client.

No TLS or SASL broker runs on these machines (the embedded broker speaks plaintext), so the
secured case records the keyword arguments the three kafka-python clients are built with and
stops there; the plaintext case runs against the real embedded broker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.common import bus as bus_module
from services.common.settings import BusSettings
from tests.helpers import read_topic

SECURITY_TOPIC = "rlmf.test.security"
SCRAM_ENV = {
    "RLMF_BUS_SECURITY_PROTOCOL": "SASL_SSL",
    "RLMF_BUS_SASL_MECHANISM": "SCRAM-SHA-512",
    "RLMF_BUS_SASL_USERNAME": "rlmf-trainer",
    "RLMF_BUS_SASL_PASSWORD": "s3cret",
    "RLMF_BUS_SSL_CAFILE": "/etc/kafka-ca/ca.crt",
}
EXPECTED = {
    "security_protocol": "SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_plain_username": "rlmf-trainer",
    "sasl_plain_password": "s3cret",
    "ssl_cafile": "/etc/kafka-ca/ca.crt",
}


def _env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_scram_over_tls_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, SCRAM_ENV)
    settings = BusSettings()
    assert settings.client_security() == EXPECTED
    assert "s3cret" not in repr(settings), "the password must not show in logs"


def test_tls_only_and_plaintext(monkeypatch: pytest.MonkeyPatch) -> None:
    assert BusSettings().client_security() == {"security_protocol": "PLAINTEXT"}
    tls = BusSettings(security_protocol="SSL", ssl_cafile=Path("/ca.crt"))
    assert tls.client_security() == {"security_protocol": "SSL", "ssl_cafile": "/ca.crt"}


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"RLMF_BUS_SECURITY_PROTOCOL": "SASL_SSL"}, "RLMF_BUS_SASL_MECHANISM"),
        (
            {"RLMF_BUS_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "RLMF_BUS_SASL_MECHANISM": "PLAIN",
             "RLMF_BUS_SASL_USERNAME": "u"},
            "RLMF_BUS_SASL_PASSWORD",
        ),
        ({"RLMF_BUS_SECURITY_PROTOCOL": "TLS"}, "security_protocol"),
        ({"RLMF_BUS_SASL_MECHANISM": "SCRAM-SHA-1"}, "sasl_mechanism"),
    ],
)  # fmt: skip
def test_incomplete_or_unknown_security_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    _env(monkeypatch, env)
    with pytest.raises(ValidationError, match=named):
        BusSettings()


class _Recorded(Exception):
    pass


def test_producer_consumer_and_admin_are_built_with_the_security_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Recorded, not connected: there is no SASL/TLS broker here (see the module docstring)."""
    _env(monkeypatch, SCRAM_ENV)
    settings = BusSettings(bootstrap="127.0.0.1:1", retry_attempts=1)
    built: dict[str, dict[str, Any]] = {}

    def recorder(name: str) -> Any:
        def build(**kwargs: Any) -> Any:
            built[name] = kwargs
            raise _Recorded(name)

        return build

    for name in ("KafkaAdminClient", "KafkaProducer", "KafkaConsumer"):
        monkeypatch.setattr(bus_module, name, recorder(name))
    with pytest.raises(_Recorded):
        bus_module.ensure_topics(settings, ["t"], "test")
    with pytest.raises(_Recorded):
        bus_module.Producer(settings, "test")
    monkeypatch.setattr(bus_module, "ensure_topics", lambda *_a, **_k: None)
    monkeypatch.setattr(bus_module, "Producer", lambda *_a, **_k: None)
    with pytest.raises(_Recorded):
        bus_module.ConsumerLoop(service="test", topics=["market.bars.v1"], settings=settings,
                                handle=lambda _m: [])  # fmt: skip
    for name in ("KafkaAdminClient", "KafkaProducer", "KafkaConsumer"):
        assert EXPECTED.items() <= built[name].items(), name


def test_kafka_python_knows_every_argument_and_mechanism() -> None:
    """What BusSettings hands over is kafka-python's own vocabulary: each keyword is in the
    three clients' configuration and each allowed SASL mechanism is one it implements."""
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
    from kafka.net.sasl import SASL_MECHANISMS

    for client in (KafkaProducer, KafkaConsumer, KafkaAdminClient):
        assert set(EXPECTED) <= set(client.DEFAULT_CONFIG), client.__name__
    pattern = BusSettings.model_fields["sasl_mechanism"].metadata[0].pattern
    allowed = pattern.strip("^$()").split("|")
    assert set(allowed) <= set(SASL_MECHANISMS), set(allowed) - set(SASL_MECHANISMS)


def test_plaintext_is_said_explicitly_to_the_real_broker(
    bus_settings: BusSettings, unique: str
) -> None:
    """security_protocol PLAINTEXT set, not left to the default: the clients get that protocol
    and nothing of TLS or SASL, and the real (plaintext) broker takes the record."""
    settings = bus_settings.model_copy(update={"security_protocol": "PLAINTEXT"})
    assert settings.client_security() == {"security_protocol": "PLAINTEXT"}
    bus_module.ensure_topics(settings, [SECURITY_TOPIC], "test")
    value = f"plaintext-{unique}".encode()
    producer = bus_module.Producer(settings, "test")
    try:
        producer.send_raw(SECURITY_TOPIC, value, key=None, headers=[])
        producer.flush()  # returns once the broker acknowledged it
    finally:
        producer.close()
    # Read back, by its unique value: the session broker's topic holds earlier runs' records.
    landed = [r.value for r in read_topic(settings.bootstrap, SECURITY_TOPIC)]
    assert landed.count(value) == 1, f"{landed.count(value)} copies of {value!r} on the topic"


def test_the_simulators_watermark_consumer_is_built_with_the_security_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The simulator follows features.ready.v1 with a consumer of its own, outside bus.py; it
    must reach a secured Kafka as the bus's clients do. Recorded, as above."""
    from services.simulator import service as simulator

    _env(monkeypatch, SCRAM_ENV)
    settings = BusSettings(bootstrap="127.0.0.1:1", retry_attempts=1)
    built: dict[str, Any] = {}

    def build(**kwargs: Any) -> Any:
        built.update(kwargs)
        raise _Recorded("KafkaConsumer")

    monkeypatch.setattr(simulator, "ensure_topics", lambda *_a, **_k: None)
    monkeypatch.setattr(simulator, "KafkaConsumer", build)
    with pytest.raises(_Recorded):
        simulator.WatermarkTracker(settings)
    assert EXPECTED.items() <= built.items()
    assert built["bootstrap_servers"] == "127.0.0.1:1"
