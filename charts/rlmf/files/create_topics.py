"""Create the topics listed in a file (one a line) on RLMF_BUS_BOOTSTRAP; existing ones stay.

Run by the chart's topics Job with the ingest image. services.common.bus.ensure_topics would do
the same but always with replication factor 1; a cluster wants RLMF_TOPICS_REPLICATION_FACTOR.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError


def security_kwargs() -> dict[str, str]:
    """kafka-python's TLS/SASL arguments from the RLMF_BUS_* variables the chart sets when the
    brokers need a login (this script runs alone in a Job, so it reads them itself)."""
    env = os.environ
    protocol = env.get("RLMF_BUS_SECURITY_PROTOCOL", "PLAINTEXT")
    if protocol == "PLAINTEXT":
        return {}
    return {
        "security_protocol": protocol,
        "sasl_mechanism": env["RLMF_BUS_SASL_MECHANISM"],
        "sasl_plain_username": env["RLMF_BUS_SASL_USERNAME"],
        "sasl_plain_password": env["RLMF_BUS_SASL_PASSWORD"],
        "ssl_cafile": env["RLMF_BUS_SSL_CAFILE"],
    }


def main(topics_file: str) -> int:
    bootstrap = os.environ.get("RLMF_BUS_BOOTSTRAP", "")
    if not bootstrap:
        print("RLMF_BUS_BOOTSTRAP is not set: no Kafka to create topics on", file=sys.stderr)
        return 2
    partitions = int(os.environ.get("RLMF_TOPICS_PARTITIONS", "3"))
    replication = int(os.environ.get("RLMF_TOPICS_REPLICATION_FACTOR", "1"))
    wanted = [t.strip() for t in Path(topics_file).read_text().splitlines() if t.strip()]
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="rlmf-topics-job", **security_kwargs()
    )
    try:
        missing = sorted(set(wanted) - set(admin.list_topics()))
        for topic in missing:
            try:
                admin.create_topics([NewTopic(topic, partitions, replication)])
            except TopicAlreadyExistsError:
                pass  # created by a service between our list and create: that is the goal
        print(f"created {len(missing)} topic(s), {len(wanted) - len(missing)} already there")
    finally:
        admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
