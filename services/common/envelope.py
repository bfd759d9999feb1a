"""Wrapping payloads in the rlmf.v1.Envelope and checking what comes off the wire."""

from __future__ import annotations

import calendar
import os
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from google.protobuf.message import DecodeError, Message

from services.common.pb.rlmf.v1 import envelope_pb2

SCHEMA_VERSION = 1
# google.protobuf.Any's type URL prefix; packing by hand avoids Any.Pack's extra copy.
_TYPE_URL_PREFIX = "type.googleapis.com/"
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})


class _TypeUrls(dict[type[Message], str]):
    """Payload class -> its Any type URL, computed once per class: a hit is a plain dict
    lookup, which keeps DESCRIPTOR.full_name and the concatenation off the per-message path."""

    def __missing__(self, payload_type: type[Message]) -> str:
        url = self[payload_type] = _TYPE_URL_PREFIX + payload_type.DESCRIPTOR.full_name
        return url


_TYPE_URLS = _TypeUrls()

# Namespace for ids derived from other ids: a re-processed input yields the same output id,
# which is what lets downstream de-duplication make at-least-once look exactly-once.
_DERIVED_ID_NAMESPACE = uuid.UUID("6b1f2c1e-4f9d-4b43-9b0e-5f3a7d1e2c90")


class EnvelopeError(ValueError):
    """A message that cannot be accepted; the text says why and goes to the DLQ."""


class UnknownSchemaVersion(EnvelopeError):
    pass


# uuid4() reads os.urandom on every call, which dominated the producer's profile; a generator
# seeded once from urandom gives ids just as unique for this purpose at a fraction of the cost.
_id_random = random.Random(os.urandom(16))
os.register_at_fork(after_in_child=lambda: _id_random.seed(os.urandom(16)))
# The uuid4 layout's version (4) and variant (10xx) bits, set on the random 128 bits directly:
# uuid.UUID(int=..., version=4) does the same but costs five times more per id.
_UUID4_CLEAR = ~((0xC000 << 48) | (0xF000 << 64)) & ((1 << 128) - 1)
_UUID4_SET = (0x8000 << 48) | (4 << 76)
_NS_PER_S = 1_000_000_000


def new_id() -> str:
    """A random 128-bit id (uuid4 layout) as 32 hex characters, like uuid.uuid4().hex."""
    return f"{(_id_random.getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET:032x}"


def derived_id(parent_id: str, *parts: object) -> str:
    """A stable id for an output of `parent_id` (same parent and parts -> same id)."""
    name = "/".join([parent_id, *map(str, parts)])
    return uuid.uuid5(_DERIVED_ID_NAMESPACE, name).hex


def to_datetime(ts) -> datetime:  # type: ignore[no-untyped-def]
    """A protobuf Timestamp as an aware UTC datetime."""
    return ts.ToDatetime(tzinfo=UTC)


def set_time(ts, when: datetime) -> None:  # type: ignore[no-untyped-def]
    """Set protobuf Timestamp `ts` from a datetime (naive datetimes are taken as UTC)."""
    ts.seconds, ts.nanos = _datetime_to_timestamp(when)


@lru_cache(maxsize=4096)
def _datetime_to_timestamp(when: datetime) -> tuple[int, int]:
    # Timestamp.FromDatetime is pure Python and showed up on the producer's profile; many
    # messages share event times (one bar time per ticker and day), so the result is cached.
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = calendar.timegm(when.utctimetuple())
    return seconds, when.microsecond * 1000


class Envelope:
    """A decoded envelope: its id and payload, and the other header fields read on demand.

    Only `id` (for de-duplication) and `payload` (validated before any handler sees it) are
    read when a message is decoded; the rest are read from the parsed protobuf when a handler
    asks. The consumer's per-message profile is where this matters: most handlers read the
    payload and one or two header fields. Read-only by convention.
    """

    __slots__ = ("id", "payload", "_message")

    def __init__(self, id: str, payload: Message, message: envelope_pb2.Envelope) -> None:
        self.id = id
        self.payload = payload
        self._message = message

    @property
    def event_time(self) -> datetime:
        ts = self._message.event_time
        return _timestamp_to_datetime(ts.seconds, ts.nanos)

    @property
    def source(self) -> str:
        return self._message.source

    @property
    def schema_version(self) -> int:
        return self._message.schema_version

    @property
    def trace_id(self) -> str:
        return self._message.trace_id

    @property
    def key(self) -> str:
        return self._message.key

    @property
    def produce_time_ns(self) -> int:
        ts = self._message.produce_time
        return ts.seconds * _NS_PER_S + ts.nanos

    @property
    def produce_time(self) -> datetime:
        return datetime.fromtimestamp(self.produce_time_ns / 1e9, UTC)

    def __repr__(self) -> str:
        return (
            f"Envelope(id={self.id!r}, key={self.key!r}, event_time={self.event_time!r}, "
            f"payload={type(self.payload).__name__})"
        )


@lru_cache(maxsize=4096)
def _timestamp_to_datetime(seconds: int, nanos: int) -> datetime:
    # Many messages share event times (one bar time per ticker and day); caching the
    # conversion keeps it off the consumer's per-message profile.
    return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=nanos // 1000)


def wrap(
    payload: Message,
    *,
    key: str,
    event_time: datetime,
    source: str,
    trace_id: str | None = None,
    id: str | None = None,
) -> envelope_pb2.Envelope:
    """A new envelope around `payload`; `id` defaults to a fresh one."""
    env = envelope_pb2.Envelope(
        id=id or new_id(),
        source=source,
        schema_version=SCHEMA_VERSION,
        trace_id=trace_id or new_id(),
        key=key,
    )
    set_time(env.event_time, event_time)
    produce_time = env.produce_time
    produce_time.seconds, produce_time.nanos = divmod(time.time_ns(), _NS_PER_S)
    env.payload.type_url = _TYPE_URLS[type(payload)]
    env.payload.value = payload.SerializeToString()
    return env


def encode(env: envelope_pb2.Envelope) -> bytes:
    return env.SerializeToString()


def decode(raw: bytes, payload_type: type[Message]) -> Envelope:
    """Parse and validate bytes from a topic carrying `payload_type`.

    Raises:
        EnvelopeError: undecodable bytes, a missing id or event time, or the wrong payload type.
        UnknownSchemaVersion: a schema version this build does not understand.
    """
    env = envelope_pb2.Envelope()
    try:
        env.ParseFromString(raw)
    except DecodeError as exc:
        raise EnvelopeError(f"not a protobuf rlmf.v1.Envelope: {exc}") from exc
    envelope_id = env.id
    if not envelope_id:
        raise EnvelopeError("envelope has no id")
    if env.schema_version not in SUPPORTED_SCHEMA_VERSIONS:
        raise UnknownSchemaVersion(
            f"unknown schema_version {env.schema_version}; "
            f"this build understands {sorted(SUPPORTED_SCHEMA_VERSIONS)}"
        )
    if not env.HasField("event_time"):
        raise EnvelopeError("envelope has no event_time")
    packed = env.payload
    if packed.type_url != _TYPE_URLS[payload_type]:
        found = packed.type_url.rsplit("/", 1)[-1] or "empty"
        raise EnvelopeError(f"payload is {found}, expected {payload_type.DESCRIPTOR.full_name}")
    payload = payload_type()
    try:
        payload.ParseFromString(packed.value)
    except DecodeError as exc:
        expected = payload_type.DESCRIPTOR.full_name
        raise EnvelopeError(f"payload does not decode as {expected}: {exc}") from exc
    return Envelope(envelope_id, payload, env)
