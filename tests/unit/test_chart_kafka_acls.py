"""The Strimzi KafkaUsers' ACLs (kafka-strimzi.yaml): one user per client, allowed exactly the
topics it reads and writes and its own consumer groups, compared with the service table of
docs/concepts.md (who consumes and produces what; it agrees with the design's table in
ARCHITECTURE.md, checked where that lies beside the checkout) and services/common/topics.py.

Not run here: a Kafka broker enforcing the ACLs (the embedded broker has no authorizer);
`authorized` below is Kafka's AclAuthorizer rule for allow-ACLs (literal or prefixed resource
names, Read/Write/Delete/Alter imply Describe, nothing matched means denied), applied to the
ACLs exactly as the chart renders them."""

from __future__ import annotations

import re
from typing import Any

import pytest

from services.common.topics import ALL_TOPICS, all_topics_with_dlq, dlq
from tests.helpers import REPO, named, of_kind, render

ARCHITECTURE = REPO.parent / "shared" / "ARCHITECTURE.md"
CONCEPTS_DOC = REPO / "docs" / "concepts.md"
CLUSTER_DOC = REPO / "docs" / "cluster.md"
# The services the chart runs, by the name the service tables give them.
SERVICES = ("ingest", "sentiment", "features", "simulator", "trainer")
TOPIC = re.compile(r"\b(" + "|".join(re.escape(t.removesuffix(".v1")) for t in ALL_TOPICS) + r")\b")


def _users() -> dict[str, dict[str, Any]]:
    """client -> its KafkaUser, from the Strimzi value set with SCRAM on."""
    return {
        u["metadata"]["name"].removeprefix("rlmf-kafka-"): u
        for u in of_kind(render("strimzi"), "KafkaUser")
    }


def _implied(operation: str) -> set[str]:
    # Kafka: Describe is implied by Read, Write, Delete and Alter.
    return {operation, "All"} | (
        {"Read", "Write", "Delete", "Alter"} if operation == "Describe" else set()
    )


def authorized(user: dict[str, Any], kind: str, name: str, operation: str) -> bool:
    for acl in user["spec"]["authorization"]["acls"]:
        resource = acl["resource"]
        if resource["type"] != kind or acl.get("type", "allow") != "allow":
            continue
        literal = resource.get("patternType", "literal") == "literal"
        matches = name == resource["name"] if literal else name.startswith(resource["name"])
        if matches and set(acl["operations"]) & _implied(operation):
            return True
    return False


def _granted(user: dict[str, Any], operation: str) -> set[str]:
    return {t for t in all_topics_with_dlq() if authorized(user, "topic", t, operation)}


def _service_table(text: str) -> dict[str, tuple[set[str], set[str]]]:
    """service -> (topics it consumes, topics it produces), from a markdown table whose first
    three columns are service, consumes, produces."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0] in SERVICES:
            consumes, produces = ({m + ".v1" for m in TOPIC.findall(c)} for c in cells[1:3])
            rows[cells[0]] = (consumes, produces)
    assert set(rows) == set(SERVICES), rows
    return rows


def _flows() -> dict[str, tuple[set[str], set[str]]]:
    return _service_table(CONCEPTS_DOC.read_text())


def test_the_documented_table_is_the_designs() -> None:
    """docs/concepts.md's table says what ARCHITECTURE.md's says: the same producers, and at
    least the consumers the design names (the design's simulator reads "features", which the
    docs name as the topic it is, features.ready)."""
    if not ARCHITECTURE.is_file():
        pytest.skip(
            f"the design document ({ARCHITECTURE}) lies beside the project's own checkout, not "
            "in a clone; the ACL tests below check the chart against docs/concepts.md everywhere"
        )
    design, documented = _service_table(ARCHITECTURE.read_text()), _flows()
    for service, (consumes, produces) in design.items():
        assert documented[service][1] == produces, service
        assert consumes <= documented[service][0], service


def test_every_documented_flow_is_granted() -> None:
    users = _users()
    for service, (consumes, produces) in _flows().items():
        user = users[service]
        assert consumes <= _granted(user, "Read"), service
        assert produces <= _granted(user, "Write"), service
        # A consumer dead-letters what it cannot handle into the topic's .dlq twin (the
        # simulator's watermarks too, read without a group).
        assert {dlq(t) for t in consumes} <= _granted(user, "Write"), service


def test_each_topic_has_one_writer_the_one_the_docs_name() -> None:
    """Besides `helm test` (which writes one news item and one bar) and the market feed, every
    topic is written by the one service docs/concepts.md says produces it, and nobody else."""
    users = _users()
    producers: dict[str, set[str]] = {}
    for service, (_, produces) in _flows().items():
        for topic in produces:
            producers.setdefault(topic, set()).add(service)
    producers.setdefault("market.bars.v1", set()).add("market-feed")
    for topic in ALL_TOPICS:
        writers = {
            c for c, u in users.items() if c != "test" and authorized(u, "topic", topic, "Write")
        }
        assert writers == producers.get(topic, set()), topic
    assert _granted(users["test"], "Write") == {"news.raw.v1", "market.bars.v1"}


@pytest.mark.parametrize(
    ("client", "topic"),
    [
        ("ingest", "market.bars.v1"),
        ("ingest", "market.feedback.v1"),
        ("ingest", "models.promotions.v1"),
        ("ingest", "news.enriched.v1"),
        ("sentiment", "features.ready.v1"),
        ("features", "trading.decisions.v1"),
        ("simulator", "models.promotions.v1"),
        ("simulator", "market.bars.v1"),
        ("promotion-watcher", "models.promotions.v1"),
        ("market-feed", "market.feedback.v1"),
        ("trainer", "market.feedback.v1"),
    ],
)
def test_a_client_cannot_write_outside_its_acl(client: str, topic: str) -> None:
    """Internet-facing ingest cannot forge bars, feedback or promotions; nobody but the trainer
    publishes a promotion."""
    assert not authorized(_users()[client], "topic", topic, "Write")


def test_only_named_topics_and_own_groups() -> None:
    """No prefix, no wildcard, no cluster or transactional rights; each service's group is its
    own (a service cannot read under another's group and move its offsets)."""
    known = set(all_topics_with_dlq())
    for client, user in _users().items():
        for acl in user["spec"]["authorization"]["acls"]:
            resource = acl["resource"]
            assert resource["patternType"] == "literal", (client, resource)
            assert resource["type"] in ("topic", "group"), (client, resource)
            if resource["type"] == "topic":
                assert resource["name"] in known, (client, resource)
            else:
                assert resource["name"].startswith(f"rlmf-{client}"), (client, resource)
            assert not set(acl["operations"]) & {"All", "Delete", "Alter", "Create"}, client
    assert authorized(_users()["sentiment"], "group", "rlmf-sentiment", "Read")
    assert not authorized(_users()["sentiment"], "group", "rlmf-features", "Read")


def test_every_kafka_client_pod_logs_in_as_a_user_with_acls() -> None:
    docs = render("strimzi")
    users = {u["metadata"]["name"] for u in of_kind(docs, "KafkaUser")}
    named(docs, "KafkaUser", "rlmf-kafka-market-feed")
    logins = set()
    for doc in docs:
        for env in re.findall(r"'RLMF_BUS_SASL_USERNAME', 'value': '([^']+)'", repr(doc)):
            logins.add(env)
    assert logins and logins <= users
    assert users - logins == {"rlmf-kafka-market-feed"}, "only the feed logs in from outside"


def _documented() -> dict[str, dict[str, set[str]]]:
    """client -> {reads, writes, groups}, from docs/cluster.md's "Kafka users and ACLs" table."""
    text = CLUSTER_DOC.read_text().split("### Kafka users and ACLs", 1)[1]
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("client", "---"):
            if rows and not line.startswith("|"):
                break
            continue
        client = cells[0].split(" ")[0]
        names = [set(re.findall(r"`([a-z0-9.-]+)`", c)) for c in cells[1:]]
        rows[client] = {"reads": names[0], "writes": names[1], "groups": names[2]}
    return rows


def test_rendered_acls_are_the_documented_ones() -> None:
    documented = _documented()
    users = _users()
    assert set(documented) == set(users)
    for client, user in users.items():
        acls = user["spec"]["authorization"]["acls"]
        topics = {op: {a["resource"]["name"] for a in acls
                       if a["resource"]["type"] == "topic" and op in a["operations"]}
                  for op in ("Read", "Write")}  # fmt: skip
        groups = {a["resource"]["name"] for a in acls if a["resource"]["type"] == "group"}
        doc = documented[client]
        assert topics["Read"] == doc["reads"], client
        assert topics["Write"] == doc["writes"], client
        assert groups == doc["groups"], client
