"""A minimal service for the bus tests: copies NewsItems from one topic to another.

Run as `python -m tests.integration.bus_echo_service IN OUT [delay_s]`. A headline "boom" makes
the handler raise; "invalid" raises ValidationFailed; both must be dead-lettered.
"""

from __future__ import annotations

import sys
import time

from services.common.bus import ConsumerLoop, Incoming, Outgoing, ValidationFailed
from services.common.http_server import HealthApp
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.service import run_consumer_service


def main() -> int:
    in_topic, out_topic = sys.argv[1], sys.argv[2]
    delay_s = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0

    def handle(message: Incoming) -> list[Outgoing]:
        item = message.payload
        if item.headline == "boom":
            raise RuntimeError("the handler blew up on purpose")
        if item.headline == "invalid":
            raise ValidationFailed("headline 'invalid' is not accepted")
        time.sleep(delay_s)
        enriched = pb.EnrichedNews(item=item, summary=item.headline, sentiment=0.0)
        return [Outgoing(out_topic, enriched, message.envelope.key, message.envelope.event_time)]

    def build() -> ConsumerLoop:
        return ConsumerLoop(
            service="echo",
            topics=[in_topic],
            handle=handle,
            group_id=f"echo-{in_topic}",
            create_topics=[out_topic],
            payload_types={in_topic: pb.NewsItem},
        )

    return run_consumer_service("echo", build, HealthApp("echo"))


if __name__ == "__main__":
    sys.exit(main())
