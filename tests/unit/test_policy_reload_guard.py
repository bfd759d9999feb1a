"""The reload route's guards on their own: who may call it (token, else loopback only), which
folders it takes (inside the reload root, links followed), and the settings that refuse an
unsigned server reachable beyond loopback or a reload route without a root.

Requests are starlette Requests built from an ASGI scope: the route's client address cannot be
anything but loopback in a test on this machine, so the scope says where the caller is."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from starlette.requests import Request

from services.policy.server import _reload_folder, _reload_gate, read_reload_token
from services.policy.settings import PolicySettings


def _request(client: str, authorization: str | None = None) -> Request:
    headers = [] if authorization is None else [(b"authorization", authorization.encode())]
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/models/policy:reload",
        "headers": headers,
        "client": (client, 40000),
    }
    return Request(scope)


def test_without_a_token_only_loopback_clients_may_reload() -> None:
    assert _reload_gate(_request("127.0.0.1"), None) is None
    assert _reload_gate(_request("::1"), None) is None
    refused = _reload_gate(_request("10.1.2.3"), None)
    assert refused is not None and refused.status_code == 403
    assert b"RLMF_POLICY_RELOAD_TOKEN_FILE" in refused.body


@pytest.mark.parametrize("client", ["127.0.0.1", "10.1.2.3"])
def test_with_a_token_every_caller_needs_it(client: str) -> None:
    for header in (None, "Bearer wrong", "Basic s3cret", "s3cret"):
        refused = _reload_gate(_request(client, header), "s3cret")
        assert refused is not None and refused.status_code == 401, header
        assert refused.headers["www-authenticate"] == "Bearer"
    assert _reload_gate(_request(client, "Bearer s3cret"), "s3cret") is None


def test_reload_folders_must_lie_inside_the_root(tmp_path: Path) -> None:
    root = (tmp_path / "models").resolve()
    (root / "v1").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    assert _reload_folder(str(root / "v1"), root) == root / "v1"
    assert _reload_folder("v1", root) == root / "v1"  # relative: to the root
    assert _reload_folder(str(root / "not-there-yet"), root) == root / "not-there-yet"
    for bad in (str(outside), "../elsewhere", str(root / "v1/../../elsewhere"), "link", "/etc"):
        assert _reload_folder(bad, root) is None, bad
    assert _reload_folder("v1\x00", root) is None


def test_unsigned_servers_bind_loopback_and_refuse_to_be_reachable(tmp_path: Path) -> None:
    plain = PolicySettings(model_dir=tmp_path / "models" / "v0")
    assert plain.bind_host == "127.0.0.1" and plain.loopback_only
    assert plain.reload_folder_root == (tmp_path / "models").resolve()
    with pytest.raises(ValidationError, match="RLMF_POLICY_ARTIFACT_PUBLIC_KEY_FILE"):
        PolicySettings(http_host="0.0.0.0")


def test_a_reachable_server_needs_a_reload_root_while_reload_is_on(tmp_path: Path) -> None:
    key = tmp_path / "public.pem"
    with pytest.raises(ValidationError, match="RLMF_POLICY_RELOAD_ROOT is required"):
        PolicySettings(artifact_public_key_file=key)
    signed = PolicySettings(artifact_public_key_file=key, reload_root=tmp_path)
    assert signed.bind_host == "0.0.0.0" and not signed.loopback_only
    assert PolicySettings(artifact_public_key_file=key, reload_enabled=False).bind_host


def test_the_token_file_must_hold_a_token(tmp_path: Path) -> None:
    assert read_reload_token(PolicySettings()) is None
    token = tmp_path / "token"
    token.write_text("  abc \n")
    assert read_reload_token(PolicySettings(reload_token_file=token)) == "abc"
    token.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        read_reload_token(PolicySettings(reload_token_file=token))
    with pytest.raises(ValueError, match="cannot read"):
        read_reload_token(PolicySettings(reload_token_file=tmp_path / "missing"))
