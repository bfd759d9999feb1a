"""The generated protobuf code matches protos/ (run `make protos` when this fails)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from services.common import topics

REPO = Path(__file__).resolve().parents[2]
GENERATED = REPO / "services/common/pb"


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    protos = sorted((REPO / "protos/rlmf/v1").glob("*.proto"))
    assert protos, "no .proto files found"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{REPO / 'protos'}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            *map(str, protos),
        ],
        check=True,
    )
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2.py*"))
    assert fresh, "protoc generated nothing"
    for rel in fresh:
        committed = GENERATED / rel
        assert committed.exists(), f"{rel} is not committed; run make protos"
        assert committed.read_bytes() == (tmp_path / rel).read_bytes(), (
            f"{rel} is stale: run `make protos` and commit the result"
        )


def test_every_topic_is_versioned_and_has_a_payload_and_dlq_twin() -> None:
    names = topics.all_topics_with_dlq()
    assert len(names) == 2 * len(topics.ALL_TOPICS) == 20
    for topic in topics.ALL_TOPICS:
        assert topic.endswith(".v1")
        assert topics.dlq(topic) == topic + ".dlq" in names
        assert topics.payload_type(topic).DESCRIPTOR.full_name.startswith("rlmf.v1.")
