"""Ed25519 signatures over an artifact's manifest: the trainer signs, the policy server verifies.

The manifest holds every file's sha256, so one signature over its exact bytes vouches for the
whole folder; a folder whose hashes were recomputed by someone without the private key fails.
`cryptography` does the arithmetic (a well-kept, audited library: no hand-written crypto here).
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNATURE = "manifest.sig"
"""Beside manifest.json: the base64 Ed25519 signature of manifest.json's bytes."""


class SigningError(RuntimeError):
    """A key file that is missing or not an Ed25519 key, or a signature that does not verify."""


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file (`openssl genpkey -algorithm ed25519`)."""
    key = _load_pem(path, private=True)
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (`openssl pkey -pubout`)."""
    key = _load_pem(path, private=False)
    if not isinstance(key, Ed25519PublicKey):
        raise SigningError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def public_key_of(private_path: Path) -> Ed25519PublicKey:
    """The public half of the Ed25519 private key in `private_path`: what holds the private
    key checks its own signatures without a second file."""
    return load_private_key(private_path).public_key()


def _load_pem(path: Path, private: bool) -> object:
    kind = "private" if private else "public"
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SigningError(f"cannot read the {kind} key file {path}: {exc.strerror}") from exc
    try:
        if private:
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"{path} is not a PEM {kind} key: {exc}") from exc


def generate_key_pair(private_path: Path, public_path: Path) -> Ed25519PublicKey:
    """A new key pair as PEM files; the private one readable by its owner only."""
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private_pem)
    public = key.public_key()
    public_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return public


def sign_bytes(key: Ed25519PrivateKey, data: bytes) -> bytes:
    """The signature file's content for `data`."""
    return base64.b64encode(key.sign(data)) + b"\n"


def verify_bytes(key: Ed25519PublicKey, data: bytes, signature_file: bytes) -> None:
    """Raise SigningError unless `signature_file` (sign_bytes' output) signs `data`."""
    try:
        signature = base64.b64decode(signature_file.strip(), validate=True)
        key.verify(signature, data)
    except (InvalidSignature, binascii.Error, ValueError) as exc:
        raise SigningError("the manifest's signature does not verify with the public key") from exc
